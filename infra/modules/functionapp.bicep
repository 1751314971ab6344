// The function app (Python 3.11, Linux) on the Flex Consumption plan from plan.bicep, running as the
// user-assigned identity. The runtime, scale and deployment package come from functionAppConfig. Flex rejects
// or ignores the site properties and app settings in Microsoft's "Flex Consumption plan deprecations" table
// (App settings reference for Azure Functions): none of them is sent (tests/infra/test_infra.py holds the table).

@description('Name of the function app (also its host name: <name>.azurewebsites.net).')
param name string

@description('Region of the app.')
param location string

@description('Tags for the app.')
param tags object = {}

@description('The service name in azure.yaml; azd finds the app to deploy to by this tag.')
param serviceName string = 'skill'

@description('Resource id of the hosting plan.')
param planId string

@description('Resource id of the user-assigned identity the app runs as.')
param identityId string

@description('Blob endpoint of the storage account, with its trailing slash.')
param storageBlobEndpoint string

@description('Container Flex Consumption deploys the package to.')
param deploymentContainerName string

@description('Flex Consumption instance memory, MB.')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 4096

@description('Most instances the app scales out to: Flex Consumption accepts 40 to 1000.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Always-ready instances for the HTTP function group (the skill); 0 lets the app scale to zero.')
@minValue(0)
@maxValue(1000)
param alwaysReadyInstances int = 0

@description('Flex Consumption: HTTP requests one instance handles at once. One batch already keeps every core busy (parallel decoding, ONNX Runtime threads), so 1: the platform adds instances instead.')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 1

@description('App settings, name to value (main.bicep builds them).')
param appSettings object

var flexConfig = {
  deployment: {
    storage: {
      type: 'blobContainer'
      value: '${storageBlobEndpoint}${deploymentContainerName}'
      authentication: {
        type: 'UserAssignedIdentity'
        userAssignedIdentityResourceId: identityId
      }
    }
  }
  scaleAndConcurrency: {
    // 'http' is the function group of every HTTP-triggered function (aka.ms/flexconsumption/alwaysready);
    // always-ready instances are part of the app's instances, so never more than maximumInstanceCount.
    alwaysReady: alwaysReadyInstances > 0 ? [
      {
        name: 'http'
        instanceCount: min(alwaysReadyInstances, maximumInstanceCount)
      }
    ] : []
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    triggers: {
      http: {
        perInstanceConcurrency: httpPerInstanceConcurrency
      }
    }
  }
  runtime: {
    name: 'python'
    version: '3.11'
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: planId
    httpsOnly: true
    // Key Vault references in app settings (AZURE_CLIENT_SECRET, if ever) resolve with this identity.
    keyVaultReferenceIdentity: identityId
    functionAppConfig: flexConfig
    siteConfig: {
      minTlsVersion: '1.2'
      appSettings: [
        for setting in items(appSettings): {
          name: setting.key
          value: setting.value
        }
      ]
    }
  }
}

output id string = functionApp.id
output name string = functionApp.name
output defaultHostName string = functionApp.properties.defaultHostName
output url string = 'https://${functionApp.properties.defaultHostName}'
