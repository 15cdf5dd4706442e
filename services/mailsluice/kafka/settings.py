"""How every process reaches Kafka, and how the project creates its topics (MAILSLUICE_KAFKA_*)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mailsluice.config import MailsluiceSettings


class KafkaSettings(MailsluiceSettings):
    """How every service reaches Kafka, and how the project creates its topics."""

    model_config = SettingsConfigDict(env_prefix="MAILSLUICE_KAFKA_", extra="ignore", frozen=True)

    bootstrap: str = Field("127.0.0.1:9092", description="Bootstrap servers, comma-separated.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism when the protocol uses SASL."
    )
    sasl_username: str = Field("", description="SASL user name.")
    sasl_password: str = Field("", description="SASL password.")
    ssl_cafile: str = Field("", description="CA bundle for TLS to the brokers (empty: system).")
    replication_factor: int = Field(
        1, ge=1, le=32, description="Replication factor of topics the project creates."
    )
    min_insync_replicas: int = Field(
        1, ge=1, le=32, description="min.insync.replicas of created topics (2 in production)."
    )
    queue_partitions: int = Field(
        12, ge=1, le=10000, description="Partitions of a pool's queue topic (>= max workers)."
    )
    request_timeout_ms: int = Field(
        10000, ge=1000, le=300000, description="Kafka client request timeout."
    )
    heartbeat_interval_ms: int = Field(
        1000,
        ge=100,
        le=3000,
        description="Consumer group heartbeat interval: a member hears of a rebalance (a worker "
        "left or joined) with its next heartbeat or offset commit, so this bounds how long a "
        "handover waits for a member with nothing to commit. The session timeout (10 s) still "
        "decides when a silent member is gone.",
    )
    group_instance_id: str = Field(
        "",
        max_length=249,
        pattern=r"^[A-Za-z0-9._-]*$",
        description="Static consumer group membership (KIP-345): a name unique to this process "
        "that survives its restarts (the chart sets the pod's name). A restarted process takes "
        "its partitions back without a rebalance, so the other members keep working instead of "
        "waiting for the dead member's session to time out. A stopped member does not leave the "
        "group: its partitions wait for the session timeout (10 s) unless it comes back. Two "
        "live processes with the same name fence each other. Empty: dynamic membership.",
    )

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments common to aiokafka clients."""
        opts: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.security_protocol.startswith("SASL"):
            opts.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        if self.security_protocol.endswith("SSL"):
            from aiokafka.helpers import create_ssl_context

            opts["ssl_context"] = create_ssl_context(cafile=self.ssl_cafile or None)
        return opts
