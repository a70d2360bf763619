#!/usr/bin/env bash
# What bench/runtime_vs_peers.py needs besides the project venv, cached under ~/.cache/kinfer:
#   bin/vegeta-v12.13.0, bin/ghz-v0.93.0   load clients, built from the Go module proxy
#   bench-venvs/triton                      nvidia-pytriton 0.7.0 (ships the tritonserver binary)
#   bench-venvs/kserve                      kserve 0.21.0
# The peer venvs reuse the project venv's torch through a .pth file (no second torch download).
# Idempotent: seconds when everything is cached. Usage: bash bench/install.sh [PYTHON]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${1:-$repo/.venv/bin/python}
cache=${KINFER_CACHE:-$HOME/.cache/kinfer}
start=$(date +%s)
PYTHONPATH="$repo/devtools" "$PYTHON" -m kinfer_dev.testbed.install bench
# The triton venv is the test bed's too (kinfer_dev/testbed/triton.py makes it, as bootstrap does).
PYTHONPATH="$repo/devtools" "$PYTHON" -m kinfer_dev.testbed.triton
base=$("$PYTHON" -c 'import sys; print(sys.base_prefix)')
site=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for peer in "kserve kserve==0.21.0"; do
  set -- $peer
  venv=$cache/bench-venvs/$1
  if [ ! -f "$venv/.complete" ]; then
    rm -rf "$venv"
    "$base/bin/python3" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$2"
    echo "$site" > "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz_project_venv.pth"
    touch "$venv/.complete"
  fi
  echo "bench/install: $1 venv ready in $venv"
done
echo "bench/install: done in $(( $(date +%s) - start )) s"
