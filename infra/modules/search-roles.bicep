// Roles on the Azure AI Search service whose index follows the model (docs/reindex.md). Deployed into the
// search service's resource group (main.bicep sets the module's scope), as Microsoft's sample
// Azure-Samples/azure-search-openai-demo scopes its search role assignments to the group named by its
// `searchServiceResourceGroupName` parameter.
//
// - The app's identity: Search Service Contributor, so that RefreshModel (and `reindex` run as the app) may reset
//   and run the indexer and reset the classify skill: "Create, edit and run indexers/data sources/skillsets"
//   is Search Service Contributor's, not Search Index Data Contributor's (Microsoft Learn, "Connect to Azure
//   AI Search using roles", summary table). Search Index Data Reader, for `reindex --status`'s `$count` query:
//   reading an index's documents (Microsoft.Search/searchServices/indexes/documents/read) is a data action that
//   only the Search Index Data roles hold; Search Service Contributor has none (Azure built-in roles).
// - The deploying user (optional): Search Index Data Reader, so that `reindex --status` run from their machine
//   may count documents. Running `reindex` or `search-setup` by hand needs Search Service Contributor, which an
//   Owner or Contributor of the service already has on the data plane (same article); not granted here.
//
// Role-based access must be allowed by the service's API access control ("Role-based access control" or
// "Both"); this module only references the service and cannot change that.

@description('Name of the Azure AI Search service.')
param searchServiceName string

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

@description('Principal id of the identity the search service connects to storage with; empty: its system-assigned identity.')
param searchIdentityPrincipalId string = ''

// Azure built-in roles (Microsoft Learn, "Azure built-in roles"; role definition ids).
var searchServiceContributor = '7ca78c08-252a-4471-8644-bb5ff32d4ba0'
var searchIndexDataReader = '1407120a-92aa-4202-b7e9-c0e197c71c8f'

resource searchService 'Microsoft.Search/searchServices@2025-05-01' existing = {
  name: searchServiceName
}

resource appServiceContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(searchService.id, appPrincipalId, searchServiceContributor)
  scope: searchService
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', searchServiceContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appIndexDataReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(searchService.id, appPrincipalId, searchIndexDataReader)
  scope: searchService
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', searchIndexDataReader)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource deployerIndexDataReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerPrincipalId)) {
  name: guid(searchService.id, deployerPrincipalId, searchIndexDataReader)
  scope: searchService
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', searchIndexDataReader)
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
  }
}

// The identity the data source (`ResourceId=...;`) and the enrichment cache connect with: the service's
// system-assigned identity unless one is named. ARM evaluates only the branch taken, so a service without a
// system-assigned identity deploys when searchIdentityPrincipalId is given, and fails here (property
// 'principalId' does not exist) when it is not: turn the identity on (docs/deploy.md, "Re-enrichment").
output searchIdentityPrincipalId string = empty(searchIdentityPrincipalId) ? searchService.identity!.principalId : searchIdentityPrincipalId
