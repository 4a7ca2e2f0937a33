"""Agent identity, pure part: validation of every field, records, and the delegation-tree helpers."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caracal.core.identity import (
    AGENT_FIELDS,
    Agent,
    ancestors,
    canonical_agent_id,
    check_agent_id,
    check_agent_name,
    children_index,
    descendants,
    is_uuid_like,
    new_agent,
    would_create_cycle,
)
from caracal.core.validation import MAX_IDENTIFIER_LENGTH, MAX_METADATA_BYTES
from caracal.exceptions import AgentNotFoundError, IdentityError, InvalidAgentError

NOW = datetime(2026, 1, 31, 12, 0, 0, 123456, tzinfo=timezone.utc)
STAMP = "2026-01-31T12:00:00.123456Z"
ID_A = "6f1c1d3e-8d3a-4b8e-9a53-0f0e4c3b2a11"
ID_B = "0b6a3f4c-2f7e-4d0a-8c55-3c1d9e8f7a22"
ID_C = "9d2e8b1a-5c4f-4e3d-b2a1-7f6e5d4c3b33"
ID_D = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c44"


def record(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "agent_id": ID_A,
        "name": "research-bot",
        "owner": "alice@example.com",
        "parent_id": None,
        "metadata": None,
        "status": "active",
        "created_at": STAMP,
        "updated_at": STAMP,
    }
    base.update(changes)
    return base


def make(**changes: Any) -> Agent:
    return Agent(**record(**changes))


# ------------------------------------------------------------------------------------------------ the Agent


def test_a_valid_agent_keeps_its_fields() -> None:
    agent = make(metadata={"team": "search"}, parent_id=ID_B)
    assert agent.agent_id == ID_A
    assert agent.name == "research-bot"
    assert agent.owner == "alice@example.com"
    assert agent.parent_id == ID_B
    assert agent.metadata == {"team": "search"}
    assert agent.status == "active" and agent.is_active and not agent.is_suspended
    assert agent.created_at == agent.updated_at == STAMP


def test_agents_are_frozen_and_hashable_despite_dict_metadata() -> None:
    agent = make(metadata={"a": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        agent.name = "other"  # type: ignore[misc]
    assert hash(agent) == hash(make(metadata={"b": 2}))  # hash follows the id
    assert agent != make(metadata={"b": 2})
    assert agent == make(metadata={"a": 1})
    assert len({agent, make(metadata={"a": 1})}) == 1


def test_new_agent_is_active_with_both_timestamps_now() -> None:
    agent = new_agent("bot", "ops-team", agent_id=uuid.UUID(ID_A), now=NOW, metadata={"k": "v"})
    assert agent.agent_id == ID_A  # a UUID object becomes its canonical string
    assert agent.status == "active"
    assert agent.created_at == agent.updated_at == STAMP
    assert agent.parent_id is None


@pytest.mark.parametrize(
    "name",
    [
        "",
        " ",
        "\t",
        "a\nb",
        "a\rb",
        "nul\x00",
        "bell\x07",
        "del\x7f",
        "line\u2028sep",
        "zero\u200bwidth",
        "x" * (MAX_IDENTIFIER_LENGTH + 1),
        " padded",
        "padded ",
        "e\u0301",  # decomposed é: looks like 'é' (NFC) but is a different string
        ID_A,
        ID_A.upper(),
        ID_A.replace("-", ""),
        "{" + ID_A + "}",
        "urn:uuid:" + ID_A,
        "00000000000000000000000000000000",
        123,
        None,
        b"bytes",
    ],
)
def test_bad_names_are_refused_naming_the_field(name: object) -> None:
    with pytest.raises(InvalidAgentError, match="name"):
        make(name=name)
    with pytest.raises(InvalidAgentError, match="name"):
        check_agent_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "bot",
        "research-bot",
        "Research Bot 2",
        "é",
        "ümlaut_agent",
        "x" * MAX_IDENTIFIER_LENGTH,
        "1234",
        "a" * 31,
    ],
)
def test_good_names_are_accepted(name: str) -> None:
    assert make(name=name).name == name


def test_a_uuid_like_name_says_why() -> None:
    with pytest.raises(InvalidAgentError, match="must not look like a UUID"):
        check_agent_name(ID_A)


@pytest.mark.parametrize("owner", ["", "   ", "a\tb", "x\ny", "o" * (MAX_IDENTIFIER_LENGTH + 1), 5, None])
def test_bad_owners_are_refused(owner: object) -> None:
    with pytest.raises(InvalidAgentError, match="owner"):
        make(owner=owner)


@pytest.mark.parametrize("owner", ["alice@example.com", "Team Search", "ops", "ünïcödé@例え.jp"])
def test_owners_are_not_over_validated(owner: str) -> None:
    assert make(owner=owner).owner == owner


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("agent_id", "not-a-uuid"),
        ("agent_id", ""),
        ("agent_id", ID_A.upper()),
        ("agent_id", ID_A.replace("-", "")),
        ("agent_id", uuid.UUID(ID_A)),
        ("agent_id", None),
        ("parent_id", "nope"),
        ("parent_id", ID_B.upper()),
        ("parent_id", 7),
        ("status", "deleted"),
        ("status", "Active"),
        ("status", None),
        ("created_at", "yesterday"),
        ("created_at", None),
        ("created_at", NOW),
        ("updated_at", ""),
        ("updated_at", 1700000000),
        ("metadata", []),
        ("metadata", "text"),
        ("metadata", {"x": float("nan")}),
        ("metadata", {"x": float("inf")}),
        ("metadata", {1: "int key"}),
        ("metadata", {"blob": "x" * MAX_METADATA_BYTES}),
        ("metadata", {"x": object()}),
    ],
)
def test_bad_fields_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidAgentError, match=field.split("_")[0]):
        make(**{field: value})


def test_an_agent_cannot_be_its_own_parent() -> None:
    with pytest.raises(InvalidAgentError, match="own parent"):
        make(parent_id=ID_A)


def test_metadata_is_copied_and_stored_as_plain_json() -> None:
    given_metadata: dict[str, Any] = {"price": Decimal("0.030"), "tags": ("a", "b"), "nested": {"k": [1]}}
    agent = make(metadata=given_metadata)
    assert agent.metadata == {"price": "0.030", "tags": ["a", "b"], "nested": {"k": [1]}}
    given_metadata["nested"]["k"].append(2)
    assert agent.metadata == {"price": "0.030", "tags": ["a", "b"], "nested": {"k": [1]}}
    exported = agent.to_dict()
    exported["metadata"]["nested"]["k"].append(3)
    assert agent.metadata["nested"] == {"k": [1]}


def test_timestamps_are_normalized_to_the_stored_utc_form() -> None:
    agent = make(created_at="2026-01-31T13:00:00+01:00", updated_at="2026-01-31T12:00:00")
    assert agent.created_at == "2026-01-31T12:00:00.000000Z"
    assert agent.updated_at == "2026-01-31T12:00:00.000000Z"


def test_with_status_changes_updated_at_only_on_a_change() -> None:
    agent = make()
    later = NOW + timedelta(hours=1)
    assert agent.with_status("active", later) is agent
    suspended = agent.with_status("suspended", later)
    assert suspended.status == "suspended" and suspended.is_suspended
    assert suspended.updated_at == "2026-01-31T13:00:00.123456Z"
    assert suspended.created_at == agent.created_at
    assert agent.status == "active"  # unchanged
    with pytest.raises(InvalidAgentError, match="status"):
        agent.with_status("gone", later)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- records on disk


def test_to_dict_writes_every_field_and_round_trips() -> None:
    agent = make(parent_id=ID_B, metadata={"a": [1, {"b": None}]}, status="suspended")
    data = agent.to_dict()
    assert tuple(data) == AGENT_FIELDS
    assert Agent.from_dict(data) == agent


def test_from_dict_defaults_optional_fields_and_ignores_unknown_ones() -> None:
    data = record()
    del data["parent_id"], data["metadata"]
    data["added_by_a_newer_version"] = {"x": 1}
    agent = Agent.from_dict(data)
    assert agent.parent_id is None and agent.metadata is None


@pytest.mark.parametrize("field", ["agent_id", "name", "owner", "status", "created_at", "updated_at"])
def test_from_dict_requires_each_field(field: str) -> None:
    data = record()
    del data[field]
    with pytest.raises(InvalidAgentError, match=f"missing '{field}'"):
        Agent.from_dict(data)


@pytest.mark.parametrize("data", [None, [], "agent", 5])
def test_from_dict_requires_an_object(data: Any) -> None:
    with pytest.raises(InvalidAgentError, match="JSON object"):
        Agent.from_dict(data)


def test_from_dict_errors_say_which_agent() -> None:
    with pytest.raises(InvalidAgentError, match="agent 'research-bot': owner must not be empty"):
        Agent.from_dict(record(owner=""))


# -------------------------------------------------------------------------------------------------- ids


def test_agent_ids_must_be_canonical() -> None:
    assert check_agent_id(ID_A) == ID_A
    with pytest.raises(InvalidAgentError, match="canonical"):
        check_agent_id(ID_A.upper())
    assert canonical_agent_id(ID_A.upper()) == ID_A
    assert canonical_agent_id("{" + ID_A + "}") == ID_A
    assert canonical_agent_id(uuid.UUID(ID_A)) == ID_A
    assert canonical_agent_id("research-bot") is None
    assert canonical_agent_id(42) is None


@given(st.uuids())
def test_every_spelling_of_a_uuid_is_refused_as_a_name(value: uuid.UUID) -> None:
    for spelling in (str(value), str(value).upper(), value.hex, "{" + str(value) + "}", value.urn):
        assert is_uuid_like(spelling)
        assert canonical_agent_id(spelling) == str(value)
        with pytest.raises(InvalidAgentError):
            check_agent_name(spelling)


names = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")),
    min_size=1,
    max_size=40,
).filter(lambda s: s == s.strip() and s.strip() and s.isprintable() and not is_uuid_like(s))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@given(
    name=names.map(lambda s: __import__("unicodedata").normalize("NFC", s)),
    owner=st.sampled_from(["alice@example.com", "ops", "Team X"]),
    metadata=st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    status=st.sampled_from(["active", "suspended"]),
    parent=st.none() | st.uuids(version=4).map(str),
    agent_id=st.uuids(version=4).map(str),
)
def test_records_round_trip(
    name: str, owner: str, metadata: dict[str, Any] | None, status: str, parent: str | None, agent_id: str
) -> None:
    if parent == agent_id:
        parent = None
    agent = Agent(agent_id, name, owner, parent, metadata, status, STAMP, STAMP)  # type: ignore[arg-type]
    assert Agent.from_dict(agent.to_dict()) == agent
    assert check_agent_name(name) == name


# -------------------------------------------------------------------------------------- the delegation tree


def tree() -> dict[str, Agent]:
    """A (root) -> B -> C, and A -> D; names sort D < C so sibling order is by name, not id."""
    agents = [
        make(agent_id=ID_A, name="root"),
        make(agent_id=ID_B, name="b-child", parent_id=ID_A),
        make(agent_id=ID_C, name="c-grandchild", parent_id=ID_B),
        make(agent_id=ID_D, name="a-child", parent_id=ID_A),
    ]
    return {agent.agent_id: agent for agent in agents}


def test_ancestors_go_from_the_parent_to_the_root() -> None:
    agents = tree()
    assert ancestors(ID_C, agents) == [ID_B, ID_A]
    assert ancestors(ID_B, agents) == [ID_A]
    assert ancestors(ID_A, agents) == []


def test_ancestors_of_an_unknown_agent() -> None:
    with pytest.raises(AgentNotFoundError):
        ancestors(str(uuid.uuid4()), tree())


def test_ancestors_refuse_a_cycle_and_a_dangling_parent() -> None:
    agents = tree()
    agents[ID_A] = make(agent_id=ID_A, name="root", parent_id=ID_C)  # A -> C -> B -> A
    with pytest.raises(IdentityError, match="cycle"):
        ancestors(ID_C, agents)
    dangling = tree()
    missing = str(uuid.uuid4())
    dangling[ID_A] = make(agent_id=ID_A, name="root", parent_id=missing)
    with pytest.raises(IdentityError, match="does not exist") as info:
        ancestors(ID_C, dangling)
    assert not isinstance(info.value, AgentNotFoundError)


def test_would_create_cycle() -> None:
    agents = tree()
    assert not would_create_cycle(ID_C, None, agents)
    assert would_create_cycle(ID_A, ID_A, agents)
    assert would_create_cycle(ID_A, ID_C, agents)  # C is below A
    assert would_create_cycle(ID_B, ID_C, agents)
    assert not would_create_cycle(ID_D, ID_C, agents)  # moving D under C is fine
    assert not would_create_cycle(str(uuid.uuid4()), ID_C, agents)  # a new agent under C
    with pytest.raises(AgentNotFoundError):
        would_create_cycle(ID_A, str(uuid.uuid4()), agents)
    broken = tree()
    broken[ID_A] = make(agent_id=ID_A, name="root", parent_id=ID_C)
    assert would_create_cycle(str(uuid.uuid4()), ID_C, broken)  # never extend a broken chain


def test_descendants_are_depth_first_with_siblings_by_name() -> None:
    agents = tree()
    assert descendants(ID_A, agents) == [ID_D, ID_B, ID_C]
    assert descendants(ID_B, agents) == [ID_C]
    assert descendants(ID_C, agents) == []
    assert descendants(ID_A, agents, children_index(agents)) == [ID_D, ID_B, ID_C]
    with pytest.raises(AgentNotFoundError):
        descendants(str(uuid.uuid4()), agents)


def test_descendants_refuse_a_cycle() -> None:
    agents = tree()
    agents[ID_A] = make(agent_id=ID_A, name="root", parent_id=ID_C)
    with pytest.raises(IdentityError, match="cycle"):
        descendants(ID_A, agents)
