// Storage Blob Data Contributor for the app's identity on the labeling project's container only, so that
// `to-label` (and anything else run as the app's identity) can add images to the project's dataset folder. The
// role is the one Microsoft Learn names for writing blobs ("Assign an Azure role for access to blob data"); scoped
// to the one container, the identity reads and writes nothing else in that account. Deployed into the account's
// resource group (main.bicep sets the module's scope). The workspace's own identity needs Storage Blob Data
// Reader on the container to read what arrives (docs/labeling-loop.md).

@description('Storage account holding the labeling project\'s dataset.')
param storageAccountName string

@description('Its container the labeling project reads.')
param containerName string

@description('Principal id of the app\'s managed identity.')
param principalId string

var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName

  resource blobService 'blobServices' existing = {
    name: 'default'

    resource labeling 'containers' existing = {
      name: containerName
    }
  }
}

resource labelingContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account::blobService::labeling.id, principalId, storageBlobDataContributor)
  scope: account::blobService::labeling
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
