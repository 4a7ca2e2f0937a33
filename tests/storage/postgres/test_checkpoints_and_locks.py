"""Checkpoints, caches and the replay lock of the PostgreSQL backend."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from caracal.core.checkpoint import Checkpoint
from caracal.storage.postgres import PostgresBackend

Opener = Callable[..., PostgresBackend]


def checkpoint(size: int) -> Checkpoint:
    return Checkpoint(
        size=size,
        root=bytes([size % 256]) * 32,
        timestamp="2026-01-01T00:00:00.000000Z",
        key_id="k",
        signature=b"s" * 64,
    )


def test_append_is_idempotent_per_size_and_followers_read_only_what_is_new(open_backend: Opener) -> None:
    log = open_backend().ledger_store(lock_timeout=1).checkpoints
    other = open_backend().ledger_store(lock_timeout=1).checkpoints
    assert other.latest() is None and list(other) == [] and other.read_from(0) == ([], 0)
    log.append(checkpoint(5))
    log.append(checkpoint(5))
    first, cursor = other.read_from(0)
    assert first == [checkpoint(5)]
    assert other.read_from(cursor) == ([], cursor)
    log.append(checkpoint(9))
    log.append(checkpoint(7))  # a slower writer's smaller checkpoint, stored after
    more, _cursor2 = other.read_from(cursor)
    assert more == [checkpoint(9), checkpoint(7)]
    assert other.roots() == {5: checkpoint(5).root, 7: checkpoint(7).root, 9: checkpoint(9).root}
    assert other.latest() == checkpoint(9)  # the largest size
    assert [c.size for c in other] == [5, 9, 7]  # in the order stored


def test_concurrent_appends_never_let_a_follower_skip_one(open_backend: Opener) -> None:
    logs = [open_backend().ledger_store(lock_timeout=1).checkpoints for _ in range(3)]
    follower = open_backend().ledger_store(lock_timeout=1).checkpoints
    seen: list[int] = []
    cursor = 0
    done = threading.Event()

    def append(index: int) -> None:
        for n in range(20):
            logs[index].append(checkpoint(1 + index + 3 * n))

    threads = [threading.Thread(target=append, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    while not done.is_set():
        if not any(t.is_alive() for t in threads):
            done.set()
        records, cursor = follower.read_from(cursor)
        seen += [c.size for c in records]
    assert sorted(seen) == list(range(1, 61))


def test_caches_are_kept_per_schema(open_backend: Opener, admin: Any) -> None:
    store = open_backend().ledger_store(lock_timeout=1)
    store.save_cache("merkle", b"\x00state")
    store.save_cache("merkle", b"\x01state")
    assert open_backend().ledger_store(lock_timeout=1).load_cache("merkle") == b"\x01state"
    assert admin.execute("SELECT count(*) FROM caracal_caches").fetchone() == (1,)


HOLDER = """
import sys, time
from caracal.storage.postgres import PostgresBackend
backend = PostgresBackend(sys.argv[1])
store = backend.ledger_store(lock_timeout=1)
with store.replay_lock(5) as taken:
    print("held" if taken else "not taken", flush=True)
    sys.stdin.readline()
backend.close()
"""


def test_the_replay_lock_excludes_other_processes(pg_url: str, open_backend: Opener) -> None:
    store = open_backend().ledger_store(lock_timeout=1)
    store.end()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, pg_url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with store.replay_lock(0.2) as taken:
            assert not taken
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
    with store.replay_lock(5) as taken:
        assert taken


def test_the_replay_lock_of_one_schema_does_not_block_another(open_backend: Opener) -> None:
    from tests.pg import create_schema, drop_schema

    schema, url = create_schema()
    try:
        here = open_backend().ledger_store(lock_timeout=1)
        there = open_backend(url=url).ledger_store(lock_timeout=1)
        with here.replay_lock(1) as taken, there.replay_lock(0.1) as also:
            assert taken and also
    finally:
        drop_schema(schema)
