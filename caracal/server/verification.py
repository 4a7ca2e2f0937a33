"""Whole-ledger verifications in ``caracal serve``: on demand (the API, the dashboard) and on a schedule.

Enforcement checks each line once, as it reads it; a line it read long ago is not read again (a genuine
budget snapshot is trusted, see the README). An edit of such a line, one that keeps the chain (or keeps the
line's length, on files), is only found by a verification of the whole ledger. So a server verifies it
every ``[ledger] verify_interval`` seconds (default 3600; 0: never), and a verification that finds a
problem, scheduled or not:

- is recorded as the home's last verification (the dashboard shows it, from any server process);
- fires ``ledger.verification_failed`` for the rules that watch for it;
- stops enforcement, as a problem found while reading does: every decision is denied ("the ledger failed
  verification ..."). The server process that verified stops at once; every other server process of the
  home, on any host, stops within :data:`TICK` seconds of the result (each looks at the last verification
  that often). A server restarted afterwards verifies again first thing if the last verification failed,
  so restore the ledger from a backup before restarting.

Invariants of the schedule:

- One verification per interval per home, whatever the number of workers and hosts: a process claims the
  run in the home's ``dashboard`` document (its transactions are serialized across processes and hosts),
  renews the claim while the verification runs, and the claim lapses :data:`CLAIM_TTL` seconds after its
  process died.
- The shared document is storage an attacker may edit, so the result and the claim are sealed (an HMAC
  under a key derived from the home's signing key, which lives in ``keys/``, never in the storage; see
  :mod:`caracal.core.sealed`). An unsealed or edited one is ignored: a forged failure stops nothing, a
  forged success or claim postpones nothing. So is one dated beyond what a genuine one could be.
- The verification runs in a child process (``caracal ledger verify --json``, at a lower CPU priority):
  the server's event loop never waits for the GIL while the whole ledger is hashed.
- A verification that could not run (the database unreachable, the child killed) records nothing and
  is tried again :data:`RETRY_AFTER` seconds later; it does not stop enforcement (nothing was found).
"""

from __future__ import annotations

import hmac
import logging
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import orjson

from caracal.core.ledger import remembered_root
from caracal.core.sealed import mac
from caracal.core.verify import default_public_key, verify_ledger
from caracal.exceptions import CaracalError, LedgerVerificationError
from caracal.storage.alerts import lease_owner

if TYPE_CHECKING:
    from caracal.server.service import Service

logger = logging.getLogger("caracal.verify")

TICK = 5.0
"""Seconds between two looks at the last verification (is one due; did one fail in another process)."""
CLAIM_TTL = timedelta(seconds=120)
"""How long a claim holds without renewal (renewed every third of it while the child runs)."""
RETRY_AFTER = timedelta(seconds=60)
"""After a verification that could not run, the next try waits this long."""
CLAIM_FIELD = "verify_claim"
LAST_FIELD = "last_verify"
SEAL_FIELD = "seal"
SEAL_PURPOSE = "verification"

_CHILD = "import os; hasattr(os, 'nice') and os.nice(10); from caracal.cli.main import main; main()"


def verify_and_record(
    service: Service, progress: Callable[[int, int], None] | None = None, trigger: str = "request"
) -> dict[str, Any]:
    """Verify the whole ledger in this process (as ``caracal ledger verify``), then :func:`record` the
    result (``trigger``: what asked for it); returns the report's dict."""
    key = default_public_key(service.home.key_path)
    started = service.home.now()
    ledger = service.home.ledger
    remembered = remembered_root(ledger, service.home.key_path)
    report = verify_ledger(ledger, public_key=key, progress=progress, remembered=remembered).to_dict()
    record(service, report, started, trigger)
    return report


def sealed_record(service: Service, value: dict[str, Any]) -> dict[str, Any]:
    """``value`` with its seal (field ``seal``: an HMAC over its canonical JSON)."""
    payload = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return {**value, SEAL_FIELD: mac(service.enforcer.writer.cache_key(SEAL_PURPOSE), SEAL_PURPOSE, payload)}


def genuine(service: Service, value: object) -> dict[str, Any] | None:
    """``value`` (without its seal) if it is a record this home's servers sealed; else None (edited,
    forged, or written before records were sealed)."""
    if not isinstance(value, Mapping) or not isinstance(value.get(SEAL_FIELD), str):
        return None
    unsealed = {key: item for key, item in value.items() if key != SEAL_FIELD}
    try:
        expected = sealed_record(service, unsealed)[SEAL_FIELD]
    except (TypeError, orjson.JSONEncodeError):  # nothing a server writes (an integer past 64 bits...)
        return None
    return unsealed if hmac.compare_digest(expected, value[SEAL_FIELD]) else None


def record(service: Service, report: Mapping[str, Any], started: datetime, trigger: str) -> None:
    """Record a verification's ``report`` (``VerificationReport.to_dict()``) as the home's last one, sealed;
    when it found a problem, fire the alert and stop this process's enforcement (see the module
    docstring)."""
    entry = {
        "ok": bool(report["ok"]),
        "events": report["events"],
        "first_bad_event_id": report["first_bad_event_id"],
        "problems": [problem["message"] for problem in report["problems"][:5]],
        "started": started.isoformat(),
        "finished": service.home.now().isoformat(),
        "trigger": trigger,
    }
    with service.home.dashboard.transaction() as document:
        document[LAST_FIELD] = sealed_record(service, entry)
    if not entry["ok"]:
        failure = _failure(entry)
        service.enforcer.distrust(failure)
        service.alerting.ledger_verification_failed(failure)


def _failure(entry: Mapping[str, Any]) -> LedgerVerificationError:
    bad = entry.get("first_bad_event_id")
    problems = entry.get("problems") or ["verification failed"]
    where = f" at event {bad}" if isinstance(bad, int) else ""
    return LedgerVerificationError(
        f"the ledger failed verification{where} (the verification of {entry.get('finished')}): "
        f"{problems[0]}. Budgets cannot be proven, so every action is denied; run 'caracal ledger verify' "
        "and restore the ledger from a backup",
        first_bad_event_id=bad if isinstance(bad, int) else None,
    )


def _dates(last: Mapping[str, Any] | None, now: datetime) -> tuple[datetime, datetime] | None:
    """A recorded verification's (started, finished), or None when there is none, or its dates are
    unreadable or impossible (dated beyond any genuine one: past ``now`` by more than a claim lasts)."""
    if last is None:
        return None
    started, finished = _time(last.get("started")), _time(last.get("finished"))
    if started is None or finished is None or not started <= finished <= now + CLAIM_TTL:
        return None
    return started, finished


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


class ScheduledVerification:
    """The schedule of one server process (a daemon thread: :meth:`start`, :meth:`close`)."""

    def __init__(self, service: Service, interval: float):
        self.service = service
        self.interval = timedelta(seconds=interval)
        self.owner = lease_owner()
        self.started = service.home.now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._child_lock = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="caracal-verify", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        with self._child_lock:
            if self._child is not None and self._child.poll() is None:
                self._child.terminate()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(min(TICK, self.interval.total_seconds())):
            try:
                self.run_once()
            except CaracalError as exc:
                logger.warning("scheduled verification: %s", exc)
            except Exception:  # a background thread must not die
                logger.exception("scheduled verification failed; trying again in %s s", TICK)

    def run_once(self) -> bool:
        """One look: adopt another process's failed verification; verify when due and claimed. Returns
        whether this call ran a verification."""
        # The dashboard's parse (MappingProxyType): a document keeps one cached parse, shared by its readers.
        last = genuine(
            self.service, self.service.home.dashboard.read_cached(MappingProxyType).get(LAST_FIELD)
        )
        now = self.service.home.now()
        dates = _dates(last, now)
        if dates is not None and last is not None and last.get("ok") is False and dates[1] >= self.started:
            self.service.enforcer.distrust(_failure(last))
        if not self._due(last, now) or not self._claim():
            return False
        self._verify()
        return True

    def _due(self, last: dict[str, Any] | None, now: datetime) -> bool:
        """Due an interval after the last (genuine) verification started, or after this process started
        when there is none it can use (none yet, or dated in the future); at once when the last one failed
        before this process started (is the ledger restored?)."""
        dates = _dates(last, now)
        if dates is None:
            return now - self.started >= self.interval
        if last is not None and last.get("ok") is False and dates[1] < self.started:
            return True
        return now - dates[0] >= self.interval

    def _claim(self) -> bool:
        """Take the run in the shared document, unless another live process holds it or it is no longer
        due (another process verified since this one looked)."""
        with self.service.home.dashboard.transaction() as document:
            now = self.service.home.now()
            if not self._due(genuine(self.service, document.get(LAST_FIELD)), now):
                return False
            claim = genuine(self.service, document.get(CLAIM_FIELD))
            if claim is not None and claim.get("owner") != self.owner:
                until = _time(claim.get("until"))
                if until is not None and now < until <= now + CLAIM_TTL:
                    return False
            document[CLAIM_FIELD] = sealed_record(
                self.service, {"owner": self.owner, "until": (now + CLAIM_TTL).isoformat()}
            )
            return True

    def _own_claim(self, length: timedelta | None) -> None:
        """Extend this process's claim to ``length`` from now, or (None) release it; a claim that is no
        longer this process's (it lapsed and another took it) is left alone."""
        with self.service.home.dashboard.transaction() as document:
            claim = genuine(self.service, document.get(CLAIM_FIELD))
            if claim is None or claim.get("owner") != self.owner:
                return
            if length is None:
                del document[CLAIM_FIELD]
            else:
                until = self.service.home.now() + length
                document[CLAIM_FIELD] = sealed_record(
                    self.service, {"owner": self.owner, "until": until.isoformat()}
                )

    def _verify(self) -> None:
        started = self.service.home.now()
        report = self._run_child()
        if report is None:
            self._own_claim(RETRY_AFTER)  # nobody tries again before then
            return
        record(self.service, report, started, "schedule")
        self._own_claim(None)
        logger.info(
            "scheduled verification of %s events: %s",
            report.get("events"),
            "intact" if report.get("ok") else "PROBLEMS FOUND",
        )

    def _run_child(self) -> dict[str, Any] | None:
        """``caracal ledger verify --json`` on this home in a child; its report, or None when it did not
        produce one (logged)."""
        home = str(self.service.home.home)
        command = [sys.executable, "-c", _CHILD, "--home", home, "ledger", "verify", "--json", "--quiet"]
        with self._child_lock:
            if self._stop.is_set():
                return None
            child = self._child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        renew = CLAIM_TTL.total_seconds() / 3
        while True:
            try:
                output, errors = child.communicate(timeout=renew)
                break
            except subprocess.TimeoutExpired:
                self._own_claim(CLAIM_TTL)
        with self._child_lock:
            self._child = None
        try:
            report = orjson.loads(output) if child.returncode in (0, 3) else None
        except orjson.JSONDecodeError:
            report = None
        if not isinstance(report, dict) or "ok" not in report:
            text = errors.decode(errors="replace").strip().splitlines()
            logger.warning(
                "the scheduled verification did not run to the end (exit %s): %s; trying again in %s s",
                child.returncode,
                text[-1] if text else "no message",
                int(RETRY_AFTER.total_seconds()),
            )
            return None
        return report
