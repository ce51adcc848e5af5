#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian/Ubuntu machine: system packages
# (as root), .venv with gpumod and its dev extras, the tiny test model, and a CPU
# llama-server built once and cached (~/.cache/gpumod-build). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup-common.sh
. scripts/setup-common.sh

say "system packages"
ensure_packages python3 python3-venv ca-certificates curl procps openssh-server \
  openssh-client shellcheck ripgrep systemd nginx cmake make g++ || true
say ".venv with gpumod[dev] and the tiny model"
ensure_venv dev
say "llama-server (CPU)"
server="$(bash scripts/build-llama-server.sh)"
say "llama-server: $server"
say "ready: run the tests with  bash scripts/test.sh"
