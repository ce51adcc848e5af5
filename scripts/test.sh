#!/usr/bin/env bash
# The test command: set up what the tests need (scripts/setup-dev.sh), lint and type-check,
# then run the whole test suite. Extra arguments go to pytest (e.g. `bash scripts/test.sh -x -q`).
# CI runs this through .ci/run with GPUMOD_REQUIRE_REAL=1: a test that needs a real sshd
# or llama-server then fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-dev.sh
printf '==> %s\n' "lint: ruff, mypy, shellcheck" >&2
.venv/bin/ruff check src tests bench
.venv/bin/mypy  # src/, configured in pyproject.toml [tool.mypy]
shellcheck scripts/*.sh src/gpumod/scripts/*.sh
printf '==> %s\n' "tests (about 10 minutes on 2 cores)" >&2
# The llama-server the tests use is the one the set-up built (or GPUMOD_LLAMA_SERVER).
GPUMOD_LLAMA_SERVER="$(bash scripts/build-llama-server.sh)"
export GPUMOD_LLAMA_SERVER
exec .venv/bin/python -m pytest "$@"
