"""`python -m shared migrate-skillset FILE`: turn a skillset built for the older AutoML Vision Classifier
PowerSkill (a FastAPI container on App Service, `POST <web app>/api/extraction` with an
`Ocp-Apim-Subscription-Key` header) into one that calls this function app.

Only the PowerSkill's Web API skill changes: its `uri` becomes `<function app>/api/classify`, the
`Ocp-Apim-Subscription-Key` header becomes `x-functions-key` (or, with --auth-resource-id, Entra ID's
`authResourceId`), `timeout` becomes PT230S and a `batchSize` outside 4-16 becomes 8. Its context, its input
`images` and its output `amllabel` stay, because the function accepts `images` and answers `amllabel`, so
the indexer's output field mapping to the index's `amllabel` field keeps working. Every other skill, the
billing (`cognitiveServices`), knowledge store and projections are left exactly as they were.

Why /api/classify and not /api/extraction (which answers the same): a function key belongs to one function,
and search-setup, the docs and `az functionapp function keys list --function-name ClassifySkill` all hand
out ClassifySkill's key; pointing both skillsets at one function keeps one key to rotate.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.searchsetup import (
    DEFAULT_BATCH_SIZE,
    WEB_API_SKILL,
    EntraAuth,
    SearchSetupError,
    SkillAuth,
    _env_value,
    _search_credential,
    _skill_auth,
    apply,
    redacted,
    skill_uri,
)

POWERSKILL_ROUTE = "/api/extraction"
POWERSKILL_OUTPUT = "amllabel"
OLD_KEY_HEADER = "ocp-apim-subscription-key"
FUNCTION_KEY_HEADER = "x-functions-key"
RECOMMENDED_TIMEOUT = "PT230S"
# docs/search.md: 4-16 images per call; search-setup's default is DEFAULT_BATCH_SIZE.
RECOMMENDED_BATCH_SIZES = range(4, 17)
# Read-only properties a portal export or a GET carries; not part of the skillset a PUT takes.
_RESPONSE_ONLY = ("@odata.context",)


class MigrateError(SearchSetupError):
    """migrate-skillset cannot go on; the message is one line, safe to show (never a key)."""


def is_powerskill(skill: Any) -> bool:
    """The PowerSkill's skill: a Web API skill calling `.../api/extraction` or answering `amllabel`."""
    if not isinstance(skill, dict) or skill.get("@odata.type") != WEB_API_SKILL:
        return False
    uri = str(skill.get("uri") or "").split("?", 1)[0].rstrip("/")
    outputs = skill.get("outputs")
    outputs = outputs if isinstance(outputs, list) else []
    answers_amllabel = any(isinstance(o, dict) and o.get("name") == POWERSKILL_OUTPUT for o in outputs)
    return uri.lower().endswith(POWERSKILL_ROUTE) or answers_amllabel


def load_skillset(text: str, where: str) -> dict[str, Any]:
    """The skillset object from JSON text; MigrateError (naming `where`) if it is not one."""
    try:
        loaded = json.loads(text)
    except ValueError as exc:
        raise MigrateError(f"{where} is not JSON ({exc})") from None
    if not isinstance(loaded, dict) or not isinstance(loaded.get("skills"), list):
        raise MigrateError(f'{where} is not a skillset: expected a JSON object with a "skills" list')
    return loaded


def migrate_skillset(
    skillset: Mapping[str, Any], function_url: str, auth: SkillAuth, where: str = "the skillset"
) -> dict[str, Any]:
    """A copy of `skillset` whose PowerSkill skill(s) call this function app with `auth` (the real key:
    use searchsetup.redacted() before showing it). Raises MigrateError when there is no such skill, and
    SearchSetupError for a bad function URL."""
    uri = skill_uri(function_url)
    migrated = {k: v for k, v in copy.deepcopy(dict(skillset)).items() if k not in _RESPONSE_ONLY}
    skills = [s for s in migrated["skills"] if is_powerskill(s)]
    if not skills:
        raise MigrateError(
            f"{where} has no skill of the AutoML Vision Classifier PowerSkill: expected a {WEB_API_SKILL} whose "
            f"uri ends in {POWERSKILL_ROUTE} or that outputs {POWERSKILL_OUTPUT}"
        )
    for skill in skills:
        skill["uri"] = uri
        headers = skill.get("httpHeaders") if isinstance(skill.get("httpHeaders"), dict) else {}
        kept = {k: v for k, v in headers.items() if k.lower() not in (OLD_KEY_HEADER, FUNCTION_KEY_HEADER)}
        if auth.key is not None:
            kept[FUNCTION_KEY_HEADER] = auth.key
        if kept:
            skill["httpHeaders"] = kept
        else:
            skill.pop("httpHeaders", None)
        if isinstance(auth, EntraAuth):
            skill["authResourceId"] = auth.resource_id
        skill.setdefault("httpMethod", "POST")
        skill["timeout"] = RECOMMENDED_TIMEOUT
        if skill.get("batchSize") not in RECOMMENDED_BATCH_SIZES:
            skill["batchSize"] = DEFAULT_BATCH_SIZE
    return migrated


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise MigrateError(f"cannot read {path} ({exc.strerror or exc.__class__.__name__})") from None
    except UnicodeDecodeError:
        raise MigrateError(f"{path} is not a text file (expected a skillset's JSON)") from None


def _billing_key(migrated: dict[str, Any], key_env: str | None, env: Mapping[str, str], where: str) -> str | None:
    """Put the AI Services key from `key_env` into a by-key `cognitiveServices` (a portal export may hold
    none); returns the variable's name when it did. MigrateError when writing would drop the billing key."""
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
            billing_source = None
            if getattr(args, "ai_services_key_env", None):
                billing_source = _billing_key(migrated, args.ai_services_key_env, env, where)
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
