"""What the stand-in checks and answers: the official request schema, Voucherify's bodies."""

from __future__ import annotations

import functools
import hashlib
import json
from http import HTTPStatus
from importlib import resources
from typing import Any

try:  # optional: without it bodies are parsed but not schema-checked
    import jsonschema
except ImportError:  # pragma: no cover - exercised only without the test extra
    jsonschema = None

from voucherify_ingest.apierrors import API_ERRORS, error_object  # noqa: E402 - after the optional import

HUGE_BODY_BYTES = 5 * 1024 * 1024

# -- schema -----------------------------------------------------------------------------------


def _nullable_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0 ``nullable: true`` is not JSON Schema: turn it into an allowed ``null``."""
    if isinstance(node, list):
        return [_nullable_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable_to_jsonschema(v) for k, v in node.items()}
    if node.pop("nullable", False):
        if isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        else:
            node = {"anyOf": [{"type": "null"}, node]}
    return node


def _inline_refs(node: Any, schemas: dict, seen: tuple[str, ...] = ()) -> Any:
    """Replace local ``$ref``s by their targets: validation runs twice as fast without lookups."""
    if isinstance(node, list):
        return [_inline_refs(item, schemas, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
        name = ref.rsplit("/", 1)[1]
        if name in seen:
            raise ValueError(f"recursive schema {name} cannot be inlined")
        return _inline_refs(schemas[name], schemas, (*seen, name))  # OpenAPI 3.0: siblings ignored
    return {k: _inline_refs(v, schemas, seen) for k, v in node.items()}


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    """Compile the request-body validator once per process (None without jsonschema)."""
    if jsonschema is None:
        return None
    source = resources.files("voucherify_ingest") / "openapi" / "openapi_events.json"
    spec = json.loads(source.read_text(encoding="utf-8"))
    schemas = _nullable_to_jsonschema(spec["components"]["schemas"])
    schema = _inline_refs(schemas["EventsCreateRequestBody"], schemas)
    cls = jsonschema.Draft7Validator  # OpenAPI 3.0's schema dialect is closest to draft 4-7
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _inspect(raw: bytes) -> tuple[Any, bool, list[str], bool]:
    """Parse and check a body: (body, schema_valid, schema_errors, schema_checked)."""
    validator = _validator()
    try:
        body = json.loads(raw)
    except ValueError:
        text = raw.decode("utf-8", errors="replace")
        return text, False, ["body is not valid JSON"], validator is not None
    if validator is None:
        ok = isinstance(body, dict)
        return body, ok, [] if ok else ["body is not a JSON object"], False
    errors = sorted(
        f".{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)
    )
    return body, not errors, errors, True


# -- bodies -----------------------------------------------------------------------------------


def error_body(status: int, details: str | None = None) -> dict:
    """A Voucherify-format error object for ``status``; 429 carries only code and message, as
    the API sends it."""
    if status == 429:
        return {"code": 429, "message": API_ERRORS[429][1]}
    return error_object(status, details)


def success_body(request: Any) -> dict:
    """The ``EventsCreateResponseBody`` Voucherify would answer for ``request``."""
    request = request if isinstance(request, dict) else {}
    sent = request.get("customer") if isinstance(request.get("customer"), dict) else {}
    source_id = sent.get("source_id")
    cust_id = sent.get("id")
    if not isinstance(cust_id, str):  # a stable id per source_id, like a created customer's
        digest = hashlib.blake2b(str(source_id).encode(), digest_size=12).hexdigest()
        cust_id = "cust_" + digest
    customer = {"id": cust_id, "source_id": source_id}
    customer.update({k: sent[k] for k in ("name", "email", "metadata") if k in sent})
    customer["object"] = "customer"
    metadata = request.get("metadata")
    return {
        "object": "event",
        "type": request.get("event"),
        "customer": customer,
        "referral": None,
        "loyalty": None,
        "metadata": metadata if isinstance(metadata, dict) else {},
    }


def _html_page(status: int) -> bytes:
    title = f"{status} {_phrase(status)}"
    return f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>".encode()


@functools.lru_cache(maxsize=1)
def _huge_body() -> bytes:
    head = b'{"object":"event","type":"huge","metadata":{"padding":"'
    return head + b"x" * HUGE_BODY_BYTES + b'"}}'


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
