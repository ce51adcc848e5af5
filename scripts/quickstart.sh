#!/usr/bin/env bash
# The main job on this machine, from nothing: serve SmolLM2-135M (a tiny GGUF model) with
# llama.cpp on the CPU as the deployment `tiny`, and ask it questions.
#
# On a fresh Debian/Ubuntu machine it installs what it needs (system packages as root,
# .venv with gpumod, the model, a CPU llama-server built once and cached), then
# `pi start`s the model, shows `pi list`, asks one question through the openai client
# and one through `pi prompt`, and prints how to use and stop it.
# Exit 0 only when a real answer came back. Run again, it reuses a healthy `tiny`
# (and restarts one that crashed).
#
# Usage: bash scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup-common.sh
. scripts/setup-common.sh

name=tiny
began=$SECONDS

packages=(python3 python3-venv ca-certificates curl procps)
if ! ls "${GPUMOD_BUILD_CACHE:-$HOME/.cache/gpumod-build}"/llama-server-*-portable/bin/llama-server \
    >/dev/null 2>&1 && [[ -z "${GPUMOD_LLAMA_SERVER:-}" ]]; then
  packages+=(cmake make g++)  # llama-server is built once from source
fi
say "[1/6] system packages"
ensure_packages "${packages[@]}" || exit 1

say "[2/6] .venv with gpumod and the tiny model"
ensure_venv gateway   # the gateway extra: the README's `gpumod gateway` runs after the quick start
model="$(tiny_model)"
pi=.venv/bin/pi

say "[3/6] llama-server (CPU)"
server="$(bash scripts/build-llama-server.sh)"
PATH="$(dirname "$server"):$PATH"
export PATH

# The key clients send. Kept in a 0600 file so that later runs (and you) can reuse it;
# never printed.
home="${GPUMOD_HOME:-${PI_CONFIG_DIR:-$HOME/.gpumod}}"
key_file="$home/quickstart-api-key"
if [[ -z "${PI_API_KEY:-}" ]]; then
  if [[ ! -s "$key_file" ]]; then
    mkdir -p "$home"
    (umask 077 && .venv/bin/python -c 'import secrets; print(secrets.token_hex(16))' >"$key_file")
  fi
  PI_API_KEY="$(cat "$key_file")"
  key_hint="export PI_API_KEY=\"\$(cat $key_file)\""
else
  key_hint="(PI_API_KEY as set in your shell)"
fi
export PI_API_KEY

# What `pi list` says about `tiny` now: state, model, url, served model (tab separated).
status_of() {
  "$pi" list --pod local --json 2>/dev/null | .venv/bin/python -c '
import json, sys
for row in json.load(sys.stdin):
    if row["name"] == sys.argv[1]:
        print(row["state"], row["model"], row["url"], row["served_model"], sep="\t")' \
    "$name" || true
}
# The endpoint answers this key (a `tiny` started with another key does not).
key_accepted() {
  .venv/bin/python - "$1" <<'PY'
import os, sys, urllib.request
req = urllib.request.Request(sys.argv[1].rstrip("/") + "/models",
                             headers={"Authorization": "Bearer " + os.environ["PI_API_KEY"]})
try:
    urllib.request.urlopen(req, timeout=10)
except Exception:
    sys.exit(1)
PY
}

say "[4/6] SmolLM2 as deployment '$name' on this machine"
IFS=$'\t' read -r state running_model url served <<<"$(status_of)" || true
if [[ -n "${state:-}" && "$running_model" != "$model" ]]; then
  echo "a deployment named '$name' already serves $running_model" >&2
  echo "  stop it first (.venv/bin/pi stop $name), then run this again" >&2
  exit 1
fi
if [[ "${state:-}" == running ]] && key_accepted "$url"; then
  echo "    $name is already running and healthy: reusing it ($url)" >&2
else
  if [[ -n "${state:-}" ]]; then
    reason="$state"
    [[ "$state" == running ]] && reason="running with another API key"
    echo "    $name is $reason: restarting it" >&2
    "$pi" stop "$name" >&2
  fi
  "$pi" start "$model" --name "$name" --pod local -q
  IFS=$'\t' read -r state running_model url served <<<"$(status_of)"
fi

say "[5/6] pi list"
"$pi" list --pod local

say "[6/6] asking $name"
echo "--- through the openai client (base URL $url):" >&2
.venv/bin/python - "$url" "$served" <<'PY'
import os, sys
import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key=os.environ["PI_API_KEY"])
question = "What is the capital of France? Answer in one sentence."
reply = client.chat.completions.create(
    model=sys.argv[2], messages=[{"role": "user", "content": question}], max_tokens=40)
answer = (reply.choices[0].message.content or "").strip()
print(f"Q: {question}\nA: {answer}")
sys.exit(0 if answer else "no answer came back")
PY
echo "--- through pi prompt (the agentic test client; --json: one event per line):" >&2
"$pi" prompt "$name" "What is 2+2?" --no-tools --json | .venv/bin/python -c '
import json, sys
final = [e for e in map(json.loads, sys.stdin) if e.get("type") == "final"]
answer = final[-1]["text"].strip() if final and final[-1]["reason"] == "answer" else ""
print("Q: What is 2+2?\nA: " + " ".join(answer.split()))
sys.exit(0 if answer else "pi prompt gave no answer")'

cat <<EOF

$name is running on this machine (this run took $((SECONDS - began))s).
  base URL:  $url
  model:     $served
  API key:   the value of PI_API_KEY

Use it from your shell:
  source .venv/bin/activate
  $key_hint
  export OPENAI_BASE_URL=$url OPENAI_MODEL=$served OPENAI_API_KEY="\$PI_API_KEY"
  pi prompt $name "Tell me a joke"
To start other GGUF models: export PATH="$(dirname "$server"):\$PATH"
Stop it:   .venv/bin/pi stop $name
EOF
