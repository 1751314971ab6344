// The AutoML image classifier skill on Azure Functions (Flex Consumption): identity, storage (host,
// deployment package, model store, images), monitoring, the plan and the app. Deploy with `azd up`, or with
// the Azure CLI passing parameters inline (docs/deploy.md "With the Azure CLI"):
//   az deployment group create -g <group> -f infra/main.bicep -p environmentName=<name> principalId=<object-id>
// main.parameters.json is azd's: its ${...} substitutions reach the Azure CLI as literal strings, so do not
// pass it to `az deployment`. No secret is passed or stored: every connection uses the app's managed identity.
targetScope = 'resourceGroup'

@description('Name of the environment (azd: AZURE_ENV_NAME); resource names derive from it.')
@minLength(1)
@maxLength(64)
param environmentName string

@description('Region of every resource. Flex Consumption is offered in a subset of regions.')
param location string = resourceGroup().location

@description('Flex Consumption instance memory, MB. 4096 leaves room for two model versions during a swap plus decoding buffers.')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 4096

@description('Flex Consumption: most instances the app scales out to, 40 to 1000 (the platform\'s bounds). A cap, not a reservation: idle instances cost nothing.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Flex Consumption always-ready instances for the HTTP functions (the skill), at most maximumInstanceCount: kept warm and billed while idle, so an indexer run does not start cold. 0: scale to zero.')
@minValue(0)
@maxValue(1000)
param alwaysReadyInstances int = 0

@description('Flex Consumption: skill calls one instance handles at once. 1 (one batch uses every core): an indexer with degreeOfParallelism N then keeps N instances busy.')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 1

@description('Container of the model store.')
param modelsContainerName string = 'models'

@description('Container for the images to index.')
param imagesContainerName string = 'images'

@description('Object id of the deploying user (azd: AZURE_PRINCIPAL_ID); gets blob access to the models and images containers. Empty: none.')
param principalId string = ''

@description('Kind of principal principalId is (azd: AZURE_PRINCIPAL_TYPE, default User). ServicePrincipal when a pipeline deploys.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param principalType string = 'User'

@description('Principal id of the Azure AI Search service\'s system-assigned identity; gets Storage Blob Data Reader on the images container. Empty: none, or, with searchServiceName, that service\'s system-assigned identity.')
param searchServicePrincipalId string = ''

@description('Azure AI Search service whose index follows the model (docs/reindex.md): sets SEARCH_ENDPOINT, enables RefreshModel, and grants the roles re-enrichment needs. Empty: no re-enrichment.')
param searchServiceName string = ''

@description('Resource group of the search service; empty means this resource group.')
param searchServiceResourceGroup string = ''

@description('Azure ML workspace of the labeling project (RefreshModel). Empty: no automatic refresh; publish models by hand.')
param amlWorkspaceName string = ''

@description('Resource group of the workspace; empty means this resource group.')
param amlResourceGroup string = ''

@description('Subscription of the workspace; empty means this subscription.')
param amlSubscriptionId string = ''

@description('The labeling project\'s training experiment, like labeling_Training_<id>.')
param amlExperimentName string = ''

@description('Storage account of the labeling project\'s dataset (to-label copies images there). Empty: no role on it.')
param labelingStorageAccountName string = ''

@description('Resource group of that account; empty means this resource group.')
param labelingStorageResourceGroup string = ''

@description('The container of the labeling project\'s dataset in that account.')
param labelingContainerName string = ''

@description('RefreshModel\'s NCRONTAB schedule (six fields, with seconds).')
param modelRefreshSchedule string = '0 */30 * * * *'

@description('better: promote a new model only when its primary metric beats the current one; newest: always the newest run.')
@allowed([
  'better'
  'newest'
])
param modelPromotion string = 'better'

@description('App settings that replace the defaults below, name to value, e.g. {"SKILL_DEFAULT_TOP_K": "3"}.')
param appSettingOverrides object = {}

@description('Tags for every resource.')
param tags object = {}

var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName, location))
var allTags = union(tags, { 'azd-env-name': environmentName })
var deploymentContainerName = 'app-package-${resourceToken}'
var amlEnabled = !empty(amlWorkspaceName)
var amlSubscription = empty(amlSubscriptionId) ? subscription().subscriptionId : amlSubscriptionId
var amlGroup = empty(amlResourceGroup) ? resourceGroup().name : amlResourceGroup
var labelingEnabled = !empty(labelingStorageAccountName) && !empty(labelingContainerName)
var labelingGroup = empty(labelingStorageResourceGroup) ? resourceGroup().name : labelingStorageResourceGroup
var searchEnabled = !empty(searchServiceName)
var searchGroup = empty(searchServiceResourceGroup) ? resourceGroup().name : searchServiceResourceGroup
// The public cloud's search domain; elsewhere (Azure Government, Azure China) set SEARCH_ENDPOINT in
// appSettingOverrides.
var searchEndpoint = searchEnabled ? 'https://${searchServiceName}.search.windows.net' : ''
// Whether RefreshModel has anything to do: AML to poll, or an index to re-enrich (shared/refresh/policy.py:
// timer_has_work). Without either the timer is disabled, so that it does not wake a Flex instance every tick only
// to log that nothing is configured.
var refreshHasWork = amlEnabled || searchEnabled

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: {
    name: 'id-${resourceToken}'
    location: location
    tags: allTags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: allTags
    deploymentContainerName: deploymentContainerName
    modelsContainerName: modelsContainerName
    imagesContainerName: imagesContainerName
  }
}

// With a search service named: Search Service Contributor and Search Index Data Reader for the app on the service
// (reset and run the indexer, count stale documents), in the service's resource group.
module searchRoles 'modules/search-roles.bicep' = if (searchEnabled) {
  name: 'search-roles'
  scope: resourceGroup(searchGroup)
  params: {
    searchServiceName: searchServiceName
    appPrincipalId: identity.outputs.principalId
    deployerPrincipalId: principalId
    deployerPrincipalType: principalType
    searchIdentityPrincipalId: searchServicePrincipalId
  }
}

// The search service's identity: given, or that of the named service (read from it by search-roles.bicep).
var searchPrincipal = searchEnabled ? searchRoles!.outputs.searchIdentityPrincipalId : searchServicePrincipalId

module storageRoles 'modules/storage-roles.bicep' = {
  name: 'storage-roles'
  params: {
    storageAccountName: storage.outputs.name
    modelsContainerName: storage.outputs.modelsContainerName
    imagesContainerName: storage.outputs.imagesContainerName
    appPrincipalId: identity.outputs.principalId
    deployerPrincipalId: principalId
    deployerPrincipalType: principalType
    searchPrincipalId: searchPrincipal
    // The enrichment cache (REINDEX_MODE=skills) lives in this account: its roles come with a named service.
    searchCachePrincipalId: searchEnabled ? searchPrincipal : ''
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    location: location
    tags: allTags
    publisherPrincipalId: identity.outputs.principalId
  }
}

module amlRole 'modules/aml-role.bicep' = if (amlEnabled) {
  name: 'aml-role'
  scope: resourceGroup(amlSubscription, amlGroup)
  params: {
    workspaceName: amlWorkspaceName
    principalId: identity.outputs.principalId
  }
}

module labelingRole 'modules/labeling-role.bicep' = if (labelingEnabled) {
  name: 'labeling-role'
  scope: resourceGroup(labelingGroup)
  params: {
    storageAccountName: labelingStorageAccountName
    containerName: labelingContainerName
    principalId: identity.outputs.principalId
  }
}

module plan 'modules/plan.bicep' = {
  name: 'plan'
  params: {
    name: 'plan-${resourceToken}'
    location: location
    tags: allTags
  }
}

// Every setting the app reads (shared/core/settings.py, docs/settings.md), plus the host's. tests/infra/test_infra.py
// fails when the app reads a setting that is missing here.
var appSettings = {
  // Host storage through the managed identity: no connection string anywhere.
  AzureWebJobsStorage__accountName: storage.outputs.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.outputs.clientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.connectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.outputs.clientId};Authorization=AAD'

  // The model store, reached with the managed identity (AZURE_CLIENT_ID picks it).
  MODEL_BLOB_ACCOUNT_URL: 'https://${storage.outputs.name}.blob.${environment().suffixes.storage}'
  // A connection string is a secret: never used in Azure.
  MODEL_BLOB_CONNECTION_STRING: ''
  MODEL_BLOB_CONTAINER: storage.outputs.modelsContainerName
  AZURE_CLIENT_ID: identity.outputs.clientId
  // Empty: the system temp dir (the deployed package is read-only).
  MODEL_CACHE_DIR: ''
  MODEL_POLL_SECONDS: '60'

  // RefreshModel: the labeling project's workspace, reached with the managed identity.
  AML_SUBSCRIPTION_ID: amlEnabled ? amlSubscription : ''
  AML_RESOURCE_GROUP: amlEnabled ? amlGroup : ''
  AML_WORKSPACE_NAME: amlWorkspaceName
  AML_EXPERIMENT_NAME: amlExperimentName
  // A service principal instead of the managed identity needs all three; the secret is never written
  // here: set AZURE_CLIENT_SECRET to @Microsoft.KeyVault(SecretUri=...) in appSettingOverrides.
  AZURE_TENANT_ID: ''
  AZURE_CLIENT_SECRET: ''
  MODEL_PROMOTION: modelPromotion
  // The timer binding reads %MODEL_REFRESH_SCHEDULE%: the host does not start RefreshModel without it.
  MODEL_REFRESH_SCHEDULE: modelRefreshSchedule
  // Microsoft Learn, "How to disable functions in Azure Functions": AzureWebJobs.<FUNCTION_NAME>.Disabled.
  'AzureWebJobs.RefreshModel.Disabled': refreshHasWork ? 'false' : 'true'

  // Re-enrichment after a new model (docs/reindex.md): on (REINDEX_MODE full) when searchServiceName names the
  // search service, off without it. The names are search-setup's; others, and REINDEX_MODE=skills, go in
  // appSettingOverrides. The app calls the service with its identity (searchRoles grants the roles):
  // SEARCH_ADMIN_KEY stays empty, never a key in a template (at most a Key Vault reference in appSettingOverrides).
  SEARCH_ENDPOINT: searchEndpoint
  SEARCH_INDEXER_NAME: 'automl-images-indexer'
  SEARCH_SKILLSET_NAME: 'automl-images-skillset'
  SEARCH_SKILL_NAME: 'classify-images'
  SEARCH_INDEX_NAME: 'automl-images-index'
  SEARCH_ADMIN_KEY: ''
  REINDEX_MODE: ''
  REINDEX_DELAY_SECONDS: ''

  // Serving. AZUREML_MODEL_DIR is for a local folder instead of the store: unused in Azure.
  AZUREML_MODEL_DIR: ''
  ENGINE_THREADS: '0'
  DECODE_THREADS: '0'
  DECODE_MEMORY_MB: '0'
  FAST_JPEG_DECODE: 'true'
  SKILL_DEADLINE_SECONDS: '200'
  SKILL_MAX_REQUEST_BYTES: '104857600'
  SKILL_MAX_RECORDS: '1000'
  SKILL_MAX_IMAGE_BYTES: '33554432'
  SKILL_MAX_IMAGE_PIXELS: '50000000'
  SKILL_MIN_IMAGE_SIDE: '16'
  SKILL_DEFAULT_TOP_K: '5'
  // The dev server's key; in Azure the Functions host checks its own function keys.
  SKILL_API_KEY: ''
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    name: 'func-${resourceToken}'
    location: location
    tags: allTags
    planId: plan.outputs.id
    identityId: identity.outputs.id
    storageBlobEndpoint: storage.outputs.blobEndpoint
    deploymentContainerName: storage.outputs.deploymentContainerName
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    alwaysReadyInstances: alwaysReadyInstances
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    appSettings: union(appSettings, appSettingOverrides)
  }
  // The host reads its storage with the identity as soon as it starts.
  dependsOn: [
    storageRoles
  ]
}

output AZURE_LOCATION string = location
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output FUNCTION_URL string = functionApp.outputs.url
output STORAGE_ACCOUNT_NAME string = storage.outputs.name
output STORAGE_ACCOUNT_ID string = storage.outputs.id
output MODEL_BLOB_ACCOUNT_URL string = 'https://${storage.outputs.name}.blob.${environment().suffixes.storage}'
output MODEL_BLOB_CONTAINER string = storage.outputs.modelsContainerName
output IMAGES_CONTAINER string = storage.outputs.imagesContainerName
output APP_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
output SEARCH_ENDPOINT string = searchEndpoint
