"""All the logic of the Azure Functions app; the function folders are thin adapters over it.

Packages by concern, each importing only the ones below it (docs/architecture.md; the contracts are in
pyproject.toml and tests/test_architecture.py):

    cli                         the command line and the dev server
    skill | refresh | search    the Web API skill, RefreshModel's policy, Azure AI Search
    modelstore | inference      the Blob model store and the holder; models and the batch scheduler
    bundle                      AutoML's files on disk
    core                        errors, settings, limits
"""

__version__ = "0.1.0"
