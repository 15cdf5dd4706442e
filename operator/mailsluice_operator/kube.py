"""The operator's Kubernetes edge on kubernetes_asyncio: credentials, and a pool's children.

kopf watches and patches the SendingPools; the children are written here with server-side apply,
so re-applying the same manifest is a no-op and fields other managers own are left alone.
Credentials come from the in-cluster service account, else from $KUBECONFIG (or ~/.kube/config)
with everything kubectl reads there: contexts, certificates as files or inline data, tokens and
token files, exec credential plugins. They are loaded for every round, so a rewritten kubeconfig
or a rotated token is used at once (an exec plugin runs once per round); inline certificates go
to temporary files the library writes once per distinct content and removes at exit.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import kopf
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import ConfigException, load_kube_config
from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader

from mailsluice_operator import FIELD_MANAGER, GROUP, VERSION
from mailsluice_operator.reconcile import KubeError

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = "~/.kube/config"
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"

# kind -> (typed API of its group, the kind's name in that API's method names)
KINDS: dict[str, tuple[type[Any], str]] = {
    "ConfigMap": (client.CoreV1Api, "config_map"),
    "Secret": (client.CoreV1Api, "secret"),
    "Deployment": (client.AppsV1Api, "deployment"),
    "PodDisruptionBudget": (client.PolicyV1Api, "pod_disruption_budget"),
}


class KubeUnavailable(RuntimeError):
    """No answer: the API server is unreachable, timed out, or the credentials cannot be loaded."""


@dataclass(frozen=True)
class Credentials:
    configuration: client.Configuration
    expires: dt.datetime | None = None  # an exec plugin's token expiry; None: until refused


async def load_credentials(
    sa_dir: Path = SA_DIR, environ: Mapping[str, str] = os.environ
) -> Credentials:
    """In-cluster service account if there is one, else the kubeconfig kubectl would use."""
    config = client.Configuration()
    # Tolerate fields a newer API server adds or leaves out: we read only what we use.
    config.client_side_validation = False
    with _unavailable("cannot load Kubernetes credentials"):
        if environ.get("KUBERNETES_SERVICE_HOST") and (sa_dir / "token").exists():
            InClusterConfigLoader(
                token_filename=str(sa_dir / "token"),
                cert_filename=str(sa_dir / "ca.crt"),
                environ=dict(environ),
            ).load_and_set(config)
            return Credentials(config)
        paths = environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG
        loader = await load_kube_config(
            config_file=paths, client_configuration=config, persist_config=False
        )
    return Credentials(config, getattr(loader, "exec_plugin_expiry", None))


async def connection_info(credentials: Credentials) -> kopf.ConnectionInfo:
    """The same credentials for kopf's own connection (its watches and status patches)."""
    config = credentials.configuration
    header = await config.get_api_key_with_prefix("BearerToken")
    scheme, _, token = str(header or "").partition(" ")
    return kopf.ConnectionInfo(
        server=str(config.host),
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        scheme=scheme or None,
        token=token or None,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
        proxy_url=config.proxy,
        expiration=credentials.expires,
    )


@contextmanager
def _unavailable(what: str) -> Iterator[None]:
    try:
        yield
    except (aiohttp.ClientError, TimeoutError, ConfigException, OSError) as exc:
        raise KubeUnavailable(f"{what}: {exc}") from exc


@contextmanager
def _answered() -> Iterator[None]:
    try:
        yield
    except ApiException as exc:
        raise KubeError(exc.status or 0, _message(exc)) from None


def _message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.body or exc.reason)


class KubeApi:
    """apply, get and delete of the kinds the operator writes, over one ApiClient."""

    def __init__(self, api_client: client.ApiClient, timeout_s: float) -> None:
        self._client = api_client
        self._timeout_s = timeout_s

    def _call(self, verb: str, kind: str) -> Any:
        api, name = KINDS[kind]
        return getattr(api(self._client), f"{verb}_namespaced_{name}")

    def _plain(self, obj: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._client.sanitize_for_serialization(obj)
        return result

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply (force: the operator owns its children's fields)."""
        meta = manifest["metadata"]
        patch = self._call("patch", manifest["kind"])
        with _unavailable("Kubernetes API unreachable"), _answered():
            applied = await patch(
                meta["name"],
                meta["namespace"],
                dict(manifest),
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=APPLY_PATCH,
                _request_timeout=self._timeout_s,
            )
        return self._plain(applied)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        read = self._call("read", kind)
        try:
            with _unavailable("Kubernetes API unreachable"), _answered():
                found = await read(name, namespace, _request_timeout=self._timeout_s)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return self._plain(found)

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """True if it was there; background propagation, as kubectl does by default."""
        delete = self._call("delete", kind)
        options = client.V1DeleteOptions(propagation_policy="Background")
        try:
            with _unavailable("Kubernetes API unreachable"), _answered():
                await delete(name, namespace, body=options, _request_timeout=self._timeout_s)
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def list_custom(self, plural: str, namespace: str) -> list[dict[str, Any]]:
        """The namespace's custom resources of the operator's group and version."""
        api = client.CustomObjectsApi(self._client)
        with _unavailable("Kubernetes API unreachable"), _answered():
            listed = await api.list_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, _request_timeout=self._timeout_s
            )
        return list(listed.get("items") or [])

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        """Merge `status` into a custom resource's status subresource (lists are replaced)."""
        # Typed without _content_type, which the generated method takes (as `apply` uses it).
        patch: Any = client.CustomObjectsApi(self._client).patch_namespaced_custom_object_status
        with _unavailable("Kubernetes API unreachable"), _answered():
            await patch(
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
                {"status": dict(status)},
                _content_type=MERGE_PATCH,
                _request_timeout=self._timeout_s,
            )


@asynccontextmanager
async def connect(
    timeout_s: float = 30.0, *, credentials: Credentials | None = None
) -> AsyncIterator[KubeApi]:
    """A client (with freshly loaded credentials unless given), closed with its connections."""
    credentials = credentials or await load_credentials()
    with _unavailable("cannot use the Kubernetes credentials"):
        api_client = client.ApiClient(configuration=credentials.configuration)
    async with api_client:
        yield KubeApi(api_client, timeout_s)
