"""Configuration files and command lines of the node cluster's processes (scripts/k8s_node.py).

Everything a process writes lives under the run directory DIR: etcd data, containerd's root,
state and socket, the kubelet's root, pod logs, the CNI conf and IPAM leases. Addresses are
the bridge's node IP or 127.0.0.1. Standard library only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from k8s_build import binary
from k8s_host import NODE_IP, POD_CIDR, SERVICE_CIDR

NODE_NAME = "mailsluice-node"
API_PORT = 6443
KUBELET_PORT = 10250
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
CONTAINERD = "/usr/bin/containerd"
RUNC = "/usr/sbin/runc"
CNI_BIN = "/usr/lib/cni"


@dataclass(frozen=True)
class Paths:
    """Where things live in the run directory."""

    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def containerd(self) -> Path:
        return self.root / "containerd"

    @property
    def socket(self) -> Path:
        return self.containerd / "containerd.sock"

    @property
    def containerd_state(self) -> Path:
        return self.containerd / "state"

    @property
    def kubelet(self) -> Path:
        return self.root / "kubelet"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def cni_conf(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_ipam(self) -> Path:
        return self.root / "cni" / "ipam"

    def kubeconfig(self, who: str) -> Path:
        """DIR/kubeconfig is the admin's; the components' are DIR/<name>.kubeconfig."""
        return self.root / ("kubeconfig" if who == "admin" else f"{who}.kubeconfig")


def containerd_config(paths: Paths, sandbox_image: str) -> str:
    """containerd 1.6 (config version 2): CRI with runc (cgroupfs), overlayfs, our CNI dirs."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{paths.containerd / "root"}"
state = "{paths.containerd_state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "{paths.socket}"

[ttrpc]
  address = "{paths.containerd / "ttrpc.sock"}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{paths.containerd / "opt"}"

[{cri}]
  sandbox_image = "{sandbox_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  netns_mounts_under_state_dir = true
  tolerate_missing_hugetlb_controller = true
  # No CAP_SYS_RESOURCE here: runc may not lower oom_score_adj (pause asks for -998).
  restrict_oom_score_adj = true
  disable_hugetlb_controller = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "{RUNC}"
  Root = "{paths.containerd / "runc"}"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{paths.cni_conf}"
  max_conf_num = 1
"""


def kubelet_config(paths: Paths, healthz_port: int, cgroup_root: str) -> str:
    """KubeletConfiguration: x509 + webhook authn, webhook authz, cgroupfs on cgroup v1."""
    pki = paths.pki
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{paths.socket}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "failCgroupV1": False,  # this kernel mounts the v1 controllers (hybrid)
        "failSwapOn": False,
        "oomScoreAdj": 0,  # -999 would need CAP_SYS_RESOURCE, which root lacks on this VM
        "podLogsDir": str(paths.pod_logs),
        "volumePluginDir": str(paths.kubelet / "volume-plugins"),
        "resolvConf": "",  # no host DNS servers inside pods: their traffic stays on the node
        "clusterDomain": "cluster.local",
        "registerNode": True,
        "rotateCertificates": False,
        "serializeImagePulls": False,
        "maxPods": 60,
        # A test VM's disk and memory are shared with everything else: evict only in extremis,
        # and never garbage-collect the locally imported images (no registry to pull again).
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
            "imagefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
    }
    return json.dumps(config, indent=2) + "\n"  # YAML is a superset of JSON


def kube_proxy_config(paths: Paths, healthz_port: int, metrics_port: int) -> str:
    """iptables mode, leaving the host's conntrack and route_localnet sysctls alone."""
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(paths.kubeconfig("kube-proxy"))},
        "hostnameOverride": NODE_NAME,
        "clusterCIDR": POD_CIDR,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "nodePortAddresses": [f"{NODE_IP}/32"],
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {"localhostNodePorts": False, "minSyncPeriod": "0s"},
        "oomScoreAdj": 0,  # as the kubelet's
    }
    return json.dumps(config, indent=2) + "\n"


def apiserver_argv(paths: Paths, etcd_url: str) -> list[str]:
    pki = paths.pki
    return [
        str(binary("kube-apiserver")),
        f"--etcd-servers={etcd_url}",
        f"--bind-address={NODE_IP}",
        f"--advertise-address={NODE_IP}",
        f"--secure-port={API_PORT}",
        f"--cert-dir={pki}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        f"--service-account-issuer={SA_ISSUER}",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={pki / 'ca.crt'}",
        "--kubelet-preferred-address-types=InternalIP",
        "--allow-privileged=true",
        "--profiling=false",
    ]


def _component_auth(paths: Paths, name: str, port: int) -> list[str]:
    kubeconfig = paths.kubeconfig(name)
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        "--leader-elect=false",
        "--profiling=false",
    ]


def controller_manager_argv(paths: Paths, port: int) -> list[str]:
    pki = paths.pki
    return [
        str(binary("kube-controller-manager")),
        *_component_auth(paths, "kube-controller-manager", port),
        f"--cert-dir={paths.root / 'kube-controller-manager'}",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}",
        f"--cluster-signing-key-file={pki / 'ca.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--cluster-cidr={POD_CIDR}",
        "--allocate-node-cidrs=false",
        # Its default, /usr/libexec/kubernetes/kubelet-plugins/volume/exec, would be created.
        f"--flex-volume-plugin-dir={paths.root / 'kube-controller-manager' / 'flexvolume'}",
    ]


def scheduler_argv(paths: Paths, port: int) -> list[str]:
    return [str(binary("kube-scheduler")), *_component_auth(paths, "kube-scheduler", port)]


def kube_proxy_argv(paths: Paths) -> list[str]:
    return [str(binary("kube-proxy")), f"--config={paths.root / 'kube-proxy.yaml'}"]


def kubelet_argv(paths: Paths) -> list[str]:
    return [
        str(binary("kubelet")),
        f"--config={paths.root / 'kubelet.yaml'}",
        f"--kubeconfig={paths.kubeconfig('kubelet')}",
        f"--root-dir={paths.kubelet}",
        f"--cert-dir={paths.kubelet / 'pki'}",
        f"--node-ip={NODE_IP}",
        f"--hostname-override={NODE_NAME}",
    ]


def containerd_argv(paths: Paths) -> list[str]:
    return [CONTAINERD, "--config", str(paths.containerd / "config.toml")]
