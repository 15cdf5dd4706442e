"""Settings of the operator itself (env prefix MAILSLUICE_OPERATOR_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mailsluice.config import MailsluiceSettings
from mailsluice.tracking.settings import Choice


class OperatorSettings(MailsluiceSettings):
    """The SendingPool operator: what it watches, how often it scales, what workers it renders."""

    model_config = SettingsConfigDict(
        env_prefix="MAILSLUICE_OPERATOR_", extra="ignore", frozen=True
    )

    namespace: str = Field(
        "", description="Namespace to watch for SendingPools (empty: all namespaces)."
    )
    image: str = Field(
        "ghcr.io/mailsluice/mailsluice:0.1.0",
        description="Worker image when a pool's workerTemplate names none.",
    )
    image_pull_policy: str = Field(
        "IfNotPresent", description="imagePullPolicy of worker containers."
    )
    scale_interval_s: float = Field(
        15.0, gt=0, le=3600, description="How often each pool's lag is read and replicas are set."
    )
    kafka_timeout_s: float = Field(
        10.0, gt=0, le=300, description="Longest one Kafka admin round (topic, lag) may take."
    )
    kafka_secret: str = Field(
        "",
        description="Secret whose keys become worker env vars (envFrom), e.g. "
        "MAILSLUICE_KAFKA_SASL_PASSWORD; empty: none.",
    )
    kafka_ca_secret: str = Field(
        "",
        description="Secret with the CA bundle of the Kafka brokers, mounted into workers; "
        "empty: system CAs.",
    )
    kafka_ca_key: str = Field("ca.crt", description="Key of the CA bundle in kafka_ca_secret.")
    http_host: str = Field(
        "127.0.0.1",
        description="Address of the operator's /healthz and /metrics: loopback outside a "
        "cluster; the chart sets 0.0.0.0 so the kubelet and Prometheus reach them.",
    )
    health_port: int = Field(
        8080, ge=0, le=65535, description="Port of the operator's /healthz (0: none)."
    )
    metrics_port: int = Field(
        9103, ge=0, le=65535, description="Port of the operator's Prometheus /metrics (0: none)."
    )
    unsubscribe_url: str = Field(
        "",
        description="Base of the one-click unsubscribe links workers put on bulk mail "
        "(https://host); empty: no List-Unsubscribe unless a pool's workerTemplate sets it.",
    )
    unsubscribe_mailto_domain: str = Field(
        "", description="Domain of the unsubscribe mailto address workers add; empty: none."
    )
    unsubscribe_scope: str = Field(
        "list", description="Where an unsubscribe suppresses (list, tenant, domain, global)."
    )
    unsubscribe_keys_secret: str = Field(
        "",
        description="Secret with the unsubscribe token keys (one key per id), mounted into "
        "workers when unsubscribe_url is set.",
    )
    unsubscribe_active_key: str = Field(
        "", description="Id of the key new tokens are signed with (empty: the only key)."
    )
    tracking_url: str = Field(
        "",
        description="Base of the pixel and click links workers put into tracked mail "
        "(https://host, the tracker service's); empty: no tracking unless a pool's "
        "workerTemplate sets it.",
    )
    tracking_keys_secret: str = Field(
        "",
        description="Secret with the tracking token keys (one key per id, the tracker's "
        "keys), mounted into workers when tracking_url is set.",
    )
    tracking_active_key: str = Field(
        "", description="Id of the tracking key new tokens are signed with (empty: the only key)."
    )
    tracking_default: Choice = Field(
        "off",
        description="What workers track when neither the message, its campaign, its tenant "
        "nor its pool's `tracking` says: off, opens, clicks or all.",
    )
    tracking_transactional: bool = Field(
        False, description="Workers track transactional-stream messages too (when they ask)."
    )
    worker_service_account: str = Field(
        "", description="ServiceAccount of worker pods (empty: the namespace default)."
    )
    http_port: int = Field(
        9102, ge=1, le=65535, description="Port of the workers' /metrics, /healthz, /readyz."
    )
    tenants_secret: str = Field(
        "mailsluice-tenants",
        min_length=1,
        max_length=253,
        description="Secret the namespace's SendingTenants are rendered into (key "
        "tenants.yaml), which the API, ingest and webhooks mount.",
    )
    owner_deployment: str = Field(
        "",
        max_length=253,
        description="The operator's own Deployment (the chart sets it): the tenants Secret "
        "in its namespace is owned by it, so uninstalling the operator removes the Secret.",
    )
    tenant_interval_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="How often the tenants are rendered again (Secrets they reference may "
        "have changed; a missing one is retried at this pace).",
    )
