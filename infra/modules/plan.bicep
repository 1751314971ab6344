// The hosting plan: Flex Consumption (FC1, Linux) by default, or Elastic Premium (EP1-EP3, Linux) for
// those who need always-warm instances or features Flex Consumption lacks in their region.

@description('Name of the plan.')
param name string

@description('Region of the plan.')
param location string

@description('Tags for the plan.')
param tags object = {}

@description('FlexConsumption (FC1) or ElasticPremium.')
@allowed([
  'FlexConsumption'
  'ElasticPremium'
])
param planType string = 'FlexConsumption'

@description('Elastic Premium size, used when planType is ElasticPremium.')
@allowed([
  'EP1'
  'EP2'
  'EP3'
])
param elasticPremiumSku string = 'EP1'

@description('Elastic Premium: most instances the plan bursts to (at most 100).')
@minValue(1)
@maxValue(100)
param maximumElasticWorkerCount int = 20

var skus = {
  FlexConsumption: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  ElasticPremium: {
    name: elasticPremiumSku
    tier: 'ElasticPremium'
  }
}

var kinds = {
  FlexConsumption: 'functionapp'
  ElasticPremium: 'elastic'
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: name
  location: location
  tags: tags
  kind: kinds[planType]
  sku: skus[planType]
  properties: {
    // Linux.
    reserved: true
    maximumElasticWorkerCount: planType == 'ElasticPremium' ? maximumElasticWorkerCount : null
  }
}

output id string = plan.id
output name string = plan.name
