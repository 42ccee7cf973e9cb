#!/usr/bin/env bash
# Installs what building and testing kedge needs; safe to run again (idempotent).
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

if ! have cargo; then
  echo "setup: cargo is missing; install Rust (rustup) first" >&2
  exit 1
fi

# rust-toolchain.toml names the target, but RUSTUP_AUTO_INSTALL=0 machines do not fetch it.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
for c in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
    rustup component add "$c"
  fi
done

# Containers run under runc; the registry tests start Debian's docker-registry with htpasswd
# auth (apache2-utils) and build their images from busybox-static. Nothing is downloaded by
# the tests themselves.
need_pkgs=()
have runc || need_pkgs+=(runc)
have docker-registry || need_pkgs+=(docker-registry)
have htpasswd || need_pkgs+=(apache2-utils)
[ -x /bin/busybox ] || need_pkgs+=(busybox-static)
# The NAT end-to-end test builds network namespaces, veths and a masquerading router.
have ip || need_pkgs+=(iproute2)
have iptables || need_pkgs+=(iptables)
# The pod network: the standard CNI plugins (bridge, host-local, portmap, loopback), which
# the agent drives; the service proxy's kernel mode (nft); curl for the networking tests.
[ -x /usr/lib/cni/bridge ] || [ -x /opt/cni/bin/bridge ] || need_pkgs+=(containernetworking-plugins)
have nft || need_pkgs+=(nftables)
# The nft proxy clears UDP flows stuck on removed endpoints with conntrack (conntrack-tools).
have conntrack || [ -x /usr/sbin/conntrack ] || need_pkgs+=(conntrack)
have curl || need_pkgs+=(curl)
# The etcd datastore: etcd-client (the crate) compiles etcd's .proto files with protoc; the
# store conformance suite and the etcd end-to-end test start Debian's etcd (3.4) themselves.
have protoc || need_pkgs+=(protobuf-compiler)
have etcd || need_pkgs+=(etcd-server)
# `kedge snapshot restore` of an etcd snapshot runs etcd's own tool (etcdctl in etcd 3.4).
have etcdctl || have etcdutl || need_pkgs+=(etcd-client)
# The dashboard's end-to-end test drives Debian's headless Chromium over DevTools.
have chromium || need_pkgs+=(chromium)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing packages ${need_pkgs[*]}; run as root or install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# One end-to-end test drives the official Python client.
if ! python3 -c 'import kubernetes' >/dev/null 2>&1; then
  python3 -m pip install -q --disable-pip-version-check 'kubernetes>=31' >/dev/null
fi

# The end-to-end tests drive the real kubectl and `timeout` (coreutils).
if ! have kubectl; then
  echo "setup: kubectl is missing; the end-to-end tests drive the real kubectl (1.32)." >&2
  echo "       Install it from your distribution or Kubernetes' release binaries." >&2
  exit 1
fi
