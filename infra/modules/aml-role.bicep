// Reader for the app's identity on the labeling project's workspace: the least built-in role that covers
// RefreshModel's SDK v2 lookup, which only reads. Microsoft Learn, "Manage access to Azure Machine Learning
// workspaces" (how-to-assign-roles): Reader allows "read-only actions in the workspace ... list and view
// assets", i.e. every */read action the lookup uses: the workspace itself (MLClient.workspaces.get,
// workspaces/read), its experiments, runs and jobs through MLflow ("MLflow operations": experiments/* and
// jobs/*, read side) and the best child's artifacts (metadata/artifacts/read). AzureML Data Scientist, which
// the SDK v1 lookup was given, also lets the identity submit jobs and write assets; the refresh does neither.
// Deployed into the workspace's resource group (main.bicep sets the module's scope), which may be in another
// subscription.

@description('Name of the Azure ML workspace.')
param workspaceName string

@description('Principal id of the app\'s managed identity.')
param principalId string

var reader = 'acdd72a7-3385-48ef-bd42-f606fba81ae7'

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-04-01' existing = {
  name: workspaceName
}

resource workspaceReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, principalId, reader)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', reader)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
