"""Certificates and kubeconfigs of the node cluster (scripts/k8s_node.py), made with openssl.

One CA signs everything: the apiserver's serving certificate, the kubelet's serving certificate,
and one client certificate per component, whose subject is the identity the apiserver's
authenticator reads (CN = user, O = group), so Node and RBAC authorization see the users the
built-in bootstrap policy grants: system:node:<name> in system:nodes, system:kube-proxy,
system:kube-scheduler, system:kube-controller-manager. ECDSA P-256 keys: quick to make.
Standard library only.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from k8s_build import K8sLocalError

DAYS = "3650"


@dataclass(frozen=True)
class Identity:
    """A client certificate's subject: CN is the user, O the group (may be empty)."""

    name: str  # file stem under pki/
    user: str
    group: str = ""


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    if not openssl:
        raise K8sLocalError("openssl not found (Debian package 'openssl')")
    proc = subprocess.run([openssl, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise K8sLocalError(f"openssl {args[0]} failed:\n{proc.stderr}")


def _key(path: Path) -> None:
    curve = "ec_paramgen_curve:P-256"
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", curve, "-out", str(path))
    path.chmod(0o600)


def ensure_ca(pki: Path) -> tuple[Path, Path]:
    """The CA (ca.crt, ca.key) in pki/, made once per run directory."""
    pki.mkdir(parents=True, exist_ok=True)
    crt, key = pki / "ca.crt", pki / "ca.key"
    if not (crt.exists() and key.exists()):
        _key(key)
        _openssl(
            "req", "-x509", "-new", "-key", str(key), "-out", str(crt), "-days", DAYS,
            "-subj", "/CN=mailsluice-node-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        )  # fmt: skip
    return crt, key


def _subject(user: str, group: str) -> str:
    return (f"/O={group}" if group else "") + f"/CN={user}"


def issue(
    pki: Path, name: str, subject: str, *, server: bool, sans: tuple[str, ...] = ()
) -> tuple[Path, Path]:
    """pki/<name>.crt and .key signed by the CA (made once); a server or a client certificate."""
    crt, key = pki / f"{name}.crt", pki / f"{name}.key"
    if crt.exists() and key.exists():
        return crt, key
    ca_crt, ca_key = ensure_ca(pki)
    _key(key)
    csr, ext = pki / f"{name}.csr", pki / f"{name}.ext"
    _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", subject)
    usage = "serverAuth" if server else "clientAuth"
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}",
    ]
    if sans:
        lines.append("subjectAltName=" + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(crt), "-days", DAYS, "-extfile", str(ext),
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    return crt, key


def client_cert(pki: Path, who: Identity) -> tuple[Path, Path]:
    """pki/<name>-client.crt and .key (a server certificate may share the name's stem)."""
    return issue(pki, f"{who.name}-client", _subject(who.user, who.group), server=False)


def service_account_keys(pki: Path) -> tuple[Path, Path]:
    """The key pair that signs service-account tokens (sa.key) and checks them (sa.pub)."""
    key, pub = pki / "sa.key", pki / "sa.pub"
    if not (key.exists() and pub.exists()):
        _key(key)
        _openssl("pkey", "-in", str(key), "-pubout", "-out", str(pub))
    return key, pub


def kubeconfig_text(server: str, ca: Path, crt: Path, key: Path, user: str) -> str:
    """A kubeconfig that verifies the apiserver against the CA and logs in by certificate."""
    return f"""apiVersion: v1
kind: Config
clusters:
- name: mailsluice-node
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    client-certificate: {crt}
    client-key: {key}
contexts:
- name: mailsluice-node
  context:
    cluster: mailsluice-node
    user: {user}
    namespace: default
current-context: mailsluice-node
"""


def write_kubeconfig(path: Path, server: str, pki: Path, who: Identity) -> Path:
    crt, key = client_cert(pki, who)
    path.write_text(kubeconfig_text(server, pki / "ca.crt", crt, key, who.user))
    path.chmod(0o600)
    return path
