"""The fast path of ``validate_event`` must never disagree with the schemas.

``fast_validate`` either returns exactly what ``validate_with_schemas`` returns (same dict, same
key order, a copy of the metadata) or ``None``; it must never accept what the schemas refuse.
"""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_schemas import (
    FULL,
    PROPERTY_SETTINGS,
    TS_EXAMPLE,
    json_ish,
    json_values,
    minimal,
    mutated_payloads,
    objects,
)
from voucherify_ingest.errors import InvalidEvent
from voucherify_ingest.events import fast_validate, validate_event, validate_with_schemas


def agree(payload) -> bool:
    """Assert the fast path agrees with the schemas; return whether it answered itself."""
    before = copy.deepcopy(payload)
    fast = fast_validate(payload)
    try:
        slow = validate_with_schemas(payload)
    except InvalidEvent:
        assert fast is None, f"fast path accepted what the schemas refuse: {payload!r}"
        return False
    if fast is None:
        return False
    assert fast == slow
    assert json.dumps(fast) == json.dumps(slow), "key order differs"
    for place in (fast.get("metadata"), fast["customer"].get("metadata")):
        assert place is None or all(place is not m for m in _metadatas(payload))
    assert payload == before, "the fast path changed its input"
    return True


def _metadatas(payload):
    yield payload.get("metadata")
    yield payload.get("customer", {}).get("metadata")


def test_common_payloads_take_the_fast_path():
    assert agree(minimal())
    assert agree(FULL)
    assert agree(minimal(customer={"id": "c", "address": None}))
    assert agree(minimal(referral={"code": "R", "referrer_id": "cust_1"}, loyalty={"code": "L"},
                         metadata={"a": [1, 2.5, None, True, {"b": "c"}]}))


@pytest.mark.parametrize("payload", [
    TS_EXAMPLE,                                             # camelCase: the schemas rename
    minimal(customer={"source_id": "u", "name": None}),     # null string
    minimal(customer={"source_id": ""}),                    # no identity
    minimal(customer={"id": "c", "birthdate": "2001-02-30"}),
    minimal(customer={"id": "c", "birthdate": "2001-2-3"}),
    minimal(customer={"id": "c", "address": {"line1": "x"}}),
    minimal(event=""),
    minimal(event="x" * 301),
    minimal(event="\ud800"),
    minimal(metadata={"n": float("nan")}),
    minimal(metadata={1: "x"}),
    minimal(metadata=[]),
    minimal(referral={"referrer_id": "x"}),
    minimal(loyalty={"code": "L", "referrer_id": "x"}),
    {**minimal(), "extra": 1},
    {"customer": {"id": "c"}},
    [minimal()],
])
def test_anything_unusual_goes_to_the_schemas(payload):
    assert not agree(payload)


def test_validate_event_uses_both_paths_with_the_same_result():
    assert validate_event(FULL) == validate_with_schemas(FULL)
    assert validate_event(TS_EXAMPLE) == validate_with_schemas(TS_EXAMPLE)
    with pytest.raises(InvalidEvent) as info:
        validate_event(minimal(customer={"source_id": 5}))
    assert info.value.messages == {"customer": {"source_id": ["Not a valid string."]}}


@PROPERTY_SETTINGS
@given(mutated_payloads())
def test_mutated_payloads_agree(payload):
    agree(payload)


@PROPERTY_SETTINGS
@given(objects, st.dictionaries(st.text(max_size=8), json_values, max_size=6), json_ish)
def test_random_sections_agree(obj, meta, value):
    agree({**minimal(), "customer": obj})
    agree({**minimal(), "referral": obj})
    agree({**minimal(), "loyalty": obj})
    agree(minimal(customer={"id": "c", "address": obj}))
    agree(minimal(metadata=meta, customer={"source_id": "u", "metadata": meta}))
    agree(minimal(event=value))
    agree(minimal(customer={"id": "c", "email": value, "birthday": value}))
