"""The embedded backend: a Caracal home folder (registries, ledger, key) wired into one object.

Layout (``$CARACAL_HOME``, else ``~/.caracal``)::

    config.toml                 documented settings (written by ``caracal init``)
    data/ledger.jsonl (+ sidecars)
    data/agents.json  data/policies.json  data/prices.json   (each with .lock and .bak.N)
    data/apikeys.json             API keys of the server (hashes only)
    data/alerts.json  data/alert_outbox.json   alert rules (with their secrets; 0600) and their outbox
    data/responses.<0-f>.json     Responses API responses created through the gateway (owner, tokens)
    keys/checkpoint.key (0600) and keys/checkpoint.key.pub
    keys/admin.key (0600)         the server's admin API key

:class:`RegistryDirectory` answers enforcement's questions (who is this agent, who are its ancestors, is it
active, what are its policies) from the registries, with the caching that keeps a budget check cheap.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caracal.config import (
    Settings,
    caracal_home,
    default_ledger_path,
    default_signing_key_path,
    load_settings,
)
from caracal.core.alerts import AlertRule
from caracal.core.denials import empty_denials
from caracal.core.identity import Agent
from caracal.core.ledger import LedgerWriter
from caracal.core.policy import Policy
from caracal.core.store import LedgerStore
from caracal.exceptions import AgentNotFoundError, AgentSuspendedError, CaracalError, InvalidAgentError
from caracal.storage.agents import AgentRegistry, empty_agents
from caracal.storage.alerts import AlertStore, empty_alerts, empty_outbox
from caracal.storage.apikeys import ApiKeyRegistry, default_admin_key_path, default_apikeys_path, empty_keys
from caracal.storage.backends import open_backend
from caracal.storage.denials import DenialLog
from caracal.storage.interface import Backend, Document
from caracal.storage.policies import PolicyRegistry, empty_policies
from caracal.storage.prices import PriceRegistry, empty_prices
from caracal.storage.responses import SHARD_NAMES, ResponseRegistry, empty_responses

if TYPE_CHECKING:
    from caracal.core.enforcement import Enforcer, OverHold


logger = logging.getLogger("caracal.holds")


class RegistryDirectory:
    """The :class:`caracal.core.enforcement.Directory` of an embedded home."""

    def __init__(self, agents: AgentRegistry, policies: PolicyRegistry):
        self.agents = agents
        self.policies_registry = policies
        self._chains: dict[str, tuple[str, ...]] = {}
        self._ids: dict[str, str] = {}

    def agent(self, ref: str) -> Agent:
        return self.agents.get(ref)

    def agent_id(self, ref: str) -> str:
        """Resolved once per reference, then cached: ids and names never change and agents are never
        deleted, so a budget check need not read the registry just to know who it is about."""
        agent_id = self._ids.get(ref)
        if agent_id is None:
            agent_id = self.agents.get(ref).agent_id
            self._ids[ref] = agent_id
        return agent_id

    def chain(self, agent_id: str) -> tuple[str, ...]:
        """The agent and its ancestors, nearest first. Cached forever: an agent's parent never changes."""
        chain = self._chains.get(agent_id)
        if chain is None:
            try:
                ancestors = self.agents.ancestors(agent_id)
            except (AgentNotFoundError, InvalidAgentError):
                # Ledger entries may name agents the registry does not know (appended with the plain ledger
                # API): their spend counts for that id alone. Not cached, in case it is registered later.
                return (agent_id,)
            chain = (agent_id, *(a.agent_id for a in ancestors))
            self._chains[agent_id] = chain
        return chain

    def suspended(self, chain: tuple[str, ...]) -> str | None:
        try:
            self.agents.require_active(chain[0])
        except AgentSuspendedError:
            for member in chain:
                if self.agents.get(member).status != "active":
                    return member
        return None

    def policies(self, chain: tuple[str, ...]) -> Sequence[tuple[str, Sequence[Policy]]]:
        return self.policies_registry.active_for_chain(chain)


def open_ledger_writer(backend: Backend, key_path: Path, settings: Settings) -> LedgerWriter:
    """A ledger writer on the backend's ledger store, configured by the home's ``config.toml``."""
    store = backend.ledger_store(
        lock_timeout=settings.lock_timeout,
        backup_count=settings.backup_count,
        backup_min_interval=settings.backup_min_interval,
    )
    return LedgerWriter(
        store,
        settings.backup_count,
        signing_key_path=key_path,
        checkpoint_every=settings.checkpoint_every,
        checkpoint_interval=settings.checkpoint_interval,
        lock_timeout=settings.lock_timeout,
    )


class EmbeddedHome:
    """One Caracal home: its configuration and keys (a folder on this host), its storage backend (the
    folder's ``data/``, or a PostgreSQL database shared with other hosts), and the shared objects built on
    them (registries, one ledger writer). ``database_url`` overrides the configured storage."""

    def __init__(self, home: Path | None = None, *, database_url: str | None = None):
        self.home = Path(home) if home is not None else caracal_home()
        self.data = self.home / "data"
        self.ledger_path = default_ledger_path(self.home)
        self.key_path = default_signing_key_path(self.home)
        self.config_path = self.home / "config.toml"
        self.settings = load_settings(self.home)
        self.backend = open_backend(self.home, self.settings, database_url)
        self.on_files = self.backend.kind == "files"
        documents = self._documents()
        self.agents = AgentRegistry(documents["agents"])
        self.policies = PolicyRegistry(documents["policies"])
        self.prices = PriceRegistry(
            documents["prices"],
            use_llm_prices=self.settings.use_llm_prices,
            tiered_llm_prices=self.settings.tiered_llm_prices,  # type: ignore[arg-type]  # checked by load_settings
            clock=self.now,
        )
        self.keys = ApiKeyRegistry(documents["apikeys"])
        self.dashboard: Document = self.backend.document("dashboard", dict, mode=0o600)
        """The dashboard's shared state (session secret, last verification): every server process of the
        home, on any host, reads the same document."""
        self.admin_key_path = default_admin_key_path(self.home)
        self.directory = RegistryDirectory(self.agents, self.policies)
        self.alerts = AlertStore(
            self.backend.document("alerts", empty_alerts, mode=0o600),
            self.backend.document("alert_outbox", empty_outbox, mode=0o600),
            self.now,
        )
        self.denials = DenialLog(self.backend.document("denials", empty_denials), self.now)
        self.responses = ResponseRegistry(
            [self.backend.document(name, empty_responses, mode=0o600) for name in SHARD_NAMES],
            self.now,
            lambda: self.writer().cache_key("responses"),
        )
        """The gateway's Responses API responses (who created each, the tokens billed for it)."""
        self._writer: LedgerWriter | None = None
        self._reader: LedgerStore | None = None
        self._lock = threading.Lock()

    def _documents(self) -> dict[str, Path | Document]:
        """The registries' documents: paths on the file backend (the registries open them as before), the
        backend's documents otherwise."""
        if self.on_files:
            return {
                "agents": self.data / "agents.json",
                "policies": self.data / "policies.json",
                "prices": self.data / "prices.json",
                "apikeys": default_apikeys_path(self.home),
            }
        return {
            "agents": self.backend.document("agents", empty_agents),
            "policies": self.backend.document("policies", empty_policies),
            "prices": self.backend.document("prices", empty_prices),
            "apikeys": self.backend.document("apikeys", empty_keys, mode=0o600),
        }

    @property
    def ledger(self) -> Path | LedgerStore:
        """What readers (queries, ``verify``, proofs, exports) read: the ledger file, or a store of the
        backend (opened once; reading needs no lock and no writer)."""
        if self.on_files:
            return self.ledger_path
        with self._lock:
            if self._reader is None:
                self._reader = self.backend.ledger_store(
                    lock_timeout=self.settings.lock_timeout,
                    backup_count=0,
                    backup_min_interval=self.settings.backup_min_interval,
                )
            return self._reader

    def now(self) -> datetime:
        """The home's clock: the one its ledger entries are stamped, and charges priced, with (the local
        clock on files; the database's on PostgreSQL, as this process knows it). A price set "now" takes
        effect at this time, so that a charge made after it, on any host, finds it: with the setting
        host's own clock, a host whose clock ran ahead of the database's made a new price unusable
        elsewhere until the database's time caught up (a few milliseconds on one machine, the whole skew
        across hosts)."""
        ledger = self.ledger
        return datetime.now(timezone.utc) if isinstance(ledger, Path) else ledger.now()

    @property
    def location(self) -> str:
        """Where the ledger lives, for messages."""
        return str(self.ledger_path) if self.on_files else self.backend.location

    @property
    def idempotency_window(self) -> timedelta:
        """``[metering] idempotency_window``: how long this home's enforcers remember idempotency keys."""
        return timedelta(seconds=self.settings.idempotency_window)

    def create_alert(
        self, *, agent: str | None = None, policy_id: str | None = None, **fields: Any
    ) -> AlertRule:
        """A new alert rule (see :func:`caracal.core.alerts.new_rule` for ``fields``): ``agent`` named by id
        or name (stored as its id), ``policy_id`` checked to exist, so a rule never watches nothing
        (:class:`AgentNotFoundError`, :class:`PolicyNotFoundError`). The CLI, the API and the dashboard
        all create rules here."""
        agent_id = self.agents.get(agent).agent_id if agent is not None else None
        if policy_id is not None:
            self.policies.get(policy_id)
        return self.alerts.create(agent_id=agent_id, policy_id=policy_id, **fields)

    def over_hold(self, over: OverHold) -> None:
        """A charge beyond its hold was recorded: suspend the agent if ``[holds] suspend_over_hold_factor``
        is set and the charges exceed the hold by more than that factor (an operator activates it again
        with ``caracal agent activate``), and enqueue the alerts of rules that watch over-holds (delivered by
        ``caracal serve``). The enforcers of this home call it (``on_over_hold``)."""
        try:
            self.alerts.over_hold(over, self._agent_name(over.agent_id))
        except CaracalError as exc:
            logger.warning("could not enqueue the over-hold alerts of hold %s: %s", over.hold_id, exc)
        factor = self.settings.suspend_over_hold_factor
        if factor is None or over.charged <= over.held * Decimal(str(factor)):
            return
        agent = self.agents.suspend(over.agent_id)
        logger.warning(
            "suspended agent %s: charged %s %s against hold %s of %s %s, more than %s times the hold "
            "([holds] suspend_over_hold_factor); activate it with 'caracal agent activate %s'",
            agent.name, over.charged, over.currency, over.hold_id, over.held, over.currency, factor,
            agent.name,
        )  # fmt: skip

    def _agent_name(self, agent_id: str) -> str | None:
        try:
            return self.agents.get(agent_id).name
        except CaracalError:
            return None

    def enforcer(
        self,
        clock: Callable[[], datetime] | None = None,
        on_over_hold: Callable[[OverHold], None] | None = None,
    ) -> Enforcer:
        """A new enforcer on the home's writer, configured by ``config.toml`` (the idempotency window, the
        replay wait); ``on_over_hold`` defaults to :meth:`over_hold`."""
        from caracal.core.enforcement import Enforcer

        return Enforcer(
            self.writer(),
            self.directory,
            clock=clock,
            on_over_hold=on_over_hold or self.over_hold,
            on_denial=self.denials.record,
            idempotency_window=self.idempotency_window,
            replay_wait=self.settings.replay_wait,
        )

    def writer(self) -> LedgerWriter:
        """The home's ledger writer, opened on first use (shared by every operation of this object)."""
        with self._lock:
            if self._writer is None:
                self._writer = open_ledger_writer(self.backend, self.key_path, self.settings)
            return self._writer

    def close(self) -> None:
        self.denials.close()
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            self.backend.close()
