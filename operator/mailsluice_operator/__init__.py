"""The SendingPool operator: turns SendingPool resources into topics, workers and status, and
SendingTenant resources into the tenants Secret (tenant_* modules).

Pure parts hold the logic: spec (the CRD's models, with schema and crd built from them),
reconcile (one round, over problems, render, scaling, status and warmup). kube, kafka_admin and
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
