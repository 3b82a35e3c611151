#!/usr/bin/env bash
# Idempotent setup: Debian packages (Fashion-MNIST, OpenSSH server), a virtual environment, the packages.
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
