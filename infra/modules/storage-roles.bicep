// Data-plane roles on the storage account. Shared keys are off, so these are the only way in.
//
// - The app's identity: Storage Blob Data Owner, Storage Table Data Contributor and Storage Queue Data
//   Contributor on the account, for AzureWebJobsStorage through an identity (Microsoft Learn, "Connecting to
//   host storage with an identity"): blobs for timer locks, keys and leases, and the deployment package Flex
//   Consumption reads; tables for the host's diagnostic events (the table's "host only, with support for
//   diagnostic events" row); queues are not needed by the host alone, only by extensions that keep queues
//   there (blob triggers), and are granted as in Microsoft's Flex Consumption Bicep sample
//   (Azure-Samples/azure-functions-flex-consumption-samples, IaC/bicep/rbac.bicep) so that adding one works.
// - The app's identity: Storage Blob Data Contributor on the `models` container, the model store's own
//   need (RefreshModel publishes, every instance reads current.json and versions). Redundant with Owner
//   on the account today; explicit so that moving host storage to another account keeps the store working.
// - The deploying user (optional): Storage Blob Data Contributor on `models`, to run
//   `python -m shared publish` / `promote` against the store, and on `images`, to upload images.
// - The search service's identity (optional): Storage Blob Data Reader on `images`, for the data source's
//   `ResourceId=...;` (managed identity) connection.
// - The search service's identity, when main.bicep names a search service (searchCachePrincipalId): Storage Blob
//   Data Contributor and Storage Table Data Contributor on the account, for the indexer's enrichment cache
//   (REINDEX_MODE=skills, `search-setup --enrichment-cache`; docs/reindex.md). The roles Microsoft Learn lists
//   for "Write to an enrichment cache" ("Connect to Azure Storage using a managed identity (Azure AI Search)").
//   Account scope because the service creates the cache's container (`ms-az-search-indexercache-<id>`) and
//   tables itself, under names known only after the first run.

@description('Storage account name.')
param storageAccountName string

@description('Container of the model store.')
param modelsContainerName string

@description('Container holding the images to index.')
param imagesContainerName string

@description('Principal id of the app\'s managed identity.')
param appPrincipalId string

@description('Object id of the deploying user or pipeline; empty for none.')
param deployerPrincipalId string = ''

@description('Kind of principal deployerPrincipalId is.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param deployerPrincipalType string = 'User'

@description('Principal id of the Azure AI Search service\'s system-assigned identity; empty for none.')
param searchPrincipalId string = ''

@description('Principal id of the search service identity that writes the enrichment cache to this account; empty for none.')
param searchCachePrincipalId string = ''

var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var storageBlobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
var storageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName

  resource blobService 'blobServices' existing = {
    name: 'default'

    resource models 'containers' existing = {
      name: modelsContainerName
    }

    resource images 'containers' existing = {
      name: imagesContainerName
    }
  }
}

resource hostBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, appPrincipalId, storageBlobDataOwner)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource hostQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, appPrincipalId, storageQueueDataContributor)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource hostTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, appPrincipalId, storageTableDataContributor)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appModelsContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account::blobService::models.id, appPrincipalId, storageBlobDataContributor)
  scope: account::blobService::models
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource deployerModelsContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerPrincipalId)) {
  name: guid(account::blobService::models.id, deployerPrincipalId, storageBlobDataContributor)
  scope: account::blobService::models
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
  }
}

resource deployerImagesContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerPrincipalId)) {
  name: guid(account::blobService::images.id, deployerPrincipalId, storageBlobDataContributor)
  scope: account::blobService::images
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
  }
}

resource searchImagesReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(searchPrincipalId)) {
  name: guid(account::blobService::images.id, searchPrincipalId, storageBlobDataReader)
  scope: account::blobService::images
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReader)
    principalId: searchPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource searchCacheBlobContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(searchCachePrincipalId)) {
  name: guid(account.id, searchCachePrincipalId, storageBlobDataContributor)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
    principalId: searchCachePrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource searchCacheTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(searchCachePrincipalId)) {
  name: guid(account.id, searchCachePrincipalId, storageTableDataContributor)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributor)
    principalId: searchCachePrincipalId
    principalType: 'ServicePrincipal'
  }
}
