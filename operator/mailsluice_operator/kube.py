"""A small async Kubernetes API client (aiohttp): server-side apply, get, delete.

kopf watches and patches the SendingPools; the children are written here with server-side apply,
so re-applying the same manifest is a no-op and fields other managers own are left alone.
Credentials come from the in-cluster service account, else $KUBECONFIG / ~/.kube/config.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import yaml

from mailsluice_operator import FIELD_MANAGER

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

# kind -> (API path prefix, plural) for the kinds the operator writes.
KINDS: dict[str, tuple[str, str]] = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Secret": ("/api/v1", "secrets"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
}


class KubeError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Kubernetes API answered {status}: {message}")
        self.status = status


@dataclass(frozen=True)
class Credentials:
    server: str
    ssl_context: ssl.SSLContext | bool
    token: str | None = None


def _data_file(data_b64: str) -> str:
    # ssl wants client certificates as files.
    with tempfile.NamedTemporaryFile(
        delete=False, prefix="mailsluice-kube-", suffix=".pem"
    ) as handle:
        handle.write(base64.b64decode(data_b64))
    return handle.name


def from_kubeconfig(path: Path) -> Credentials:
    config = yaml.safe_load(path.read_text())
    context_name = config.get("current-context")
    contexts = {c["name"]: c["context"] for c in config.get("contexts", [])}
    context = contexts[context_name] if context_name else next(iter(contexts.values()))
    cluster = {c["name"]: c["cluster"] for c in config["clusters"]}[context["cluster"]]
    user = {u["name"]: u.get("user") or {} for u in config.get("users", [])}.get(
        context.get("user", ""), {}
    )
    base = path.parent
    ctx: ssl.SSLContext | bool
    if cluster.get("insecure-skip-tls-verify"):
        ctx = False
    else:
        ctx = ssl.create_default_context()
        if cluster.get("certificate-authority-data"):
            pem = base64.b64decode(cluster["certificate-authority-data"]).decode()
            ctx.load_verify_locations(cadata=pem)
        elif cluster.get("certificate-authority"):
            ctx.load_verify_locations(cafile=str(base / cluster["certificate-authority"]))
        cert = user.get("client-certificate-data")
        certfile = _data_file(cert) if cert else user.get("client-certificate")
        key = user.get("client-key-data")
        keyfile = _data_file(key) if key else user.get("client-key")
        if certfile and keyfile:
            ctx.load_cert_chain(str(base / certfile), str(base / keyfile))
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = (base / user["tokenFile"]).read_text().strip()
    return Credentials(cluster["server"].rstrip("/"), ctx, token)


def from_environment() -> Credentials:
    """In-cluster service account if there is one, else the kubeconfig kubectl would use."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if host and (SA_DIR / "token").exists():
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        ctx = ssl.create_default_context(cafile=str(SA_DIR / "ca.crt"))
        if ":" in host:
            host = f"[{host}]"
        return Credentials(f"https://{host}:{port}", ctx, (SA_DIR / "token").read_text().strip())
    path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or "~/.kube/config"
    return from_kubeconfig(Path(path).expanduser())


def object_path(kind: str, namespace: str, name: str | None = None) -> str:
    prefix, plural = KINDS[kind]
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


class KubeClient:
    """One aiohttp session to the API server; use as an async context manager."""

    def __init__(self, credentials: Credentials, timeout_s: float = 30.0) -> None:
        self.credentials = credentials
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeClient:
        headers = {"Accept": "application/json"}
        if self.credentials.token:
            headers["Authorization"] = f"Bearer {self.credentials.token}"
        self._session = aiohttp.ClientSession(
            base_url=self.credentials.server,
            headers=headers,
            timeout=self._timeout,
            # No pooled connections: each handler run opens and closes its own, so nothing is
            # left open when kopf cancels a handler at shutdown.
            connector=aiohttp.TCPConnector(ssl=self.credentials.ssl_context, force_close=True),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any] | None:
        assert self._session is not None, "use KubeClient as an async context manager"
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        async with self._session.request(
            method, path, data=data, params=params, headers=headers
        ) as resp:
            text = await resp.text()
            if resp.status == 404 and method in ("GET", "DELETE"):
                return None
            if resp.status >= 400:
                try:
                    message = json.loads(text).get("message", text)
                except ValueError:
                    message = text
                raise KubeError(resp.status, message)
            result: dict[str, Any] = json.loads(text) if text else {}
            return result

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply (force: the operator owns its children's fields)."""
        meta = manifest["metadata"]
        path = object_path(manifest["kind"], meta["namespace"], meta["name"])
        result = await self._request(
            "PATCH",
            path,
            body=manifest,
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            content_type="application/apply-patch+yaml",
        )
        assert result is not None
        return result

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._request("GET", object_path(kind, namespace, name))

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """True if it was there; background propagation, as kubectl does by default."""
        found = await self._request(
            "DELETE",
            object_path(kind, namespace, name),
            body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
        )
        return found is not None
