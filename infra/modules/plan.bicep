// The hosting plan: Flex Consumption (FC1, Linux), shaped like Microsoft's Flex Consumption Bicep sample
// (Azure-Samples/azure-functions-flex-consumption-samples, IaC/bicep). Scale settings live on the app
// (functionAppConfig.scaleAndConcurrency), not on the plan.

@description('Name of the plan.')
param name string

@description('Region of the plan.')
param location string

@description('Tags for the plan.')
param tags object = {}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: name
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    // Linux.
    reserved: true
  }
}

output id string = plan.id
output name string = plan.name
