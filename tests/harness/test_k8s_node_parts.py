"""The parts of the node cluster script that need no cluster: the tools module lists the node
binaries, images are consistent OCI layouts keyed by content, the pause binary is Kubernetes'
own, the CNI network routes nothing off the machine, and the iptables sweep finds every jump
into a KUBE-* chain."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import re
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from support.k8s_node import k8s_images, k8s_node

k8s_build = importlib.import_module("k8s_build")
k8s_host = importlib.import_module("k8s_host")


def test_node_binaries_are_tools_of_the_module() -> None:
    go_mod = (k8s_build.TOOLS_MODULE / "go.mod").read_text()
    block = re.search(r"^tool \((.*?)^\)", go_mod, re.MULTILINE | re.DOTALL)
    assert block, "no tool block"
    tools = set(block.group(1).split())
    assert set(k8s_build.NODE_PACKAGES.values()) <= tools
    assert set(k8s_build.NODE_PACKAGES) == {
        "kubelet",
        "kube-controller-manager",
        "kube-scheduler",
        "kube-proxy",
        "kubectl",
    }


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def _blob(members: dict[str, bytes], descriptor: dict[str, Any]) -> bytes:
    data = members["blobs/sha256/" + descriptor["digest"].removeprefix("sha256:")]
    assert "sha256:" + hashlib.sha256(data).hexdigest() == descriptor["digest"]
    assert len(data) == descriptor["size"]
    return data


def test_an_image_archive_is_a_consistent_oci_layout_keyed_by_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(k8s_images, "IMAGE_CACHE", tmp_path)
    image = k8s_images.oci_archive("localhost/t:1", {"/bin/x": b"\x7fELF..."}, ["/bin/x", "-v"])
    assert image.ref == "localhost/t:1"
    members = _members(image.path)
    assert json.loads(members["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    (entry,) = json.loads(members["index.json"])["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == "localhost/t:1"
    manifest = json.loads(_blob(members, entry))
    config = json.loads(_blob(members, manifest["config"]))
    (layer_descriptor,) = manifest["layers"]
    layer = _blob(members, layer_descriptor)
    assert config["rootfs"]["diff_ids"] == [layer_descriptor["digest"]]  # uncompressed layer
    assert config["config"]["Entrypoint"] == ["/bin/x", "-v"]
    assert _members_of_layer(layer) == {"bin/x": b"\x7fELF..."}
    again = k8s_images.oci_archive("localhost/t:1", {"/bin/x": b"\x7fELF..."}, ["/bin/x", "-v"])
    other = k8s_images.oci_archive("localhost/t:1", {"/bin/x": b"changed"}, ["/bin/x", "-v"])
    assert again.path == image.path != other.path


def _members_of_layer(layer: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def test_the_pause_binary_is_kubernetes_own_and_static() -> None:
    binary = k8s_images.pause_binary()
    version = subprocess.run([str(binary), "-v"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"pause.c v3.10.1-{k8s_build.K8S_VERSION}"
    assert b"/lib64/ld-linux" not in binary.read_bytes()  # no dynamic loader: runs in scratch
    assert k8s_images.pause_image().ref == "localhost/mailsluice-pause:3.10.1"


def test_the_pod_network_routes_nothing_off_the_machine(tmp_path: Path) -> None:
    k8s_host.write_cni_config(tmp_path / "net.d", tmp_path / "ipam")
    (conf_file,) = (tmp_path / "net.d").iterdir()
    (bridge,) = json.loads(conf_file.read_text())["plugins"]
    assert bridge["ipMasq"] is False and bridge["isGateway"] is False
    routes = [route["dst"] for route in bridge["ipam"]["routes"]]
    assert routes == [k8s_host.SERVICE_CIDR]  # plus the pod subnet itself; no default route
    assert bridge["ipam"]["dataDir"] == str(tmp_path / "ipam")


IPTABLES_SAVE = """\
*filter
:INPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
-A INPUT -j KUBE-FIREWALL
-A INPUT -s 192.0.2.0/24 -j ACCEPT
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -j DROP
COMMIT
*nat
:KUBE-SERVICES - [0:0]
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
COMMIT
"""


def test_the_iptables_sweep_finds_our_chains_and_every_jump_into_them() -> None:
    chains, jumps = k8s_host._kube_rules(IPTABLES_SAVE)
    assert chains == {"filter": ["KUBE-FIREWALL", "KUBE-FORWARD"], "nat": ["KUBE-SERVICES"]}
    assert jumps == {
        "filter": [
            "-A INPUT -j KUBE-FIREWALL",
            '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        ],
        "nat": ['-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'],
    }


def test_down_of_a_directory_that_never_ran_stops_nothing(tmp_path: Path) -> None:
    # Safe while another node cluster runs (the session's, say): the bridge is not ours, so
    # its iptables chains, cgroups and bridge are left alone.
    assert k8s_node.down(tmp_path / "never-started") is False
    assert k8s_node.status(tmp_path / "never-started")["ready"] is False
