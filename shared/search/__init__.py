"""Azure AI Search: the one client builder, the data source, index, skillset and indexer templates with their
element budget, creating or updating them, migrating the older PowerSkill's skillset, and re-enriching the
index when the current model version changes (with its record in the model store)."""
