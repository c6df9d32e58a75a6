"""Prometheus metrics, on a registry of the bot's own (no global state), and their meanings."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.commands = Counter(
            "onboarding_commands",
            "Commands handled, by command name and outcome",
            ["command", "outcome"],
            registry=r,
        )
        self.reply_latency = Histogram(
            "onboarding_reply_latency_seconds",
            "From a command's arrival at the bot to its reply accepted by the homeserver",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.commands_per_commit = Histogram(
            "onboarding_commands_per_commit",
            "Commands committed together in one database transaction (a sync's burst)",
            buckets=(1, 2, 5, 10, 20, 50, 100),
            registry=r,
        )
        self.sync_failures = Counter(
            "onboarding_sync_failures", "Sync requests that failed (the bot backs off)", registry=r
        )
        self.send_failures = Counter(
            "onboarding_send_failures", "Message sends that failed (they are retried)", registry=r
        )
        self.send_retries = Counter(
            "onboarding_send_retries",
            "Messages delivered only on a second or later attempt",
            registry=r,
        )
        self.send_dropped = Counter(
            "onboarding_send_dropped",
            "Messages given up on after every attempt failed",
            registry=r,
        )
        self.nudges = Counter(
            "onboarding_nudges", "Nudges and escalations queued, by kind", ["kind"], registry=r
        )
        self.newcomers = Gauge(
            "onboarding_newcomers",
            "Newcomers by state: enrolled, finished, needs_attention",
            ["state"],
            registry=r,
        )
        self.database_bytes = Gauge(
            "onboarding_database_bytes", "Size of the SQLite database with its WAL", registry=r
        )
        self.last_sync = Gauge(
            "onboarding_last_sync_timestamp_seconds",
            "When the last sync succeeded (Unix time)",
            registry=r,
        )

        self.clock_offset = Gauge(
            "onboarding_clock_offset_seconds",
            "The homeserver's clock minus this machine's, as last measured",
            registry=r,
        )
        self.clock_skewed = Gauge(
            "onboarding_clock_skewed",
            "1 while this machine's clock is more than 5 minutes off the homeserver's "
            "(nudges are held)",
            registry=r,
        )

        self.storage_errors = Counter(
            "onboarding_storage_errors",
            "Database errors from the disk or another process, by kind: full, io, read_only, "
            "busy, corrupt (commands wait meanwhile)",
            ["kind"],
            registry=r,
        )
        self.quarantined = Counter(
            "onboarding_quarantined",
            "Events skipped for good after failing 5 times for a reason not the disk's",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
