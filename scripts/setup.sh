#!/usr/bin/env bash
# Idempotent setup: Debian packages (Fashion-MNIST, OpenSSH server, Chromium), a virtual environment, the packages.
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin="${PYTHON:-python3}"
if ! "$python_bin" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "edge-smsp needs Python >= 3.11 (found: $("$python_bin" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
fi

missing=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v chromium >/dev/null || missing+=(chromium)  # the HTML report tests render it in a real browser
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
# Reinstall only when the dependency lists change.
stamp=$(cat pyproject.toml runtime/pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat .venv/.edge-smsp-installed 2>/dev/null)" != "$stamp" ]; then
  echo "setup: installing Python packages into .venv (torch is large; first run takes a few minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".[dev]" -e runtime
  echo "$stamp" > .venv/.edge-smsp-installed
fi

# Wheels of the oldest device stacks the runtime is tested on (tests/test_oldest_runtime.py), fetched here so that
# tests never download: each set goes with a stack.json naming its interpreter.
# - onnxruntime 1.15.0, the oldest wheel pip finds for this Python 3.11 (`pip index versions onnxruntime`), with the
#   numpy 1.x it was built against;
# - the Jetson Nano's JetPack 4.6 stack: Python 3.6 with onnxruntime 1.10.0 (opset 15) and numpy 1.19.5, when a
#   Python 3.6 interpreter is on this machine (EDGE_SMSP_PYTHON36, python3.6 on PATH, or pyenv's).
wheels="${EDGE_SMSP_WHEELS:-$HOME/.cache/edge-smsp/wheels}"

prepare_stack() {  # NAME PYTHON REQUIREMENT...
  local name=$1 interpreter=$2
  shift 2
  local dir="$wheels/$name"
  [ -f "$dir/stack.json" ] && return 0
  local version
  version=$("$interpreter" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  echo "setup: downloading the $name wheel set (Python $version: $*)" >&2
  rm -rf "$dir.partial" && mkdir -p "$dir.partial"
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "$version" \
    --implementation cp -d "$dir.partial" "$@"
  .venv/bin/python -c 'import json, sys; json.dump({"python": sys.argv[1], "requirements": sys.argv[2:]}, sys.stdout)' \
    "$interpreter" "$@" >"$dir.partial/stack.json"
  rm -rf "$dir" && mv "$dir.partial" "$dir"
}

find_python36() {
  local candidate
  for candidate in "${EDGE_SMSP_PYTHON36:-}" "$(command -v python3.6 || true)" "$HOME"/.pyenv/versions/3.6*/bin/python3.6; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 6))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

prepare_stack oldest-onnxruntime "$(.venv/bin/python -c 'import sys; print(sys.executable)')" \
  onnxruntime==1.15.0 numpy==1.26.4
if python36=$(find_python36); then
  prepare_stack jetpack-4.6 "$python36" onnxruntime==1.10.0 numpy==1.19.5
else
  echo "setup: no Python 3.6 here (set EDGE_SMSP_PYTHON36): the JetPack 4.6 runtime test will not run" >&2
fi
