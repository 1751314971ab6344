// The AutoML image classifier skill on Azure Functions: identity, storage (host, deployment package,
// model store, images), monitoring, the plan and the app. Deploy with `azd up`, or
// `az deployment group create -g <group> -f infra/main.bicep -p infra/main.parameters.json` and a zip
// deploy (README "Deploy to Azure"). No secret is passed or stored: every connection uses the app's
// managed identity.
targetScope = 'resourceGroup'

@description('Name of the environment (azd: AZURE_ENV_NAME); resource names derive from it.')
@minLength(1)
@maxLength(64)
param environmentName string

@description('Region of every resource. Flex Consumption is offered in a subset of regions.')
param location string = resourceGroup().location

@description('Hosting plan: FlexConsumption (FC1) or ElasticPremium.')
@allowed([
  'FlexConsumption'
  'ElasticPremium'
])
param planType string = 'FlexConsumption'

@description('Flex Consumption instance memory, MB. 4096 leaves room for two model versions during a swap plus decoding buffers.')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 4096

@description('Most instances the app scales out to. The indexer sends degreeOfParallelism calls at once, so more instances than that gain nothing for one indexer.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Flex Consumption: skill calls one instance handles at once. 1 (one batch uses every core): an indexer with degreeOfParallelism N then keeps N instances busy.')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 1

@description('Elastic Premium size, used when planType is ElasticPremium.')
@allowed([
  'EP1'
  'EP2'
  'EP3'
])
param elasticPremiumSku string = 'EP1'

@description('Container of the model store.')
param modelsContainerName string = 'models'

@description('Container for the images to index.')
param imagesContainerName string = 'images'

@description('Object id of the deploying user (azd: AZURE_PRINCIPAL_ID); gets blob access to the models and images containers. Empty: none.')
param principalId string = ''

@description('Kind of principal principalId is.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param principalType string = 'User'

@description('Principal id of the Azure AI Search service\'s system-assigned identity; gets Storage Blob Data Reader on the images container. Empty: none.')
param searchServicePrincipalId string = ''

@description('Azure ML workspace of the labeling project (RefreshModel). Empty: no automatic refresh; publish models by hand.')
param amlWorkspaceName string = ''

@description('Resource group of the workspace; empty means this resource group.')
param amlResourceGroup string = ''

@description('Subscription of the workspace; empty means this subscription.')
param amlSubscriptionId string = ''

@description('The labeling project\'s training experiment, like labeling_Training_<id>.')
param amlExperimentName string = ''

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

module storageRoles 'modules/storage-roles.bicep' = {
  name: 'storage-roles'
  params: {
    storageAccountName: storage.outputs.name
    modelsContainerName: storage.outputs.modelsContainerName
    imagesContainerName: storage.outputs.imagesContainerName
    appPrincipalId: identity.outputs.principalId
    deployerPrincipalId: principalId
    deployerPrincipalType: principalType
    searchPrincipalId: searchServicePrincipalId
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

module plan 'modules/plan.bicep' = {
  name: 'plan'
  params: {
    name: 'plan-${resourceToken}'
    location: location
    tags: allTags
    planType: planType
    elasticPremiumSku: elasticPremiumSku
    maximumElasticWorkerCount: min(maximumInstanceCount, 100)
  }
}

// Every setting the app reads (shared/settings.py, README "Settings"), plus the host's. tests/test_infra.py
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
    planType: planType
    identityId: identity.outputs.id
    storageBlobEndpoint: storage.outputs.blobEndpoint
    deploymentContainerName: storage.outputs.deploymentContainerName
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
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
