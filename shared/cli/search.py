"""`search-setup`, `migrate-skillset` and `reindex`: Azure AI Search from the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.cli.common import open_store, positive_int
from shared.core.settings import Settings

if TYPE_CHECKING:
    from shared.search.templates import ImageAnalysis, SkillAuth, Vectors


def cmd_search_setup(args: argparse.Namespace, settings: Settings) -> int:
    return main_search_setup(args)


def cmd_migrate_skillset(args: argparse.Namespace, settings: Settings) -> int:
    return main_migrate_skillset(args)


def cmd_reindex(args: argparse.Namespace, settings: Settings) -> int:
    """One re-enrichment pass (exit 0 whatever it decided), or `--status`; errors are one `error:` line."""
    from shared.search.reindex import ReindexError, SearchService, read_status, run_pass

    if not settings.search_endpoint:
        raise ReindexError("re-enrichment is off: set SEARCH_ENDPOINT to the search service's URL")
    store = open_store(settings)
    service = SearchService.from_settings(settings)
    if args.status:
        status = read_status(settings, store, service)
        record = status.recorded
        print(f"current version: {status.current or 'none (nothing is published)'}")
        if record is None:
            print("last re-enriched with: none yet (the next pass takes the current version as its baseline)")
        else:
            claim = f"; re-enriching with {record.pending} since {record.claimed}" if record.pending else ""
            print(f"last re-enriched with: {record.version} ({record.mode}, {record.recorded}){claim}")
            if record.embedded != record.version:
                print(f"not finished yet: the index's vectors, and the vectorizer, are still on {record.embedded}")
        print(f"indexer {settings.search_indexer_name}: {status.indexer.describe()}")
        if status.stale is not None:
            print(f"documents with an image classified by another version than {status.current}: {status.stale}")
        return 0
    if settings.reindex_mode == "off":
        raise ReindexError("re-enrichment is off (REINDEX_MODE=off): set REINDEX_MODE to full or skills")
    outcome = run_pass(settings, store, service, now=args.now, dry_run=args.dry_run)
    print(outcome.message)
    return 0


def _env_value(env: Mapping[str, str], name: str, what: str, hint: str) -> str:
    from shared.search.templates import SearchSetupError

    value = env.get(name, "").strip()
    if not value:
        raise SearchSetupError(f"environment variable {name} is not set: put {what} there, {hint}")
    return value


def _skill_auth(args: argparse.Namespace, env: Mapping[str, str]) -> SkillAuth:
    from shared.search.templates import DEFAULT_FUNCTION_KEY_ENV, EntraAuth, FunctionKeyAuth

    app_id: str | None = getattr(args, "auth_resource_id", None)
    source: str = getattr(args, "function_key_env", None) or DEFAULT_FUNCTION_KEY_ENV
    if app_id:
        return EntraAuth(app_id.strip(), key=env.get(source, "").strip() or None, source=source)
    key = _env_value(
        env,
        source,
        "ClassifySkill's function key",
        "for example with `az functionapp function keys list -g <group> -n <app> --function-name ClassifySkill`, "
        "or pass --auth-resource-id for Entra ID",
    )
    return FunctionKeyAuth(key=key, source=source)


def _image_analysis(args: argparse.Namespace, env: Mapping[str, str]) -> ImageAnalysis | None:
    from shared.search.templates import (
        DEFAULT_VISUAL_FEATURES,
        AIServicesIdentity,
        AIServicesKey,
        ImageAnalysis,
        SearchSetupError,
        ai_services_endpoint,
        visual_features,
    )

    endpoint: str | None = getattr(args, "ai_services_endpoint", None)
    key_env: str | None = getattr(args, "ai_services_key_env", None)
    if not getattr(args, "image_analysis", False):
        if endpoint or key_env or getattr(args, "visual_features", None):
            raise SearchSetupError(
                "--ai-services-endpoint, --ai-services-key-env and --visual-features only apply with --image-analysis"
            )
        return None
    features = visual_features(getattr(args, "visual_features", None) or ",".join(DEFAULT_VISUAL_FEATURES))
    if endpoint and key_env:
        raise SearchSetupError(
            "give either --ai-services-endpoint (keyless, with the search service's identity) or "
            "--ai-services-key-env (a key), not both"
        )
    billing: AIServicesIdentity | AIServicesKey
    if endpoint:
        billing = AIServicesIdentity(ai_services_endpoint(endpoint))
    elif key_env:
        key = _env_value(
            env,
            key_env,
            "a key of the AI Services resource (in the search service's region)",
            "for example with `az cognitiveservices account keys list -g <group> -n <resource> --query key1 -o tsv`, "
            "or use --ai-services-endpoint for keyless billing",
        )
        billing = AIServicesKey(key=key, source=key_env)
    else:
        raise SearchSetupError(
            "--image-analysis needs an AI Services resource to bill: --ai-services-endpoint "
            "https://<name>.cognitiveservices.azure.com (keyless, the search service's identity needs Cognitive "
            "Services User on it) or --ai-services-key-env NAME (a variable holding its key)"
        )
    return ImageAnalysis(billing=billing, features=features)


def _current_dimensions(env: Mapping[str, str]) -> int:
    """The embedding width of the model the skill serves: the store's current version (its manifest) when a
    store is configured, else AZUREML_MODEL_DIR's or the bundled sample's. SearchSetupError when it has none."""
    from shared.bundle.layout import SAMPLE_BUNDLE
    from shared.bundle.loader import load_bundle
    from shared.core.errors import AppError
    from shared.core.settings import Settings
    from shared.modelstore.blobstore import BlobModelStore
    from shared.modelstore.pointer import Pointer
    from shared.search.templates import SearchSetupError

    try:
        settings = Settings.from_env(env)
        store = BlobModelStore.from_settings(settings) if settings.uses_blob_store else None
        if store is not None:
            pointer = store.read_pointer()
            if not isinstance(pointer, Pointer):
                raise SearchSetupError(
                    f"no model is published in {store.description}: publish one first, or give --dimensions"
                )
            found = store.read_manifest(pointer.version)
            embedding = (found[0] if found else {}).get("embedding")
            where = f"model {pointer.version}"
            dims = embedding.get("dimensions") if isinstance(embedding, dict) else None
        else:
            folder = settings.model_dir or SAMPLE_BUNDLE
            bundle = load_bundle(folder)
            where = f"model {bundle.version}"
            dims = None
            if bundle.embedding is not None:
                dims = bundle.embedding.dimensions or _embedding_width(bundle.model_path, bundle.root)
    except SearchSetupError:
        raise
    except AppError as exc:
        raise SearchSetupError(f"cannot read the current model's embedding width ({exc}); give --dimensions") from None
    if not isinstance(dims, int):
        raise SearchSetupError(
            f"{where} has no embedding (only classification models whose head is a linear layer have one); give "
            "--dimensions for the model you will serve"
        )
    return dims


def _embedding_width(model_path: Path, root: Path) -> int | None:
    """The width of the final linear layer's input, from its weight; else from one run of the model."""
    from shared.bundle.embedding import find_embedding
    from shared.inference.factory import load_model

    site = find_embedding(model_path.read_bytes())
    if site is None:
        return None
    if site.dimensions is not None:
        return site.dimensions
    model = load_model(root, threads=1)
    view = getattr(model, "with_embedding", None)
    return int(view().embedding_dimensions) if view is not None else None


def _vectors(args: argparse.Namespace, env: Mapping[str, str], auth: SkillAuth) -> Vectors | None:
    from shared.search.templates import EntraAuth, SearchSetupError, Vectors

    dimensions: int | None = getattr(args, "dimensions", None)
    if not getattr(args, "vectors", False):
        if dimensions is not None or getattr(args, "vectorize_key_env", None):
            raise SearchSetupError("--dimensions and --vectorize-key-env only apply with --vectors")
        return None
    if getattr(args, "detection", False):
        raise SearchSetupError("--vectors needs a classification model: detection models have no embedding")
    source: str = getattr(args, "vectorize_key_env", None) or "VECTORIZE_FUNCTION_KEY"
    if isinstance(auth, EntraAuth):
        key = env.get(source, "").strip() or None
    else:
        key = _env_value(
            env,
            source,
            "VectorizeImage's function key",
            "for example with `az functionapp function keys list -g <group> -n <app> --function-name "
            "VectorizeImage`, or pass --auth-resource-id for Entra ID",
        )
    return Vectors(
        dimensions=dimensions or _current_dimensions(env),
        key=key,
        source=source,
        per_image=getattr(args, "vectors", None) == "per-image",
    )


def _search_credential(key_env: str | None, env: Mapping[str, str]) -> Any:
    """The credential for the search service (searchclient.credential(): the one place that makes it): the
    admin key in `key_env` (it must be set), else in SEARCH_ADMIN_KEY, else DefaultAzureCredential (with
    AZURE_CLIENT_ID as the user-assigned identity, as the app uses it)."""
    from shared.search import client as searchclient
    from shared.search.templates import DEFAULT_KEY_ENV

    if key_env:
        key = _env_value(
            env,
            key_env,
            "an admin key of the search service",
            "for example with `az search admin-key show -g <group> --service-name <service>`, or leave out "
            "--key-env to sign in with Entra ID",
        )
    else:
        key = env.get(DEFAULT_KEY_ENV, "").strip()
    return searchclient.credential(key or None, env.get("AZURE_CLIENT_ID", "").strip() or None)


def main_search_setup(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    """The `search-setup` command. `args` has search_endpoint, function_url, storage_resource_id (str),
    dry_run (bool) and optionally container, prefix, auth_resource_id, function_key_env, key_env,
    batch_size, degree_of_parallelism, image_analysis, visual_features, ai_services_endpoint,
    ai_services_key_env, per_page, enrichment_cache, cache_storage_resource_id. Prints the rendered JSON
    (--dry-run, keys redacted) or one line per object written; on failure one `error:` line on stderr and
    status 1. With --enrichment-cache the indexer gets the cache in the storage account
    --cache-storage-resource-id names (default: --storage-resource-id's); when that updated an indexer that
    already existed, one more line says it must be reset and run once to fill the cache (Learn: "Configure
    an enrichment cache", enable on existing indexers).

    The dry run checks every input the real run reads before it contacts the service (the function key,
    the AI Services key, a search key named with --key-env), so it fails where the real run would.
    """
    from shared.search.apply import apply
    from shared.search.templates import (
        DEFAULT_BATCH_SIZE,
        DEFAULT_CONTAINER,
        DEFAULT_DEGREE_OF_PARALLELISM,
        DEFAULT_PREFIX,
        DETECTION_BATCH_SIZE,
        DETECTION_DEGREE_OF_PARALLELISM,
        DETECTION_TEMPLATE_DIR,
        KEYFRAMES_CONTAINER,
        KEYFRAMES_PREFIX,
        SEGMENTATION_TEMPLATE_DIR,
        TEMPLATE_DIR,
        AIServicesKey,
        ResourceNames,
        SearchSetupError,
        redacted,
        render,
    )

    env = os.environ if env is None else env
    dry_run = bool(getattr(args, "dry_run", False))
    try:
        auth = _skill_auth(args, env)
        analysis = _image_analysis(args, env)
        vectors = _vectors(args, env, auth)
        segmentation = bool(getattr(args, "segmentation", False))
        if segmentation and getattr(args, "detection", False):
            raise SearchSetupError("--detection and --segmentation exclude each other: pick the model's task")
        # Segmentation answers are detection's plus polygons: the same batch sizes apply.
        detection = bool(getattr(args, "detection", False)) or segmentation
        cache_account: str | None = getattr(args, "cache_storage_resource_id", None)
        with_cache = bool(getattr(args, "enrichment_cache", False))
        if cache_account and not with_cache:
            raise SearchSetupError("--cache-storage-resource-id only applies with --enrichment-cache")
        keyframes = bool(getattr(args, "keyframes", False))
        rendered = render(
            args.search_endpoint,
            args.function_url,
            names=ResourceNames.from_prefix(
                getattr(args, "prefix", None) or (KEYFRAMES_PREFIX if keyframes else DEFAULT_PREFIX)
            ),
            auth=auth,
            storage_resource_id=args.storage_resource_id,
            container=getattr(args, "container", None) or (KEYFRAMES_CONTAINER if keyframes else DEFAULT_CONTAINER),
            batch_size=getattr(args, "batch_size", None) or (DETECTION_BATCH_SIZE if detection else DEFAULT_BATCH_SIZE),
            degree_of_parallelism=getattr(args, "degree_of_parallelism", None)
            or (DETECTION_DEGREE_OF_PARALLELISM if detection else DEFAULT_DEGREE_OF_PARALLELISM),
            image_analysis=analysis,
            per_page=bool(getattr(args, "per_page", False)),
            enrichment_cache=(cache_account or args.storage_resource_id) if with_cache else None,
            vectors=vectors,
            template_dir=SEGMENTATION_TEMPLATE_DIR
            if segmentation
            else DETECTION_TEMPLATE_DIR
            if detection
            else TEMPLATE_DIR,
            keyframes=keyframes,
        )
        key_env: str | None = getattr(args, "key_env", None)
        if dry_run:
            if key_env:
                _search_credential(key_env, env)  # the same error as the real run; the key is not used
            ai_key_source = (
                analysis.billing.source if analysis and isinstance(analysis.billing, AIServicesKey) else None
            )
            vector_source = vectors.source if vectors is not None else "VECTORIZE_FUNCTION_KEY"
            shown = redacted(rendered, auth.source, ai_key_source, vector_source)
            sys.stdout.write(json.dumps(shown, indent=2) + "\n")
            return 0
        credential = _search_credential(key_env, env)
        for line in apply(rendered, args.search_endpoint, credential):
            sys.stdout.write(line + "\n")
            if with_cache and line == f"indexer {rendered['indexer']['name']}: updated":
                sys.stdout.write(
                    f"indexer {rendered['indexer']['name']}: the enrichment cache fills only on a full run: reset "
                    "the indexer and run it once (Azure portal: Reset, then Run)\n"
                )
    except SearchSetupError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0


def _read(path: str) -> str:
    """The skillset file's text, in whichever encoding JSON allows (RFC 8259 section 8.1): UTF-8 with or without
    a byte order mark (Notepad writes one), UTF-16 (PowerShell 5's `>` and `Out-File`) or UTF-32, as
    `json.detect_encoding` tells them apart by the first bytes, the way the skill's own body parse does."""
    from shared.search.migrate import MigrateError

    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise MigrateError(f"cannot read {path} ({exc.strerror or exc.__class__.__name__})") from None
    encoding = json.detect_encoding(data)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        raise MigrateError(
            f"{path} is not a text file in UTF-8, UTF-16 or UTF-32 (expected a skillset's JSON)"
        ) from None


def _billing_key(migrated: dict[str, Any], key_env: str | None, env: Mapping[str, str], where: str) -> str | None:
    """Put the AI Services key from `key_env` into a by-key `cognitiveServices` (a portal export may hold
    none); returns the variable's name when it did. MigrateError when writing would drop the billing key."""
    from shared.search.migrate import MigrateError

    billing = migrated.get("cognitiveServices")
    by_key = isinstance(billing, dict) and "key" in billing
    if key_env:
        if not by_key:
            raise MigrateError(f"{where} bills no AI Services resource by key: leave out --ai-services-key-env")
        assert isinstance(billing, dict)
        billing["key"] = _env_value(
            env,
            key_env,
            "the key of the AI Services resource the skillset bills",
            "for example with `az cognitiveservices account keys list -g <group> -n <resource> --query key1 -o tsv`",
        )
        return key_env
    if by_key and isinstance(billing, dict) and not (isinstance(billing["key"], str) and billing["key"].strip()):
        raise MigrateError(
            f"{where} has no AI Services key in cognitiveServices (an export can leave it out) and writing it would "
            "stop the billing: pass --ai-services-key-env NAME with the key in that variable"
        )
    return None


def main_migrate_skillset(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    """The `migrate-skillset` command. `args` has file, function_url and optionally function_key_env,
    auth_resource_id, name, ai_services_key_env, search_endpoint, key_env. Prints the migrated skillset
    (keys redacted), or with --search-endpoint writes it to the service with searchsetup.apply()
    (azure-search-documents' create_or_update_skillset on the SDK's API version, or the preview version for
    a keylessly billed skillset) and prints one line; on failure one `error:` line on stderr and status 1.
    """
    from shared.search.apply import apply
    from shared.search.migrate import MigrateError, load_skillset, migrate_skillset
    from shared.search.templates import SearchSetupError, redacted

    env = os.environ if env is None else env
    where = "stdin" if args.file == "-" else args.file
    try:
        auth = _skill_auth(args, env)
        migrated = migrate_skillset(load_skillset(_read(args.file), where), args.function_url, auth, where)
        name: str | None = getattr(args, "name", None)
        if name:
            migrated["name"] = name
        endpoint: str | None = getattr(args, "search_endpoint", None)
        if not endpoint:
            # The preview checks what the write checks, so it fails where the write would.
            billing_source = _billing_key(migrated, getattr(args, "ai_services_key_env", None), env, where)
            shown = redacted({"skillset": migrated}, auth.source, billing_source or f"as in {where}")["skillset"]
            sys.stdout.write(json.dumps(shown, indent=2) + "\n")
            return 0
        if not isinstance(migrated.get("name"), str) or not migrated["name"]:
            raise MigrateError(
                f'{where} has no "name" (the notebook put it in the URL): pass --name with the skillset\'s name'
            )
        _billing_key(migrated, getattr(args, "ai_services_key_env", None), env, where)
        credential = _search_credential(getattr(args, "key_env", None), env)
        for line in apply({"skillset": migrated}, endpoint, credential):
            sys.stdout.write(line + "\n")
    except SearchSetupError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0


def register(commands: Any) -> None:
    """Add this module's subcommands to the parser's `commands` (argparse's subparsers)."""
    search = commands.add_parser(
        "search-setup", help="create or update the Azure AI Search data source, index, skillset and indexer"
    )
    search.add_argument("--search-endpoint", required=True, metavar="URL", help="https://<service>.search.windows.net")
    search.add_argument(
        "--function-url", required=True, metavar="URL", help="the function app, https://<app>.azurewebsites.net"
    )
    search.add_argument(
        "--storage-resource-id", required=True, metavar="ID", help="resource id of the storage account with the images"
    )
    search.add_argument(
        "--container", metavar="NAME", help="container with the images (images; keyframes with --keyframes)"
    )
    search.add_argument(
        "--prefix",
        metavar="NAME",
        help="names <prefix>-datasource, -index, ... (automl-images; automl-keyframes with --keyframes)",
    )
    search.add_argument(
        "--keyframes",
        action="store_true",
        help="for video keyframes (python -m shared keyframes): index sourceVideo and timestampMs from their metadata",
    )
    search.add_argument(
        "--auth-resource-id",
        metavar="APP_ID",
        help="Entra ID: the function app's app registration; the skill gets authResourceId APP_ID/.default",
    )
    search.add_argument(
        "--function-key-env",
        default="SKILL_FUNCTION_KEY",
        metavar="NAME",
        help="environment variable holding ClassifySkill's function key (SKILL_FUNCTION_KEY)",
    )
    search.add_argument(
        "--key-env", metavar="NAME", help="environment variable holding a search admin key (default: Entra ID sign-in)"
    )
    search.add_argument(
        "--detection",
        action="store_true",
        help="for an object detection model: index objects and objectLabels (infra/search/detection/)",
    )
    search.add_argument(
        "--segmentation",
        action="store_true",
        help="for an instance segmentation model: --detection's index plus each object's polygons "
        "(infra/search/segmentation/)",
    )
    search.add_argument(
        "--batch-size", type=positive_int, metavar="N", help="images per skill call (8; 4 with --detection)"
    )
    search.add_argument(
        "--degree-of-parallelism",
        type=positive_int,
        metavar="N",
        help="skill calls in flight (4; 2 with --detection)",
    )
    search.add_argument(
        "--image-analysis",
        action="store_true",
        help="also run the built-in ImageAnalysisSkill (tags, captions) and index its outputs",
    )
    search.add_argument(
        "--visual-features",
        metavar="LIST",
        help="with --image-analysis: comma-separated, from adult, brands, categories, description, objects, tags "
        "(tags,description)",
    )
    search.add_argument(
        "--ai-services-endpoint",
        metavar="URL",
        help="with --image-analysis: bill this AI Services resource keylessly with the search service's identity",
    )
    search.add_argument(
        "--ai-services-key-env",
        metavar="NAME",
        help="with --image-analysis: environment variable holding a key of the AI Services resource to bill",
    )
    search.add_argument(
        "--per-page",
        action="store_true",
        help="render each PDF page as one image (imageAction generateNormalizedImagePerPage)",
    )
    search.add_argument(
        "--enrichment-cache",
        action="store_true",
        help="give the indexer an enrichment cache (preview API) so REINDEX_MODE=skills can re-run only the skill",
    )
    search.add_argument(
        "--cache-storage-resource-id",
        metavar="ID",
        help="with --enrichment-cache: resource id of the storage account for the cache (default: "
        "--storage-resource-id)",
    )
    search.add_argument(
        "--vectors",
        nargs="?",
        const="document",
        choices=("document", "per-image"),
        help="the imageEmbedding vector field (HNSW, cosine) with /api/vectorize as its vectorizer: on the document "
        "(one image per document, the default) or per-image (a second index, one search document per image)",
    )
    search.add_argument(
        "--dimensions", type=int, metavar="N", help="with --vectors: the embedding width (default: the current model's)"
    )
    search.add_argument(
        "--vectorize-key-env",
        metavar="NAME",
        help="with --vectors: variable holding VectorizeImage's function key (VECTORIZE_FUNCTION_KEY)",
    )
    search.add_argument("--dry-run", action="store_true", help="print the rendered JSON (key redacted), change nothing")
    search.set_defaults(handler=cmd_search_setup)

    migrate = commands.add_parser(
        "migrate-skillset",
        help="rewrite the older PowerSkill's skillset JSON to call this function app (prints the new JSON)",
    )
    migrate.add_argument("file", metavar="FILE", help="the skillset JSON (notebook or portal export); - for stdin")
    migrate.add_argument(
        "--function-url", required=True, metavar="URL", help="the function app, https://<app>.azurewebsites.net"
    )
    migrate.add_argument(
        "--function-key-env",
        default="SKILL_FUNCTION_KEY",
        metavar="NAME",
        help="environment variable holding the function key, sent as x-functions-key (SKILL_FUNCTION_KEY)",
    )
    migrate.add_argument(
        "--auth-resource-id",
        metavar="APP_ID",
        help="Entra ID: the function app's app registration; the skill gets authResourceId APP_ID/.default",
    )
    migrate.add_argument("--name", metavar="NAME", help="the skillset's name, when the file has none (the notebook's)")
    migrate.add_argument(
        "--ai-services-key-env",
        metavar="NAME",
        help="environment variable holding the AI Services key the skillset bills (when the file has none)",
    )
    migrate.add_argument(
        "--search-endpoint",
        metavar="URL",
        help="write the migrated skillset to this search service (create or update) instead of printing it",
    )
    migrate.add_argument(
        "--key-env", metavar="NAME", help="environment variable holding a search admin key (default: Entra ID sign-in)"
    )
    migrate.set_defaults(handler=cmd_migrate_skillset)

    reindex = commands.add_parser(
        "reindex", help="re-enrich the search index with the current model version, once (as RefreshModel does)"
    )
    reindex.add_argument("--now", action="store_true", help="ignore REINDEX_DELAY_SECONDS")
    reindex.add_argument("--dry-run", action="store_true", help="say what it would do; only GET requests")
    reindex.add_argument(
        "--status",
        action="store_true",
        help="print the current version, the version last re-enriched, the indexer's state and the stale documents",
    )
    reindex.set_defaults(handler=cmd_reindex)
