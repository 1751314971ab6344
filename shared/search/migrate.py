"""Turn a skillset built for the older AutoML Vision Classifier PowerSkill (a FastAPI container on App
Service, `POST <web app>/api/extraction` with an `Ocp-Apim-Subscription-Key` header) into one that calls this
function app (`python -m shared migrate-skillset FILE`, shared.cli.search).

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

import copy
import json
from collections.abc import Mapping
from typing import Any

from shared.search.templates import (
    DEFAULT_BATCH_SIZE,
    WEB_API_SKILL,
    EntraAuth,
    SearchSetupError,
    SkillAuth,
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
