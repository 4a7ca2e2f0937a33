"""The agent registry: every method, every bad input, persistence, the read cache, and real concurrency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import caracal.storage.agents as agents_module
from caracal.core.identity import Agent
from caracal.exceptions import (
    AgentNotFoundError,
    AgentSuspendedError,
    DuplicateAgentError,
    IdentityError,
    InvalidAgentError,
    RegistryError,
)
from caracal.storage.agents import AgentRegistry, default_agents_path

START = datetime(2026, 1, 31, 12, 0, tzinfo=timezone.utc)


class StepClock:
    """Each reading is one second after the previous one."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def stamp(seconds: int) -> str:
    return (START + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.000000Z")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "agents.json"


@pytest.fixture
def registry(path: Path) -> AgentRegistry:
    return AgentRegistry(path, clock=StepClock())


def stored(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_bytes())
    return document


def write_registry(path: Path, records: list[dict[str, Any]] | dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    agents = records if isinstance(records, dict) else {r["agent_id"]: r for r in records}
    path.write_text(json.dumps({"agents": agents}))


def raw(name: str, parent_id: str | None = None, agent_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "agent_id": agent_id or str(uuid.uuid4()),
        "name": name,
        "owner": "ops",
        "parent_id": parent_id,
        "metadata": None,
        "status": "active",
        "created_at": stamp(0),
        "updated_at": stamp(0),
        **extra,
    }


def make_old(path: Path) -> None:
    """Age the file past the racy window, so that its stat key alone is trusted."""
    old = time.time_ns() - 10 * agents_module.RACY_WINDOW_NS
    os.utime(path, ns=(old, old))


# ------------------------------------------------------------------------------------------------- register


def test_register_returns_a_new_active_agent_and_stores_it(registry: AgentRegistry, path: Path) -> None:
    agent = registry.register("research-bot", "alice@example.com", metadata={"team": "search"})
    assert uuid.UUID(agent.agent_id).version == 4
    assert (agent.name, agent.owner, agent.parent_id, agent.status) == (
        "research-bot",
        "alice@example.com",
        None,
        "active",
    )
    assert agent.metadata == {"team": "search"}
    assert agent.created_at == agent.updated_at == stamp(1)
    assert stored(path) == {"agents": {agent.agent_id: agent.to_dict()}}


def test_registrations_persist_across_instances(registry: AgentRegistry, path: Path) -> None:
    root = registry.register("root", "ops")
    child = registry.register("child", "ops", parent="root", metadata={"n": 1})
    reopened = AgentRegistry(path)
    assert reopened.get(root.agent_id) == root
    assert reopened.get("child") == child
    assert reopened.list() == [child, root]


def test_register_with_a_parent_by_name_by_id_or_any_uuid_spelling(registry: AgentRegistry) -> None:
    root = registry.register("root", "ops")
    by_name = registry.register("a", "ops", parent="root")
    by_id = registry.register("b", "ops", parent=root.agent_id)
    by_upper = registry.register("c", "ops", parent=root.agent_id.upper())
    by_object = registry.register("d", "ops", parent=uuid.UUID(root.agent_id))
    assert {by_name.parent_id, by_id.parent_id, by_upper.parent_id, by_object.parent_id} == {root.agent_id}


def test_register_with_an_injected_id_factory(path: Path) -> None:
    ids: Iterator[str | uuid.UUID] = iter(
        ["00000000-0000-4000-8000-000000000001", uuid.UUID("00000000-0000-4000-8000-000000000002")]
    )
    registry = AgentRegistry(path, id_factory=lambda: next(ids))
    assert registry.register("one", "ops").agent_id == "00000000-0000-4000-8000-000000000001"
    assert registry.register("two", "ops").agent_id == "00000000-0000-4000-8000-000000000002"
    override = registry.register("three", "ops", id_factory=lambda: "00000000-0000-4000-8000-000000000003")
    assert override.agent_id == "00000000-0000-4000-8000-000000000003"


def test_register_with_a_per_call_clock(registry: AgentRegistry) -> None:
    moment = datetime(2030, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    agent = registry.register("bot", "ops", clock=lambda: moment)
    assert agent.created_at == "2030-05-06T07:08:09.000000Z"


def test_a_duplicate_name_is_refused_and_changes_nothing(registry: AgentRegistry, path: Path) -> None:
    first = registry.register("bot", "ops")
    before = path.read_bytes()
    with pytest.raises(DuplicateAgentError, match=f"'bot' already exists \\(id {first.agent_id}\\)"):
        registry.register("bot", "someone-else")
    assert path.read_bytes() == before
    assert not path.with_name("agents.json.bak.2").exists()  # no write, so no rotation either


def test_names_ignore_case_and_character_width(registry: AgentRegistry) -> None:
    bot = registry.register("Bot", "ops")
    for same in ("bot", "BOT", "\uff42\uff4f\uff54", "\uff22ot"):  # full-width forms too
        with pytest.raises(DuplicateAgentError, match="'Bot' already exists"):
            registry.register(same, "ops")
        assert registry.get(same) == bot
    assert [agent.name for agent in registry.list()] == ["Bot"]
    assert registry.register("\uff43\uff11", "ops").name == "c1"  # stored NFKC-normalized
    assert registry.get("C1").name == "c1"


@pytest.mark.parametrize("name", ["a/b", "../x", "..", ".", "a\\b", "\uff0e\uff0e", "team\uff0fbot", "x\x1b"])
def test_path_like_names_are_refused(registry: AgentRegistry, path: Path, name: str) -> None:
    with pytest.raises(InvalidAgentError, match="agent name"):
        registry.register(name, "ops")
    assert not path.exists()  # nothing was written


def test_a_home_registered_before_the_name_rules_still_loads_and_works(
    registry: AgentRegistry, path: Path
) -> None:
    """Names that now clash (C1 / full-width C1 / c1) or are now refused (a/b, ../x, ..) were accepted by
    earlier versions: such a registry still loads, every agent is found by its exact name and by id, a
    lookup that matches several only ignoring case is refused as ambiguous, and no new clash is let in."""
    old = [raw("C1"), raw("\uff23\uff11"), raw("a/b"), raw("../x"), raw(".."), raw("Solo")]
    old.append(raw("child", parent_id=old[2]["agent_id"]))
    write_registry(path, old)
    for record in old:
        assert registry.get(record["name"]).agent_id == record["agent_id"]
        assert registry.get(record["agent_id"]).name == record["name"]
    assert len(registry.list()) == len(old)
    assert [agent.name for agent in registry.ancestors("child")] == ["a/b"]
    assert registry.get("solo").name == "Solo"  # a key that matches one agent still resolves
    with pytest.raises(AgentNotFoundError, match="exact name or the id") as ambiguous:
        registry.get("c1")
    assert "'C1'" in str(ambiguous.value) and "'\uff23\uff11'" in str(ambiguous.value)
    for clash in ("c1", "SOLO", "A/B"):
        with pytest.raises((DuplicateAgentError, InvalidAgentError)):
            registry.register(clash, "ops")
    registry.suspend("a/b")
    assert registry.get("child").status == "active" and registry.get("a/b").status == "suspended"
    assert registry.register("new", "ops", parent="..").parent_id == old[4]["agent_id"]


def test_a_repeated_id_from_the_factory_is_refused(path: Path) -> None:
    registry = AgentRegistry(path, id_factory=lambda: "00000000-0000-4000-8000-000000000001")
    registry.register("one", "ops")
    with pytest.raises(DuplicateAgentError, match="id"):
        registry.register("two", "ops")
    assert [agent.name for agent in registry.list()] == ["one"]


@pytest.mark.parametrize("factory_result", ["not-a-uuid", "", 42, "00000000-0000-4000-8000-00000000000A"])
def test_a_bad_id_from_the_factory_is_refused(path: Path, factory_result: Any) -> None:
    registry = AgentRegistry(path, id_factory=lambda: factory_result)
    with pytest.raises(InvalidAgentError, match="id"):
        registry.register("bot", "ops")
    assert not path.exists()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "a\nb"}, "name"),
        ({"name": "tab\there"}, "name"),
        ({"name": "nul\x00"}, "name"),
        ({"name": "x" * 257}, "name"),
        ({"name": str(uuid.uuid4())}, "UUID"),
        ({"name": uuid.uuid4().hex}, "UUID"),
        ({"name": None}, "name"),
        ({"owner": ""}, "owner"),
        ({"owner": "line\nbreak"}, "owner"),
        ({"owner": 3}, "owner"),
        ({"metadata": ["not", "a", "dict"]}, "metadata"),
        ({"metadata": {"x": float("nan")}}, "metadata"),
        ({"metadata": {"x": "y" * 20000}}, "metadata"),
        ({"parent": 12}, "parent"),
        ({"parent": ""}, "parent"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(path: Path, kwargs: dict[str, Any], field: str) -> None:
    registry = AgentRegistry(path)
    args: dict[str, Any] = {"name": "bot", "owner": "ops", **kwargs}
    with pytest.raises(InvalidAgentError, match=field):
        registry.register(**args)
    assert not path.exists()


def test_an_unknown_parent_is_refused_and_writes_nothing(registry: AgentRegistry, path: Path) -> None:
    registry.register("root", "ops")
    before = path.read_bytes()
    with pytest.raises(AgentNotFoundError, match=r"no parent named 'rot'.*did you mean 'root'"):
        registry.register("child", "ops", parent="rot")
    missing = str(uuid.uuid4())
    with pytest.raises(AgentNotFoundError, match=f"no parent with id {missing}"):
        registry.register("child", "ops", parent=missing)
    assert path.read_bytes() == before


def test_registering_under_a_new_agent_builds_a_deep_tree(registry: AgentRegistry) -> None:
    parent = registry.register("level-0", "ops")
    for level in range(1, 20):
        parent = registry.register(f"level-{level}", "ops", parent=parent.name)
    chain = registry.ancestors("level-19")
    assert [agent.name for agent in chain] == [f"level-{n}" for n in range(18, -1, -1)]


# ------------------------------------------------------------------------------------------------------ get


def test_get_by_id_name_uuid_object_and_other_spellings(registry: AgentRegistry) -> None:
    agent = registry.register("bot", "ops")
    for ref in (
        agent.agent_id,
        "bot",
        uuid.UUID(agent.agent_id),
        agent.agent_id.upper(),
        uuid.UUID(agent.agent_id).hex,
    ):
        assert registry.get(ref) == agent


def test_get_unknown_agents(registry: AgentRegistry, path: Path) -> None:
    with pytest.raises(AgentNotFoundError, match="no agents are registered"):
        registry.get("bot")
    registry.register("research-bot", "ops")
    with pytest.raises(
        AgentNotFoundError, match=r"no agent named 'reserch-bot'.*did you mean 'research-bot'"
    ):
        registry.get("reserch-bot")
    with pytest.raises(AgentNotFoundError, match="1 agent registered") as info:
        registry.get("zzz")
    assert "did you mean" not in str(info.value) and str(path) in str(info.value)
    unknown = uuid.uuid4()
    with pytest.raises(AgentNotFoundError, match=f"no agent with id {unknown}"):
        registry.get(str(unknown).upper())
    with pytest.raises(AgentNotFoundError):
        registry.get("bot\n")


@pytest.mark.parametrize("ref", ["", "  ", None, 5, ["bot"], b"bot"])
def test_get_refuses_references_that_cannot_name_an_agent(registry: AgentRegistry, ref: Any) -> None:
    registry.register("bot", "ops")
    with pytest.raises(InvalidAgentError):
        registry.get(ref)


def test_returned_agents_do_not_share_state_with_the_cache(registry: AgentRegistry, path: Path) -> None:
    agent = registry.register("bot", "ops", metadata={"tags": ["a"]})
    assert agent.metadata is not None
    agent.metadata["tags"].append("changed-by-caller")
    make_old(path)
    first = registry.get("bot")
    assert first.metadata is not None
    first.metadata["tags"].append("changed-by-caller")
    assert registry.get("bot").metadata == {"tags": ["a"]}
    assert registry.list()[0].metadata == {"tags": ["a"]}


# ----------------------------------------------------------------------------------------------------- list


def test_list_sorted_by_name_and_filtered(registry: AgentRegistry) -> None:
    root = registry.register("root", "ops")
    registry.register("zeta", "ops", parent="root")
    registry.register("alpha", "ops", parent="root")
    registry.register("grandchild", "ops", parent="alpha")
    registry.register("loner", "ops")
    registry.suspend("zeta")
    assert [a.name for a in registry.list()] == ["alpha", "grandchild", "loner", "root", "zeta"]
    assert [a.name for a in registry.list(status="suspended")] == ["zeta"]
    assert [a.name for a in registry.list(status="active")] == ["alpha", "grandchild", "loner", "root"]
    assert [a.name for a in registry.list(parent="root")] == ["alpha", "zeta"]
    assert [a.name for a in registry.list(parent=root.agent_id, status="active")] == ["alpha"]
    assert registry.list(parent="grandchild") == []


def test_list_on_an_empty_or_missing_registry(registry: AgentRegistry) -> None:
    assert registry.list() == []
    assert registry.list(status="active") == []


def test_list_refuses_a_bad_status_or_parent(registry: AgentRegistry) -> None:
    with pytest.raises(InvalidAgentError, match="status"):
        registry.list(status="deleted")  # type: ignore[arg-type]
    with pytest.raises(AgentNotFoundError, match="parent"):
        registry.list(parent="nobody")


# ------------------------------------------------------------------------------------ suspend and activate


def test_suspend_and_activate(registry: AgentRegistry, path: Path) -> None:
    agent = registry.register("bot", "ops")  # clock: +1 s
    suspended = registry.suspend("bot")  # +2 s
    assert suspended.status == "suspended" and suspended.updated_at == stamp(2)
    assert suspended.created_at == agent.created_at
    assert AgentRegistry(path).get(agent.agent_id).status == "suspended"
    active = registry.activate(agent.agent_id)  # +3 s
    assert active.status == "active" and active.updated_at == stamp(3)
    assert registry.get("bot") == active


def test_suspend_and_activate_are_idempotent(registry: AgentRegistry, path: Path) -> None:
    registry.register("bot", "ops")
    first = registry.suspend("bot")
    make_old(path)
    before = (path.read_bytes(), path.stat().st_mtime_ns, path.stat().st_ino)
    backups = sorted(p.name for p in path.parent.iterdir())
    again = registry.suspend("bot")
    assert again == first  # same updated_at
    assert (path.read_bytes(), path.stat().st_mtime_ns, path.stat().st_ino) == before  # nothing written
    assert sorted(p.name for p in path.parent.iterdir()) == backups
    registry.activate("bot")
    assert registry.activate("bot").updated_at == registry.get("bot").updated_at


def test_suspend_or_activate_an_unknown_agent(registry: AgentRegistry, path: Path) -> None:
    with pytest.raises(AgentNotFoundError):
        registry.suspend("ghost")
    with pytest.raises(AgentNotFoundError):
        registry.activate(str(uuid.uuid4()))
    with pytest.raises(InvalidAgentError):
        registry.suspend("")
    assert not path.exists()


def test_status_changes_keep_fields_written_by_a_newer_version(registry: AgentRegistry, path: Path) -> None:
    record = raw("bot", future_field={"kept": True})
    write_registry(path, [record])
    registry.suspend("bot")
    assert stored(path)["agents"][record["agent_id"]]["future_field"] == {"kept": True}


def test_require_active_checks_the_agent_and_its_ancestors(registry: AgentRegistry) -> None:
    registry.register("root", "ops")
    registry.register("team", "ops", parent="root")
    leaf = registry.register("leaf", "ops", parent="team")
    assert registry.require_active("leaf") == leaf
    registry.suspend("leaf")
    with pytest.raises(AgentSuspendedError, match="'leaf' is suspended"):
        registry.require_active("leaf")
    registry.activate("leaf")
    registry.suspend("root")
    with pytest.raises(AgentSuspendedError, match="ancestor 'root' is suspended"):
        registry.require_active(leaf.agent_id)
    assert registry.get("leaf").status == "active"  # the agent's own status is untouched
    with pytest.raises(AgentNotFoundError):
        registry.require_active("ghost")


# ---------------------------------------------------------------------------------- ancestors, descendants


def test_ancestors_and_descendants(registry: AgentRegistry) -> None:
    root = registry.register("root", "ops")
    b = registry.register("b-team", "ops", parent="root")
    a = registry.register("a-team", "ops", parent="root")
    b1 = registry.register("b1", "ops", parent="b-team")
    a1 = registry.register("a1", "ops", parent="a-team")
    assert registry.ancestors("b1") == [b, root]
    assert registry.ancestors(root.agent_id) == []
    assert registry.descendants("root") == [a, a1, b, b1]
    assert registry.descendants("b-team") == [b1]
    assert registry.descendants("a1") == []
    with pytest.raises(AgentNotFoundError):
        registry.ancestors("ghost")
    with pytest.raises(AgentNotFoundError):
        registry.descendants(str(uuid.uuid4()))


# ------------------------------------------------------------------------------------------ broken registry


def broken_registries() -> Iterator[tuple[str, Callable[[Path], None], str]]:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())

    def text(content: str) -> Callable[[Path], None]:
        def write(path: Path) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)

        return write

    yield "not json", text("{not json"), "not valid JSON.*bak.1"
    yield "not an object", text("[]"), "JSON object"
    yield "agents not an object", text('{"agents": []}'), "'agents' must be a JSON object"
    yield "bad record", lambda p: write_registry(p, [raw("bad\nname")]), "is invalid.*name"
    yield "record not an object", lambda p: write_registry(p, {a: "x"}), "is invalid"
    yield "key mismatch", lambda p: write_registry(p, {a: raw("bot", agent_id=b)}), "has agent_id"
    yield "duplicate names", lambda p: write_registry(p, [raw("bot"), raw("bot")]), "used by two agents"
    yield "dangling parent", lambda p: write_registry(p, [raw("bot", parent_id=a)]), "does not exist"
    yield (
        "cycle",
        lambda p: write_registry(p, [raw("x", parent_id=b, agent_id=a), raw("y", parent_id=a, agent_id=b)]),
        "cycle",
    )


@pytest.mark.parametrize(
    ("label", "breaker", "message"), list(broken_registries()), ids=[b[0] for b in broken_registries()]
)
def test_a_broken_registry_fails_closed_and_is_never_overwritten(
    path: Path, label: str, breaker: Callable[[Path], None], message: str
) -> None:
    breaker(path)
    before = path.read_bytes()
    registry = AgentRegistry(path)
    for action in (
        lambda: registry.get("bot"),
        lambda: registry.list(),
        lambda: registry.register("new", "ops"),
        lambda: registry.suspend("bot"),
    ):
        with pytest.raises(RegistryError, match=message):
            action()
    assert path.read_bytes() == before


def test_a_cycle_cannot_be_created_through_the_api(registry: AgentRegistry) -> None:
    # The only way to set a parent is at registration, to an agent that already exists; a new agent has no
    # descendants, so it cannot become its own ancestor. Every agent's chain ends at a root.
    registry.register("root", "ops")
    for n in range(10):
        registry.register(f"n{n}", "ops", parent="root" if n == 0 else f"n{n - 1}")
    for agent in registry.list():
        chain = registry.ancestors(agent.agent_id)
        ids = [agent.agent_id, *(a.agent_id for a in chain)]
        assert len(ids) == len(set(ids))
        assert not chain or chain[-1].name == "root"


def test_an_unreadable_registry_is_a_registry_error(path: Path) -> None:
    path.mkdir(parents=True)  # a folder where the file should be
    with pytest.raises(RegistryError, match="cannot read"):
        AgentRegistry(path).get("bot")


# ------------------------------------------------------------------------------------------- files, backups


def test_backups_roll(registry: AgentRegistry, path: Path) -> None:
    for n in range(5):
        registry.register(f"bot-{n}", "ops")
    backups = sorted(p.name for p in path.parent.glob("agents.json.bak.*"))
    assert backups == ["agents.json.bak.1", "agents.json.bak.2", "agents.json.bak.3"]
    assert len(json.loads(path.with_name("agents.json.bak.1").read_bytes())["agents"]) == 4
    assert len(json.loads(path.with_name("agents.json.bak.3").read_bytes())["agents"]) == 2
    leftovers = [p.name for p in path.parent.iterdir() if ".tmp" in p.name]
    assert not leftovers


def failing_fsync(monkeypatch: pytest.MonkeyPatch, times: int, error: OSError) -> list[int]:
    """The disk refuses the next ``times`` fsyncs of a registry write with ``error``, then works."""
    import caracal.core.fileio as fileio

    calls: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) <= times:
            raise error
        real(fd)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    return calls


def test_a_transient_write_failure_is_tried_again(
    registry: AgentRegistry, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.register("first", "ops")
    calls = failing_fsync(monkeypatch, 2, OSError(5, "Input/output error"))
    agent = registry.register("second", "ops")  # the backup write failed twice, then went through
    assert len(calls) >= 3
    names = sorted(a["name"] for a in json.loads(path.read_bytes())["agents"].values())
    assert names == ["first", "second"] and AgentRegistry(path).get(agent.agent_id) is not None
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("error", "attempts"),
    [(OSError(5, "Input/output error"), 3), (PermissionError(13, "Permission denied"), 1)],
    ids=["still-failing", "permanent"],
)
def test_a_write_that_keeps_failing_raises_and_keeps_the_old_document(
    registry: AgentRegistry, path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, attempts: int
) -> None:
    from caracal.exceptions import FileWriteError

    registry.register("first", "ops")
    before = path.read_bytes()
    calls = failing_fsync(monkeypatch, 100, error)
    with pytest.raises(FileWriteError, match="cannot write"):
        registry.register("second", "ops")
    assert len(calls) == attempts  # tried again only when it may pass, and a bounded number of times
    assert path.read_bytes() == before
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_default_path_is_under_caracal_home(caracal_home: Path) -> None:
    assert default_agents_path() == caracal_home / "data" / "agents.json"
    assert default_agents_path(Path("/x")) == Path("/x/data/agents.json")


def test_repr_names_the_file(path: Path) -> None:
    assert str(path) in repr(AgentRegistry(path))


# ------------------------------------------------------------------------------------------------ the cache


class ParseCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.parses = 0
        self.opens = 0
        parse = AgentRegistry._parse
        real_open = agents_module.open_for_reading

        def counting_parse(registry: AgentRegistry, data: bytes) -> Any:
            self.parses += 1
            return parse(registry, data)

        def counting_open(*args: Any, **kwargs: Any) -> Any:
            self.opens += 1
            return real_open(*args, **kwargs)

        monkeypatch.setattr(AgentRegistry, "_parse", counting_parse)
        monkeypatch.setattr(agents_module, "open_for_reading", counting_open)


def test_repeated_reads_of_an_unchanged_file_cost_one_stat(
    registry: AgentRegistry, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.register("bot", "ops")
    make_old(path)
    counter = ParseCounter(monkeypatch)
    for _ in range(100):
        registry.get("bot")
        registry.list()
    assert counter.parses == 1
    assert counter.opens == 1


def test_a_freshly_written_file_is_compared_by_content_not_reparsed(
    registry: AgentRegistry, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.register("bot", "ops")  # just written: inside the racy window
    counter = ParseCounter(monkeypatch)
    for _ in range(20):
        registry.get("bot")
    assert counter.parses == 1  # the bytes were re-read and found equal
    assert counter.opens == 20


def test_another_instance_changing_the_file_invalidates_the_cache(path: Path) -> None:
    reader = AgentRegistry(path)
    writer = AgentRegistry(path)
    writer.register("bot", "ops")
    make_old(path)
    assert reader.get("bot").status == "active"
    assert reader.get("bot").status == "active"  # served from the cache
    writer.suspend("bot")
    assert reader.get("bot").status == "suspended"
    writer.register("other", "ops")
    assert [a.name for a in reader.list()] == ["bot", "other"]


def test_a_file_deleted_and_recreated_is_noticed(path: Path) -> None:
    reader = AgentRegistry(path)
    AgentRegistry(path).register("bot", "ops")
    make_old(path)
    assert reader.get("bot").name == "bot"
    path.unlink()
    with pytest.raises(AgentNotFoundError):
        reader.get("bot")
    AgentRegistry(path).register("bot", "ops")
    assert reader.get("bot").name == "bot"


def test_an_in_place_edit_with_the_same_size_and_restored_mtime_is_noticed(
    registry: AgentRegistry, path: Path
) -> None:
    # The worst case for a stat-keyed cache: same inode, same size, same mtime. The change time (which no
    # one can set back) still moves, and a read inside the racy window is checked by content.
    registry.register("bot", "ops")
    make_old(path)
    assert registry.get("bot").status == "active"
    st = path.stat()
    data = path.read_bytes()
    edited = data.replace(b'"owner":"ops"', b'"owner":"dev"')
    assert len(edited) == len(data) and edited != data
    with open(path, "r+b") as file:
        file.write(edited)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_ino == st.st_ino and path.stat().st_mtime_ns == st.st_mtime_ns
    assert registry.get("bot").owner == "dev"


def test_a_cache_built_inside_the_racy_window_is_not_trusted_by_key(
    registry: AgentRegistry, path: Path
) -> None:
    registry.register("bot", "ops")
    assert registry.get("bot").owner == "ops"  # cached while the file is fresh: not trusted by its key
    cached = registry._cache
    assert cached is not None and not cached.trusted
    # Fake the hazard: the file changes but keeps the cached stat key exactly.
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"owner":"ops"', b'"owner":"dev"'))
    registry._cache = agents_module._Cached(
        agents_module._stat_key(path.stat()), cached.data, cached.snapshot, trusted=False
    )
    assert registry.get("bot").owner == "dev"


# ------------------------------------------------------------------------------------------ concurrency

PROCESSES = 4
THREADS = 3
UNIQUE_PER_THREAD = 4
SHARED_NAMES = 4

# Each worker process: a registry shared by half its threads, one per thread for the others; every thread
# registers its own names under "root" and tries every shared name. Prints what each thread got back.
WORKER = r"""
import json, sys, threading, time
from pathlib import Path
from caracal.storage.agents import AgentRegistry
from caracal.exceptions import DuplicateAgentError

path, worker, threads, unique, shared, ready, go = sys.argv[1:8]
worker, threads, unique, shared = int(worker), int(threads), int(unique), int(shared)
common = AgentRegistry(path, lock_timeout=60)
registries = [common if t % 2 == 0 else AgentRegistry(path, lock_timeout=60) for t in range(threads)]
start = threading.Event()
results, errors = {}, []

def run(t):
    registry, won, lost = registries[t], [], []
    try:
        if not start.wait(60):
            raise TimeoutError("no go signal")
        for i in range(max(unique, shared)):
            if i < shared:
                name = f"shared-{(i + worker + t) % shared}"
                try:
                    agent = registry.register(name, f"w{worker}t{t}")
                    won.append(agent.to_dict())
                except DuplicateAgentError:
                    lost.append(name)
            if i < unique:
                agent = registry.register(f"w{worker}-t{t}-{i}", "ops", parent="root", metadata={"w": worker})
                won.append(agent.to_dict())
        results[t] = {"won": won, "lost": lost}
    except BaseException as exc:
        errors.append(f"thread {t}: {exc!r}")

pool = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
for thread in pool:
    thread.start()
Path(ready).touch()
deadline = time.monotonic() + 60
while not Path(go).exists() and time.monotonic() < deadline:
    time.sleep(0.002)
start.set()
for thread in pool:
    thread.join(90)
print(json.dumps({"results": results, "errors": errors}))
"""


@pytest.mark.slow
def test_processes_and_threads_registering_at_once(tmp_path: Path, path: Path) -> None:
    root = AgentRegistry(path).register("root", "ops")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{w}" for w in range(PROCESSES)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(path),
                str(w),
                str(THREADS),
                str(UNIQUE_PER_THREAD),
                str(SHARED_NAMES),
                str(ready[w]),
                str(go),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(PROCESSES)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.01)
        go.touch()
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    won: list[dict[str, Any]] = []
    lost: Counter[str] = Counter()
    for (out, err), proc in zip(outputs, procs, strict=True):
        assert proc.returncode == 0, err
        report = json.loads(out)
        assert report["errors"] == [], report["errors"]
        assert len(report["results"]) == THREADS
        for result in report["results"].values():
            won.extend(result["won"])
            lost.update(result["lost"])

    # Every distinct name registered exactly once; each shared name won once and lost by everyone else.
    names = Counter(agent["name"] for agent in won)
    assert all(count == 1 for count in names.values()), names
    shared = {f"shared-{i}" for i in range(SHARED_NAMES)}
    unique = {
        f"w{w}-t{t}-{i}" for w in range(PROCESSES) for t in range(THREADS) for i in range(UNIQUE_PER_THREAD)
    }
    assert set(names) == shared | unique
    assert lost == {name: PROCESSES * THREADS - 1 for name in shared}

    # Nothing lost: the file holds exactly what the workers were given back, and it parses.
    document = stored(path)
    assert set(document) == {"agents"}
    on_disk = document["agents"]
    assert len(on_disk) == 1 + len(shared) + len(unique)
    for agent in won:
        assert on_disk[agent["agent_id"]] == agent
    registry = AgentRegistry(path)
    assert len(registry.list()) == len(on_disk)
    assert {a.name for a in registry.list(parent="root")} == unique
    assert all(registry.get(name).parent_id is None for name in shared)
    assert len(registry.descendants(root.agent_id)) == len(unique)

    # Backups exist and parse; no temporary files are left behind.
    for n in (1, 2, 3):
        backup = json.loads(path.with_name(f"agents.json.bak.{n}").read_bytes())
        assert len(backup["agents"]) == len(on_disk) - n
    assert not [p.name for p in path.parent.iterdir() if ".tmp" in p.name]


def test_threads_sharing_one_registry_object(path: Path) -> None:
    import threading

    registry = AgentRegistry(path)
    outcomes: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def run(n: int) -> None:
        try:
            barrier.wait(10)
            try:
                registry.register("same", f"owner-{n}")
                outcomes.append("won")
            except DuplicateAgentError:
                outcomes.append("lost")
            registry.register(f"own-{n}", "ops", parent="same" if n % 2 else None)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(30)
    assert not errors, errors
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]
    assert len(registry.list()) == 9
    assert len(registry.list(parent="same")) == 4


def test_identity_errors_share_the_root(registry: AgentRegistry) -> None:
    with pytest.raises(IdentityError):
        registry.get("ghost")
    assert isinstance(registry.register("bot", "ops"), Agent)
