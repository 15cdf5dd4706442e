"""The SendingPool operator: turns SendingPool resources into topics, workers and status.

Pure parts (crd, render, scaling, status, warmup) hold the logic; kube, kafka_admin and
handlers are the thin edges that talk to the API server, Kafka and kopf.
"""

GROUP = "mailsluice.io"
VERSION = "v1alpha1"
KIND = "SendingPool"
PLURAL = "sendingpools"
SINGULAR = "sendingpool"
SHORT_NAMES = ("spool",)
API_VERSION = f"{GROUP}/{VERSION}"
FIELD_MANAGER = "mailsluice-operator"
