#!/usr/bin/env bash
# Installs what Duet's tests need on a Debian machine, if it is missing.
# Root tests (namespaces, veth, nftables) need iproute2 and nftables.
set -euo pipefail

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
# Tools that the image table's shell and agnhost images lend to pods, as
# upstream's test images have them (nc -u -w, socat, dig).
command -v nc >/dev/null 2>&1 || need+=(netcat-openbsd)
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v dig >/dev/null 2>&1 || need+=(dnsutils)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing ${need[*]}; run as root (or install them) and retry" >&2
    exit 1
  fi
  echo "install-deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
command -v go >/dev/null 2>&1 || { echo "install-deps: go is not on PATH (expected /usr/local/go/bin)" >&2; exit 1; }
echo "install-deps: ok ($(go version | cut -d' ' -f3), $(ip -V 2>&1 | head -1), $(nft --version))"
