"""The gateway's registry of Responses API responses, on the home's backend (files and PostgreSQL): who owns
a response, the tokens a continuation must hold for, retention and size bounds, damage refused."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from caracal.exceptions import GatewayRequestError, RegistryError, ResponseNotFoundError
from caracal.storage.home import EmbeddedHome
from caracal.storage.interface import REGISTRIES, Document
from caracal.storage.responses import (
    MAX_ENTRIES,
    RETENTION,
    SHARD_NAMES,
    SHARDS,
    ResponseRegistry,
    empty_responses,
)

AGENT = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
OTHER = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
START = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def home(caracal_home: Path, storage: str) -> Iterator[EmbeddedHome]:
    home = EmbeddedHome(caracal_home)
    if not home.on_files:
        home.backend.initialize()
    try:
        yield home
    finally:
        home.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def registry(home: EmbeddedHome, clock: Clock, **bounds: object) -> ResponseRegistry:
    """A registry of one shard (the first of the home's), so that size bounds are exact."""
    return ResponseRegistry([first_shard(home)], clock, sealing_key(home), **bounds)  # type: ignore[arg-type]


def sealing_key(home: EmbeddedHome) -> Callable[[], bytes]:
    return lambda: home.writer().cache_key("responses")


def first_shard(home: EmbeddedHome) -> Document:
    return home.backend.document(SHARD_NAMES[0], empty_responses)


def test_the_registry_is_one_of_the_backends_registries(home: EmbeddedHome) -> None:
    # copied by `caracal migrate`, accepted by the PostgreSQL backend
    assert len(SHARD_NAMES) == SHARDS and set(SHARD_NAMES) <= set(REGISTRIES)
    home.responses.record("resp_1", AGENT, 12)
    assert home.responses.get("resp_1", AGENT).tokens == 12


def test_a_response_is_found_only_for_the_agent_that_created_it(home: EmbeddedHome, clock: Clock) -> None:
    responses = registry(home, clock)
    responses.record("resp_abc", AGENT, 120)
    found = responses.get("resp_abc", AGENT)
    assert (found.response_id, found.agent_id, found.tokens) == ("resp_abc", AGENT, 120)
    with pytest.raises(ResponseNotFoundError) as other:
        responses.get("resp_abc", OTHER)
    with pytest.raises(ResponseNotFoundError) as unknown:
        responses.get("resp_nope", AGENT)
    # The same answer whether the id exists for someone else or not at all (only the id differs).
    assert str(other.value).replace("resp_abc", "X") == str(unknown.value).replace("resp_nope", "X")


def test_another_agent_cannot_take_over_a_response(home: EmbeddedHome, clock: Clock) -> None:
    responses = registry(home, clock)
    responses.record("resp_abc", AGENT, 120)
    responses.record("resp_abc", OTHER, 5)
    assert responses.get("resp_abc", AGENT).tokens == 120
    with pytest.raises(ResponseNotFoundError):
        responses.get("resp_abc", OTHER)


def test_recording_again_sets_the_tokens(home: EmbeddedHome, clock: Clock) -> None:
    """A stream is recorded at its worst case first, then at its reported usage."""
    responses = registry(home, clock)
    responses.record("resp_s", AGENT, 5000)
    responses.record("resp_s", AGENT, 37)
    assert responses.get("resp_s", AGENT).tokens == 37


def test_records_expire_after_the_retention(home: EmbeddedHome, clock: Clock) -> None:
    responses = registry(home, clock)
    responses.record("resp_old", AGENT, 1)
    clock.now = START + RETENTION - timedelta(seconds=1)
    assert responses.get("resp_old", AGENT).tokens == 1
    clock.now = START + RETENTION + timedelta(seconds=1)
    with pytest.raises(ResponseNotFoundError):
        responses.get("resp_old", AGENT)
    responses.record("resp_new", AGENT, 2)  # a write drops the expired record from the document
    stored = first_shard(home).read()["responses"]
    assert set(stored) == {"resp_new"}


def test_the_oldest_records_are_dropped_past_the_size_bound(home: EmbeddedHome, clock: Clock) -> None:
    responses = registry(home, clock, max_entries=3)
    for index in range(5):
        clock.now = START + timedelta(seconds=index)
        responses.record(f"resp_{index}", AGENT, index)
    for index in (0, 1):
        with pytest.raises(ResponseNotFoundError):
            responses.get(f"resp_{index}", AGENT)
    assert [responses.get(f"resp_{index}", AGENT).tokens for index in (2, 3, 4)] == [2, 3, 4]


def test_forget_drops_a_record(home: EmbeddedHome, clock: Clock) -> None:
    responses = registry(home, clock)
    responses.record("resp_gone", AGENT, 9)
    responses.forget("resp_gone")
    responses.forget("resp_never")
    with pytest.raises(ResponseNotFoundError):
        responses.get("resp_gone", AGENT)


def test_records_survive_a_new_home_object(caracal_home: Path, home: EmbeddedHome) -> None:
    home.responses.record("resp_kept", AGENT, 77)
    again = EmbeddedHome(caracal_home)
    try:
        assert again.responses.get("resp_kept", AGENT).tokens == 77
    finally:
        again.close()


def test_concurrent_records_are_all_kept(home: EmbeddedHome, clock: Clock) -> None:
    responses = registry(home, clock)

    def write(worker: int) -> None:
        for index in range(10):
            responses.record(f"resp_{worker}_{index}", AGENT, index)

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = first_shard(home).read()["responses"]
    assert len(stored) == 40


@pytest.mark.parametrize("bad", ["", "resp/../x", "resp?x=1", "r" * 201, 12])
def test_ids_that_could_not_be_put_in_a_url_are_refused(
    home: EmbeddedHome, clock: Clock, bad: object
) -> None:
    responses = registry(home, clock)
    with pytest.raises(GatewayRequestError):
        responses.record(bad, AGENT, 1)  # type: ignore[arg-type]
    with pytest.raises(ResponseNotFoundError):
        responses.get(bad, AGENT)  # type: ignore[arg-type]


@pytest.mark.parametrize("tokens", [-1, True, 1.5, "3"])
def test_bad_token_counts_are_refused(home: EmbeddedHome, clock: Clock, tokens: object) -> None:
    with pytest.raises(GatewayRequestError):
        registry(home, clock).record("resp_t", AGENT, tokens)  # type: ignore[arg-type]


def test_a_damaged_document_is_refused_not_guessed(home: EmbeddedHome, clock: Clock) -> None:
    with first_shard(home).transaction() as stored:
        stored["responses"] = {"resp_x": [AGENT, "many", "2026"]}
    responses = registry(home, clock)
    with pytest.raises(RegistryError, match="resp_x"):
        responses.get("resp_x", AGENT)
    with pytest.raises(RegistryError, match="resp_x"):
        responses.record("resp_y", AGENT, 1)


def test_record_many_applies_in_order_and_writes_nothing_if_one_is_invalid(
    home: EmbeddedHome, clock: Clock
) -> None:
    responses = registry(home, clock)
    responses.record_many([("resp_a", AGENT, 900), ("resp_b", OTHER, 4), ("resp_a", AGENT, 31)])
    assert responses.get("resp_a", AGENT).tokens == 31  # the later record of the same response wins
    assert responses.get("resp_b", OTHER).tokens == 4
    with pytest.raises(GatewayRequestError):
        responses.record_many([("resp_c", AGENT, 1), ("resp d", AGENT, 1)])
    with pytest.raises(ResponseNotFoundError):
        responses.get("resp_c", AGENT)


def test_a_record_written_elsewhere_is_found_at_once(caracal_home: Path, home: EmbeddedHome) -> None:
    """Another server process (another home object: on PostgreSQL its own connections and notification
    listener) records a response; this one, which has the document cached, finds it immediately, so a
    continuation sent to another worker is not refused."""
    home.responses.record("resp_first", AGENT, 1)
    assert home.responses.get("resp_first", AGENT).tokens == 1  # the document is now cached here
    elsewhere = EmbeddedHome(caracal_home)
    try:
        elsewhere.responses.record("resp_there", AGENT, 5)
        assert home.responses.get("resp_there", AGENT).tokens == 5
    finally:
        elsewhere.close()


def _shard_contents(home: EmbeddedHome) -> list[dict[str, object]]:
    return [home.backend.document(name, empty_responses).read().get("responses", {}) for name in SHARD_NAMES]


def test_the_homes_registry_spreads_responses_over_its_shards_and_rewrites_one_per_record(
    home: EmbeddedHome,
) -> None:
    """A record rewrites only the shard its id hashes to (so a full registry costs a sixteenth per call),
    and every response is found again whichever shard holds it."""
    ids = [f"resp_{index:04d}" for index in range(64)]
    home.responses.record_many([(response_id, AGENT, index) for index, response_id in enumerate(ids)])
    before = _shard_contents(home)
    assert sum(len(shard) for shard in before) == 64
    assert sum(1 for shard in before if shard) >= SHARDS // 2, "the ids must spread over the shards"
    assert [home.responses.get(response_id, AGENT).tokens for response_id in ids] == list(range(64))
    home.responses.record("resp_extra", AGENT, 7)
    after = _shard_contents(home)
    changed = [index for index in range(SHARDS) if before[index] != after[index]]
    assert len(changed) == 1 and "resp_extra" in after[changed[0]]


def test_the_size_bound_holds_per_shard_and_keeps_the_newest(caracal_home: Path, home: EmbeddedHome) -> None:
    clock = Clock()
    sharded = ResponseRegistry(
        [home.backend.document(name, empty_responses) for name in SHARD_NAMES],
        clock,
        sealing_key(home),
        max_entries=SHARDS * 2,
    )
    for index in range(200):
        clock.now = START + timedelta(seconds=index)
        sharded.record(f"resp_{index:04d}", AGENT, index)
    shards = _shard_contents(home)
    assert all(len(shard) <= 2 for shard in shards)
    kept = {key for shard in shards for key in shard}
    # in each shard, the newest two of the ids that hashed to it
    for shard in shards:
        newest = sorted(shard)[-1] if shard else None
        if newest is not None:
            assert sharded.get(newest, AGENT).tokens == int(newest[5:])
    assert "resp_0199" in kept and "resp_0000" not in kept
    assert MAX_ENTRIES % SHARDS == 0  # the default keeps exactly MAX_ENTRIES in all


def test_a_registry_needs_room_for_one_record_per_shard(home: EmbeddedHome, clock: Clock) -> None:
    with pytest.raises(ValueError):
        ResponseRegistry([], clock, sealing_key(home))
    with pytest.raises(ValueError):
        ResponseRegistry([first_shard(home), first_shard(home)], clock, sealing_key(home), max_entries=1)


@pytest.mark.parametrize("field", [0, 1, 2, 3])
def test_a_record_edited_in_any_field_is_refused_not_used(
    home: EmbeddedHome, clock: Clock, field: int
) -> None:
    responses = registry(home, clock)
    responses.record("resp_sealed", AGENT, 500)
    with first_shard(home).transaction() as stored:
        entry = stored["responses"]["resp_sealed"]
        entry[field] = {0: OTHER, 1: 1, 2: "2999-01-01T00:00:00.000000Z", 3: "0" * 32}[field]
    for agent in (AGENT, OTHER):
        with pytest.raises(RegistryError, match="does not verify"):
            responses.get("resp_sealed", agent)


def test_a_record_sealed_by_another_home_does_not_verify(
    tmp_path: Path, home: EmbeddedHome, clock: Clock
) -> None:
    responses = registry(home, clock)
    elsewhere = ResponseRegistry([first_shard(home)], clock, lambda: b"another home's key" * 2)
    elsewhere.record("resp_theirs", AGENT, 3)
    with pytest.raises(RegistryError, match="does not verify"):
        responses.get("resp_theirs", AGENT)
