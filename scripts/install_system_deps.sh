#!/usr/bin/env bash
# Installs the Debian packages the project uses, only those missing, so a fresh machine works
# and a prepared one pays nothing. Needs root (CI and the dev machines run as root).
set -euo pipefail

need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v swaks >/dev/null 2>&1 || need+=(swaks)
[ -x /usr/sbin/smtp-sink ] || need+=(postfix)
command -v smtp-source >/dev/null 2>&1 || [ -x /usr/sbin/smtp-source ] || need+=(postfix)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# DKIM tests verify our signatures with OpenDKIM (its test mode, `opendkim -t`), not ours.
command -v opendkim >/dev/null 2>&1 || [ -x /usr/sbin/opendkim ] || need+=(opendkim)
# The container image (scripts/image_build.py): buildah builds the Dockerfile, mmdebstrap makes
# its Debian base; containerd's ctr imports the archive into the local cluster's runtime.
command -v buildah >/dev/null 2>&1 || need+=(buildah)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
# The node cluster (scripts/k8s_node.py): containerd + runc, the CNI plugins, iptables and
# iproute2 for the bridge and kube-proxy, gcc with a static libc for the pause binary.
[ -x /usr/bin/containerd ] || need+=(containerd)
[ -x /usr/sbin/runc ] || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables-restore >/dev/null 2>&1 || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
# The sandbox UI's browser test drives Debian's Chromium with Playwright (its own browser
# download cannot reach the internet here).
[ -x /usr/bin/chromium ] || need+=(chromium)

if ((${#need[@]} == 0)); then
  exit 0
fi
# Deduplicate (postfix may be listed twice).
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
# Postfix is only a tool box here (smtp-sink, smtp-source, a private relay for the benchmark):
# no system-wide mail configuration.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
