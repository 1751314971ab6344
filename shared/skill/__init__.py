"""The Azure AI Search custom Web API skill: the request and response contract, the fast parse of its JSON
body, and the process's service that the function entry points, the dev server and the CLI share."""
