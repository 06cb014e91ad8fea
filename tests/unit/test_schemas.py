"""Unit tests for ``voucherify_ingest.events.schemas``: the payload rules, faithfulness to
Voucherify's OpenAPI
spec (shipped in ``voucherify_ingest/openapi/openapi_events.json``), and a property test that
garbage in
gives a dict or ``InvalidEvent``, never anything else."""

from __future__ import annotations

import copy
import json
import math
from functools import lru_cache
from importlib.resources import files
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import fields, validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from voucherify_ingest.errors import InvalidEvent
from voucherify_ingest.events import validate_event
from voucherify_ingest.events.schemas import (
    CAMEL_CASE_ALIASES,
    EVENT_MAX_LENGTH,
    METADATA_MAX_DEPTH,
    DateString,
    EventSchema,
    JSONObject,
    Object,
    StrictString,
)

FULL: dict[str, Any] = {
    "event": "order_paid",
    "customer": {
        "id": "cust_Vzck5i8U3OhcEUFY6MKhN9Rv",
        "source_id": "user-42",
        "name": "Ada Lovelace",
        "description": "VIP",
        "email": "ada@example.com",
        "phone": "+44 20 7946 0958",
        "birthday": "1815-12-10",
        "birthdate": "1815-12-10",
        "address": {
            "city": "London",
            "state": "LDN",
            "line_1": "12 St James's Sq",
            "line_2": "Flat 3",
            "country": "GB",
            "postal_code": "SW1Y 4JH",
        },
        "metadata": {"tier": "gold", "visits": 12, "score": 4.5, "tags": ["a"], "opt_in": True},
    },
    "referral": {"code": "REF-123", "referrer_id": "cust_abc"},
    "loyalty": {"code": "L-CARD-BUHuH6g"},
    "metadata": {"order_id": "o-1", "amount": 1999, "items": [{"sku": "x", "qty": 2}]},
}

# The TypeScript SDK's example (EventsApi.md, trackCustomEvent), in its camelCase shape.
TS_EXAMPLE: dict[str, Any] = {
    "event": "event_example",
    "customer": {
        "id": "id_example",
        "sourceId": "sourceId_example",
        "name": "name_example",
        "description": "description_example",
        "email": "email_example",
        "phone": "phone_example",
        "birthday": "1970-01-01",
        "birthdate": "1970-01-01",
        "address": {
            "city": "city_example",
            "state": "state_example",
            "line1": "line1_example",
            "line2": "line2_example",
            "country": "country_example",
            "postalCode": "postalCode_example",
        },
        "metadata": {},
    },
    "referral": {"code": "code_example", "referrerId": "cust_Vzck5i8U3OhcEUFY6MKhN9Rv"},
    "loyalty": {"code": "L-CARD-BUHuH6g"},
    "metadata": {},
}

NOT_A_STRING = ["Not a valid string."]


def minimal(**extra: Any) -> dict[str, Any]:
    return {"event": "signed_up", "customer": {"source_id": "user-1"}, **extra}


def errors_of(payload: Any) -> Any:
    with pytest.raises(InvalidEvent) as info:
        validate_event(payload)
    return info.value.messages


def nested(depth: int) -> dict[str, Any]:
    """A metadata object ``depth`` levels deep (the object itself is level 1), built without
    recursion."""
    root: dict[str, Any] = {}
    node = root
    for _ in range(depth - 1):
        node["k"] = {}
        node = node["k"]
    return root


# --- required fields, lengths, identity ------------------------------------------------------


def test_minimal_payload_round_trips_unchanged():
    payload = minimal()
    assert validate_event(payload) == payload


def test_full_payload_round_trips_unchanged():
    assert validate_event(FULL) == FULL


@pytest.mark.parametrize("missing", ["event", "customer"])
def test_required_fields(missing):
    payload = minimal()
    del payload[missing]
    assert errors_of(payload) == {missing: ["Missing data for required field."]}


def test_empty_payload_names_both_required_fields():
    assert errors_of({}) == {
        "event": ["Missing data for required field."],
        "customer": ["Missing data for required field."],
    }


@pytest.mark.parametrize("length", [1, 2, EVENT_MAX_LENGTH])
def test_event_length_accepted(length):
    assert validate_event(minimal(event="e" * length))["event"] == "e" * length


def test_event_length_counts_characters_not_bytes():
    event = "é" * EVENT_MAX_LENGTH  # 600 bytes in UTF-8, 300 characters
    assert validate_event(minimal(event=event))["event"] == event


@pytest.mark.parametrize("event", ["", "e" * (EVENT_MAX_LENGTH + 1), "e" * 1_000_000])
def test_event_length_refused(event):
    assert errors_of(minimal(event=event)) == {"event": ["Length must be between 1 and 300."]}


@pytest.mark.parametrize(
    "customer",
    [
        {},
        {"name": "Ada"},
        {"id": ""},
        {"source_id": ""},
        {"id": "", "source_id": ""},
    ],
)
def test_customer_must_carry_id_or_source_id(customer):
    assert errors_of(minimal(customer=customer)) == {
        "customer": ["must carry a non-empty id or source_id"]
    }


@pytest.mark.parametrize(
    "customer",
    [
        {"id": "cust_1"},
        {"source_id": "user-1"},
        {"id": "cust_1", "source_id": "user-1"},
        {"id": "", "source_id": "user-1"},
        {"sourceId": "user-1"},
    ],
)
def test_customer_identity_accepted(customer):
    validate_event(minimal(customer=customer))


@pytest.mark.parametrize("section", ["referral", "loyalty"])
def test_code_required_inside_referral_and_loyalty(section):
    assert errors_of(minimal(**{section: {}})) == {
        section: {"code": ["Missing data for required field."]}
    }


# --- camelCase normalisation -----------------------------------------------------------------


def test_typescript_sdk_example_is_normalised_to_wire_names():
    before = copy.deepcopy(TS_EXAMPLE)
    wire = validate_event(TS_EXAMPLE)
    assert wire == {
        "event": "event_example",
        "customer": {
            "id": "id_example",
            "source_id": "sourceId_example",
            "name": "name_example",
            "description": "description_example",
            "email": "email_example",
            "phone": "phone_example",
            "birthday": "1970-01-01",
            "birthdate": "1970-01-01",
            "address": {
                "city": "city_example",
                "state": "state_example",
                "line_1": "line1_example",
                "line_2": "line2_example",
                "country": "country_example",
                "postal_code": "postalCode_example",
            },
            "metadata": {},
        },
        "referral": {"code": "code_example", "referrer_id": "cust_Vzck5i8U3OhcEUFY6MKhN9Rv"},
        "loyalty": {"code": "L-CARD-BUHuH6g"},
        "metadata": {},
    }
    assert TS_EXAMPLE == before, "the caller's payload must not be modified"


@pytest.mark.parametrize(
    ("path", "camel", "snake"),
    [
        (path, camel, snake)
        for path, aliases in CAMEL_CASE_ALIASES.items()
        for camel, snake in aliases.items()
    ],
)
def test_both_forms_of_one_field_are_refused(path, camel, snake):
    payload = copy.deepcopy(FULL)
    node = payload
    for name in path:
        node = node[name]
    node[camel] = "other"
    expected: Any = {snake: [f"given twice, as {snake!r} and as {camel!r}; send only {snake!r}"]}
    for name in reversed(path):
        expected = {name: expected}
    assert errors_of(payload) == expected


def test_aliases_only_apply_where_they_belong():
    assert errors_of(minimal(sourceId="x")) == {"sourceId": ["Unknown field."]}
    payload = minimal(referral={"code": "c", "postalCode": "x"})
    assert errors_of(payload) == {"referral": {"postalCode": ["Unknown field."]}}


def test_other_camel_case_names_are_not_guessed():
    payload = minimal(customer={"source_id": "u", "address": {"postCode": "x"}})
    assert errors_of(payload) == {"customer": {"address": {"postCode": ["Unknown field."]}}}


def test_metadata_keys_are_never_renamed():
    meta = {"sourceId": 1, "postalCode": "x", "referrerId": None, "line1": {"line2": []}}
    payload = minimal(metadata=meta, customer={"sourceId": "u", "metadata": meta})
    wire = validate_event(payload)
    assert wire["metadata"] == meta
    assert wire["customer"] == {"source_id": "u", "metadata": meta}


def test_every_alias_targets_a_field_of_the_schema_at_its_path():
    for path, aliases in CAMEL_CASE_ALIASES.items():
        schema = EventSchema()
        for name in path:
            schema = schema.fields[name].schema
        for camel, snake in aliases.items():
            assert snake in schema.fields
            assert camel not in schema.fields


# --- unknown fields ---------------------------------------------------------------------------


def test_unknown_top_level_field_is_named():
    payload = minimal()
    payload["costumer"] = payload.pop("customer")
    assert errors_of(payload) == {
        "customer": ["Missing data for required field."],
        "costumer": ["Unknown field."],
    }


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (minimal(customer={"id": "c", "adress": {}}), {"customer": {"adress": ["Unknown field."]}}),
        (
            minimal(customer={"id": "c", "address": {"zip": "1"}}),
            {"customer": {"address": {"zip": ["Unknown field."]}}},
        ),
        (minimal(referral={"code": "c", "x": 1}), {"referral": {"x": ["Unknown field."]}}),
        (minimal(loyalty={"code": "c", "points": 1}), {"loyalty": {"points": ["Unknown field."]}}),
    ],
)
def test_unknown_nested_fields_are_named(payload, expected):
    assert errors_of(payload) == expected


def test_non_string_unknown_keys_are_named_as_strings():
    payload = minimal()
    payload[1] = "x"  # type: ignore[index]
    payload[(1, 2)] = "y"  # type: ignore[index]
    messages = errors_of(payload)
    assert messages == {"1": ["Unknown field."], "(1, 2)": ["Unknown field."]}
    json.dumps(messages)


# --- strict types -----------------------------------------------------------------------------


STRING_FIELDS = [
    ("event",),
    ("customer", "id"),
    ("customer", "source_id"),
    ("customer", "name"),
    ("customer", "description"),
    ("customer", "email"),
    ("customer", "phone"),
    ("customer", "address", "city"),
    ("customer", "address", "state"),
    ("customer", "address", "line_1"),
    ("customer", "address", "line_2"),
    ("customer", "address", "country"),
    ("customer", "address", "postal_code"),
    ("referral", "code"),
    ("referral", "referrer_id"),
    ("loyalty", "code"),
]


def put(payload: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    payload = copy.deepcopy(payload)
    node = payload
    for name in path[:-1]:
        node = node[name]
    node[path[-1]] = value
    return payload


def at(path: tuple[str, ...], messages: Any) -> Any:
    for name in reversed(path):
        messages = {name: messages}
    return messages


@pytest.mark.parametrize("path", STRING_FIELDS, ids=".".join)
@pytest.mark.parametrize("value", [5, 5.0, True, b"bytes", ["x"], {"x": 1}])
def test_strings_are_strict(path, value):
    assert errors_of(put(FULL, path, value)) == at(path, NOT_A_STRING)


@pytest.mark.parametrize("path", STRING_FIELDS, ids=".".join)
def test_strings_with_unpaired_surrogates_are_refused(path):
    messages = errors_of(put(FULL, path, "a\ud800b"))
    assert messages == at(path, ["Not a valid string: contains an unpaired surrogate."])


@pytest.mark.parametrize("path", STRING_FIELDS, ids=".".join)
def test_null_is_refused_for_strings(path):
    assert errors_of(put(FULL, path, None)) == at(path, ["Field may not be null."])


@pytest.mark.parametrize("section", ["customer", "referral", "loyalty"])
@pytest.mark.parametrize("value", [[], "x", 1, ({"code": "c"},)])
def test_objects_must_be_dicts(section, value):
    assert errors_of(put(FULL, (section,), value)) == {section: ["Not a valid object."]}


@pytest.mark.parametrize("path", [("metadata",), ("customer", "metadata")], ids=".".join)
@pytest.mark.parametrize("value", [[], ["a", 1], "{}", 1, b"{}"])
def test_metadata_must_be_a_dict(path, value):
    assert errors_of(put(FULL, path, value)) == at(path, ["Not a valid object."])


# --- dates ------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["birthdate", "birthday"])
@pytest.mark.parametrize("value", ["2000-02-29", "1970-01-01", "0001-01-01", "9999-12-31"])
def test_dates_accepted_and_kept_as_strings(field, value):
    wire = validate_event(minimal(customer={"id": "c", field: value}))
    assert wire["customer"][field] == value
    assert type(wire["customer"][field]) is str


@pytest.mark.parametrize("field", ["birthdate", "birthday"])
@pytest.mark.parametrize(
    "value",
    [
        "2001-02-29",  # not a leap year
        "2000-13-01",
        "2000-04-31",
        "0000-01-01",
        "2000-1-01",
        "20000101",
        "2000-W01-1",
        "2000-01-01T00:00:00",
        "2000-01-01\n",
        " 2000-01-01",
        "２０００-01-01",  # full-width digits
        "",
    ],
)
def test_dates_refused(field, value):
    messages = errors_of(minimal(customer={"id": "c", field: value}))
    expected = ["Not a valid date: expected a real calendar date as YYYY-MM-DD."]
    assert messages == {"customer": {field: expected}}


def test_date_objects_are_not_strings():
    import datetime

    messages = errors_of(minimal(customer={"id": "c", "birthdate": datetime.date(2000, 1, 1)}))
    assert messages == {"customer": {"birthdate": NOT_A_STRING}}


# --- nullable address -------------------------------------------------------------------------


def test_address_may_be_null_and_stays_null():
    wire = validate_event(minimal(customer={"id": "c", "address": None}))
    assert wire["customer"] == {"id": "c", "address": None}


def test_address_may_be_empty_or_partial():
    assert validate_event(minimal(customer={"id": "c", "address": {}}))["customer"]["address"] == {}
    partial = {"city": "Paris", "postalCode": "75001"}
    wire = validate_event(minimal(customer={"id": "c", "address": partial}))
    assert wire["customer"]["address"] == {"city": "Paris", "postal_code": "75001"}


@pytest.mark.parametrize(
    "path",
    [("referral",), ("loyalty",), ("metadata",), ("customer", "metadata"), ("customer",)],
    ids=".".join,
)
def test_only_address_is_nullable(path):
    assert errors_of(put(FULL, path, None)) == at(path, ["Field may not be null."])


# --- metadata ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_metadata_nan_and_infinity_refused(bad):
    messages = errors_of(minimal(metadata={"a": [1, {"b": bad}]}))
    assert messages == {"metadata": ["a[1].b: NaN and Infinity are not valid JSON"]}


def test_metadata_nan_refused_in_customer_metadata_too():
    messages = errors_of(minimal(customer={"id": "c", "metadata": {"x": math.nan}}))
    assert messages == {"customer": {"metadata": ["x: NaN and Infinity are not valid JSON"]}}


def test_metadata_depth_limit():
    assert validate_event(minimal(metadata=nested(METADATA_MAX_DEPTH)))
    messages = errors_of(minimal(metadata=nested(METADATA_MAX_DEPTH + 1)))
    path = ".".join(["k"] * METADATA_MAX_DEPTH)
    assert messages == {"metadata": [f"{path}: nested deeper than 32 levels"]}


def test_metadata_depth_counts_lists():
    meta: dict[str, Any] = {"l": []}
    node = meta["l"]
    for _ in range(METADATA_MAX_DEPTH - 2):
        node.append([])
        node = node[0]
    validate_event(minimal(metadata=meta))
    node.append([])
    assert "nested deeper than 32 levels" in errors_of(minimal(metadata=meta))["metadata"][0]


def test_very_deep_metadata_is_refused_without_recursion_error():
    messages = errors_of(minimal(metadata=nested(200_000)))
    assert "nested deeper than 32 levels" in messages["metadata"][0]


def test_cyclic_metadata_is_refused():
    meta: dict[str, Any] = {}
    meta["self"] = meta
    assert "nested deeper than 32 levels" in errors_of(minimal(metadata=meta))["metadata"][0]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ((1, 2), "x: not a JSON value (tuple)"),
        ({1, 2}, "x: not a JSON value (set)"),
        (b"raw", "x: not a JSON value (bytes)"),
        (object(), "x: not a JSON value (object)"),
        (2**63, "x: integer outside the 64-bit range"),
        (-(2**63) - 1, "x: integer outside the 64-bit range"),
        pytest.param(10**5000, "x: integer outside the 64-bit range", id="10**5000"),
        ("\udfff", "x: Not a valid string: contains an unpaired surrogate."),
        ({3: "three"}, "x: keys must be strings, not int"),
    ],
)
def test_metadata_refuses_non_json_values(value, message):
    assert errors_of(minimal(metadata={"x": value})) == {"metadata": [message]}


def test_metadata_accepts_json_values():
    meta = {
        "s": "ünï",
        "i": 2**63 - 1,
        "n": -(2**63),
        "f": -0.5,
        "t": True,
        "f2": False,
        "none": None,
        "l": [1, "a", None, [], {}],
        "d": {"e": {"f": [{"g": 1}]}},
        "": "empty key",
    }
    assert validate_event(minimal(metadata=meta))["metadata"] == meta


def test_metadata_error_count_is_bounded():
    messages = errors_of(minimal(metadata={str(i): math.nan for i in range(1000)}))
    assert len(messages["metadata"]) == 11
    assert messages["metadata"][-1] == "(further errors not reported)"


def test_result_does_not_share_metadata_with_the_input():
    payload = minimal(metadata={"a": {"b": [1]}}, customer={"id": "c", "metadata": {"x": [1]}})
    wire = validate_event(payload)
    payload["metadata"]["a"]["b"].append(float("nan"))
    payload["customer"]["metadata"]["x"].append(2)
    assert wire["metadata"] == {"a": {"b": [1]}}
    assert wire["customer"]["metadata"] == {"x": [1]}


# --- error mapping shape and output ------------------------------------------------------------


def test_error_mapping_is_nested_like_marshmallow():
    payload = put(FULL, ("customer", "address", "postal_code"), 75001)
    with pytest.raises(InvalidEvent) as info:
        validate_event(payload)
    assert info.value.messages == {"customer": {"address": {"postal_code": NOT_A_STRING}}}
    assert "customer.address.postal_code: Not a valid string." in str(info.value)


def test_several_errors_are_reported_together():
    payload = minimal(event=1, referral={"referrerId": 2}, metadata=[])
    assert errors_of(payload) == {
        "event": NOT_A_STRING,
        "referral": {
            "code": ["Missing data for required field."],
            "referrer_id": NOT_A_STRING,
        },
        "metadata": ["Not a valid object."],
    }


@pytest.mark.parametrize("payload", [None, [], [FULL], "{}", b"{}", 1, 1.5, True, ("a", "b")])
def test_non_dict_payload(payload):
    assert errors_of(payload) == {"_schema": ["event payload must be a JSON object"]}


def test_output_holds_only_given_fields_and_is_a_new_dict():
    payload = minimal(customer={"id": "c", "address": {"city": "Oslo"}})
    wire = validate_event(payload)
    assert wire == payload
    assert wire is not payload
    assert wire["customer"] is not payload["customer"]
    assert None not in wire["customer"].values()


def test_invalid_event_messages_are_json_serialisable():
    payload = minimal(customer={"sourceId": "a", "source_id": "b", "birthdate": "x"}, x=1)
    json.dumps(errors_of(payload))


# --- faithfulness to the OpenAPI spec ---------------------------------------------------------


@lru_cache(maxsize=1)
def load_spec() -> dict[str, Any]:
    text = (files("voucherify_ingest") / "openapi" /
    "openapi_events.json").read_text(encoding="utf-8")
    return json.loads(text)


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (``#/components/schemas/X``)."""
    while "$ref" in schema:
        node: Any = load_spec()
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def spec_properties(schema: dict[str, Any]) -> dict[str, Any]:
    """Properties of an OpenAPI schema, merging ``allOf`` branches."""
    schema = resolve(schema)
    props = dict(schema.get("properties", {}))
    for branch in schema.get("allOf", []):
        props.update(spec_properties(branch))
    return props


def spec_required(schema: dict[str, Any]) -> set[str]:
    schema = resolve(schema)
    required = set(schema.get("required", []))
    for branch in schema.get("allOf", []):
        required |= spec_required(branch)
    return required


def our_levels() -> dict[str, Any]:
    event = EventSchema()
    customer = event.fields["customer"].schema
    return {
        "EventsCreateRequestBody": event,
        "customer": customer,
        "customer.address": customer.fields["address"].schema,
        "referral": event.fields["referral"].schema,
        "loyalty": event.fields["loyalty"].schema,
    }


def spec_levels() -> dict[str, dict[str, Any]]:
    components = load_spec()["components"]["schemas"]
    body = components["EventsCreateRequestBody"]
    customer = spec_properties(body)["customer"]
    return {
        "EventsCreateRequestBody": body,
        "customer": customer,
        "customer.address": spec_properties(customer)["address"],
        "referral": spec_properties(body)["referral"],
        "loyalty": spec_properties(body)["loyalty"],
    }


def test_spec_ships_in_the_package_and_is_the_official_excerpt():
    spec = load_spec()
    assert "voucherifyio/voucherify-openapi" in spec["_about"]
    assert "documentation/openapi/events.json" in spec["_about"]
    body_ref = spec["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]
    assert body_ref["schema"]["$ref"] == "#/components/schemas/EventsCreateRequestBody"


def test_customer_level_includes_customer_base_and_identity():
    names = set(spec_properties(spec_levels()["customer"]))
    assert {"id", "source_id"} <= names
    assert set(resolve({"$ref": "#/components/schemas/CustomerBase"})["properties"]) <= names


@pytest.mark.parametrize(
    "level", ["EventsCreateRequestBody", "customer", "customer.address", "referral", "loyalty"]
)
def test_property_names_match_the_spec(level):
    ours = our_levels()[level]
    spec = spec_levels()[level]
    assert set(ours.fields) == set(spec_properties(spec))
    assert all(f.data_key is None for f in ours.fields.values())
    required = {name for name, f in ours.fields.items() if f.required}
    assert required == spec_required(spec)


@pytest.mark.parametrize(
    "level", ["EventsCreateRequestBody", "customer", "customer.address", "referral", "loyalty"]
)
def test_field_types_match_the_spec(level):
    ours = our_levels()[level]
    for name, prop in spec_properties(spec_levels()[level]).items():
        prop = resolve(prop)
        field = ours.fields[name]
        nullable = bool(prop.get("nullable"))
        assert field.allow_none is nullable, name
        if prop.get("format") == "date":
            assert isinstance(field, DateString), name
        elif prop.get("type") == "string":
            assert type(field) is StrictString, name
        elif "properties" in prop or "allOf" in prop:
            assert isinstance(field, Object), name
        else:
            assert prop.get("type") == "object", name
            assert isinstance(field, JSONObject), name


def test_event_length_matches_the_spec():
    prop = spec_properties(spec_levels()["EventsCreateRequestBody"])["event"]
    (length,) = [
        v for v in EventSchema().fields["event"].validators if isinstance(v, validate.Length)
    ]
    assert (length.min, length.max) == (prop["minLength"], prop["maxLength"]) == (1, 300)


def _openapi_nullable_to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 ``nullable: true`` is not JSON Schema: make it a ``"null"`` type."""
    if isinstance(node, dict):
        out = {key: _openapi_nullable_to_json_schema(value) for key, value in node.items()}
        if out.pop("nullable", False) and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(node, list):
        return [_openapi_nullable_to_json_schema(value) for value in node]
    return node


@lru_cache(maxsize=1)
def spec_validator() -> jsonschema.Validator:
    uri = "urn:voucherify:openapi-events"
    spec = _openapi_nullable_to_json_schema(load_spec())
    registry = Registry().with_resource(
        uri, Resource.from_contents(spec, default_specification=DRAFT202012)
    )
    schema = {"$ref": f"{uri}#/components/schemas/EventsCreateRequestBody"}
    cls = jsonschema.Draft202012Validator
    return cls(schema, registry=registry, format_checker=cls.FORMAT_CHECKER)


VALID_PAYLOADS = [
    minimal(),
    {"event": "e", "customer": {"id": "cust_1"}},
    FULL,
    TS_EXAMPLE,
    minimal(customer={"id": "c", "address": None}),
    minimal(customer={"sourceId": "u", "address": {"line1": "a", "postalCode": "1"}}),
    minimal(referral={"code": "R"}),
    minimal(referral={"code": "R", "referrerId": "cust_2"}),
    minimal(loyalty={"code": "L"}),
    minimal(metadata={}),
    minimal(metadata={"deep": nested(METADATA_MAX_DEPTH - 1), "list": [1, [2, [3]]]}),
    minimal(event="ü" * EVENT_MAX_LENGTH),
    minimal(customer={"source_id": "u", "birthday": "2000-02-29", "metadata": {"a": None}}),
]


@pytest.mark.parametrize("payload", VALID_PAYLOADS)
def test_output_validates_against_the_spec(payload):
    spec_validator().validate(validate_event(payload))


@pytest.mark.parametrize(
    "wire",
    [
        {"event": "", "customer": {}},
        {"event": "e", "customer": {"address": {"city": 1}}},
        {"event": "e", "customer": {}, "referral": {}},
        {"event": "e", "customer": {"birthdate": "2001-02-29"}},
    ],
)
def test_spec_validator_is_not_vacuous(wire):
    with pytest.raises(jsonschema.ValidationError):
        spec_validator().validate(wire)


# --- property tests ---------------------------------------------------------------------------

FIELD_NAMES = sorted(
    {
        *EventSchema().fields,
        *(name for level in our_levels().values() for name in level.fields),
        *(camel for aliases in CAMEL_CASE_ALIASES.values() for camel in aliases),
    }
)

keys = st.one_of(
    st.sampled_from(FIELD_NAMES),
    st.text(max_size=8),
    st.integers(),
    st.none(),
    st.tuples(st.integers()),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # includes NaN and +/-Infinity
    st.text(),
    # unpaired surrogates: hypothesis leaves category Cs out unless told otherwise
    st.text(
        alphabet=st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010, exclude_categories=()),
        max_size=4,
    ),
    st.sampled_from(["1970-01-01", "2000-02-30", "x" * 301, "", "cust_1", "\ud800"]),
    st.sampled_from([math.nan, math.inf, -math.inf, 2**63, 2**64 + 1]),
    st.binary(max_size=8),
)
json_ish = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=4),
        st.tuples(children, children),
        st.frozensets(st.integers(), max_size=3),
    ),
    max_leaves=25,
)


def check_outcome(payload: Any) -> None:
    """Either a wire dict that the spec accepts and JSON can carry, or ``InvalidEvent`` whose
    messages are a JSON-serialisable mapping."""
    try:
        wire = validate_event(payload)
    except InvalidEvent as exc:
        assert isinstance(exc.messages, dict) and exc.messages
        json.dumps(exc.messages)
        str(exc)
        return
    assert isinstance(wire, dict)
    spec_validator().validate(wire)
    # What the producer does with it: strict JSON, UTF-8.
    json.dumps(wire, allow_nan=False, ensure_ascii=False).encode("utf-8")


PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


objects = st.dictionaries(keys, json_ish, max_size=5)
string_keyed_objects = st.dictionaries(st.text(max_size=8), json_ish, max_size=5)


@PROPERTY_SETTINGS
@given(json_ish, objects, string_keyed_objects)
def test_random_values_give_a_dict_or_invalid_event(value, obj, meta):
    check_outcome(value)
    check_outcome(obj)
    check_outcome({**minimal(), "customer": obj})
    check_outcome({**minimal(), "referral": obj})
    check_outcome(minimal(customer={"id": "c", "address": obj}))
    check_outcome({**minimal(), "metadata": meta})
    check_outcome(minimal(customer={"id": "c", "metadata": meta}))


# Valid JSON (as metadata may hold it), and single values that make any metadata invalid.
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=20,
)
poisons = st.one_of(
    st.sampled_from(
        [math.nan, math.inf, -math.inf, 2**63, -(2**63) - 1, "\ud800", "a\udfffb", b"x", (1,)]
    ),
    st.builds(object),
    st.frozensets(st.integers(), max_size=2),
    st.floats(allow_nan=False).filter(math.isinf),
)


@PROPERTY_SETTINGS
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6), st.data())
def test_metadata_clean_json_accepted_unchanged_and_one_poison_refused(meta, data):
    for place in ("event", "customer"):
        payload = (
            minimal(metadata=meta)
            if place == "event"
            else minimal(customer={"id": "c", "metadata": meta})
        )
        wire = validate_event(payload)
        got = wire["metadata"] if place == "event" else wire["customer"]["metadata"]
        assert got == meta
        check_outcome(payload)

    # One poison (a value, or a bad key) anywhere inside: always refused.
    poisoned = copy.deepcopy(meta)
    containers = [
        path for path in _object_paths(poisoned) if isinstance(_get(poisoned, path), (dict, list))
    ]
    target = _get(poisoned, data.draw(st.sampled_from(containers)))
    if isinstance(target, dict) and data.draw(st.booleans()):
        target[data.draw(st.sampled_from([1, None, ("k",), "\udc00"]))] = "v"
    elif isinstance(target, dict):
        target[data.draw(st.text(max_size=4))] = data.draw(poisons)
    else:
        target.insert(data.draw(st.integers(0, len(target))), data.draw(poisons))
    for payload in (
        minimal(metadata=poisoned),
        minimal(customer={"id": "c", "metadata": poisoned}),
    ):
        with pytest.raises(InvalidEvent):
            validate_event(payload)


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        node = node[part]
    return node


def _object_paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            paths.extend(_object_paths(value, (*path, key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            paths.extend(_object_paths(value, (*path, index)))
    return paths


@st.composite
def mutated_payloads(draw: st.DrawFn) -> Any:
    payload = copy.deepcopy(draw(st.sampled_from([FULL, TS_EXAMPLE, minimal()])))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = _object_paths(payload)
        path = draw(st.sampled_from(paths))
        if not path:
            continue
        parent: Any = payload
        for part in path[:-1]:
            parent = parent[part]
        if not isinstance(parent, (dict, list)):
            continue
        action = draw(st.sampled_from(["replace", "scalar", "poison", "delete", "add", "camel"]))
        last = path[-1]
        if action == "replace":
            parent[last] = draw(json_ish)
        elif action == "scalar":
            parent[last] = draw(scalars)
        elif action == "poison":
            parent[last] = draw(poisons)
        elif action == "delete":
            del parent[last]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(keys)] = draw(json_ish)
        elif action == "camel" and isinstance(parent, dict) and isinstance(last, str):
            head, *rest = last.split("_")
            parent[head + "".join(part.title() for part in rest)] = parent[last]
    return payload


@PROPERTY_SETTINGS
@given(mutated_payloads())
def test_mutated_payloads_give_a_dict_or_invalid_event(payload):
    check_outcome(payload)


def test_strict_string_fields_are_not_plain_marshmallow_strings():
    # marshmallow's own String accepts bytes; ours must not (guards against a refactor).
    assert fields.String().deserialize(b"x") == "x"
    assert type(EventSchema().fields["event"]) is StrictString
