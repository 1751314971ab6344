# The skill as a container, for Azure Container Apps or App Service (Web App for Containers), on the
# official Azure Functions Python image. Not needed for Flex Consumption (infra/main.bicep), which builds
# from requirements.txt itself.
#
#   docker build -t automl-image-skill .
#   docker run -p 8080:80 -e AzureWebJobsStorage=... -e MODEL_BLOB_ACCOUNT_URL=... automl-image-skill
#
# Only the lean runtime is installed (requirements.txt: ONNX Runtime, Pillow, NumPy, the Azure SDKs; no
# torch). The files are copied one by one, so the build context's .venv/ and node_modules/ are never sent
# (BuildKit transfers only what COPY names).
FROM mcr.microsoft.com/azure-functions/python:4-python3.11

ENV AzureWebJobsScriptRoot=/home/site/wwwroot \
    AzureFunctionsJobHost__Logging__Console__IsEnabled=true \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY requirements.txt /requirements.txt
RUN pip install --no-cache-dir -r /requirements.txt

COPY host.json /home/site/wwwroot/host.json
COPY ClassifySkill/ /home/site/wwwroot/ClassifySkill/
COPY ExtractionSkill/ /home/site/wwwroot/ExtractionSkill/
COPY Health/ /home/site/wwwroot/Health/
COPY RefreshModel/ /home/site/wwwroot/RefreshModel/
COPY VectorizeImage/ /home/site/wwwroot/VectorizeImage/
COPY shared/ /home/site/wwwroot/shared/
COPY model_cache/sample/ /home/site/wwwroot/model_cache/sample/
