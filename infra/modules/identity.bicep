// The app's user-assigned managed identity. User-assigned rather than system-assigned so that the role
// assignments and the AzureWebJobsStorage__clientId / AZURE_CLIENT_ID settings can name it before the
// function app exists, and so that it survives re-creating the app.

@description('Name of the identity.')
param name string

@description('Region of the identity.')
param location string

@description('Tags for the identity.')
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
