"""Another OS process writing to the test's home, as a second worker on the same machine would.

Write paths must fold in what other writers appended before they decide; the tests that check this call
:func:`append_from_another_process` right before the write under test.
"""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = """
import sys
from caracal.sdk.client import CaracalClient
CaracalClient().emit_event(sys.argv[1], sys.argv[2], sys.argv[3])
"""


def append_from_another_process(agent: str, resource_type: str, quantity: str = "1") -> None:
    """Charge ``quantity`` of ``resource_type`` to ``agent`` from a fresh Python process on
    ``$CARACAL_HOME`` (the v0.1 pattern: a plain ``emit_event``, no close)."""
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, agent, resource_type, quantity],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
