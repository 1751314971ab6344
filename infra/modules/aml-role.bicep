// AzureML Data Scientist for the app's identity on the labeling project's workspace, so that RefreshModel
// can list the training runs and download the best child's model.onnx and labels.json. Deployed into the
// workspace's resource group (main.bicep sets the module's scope), which may be in another subscription.

@description('Name of the Azure ML workspace.')
param workspaceName string

@description('Principal id of the app\'s managed identity.')
param principalId string

var azureMLDataScientist = 'f6c7c914-8db3-469d-8ca1-694a8f32e121'

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-04-01' existing = {
  name: workspaceName
}

resource dataScientist 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, principalId, azureMLDataScientist)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', azureMLDataScientist)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
