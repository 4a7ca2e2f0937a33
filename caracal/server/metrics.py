"""Prometheus metrics of one server (its own registry, so several servers in one process never collide).

Exposed at ``GET /metrics`` (admin key required: the figures are the operator's). Labels never carry agent
ids or names, so the series count stays bounded whatever the number of agents.

With ``caracal serve --workers N`` each worker process keeps its own figures, and a scrape is answered by
whichever worker takes the connection: ``caracal_server_process{pid=...}`` names it.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.decisions = Counter(
            "caracal_decisions",
            "Budget decisions by operation and outcome.",
            ["operation", "outcome"],
            registry=r,
        )
        self.errors = Counter(
            "caracal_errors",
            "Requests refused or failed, by error type (denials included).",
            ["type"],
            registry=r,
        )
        self.close_failures = Counter(
            "caracal_gateway_close_failures",
            "Gateway settlements or releases that could not be recorded (the hold stays until it expires).",
            ["operation"],
            registry=r,
        )
        self.holds = Counter("caracal_holds", "Holds by what happened to them.", ["event"], registry=r)
        self.over_hold = Counter(
            "caracal_charges_over_hold",
            "Settlements and charges that took a hold past its amount (usage beyond the bound; recorded).",
            registry=r,
        )
        self.alerts_fired = Counter(
            "caracal_alerts_fired",
            "Alert events this process detected and queued (each event once, whichever process queued it).",
            ["type"],
            registry=r,
        )
        self.alert_deliveries = Counter(
            "caracal_alert_deliveries",
            "Webhook attempts of this process by outcome: delivered, retry (tried again later), failed.",
            ["outcome"],
            registry=r,
        )
        self.holds_open = Gauge(
            "caracal_holds_open", "Holds on record and not yet closed (all writers).", registry=r
        )
        self.ledger_trusted = Gauge(
            "caracal_ledger_trusted",
            "1 while this process decides on a ledger that checks out; 0 once it found, or a verification "
            "of the home told it, that the ledger fails verification (every decision is then denied).",
            registry=r,
        )
        self.ledger_appends = Counter(
            "caracal_ledger_operations", "Operations recorded through group commit.", registry=r
        )
        self.groups = Histogram(
            "caracal_group_commit_size",
            "Operations per group commit (one lock hold, one write, one fsync).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.group_seconds = Histogram(
            "caracal_group_commit_seconds", "Time of one group commit.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.requests = Histogram(
            "caracal_http_request_seconds",
            "HTTP request latency by route template and status class.",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream = Histogram(
            "caracal_gateway_upstream_seconds",
            "Latency of upstream LLM calls (to the end of the response or stream).",
            ["api", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.process = Gauge(
            "caracal_server_process",
            "The server process whose figures these are (each worker of `caracal serve --workers N` keeps "
            "its own).",
            ["pid"],
            registry=r,
        )
        self.process.labels(str(os.getpid())).set(1)

    def observe_group(self, size: int, seconds: float) -> None:
        self.ledger_appends.inc(size)
        self.groups.observe(size)
        self.group_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["Metrics"]
