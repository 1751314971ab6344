// The function app (Python 3.11, Linux) on the plan from plan.bicep, running as the user-assigned identity.
// On Flex Consumption the runtime, scale and deployment package come from functionAppConfig; on Elastic
// Premium from siteConfig and the FUNCTIONS_* settings.

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

@description('FlexConsumption or ElasticPremium, as the plan.')
@allowed([
  'FlexConsumption'
  'ElasticPremium'
])
param planType string = 'FlexConsumption'

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

@description('Most instances the app scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Flex Consumption: HTTP requests one instance handles at once. One batch already keeps every core busy (parallel decoding, ONNX Runtime threads), so 1: the platform adds instances instead.')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 1

@description('App settings, name to value (main.bicep builds them).')
param appSettings object

var isFlex = planType == 'FlexConsumption'

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

// Flex Consumption takes the runtime from functionAppConfig and rejects these settings; Elastic Premium
// needs them. Elastic Premium is created without an Azure Files content share
// (WEBSITE_CONTENTAZUREFILECONNECTIONSTRING needs a shared key, and shared keys are off).
var premiumSettings = {
  FUNCTIONS_EXTENSION_VERSION: '~4'
  FUNCTIONS_WORKER_RUNTIME: 'python'
  SCM_DO_BUILD_DURING_DEPLOYMENT: 'true'
  ENABLE_ORYX_BUILD: 'true'
}

var settings = union(isFlex ? {} : premiumSettings, appSettings)

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
    functionAppConfig: isFlex ? flexConfig : null
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      linuxFxVersion: isFlex ? null : 'Python|3.11'
      functionAppScaleLimit: isFlex ? null : maximumInstanceCount
      minimumElasticInstanceCount: isFlex ? null : 1
      appSettings: [
        for setting in items(settings): {
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
