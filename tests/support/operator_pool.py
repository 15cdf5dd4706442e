"""A sample SendingPool body and the settings the operator's pure tests render it with."""

from __future__ import annotations

from typing import Any

from mailsluice.kafka.settings import KafkaSettings
from mailsluice_operator.settings import OperatorSettings

POOL_BODY: dict[str, Any] = {
    "apiVersion": "mailsluice.io/v1alpha1",
    "kind": "SendingPool",
    "metadata": {
        "name": "bulk-a",
        "namespace": "mail",
        "uid": "1234",
        "generation": 2,
        "creationTimestamp": "2026-11-20T10:00:00Z",
    },
    "spec": {
        "ehloName": "mta1.example.com",
        "sourceAddresses": ["192.0.2.10", "192.0.2.11"],
        "warmup": {"preset": "ses-45-day"},
        "shaping": [{"match": "google", "messagesPerSecond": 5, "maxConnections": 3}],
        "partitions": 6,
        "minWorkers": 1,
        "maxWorkers": 4,
        "lagPerWorker": 100,
        "workerTemplate": {
            "image": "registry.example/mailsluice:1.2",
            "env": [
                {"name": "MAILSLUICE_LOG_LEVEL", "value": "DEBUG"},
                {"name": "MAILSLUICE_DELIVERY_HTTP_HOST", "value": "::"},
            ],
            "nodeSelector": {"mail.example/ips": "a"},
            "tolerations": [{"key": "mail", "operator": "Exists"}],
        },
    },
}

KAFKA = KafkaSettings(bootstrap="kafka.mail:9092", replication_factor=3)
OP = OperatorSettings(kafka_secret="kafka-creds")
