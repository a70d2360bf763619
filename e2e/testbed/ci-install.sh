#!/usr/bin/env bash
# Install everything the test bed needs on a fresh machine: Debian packages (iproute2 for
# network namespaces, openssl for certificates) and the binaries built from the Go module proxy
# (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd, kwok, helm,
# prometheus, traefik) into ${KINFER_CACHE:-~/.cache/kinfer}. Idempotent; seconds when cached.
# Usage (as root): bash e2e/testbed/ci-install.sh        PYTHON defaults to python3.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${PYTHON:-python3}

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  echo "ci-install: apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

start=$(date +%s)
# install.py needs only the standard library and the kinfer_dev package on the path.
PYTHONPATH="$repo/devtools${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m kinfer_dev.testbed.install
echo "ci-install: test bed binaries ready in $(( $(date +%s) - start )) s"
