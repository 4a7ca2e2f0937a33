"""``verify`` of a long database ledger checks its second half in a child process that reads the rows on a
connection of its own: it must find exactly what one process finds, for every tamper, wherever it falls
(the first half, the second, the row where the halves meet), and never pass a ledger one process fails.
"""

from __future__ import annotations

from typing import Any

import pytest

from caracal.core import verify
from caracal.core.ledger import LedgerWriter
from caracal.core.verify import VerificationReport, verify_ledger
from tests.core.test_replay_helper import database_ledger as database_ledger
from tests.core.test_replay_helper import on_database
from tests.core.test_verify_tamper import findings


def both(writer: LedgerWriter) -> tuple[VerificationReport, VerificationReport]:
    """The report of one process and of two, on the same ledger."""
    key = writer.public_key
    return (
        verify_ledger(writer.store, public_key=key, parallel=False),
        verify_ledger(writer.store, public_key=key, parallel=True),
    )


def test_a_clean_database_ledger_verifies_the_same_in_two_processes(
    database_ledger: tuple[LedgerWriter, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    children: list[list[str]] = []
    original = verify._with_child

    def counting(args: list[str], *rest: Any) -> Any:
        children.append(args)
        return original(args, *rest)

    monkeypatch.setattr(verify, "_with_child", counting)
    one, two = both(database_ledger[0])
    assert children == [["--source", "1500", "3000"]]  # the second half was read by the child
    assert one.ok and two.ok and two.events == 3000
    assert two.root == one.root and two.checkpoints_matched == one.checkpoints_matched == 6
    assert two.bytes_checked == one.bytes_checked == 3000


ZERO_COST = (
    "UPDATE caracal_ledger SET line = "
    "convert_to(replace(convert_from(line, 'UTF8'), '\"cost\":\"0.01\"', '\"cost\":\"0.00\"'), 'UTF8')"
)
NEWLINE = "UPDATE caracal_ledger SET line = overlay(line placing '\\x0a'::bytea from 20 for 0)"
EDITS = {
    "cost-edited-in-the-first-half": f"{ZERO_COST} WHERE event_id = 700",
    "cost-edited-in-the-second-half": f"{ZERO_COST} WHERE event_id = 2345",
    "row-deleted-in-the-second-half": "DELETE FROM caracal_ledger WHERE event_id = 2345",
    "row-deleted-where-the-halves-meet": "DELETE FROM caracal_ledger WHERE event_id = 1501",
    "last-row-of-the-first-half-deleted": "DELETE FROM caracal_ledger WHERE event_id = 1500",
    "row-with-a-newline": f"{NEWLINE} WHERE event_id = 2345",
    "rows-swapped-across-the-halves": "UPDATE caracal_ledger SET event_id = 999999 WHERE event_id = 1500; "
    "UPDATE caracal_ledger SET event_id = 1500 WHERE event_id = 1501; "
    "UPDATE caracal_ledger SET event_id = 1501 WHERE event_id = 999999",
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_a_tampered_database_ledger_fails_the_same_in_two_processes(
    database_ledger: tuple[LedgerWriter, str], edit: str
) -> None:
    writer, url = database_ledger
    on_database(url, EDITS[edit])
    one, two = both(writer)
    assert not one.ok
    assert findings(two) == findings(one)
    assert two.first_bad_event_id == one.first_bad_event_id
