#!/usr/bin/env bash
# gpumod pod bootstrap: turn an Ubuntu/Debian machine with NVIDIA GPUs into a
# vLLM-ready host. Uploaded by `pi pods setup` into gpumod's folder on the host
# (the folder holding this script, "ROOT") and run there:
#
#   bash ROOT/pod_setup.sh [--models-path PATH] [--vllm release|nightly|VERSION]
#                          [--mount-file FILE] [--ray] [--no-install]
#
# --ray: also Ray, for one model across pods (`pi start --pods`): the Ray vLLM pinned
# while it shipped Ray (RAY_REQ below); newer vLLM no longer installs it.
#
# Idempotent: a second run changes nothing that is already right (steps say
# ::skip). Nothing is deleted: an existing venv or Hugging Face cache is kept.
#
# Progress protocol (stdout), one line each:
#   ::step ID TEXT      a step starts
#   ::ok ID             it changed something and succeeded
#   ::skip ID REASON    nothing to do (already right, --no-install, best effort)
#   ::fail ID REASON    it failed; the script exits non-zero
#   ::fact KEY VALUE    after all steps: what the host has
# Any other line is detail for the user.
#
# Secrets: HF_TOKEN and PI_API_KEY live in ROOT/secrets.env (0600), written by
# gpumod through SSH stdin. This script never reads their values; the managed
# ROOT/env.sh only sources that file. Nothing secret is printed, passed in
# argv, or written to a shell rc file.
#
# Docs: docs/pod-setup.md in the gpumod repository.

set -Eeuo pipefail
umask 022

# ---------------------------------------------------------------- locations
if [[ -n "${BASH_SOURCE[0]:-}" && -f "${BASH_SOURCE[0]}" ]]; then
    ROOT=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)
else
    ROOT=${GPUMOD_REMOTE_HOME:-$HOME/.gpumod}
fi
VENV="$HOME/venv"
PY="$VENV/bin/python"
DEFAULT_HF_HOME="$HOME/.cache/huggingface"
ENV_FILE="$ROOT/env.sh"
SECRETS_FILE="$ROOT/secrets.env"
STATE_FILE="$ROOT/setup.state"
PID_FILE="$ROOT/setup.pid"
MOUNT_SCRIPT="$ROOT/mount.sh"
MOUNT_POINTS="$ROOT/mount.points"
BASHRC="$HOME/.bashrc"
BASHRC_MARKER="# gpumod-managed: loads gpumod's env.sh"
NIGHTLY_INDEX="https://wheels.vllm.ai/nightly"
# vLLM's requirements/cuda.txt up to 0.18: "ray[cgraph]>=2.48.0 # Ray Compiled Graph,
# required for pipeline parallelism in V1" (gpumod.ops.ray_nodes.RAY_REQUIREMENT).
RAY_REQ="ray[cgraph]>=2.48.0"
RAY_MIN="2.48.0"
UV_INSTALLER_URL="https://astral.sh/uv/install.sh"
export PATH="$HOME/.local/bin:$PATH"

# ---------------------------------------------------------------- protocol
STEP=""
CHILD=""
TMPD=""

say() { printf '%s\n' "$*"; }
one_line() { printf '%s' "$*" | tr '\r\n\t' '   '; }
step() { STEP=$1; shift; say "::step $STEP $(one_line "$*")"; }
ok() { say "::ok $STEP"; STEP=""; }
skip() { say "::skip $STEP $(one_line "$*")"; STEP=""; }
fail() { say "::fail ${STEP:-setup} $(one_line "$*")"; exit 1; }
warn() { say "warning: $(one_line "$*")"; }
fact() { say "::fact $1 $(one_line "${2:-}")"; }
have() { command -v "$1" >/dev/null 2>&1; }

usage() {
    cat <<'EOF'
usage: pod_setup.sh [--models-path PATH] [--vllm release|nightly|VERSION]
                    [--mount-file FILE] [--ray] [--no-install]
EOF
}

usage_fail() {
    say "::fail args $(one_line "$*")"
    usage
    exit 2
}

# Run an installer or other tool: its output is detail, it never reads our
# stdin, and it runs in the background so a signal reaches our trap at once.
run() {
    say "\$ $(printf '%q ' "$@")"
    "$@" </dev/null 2>&1 &
    CHILD=$!
    local rc=0
    wait "$CHILD" || rc=$?
    CHILD=""
    return "$rc"
}

cleanup() {
    if [[ -f "$PID_FILE" && "$(cat "$PID_FILE" 2>/dev/null || true)" == "$$" ]]; then
        rm -f "$PID_FILE"
    fi
    if [[ -n "$TMPD" ]]; then rm -rf "$TMPD"; fi
}

on_signal() {
    trap - ERR
    trap '' INT TERM HUP
    say "::fail ${STEP:-setup} interrupted by SIG$1; stopped" || true
    if [[ -n "$CHILD" ]]; then kill -TERM "$CHILD" 2>/dev/null || true; fi
    local job
    for job in $(jobs -p); do kill -TERM "$job" 2>/dev/null || true; done
    # As a process group leader (gpumod starts us with setsid), stop the rest too.
    if [[ "$(awk '{print $5}' "/proc/$$/stat" 2>/dev/null || true)" == "$$" ]]; then
        kill -TERM -- "-$$" 2>/dev/null || true
    fi
    case $1 in INT) exit 130 ;; HUP) exit 129 ;; *) exit 143 ;; esac
}

on_error() {
    local rc=$? line=$1
    trap - ERR
    say "::fail ${STEP:-setup} unexpected error (exit $rc) at line $line of pod_setup.sh"
    exit "$rc"
}

trap cleanup EXIT
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
trap 'on_signal HUP' HUP
trap 'on_error $LINENO' ERR

# ---------------------------------------------------------------- arguments
MODELS_PATH=""
VLLM_WANT=""
MOUNT_FILE=""
NO_INSTALL=0
WANT_RAY=0

need_value() {
    if [[ $# -lt 2 || -z "$2" ]]; then usage_fail "$1 needs a value"; fi
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --models-path) need_value "$@"; MODELS_PATH=$2; shift 2 ;;
        --models-path=*) MODELS_PATH=${1#*=}; shift ;;
        --vllm) need_value "$@"; VLLM_WANT=$2; shift 2 ;;
        --vllm=*) VLLM_WANT=${1#*=}; shift ;;
        --mount-file) need_value "$@"; MOUNT_FILE=$2; shift 2 ;;
        --mount-file=*) MOUNT_FILE=${1#*=}; shift ;;
        --no-install) NO_INSTALL=1; shift ;;
        --ray) WANT_RAY=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage_fail "unknown argument: $1" ;;
    esac
done

# --vllm: release | nightly | an exact version (vllm==VERSION) | a PEP 440
# specifier starting with an operator (e.g. ">=0.10.0"). The requirement is
# always passed as ONE quoted argument, never through a shell line.
VLLM_REQ=""
case $VLLM_WANT in
    "" | release | nightly) ;;
    *)
        if [[ $VLLM_WANT =~ ^[0-9][0-9A-Za-z.+!_-]*$ ]]; then
            VLLM_REQ="vllm==$VLLM_WANT"
        elif [[ $VLLM_WANT =~ ^(==|>=|<=|~=|!=|===|>|<)[0-9][0-9A-Za-z.+!*_,\<\>=~-]*$ ]]; then
            VLLM_REQ="vllm$VLLM_WANT"
        else
            usage_fail "invalid --vllm value '$VLLM_WANT' (use release, nightly or a version such as 0.10.1)"
        fi
        ;;
esac

expand_home() {
    case $1 in
        \~) printf '%s' "$HOME" ;;
        \~/*) printf '%s/%s' "$HOME" "${1:2}" ;;
        *) printf '%s' "$1" ;;
    esac
}

if [[ -n "$MODELS_PATH" ]]; then
    MODELS_PATH=$(expand_home "$MODELS_PATH")
    [[ $MODELS_PATH == /* ]] || usage_fail "--models-path must be an absolute path, got '$MODELS_PATH'"
    MODELS_PATH=${MODELS_PATH%/}
    [[ -n "$MODELS_PATH" ]] || usage_fail "--models-path cannot be /"
fi
if [[ -n "$MOUNT_FILE" ]]; then
    [[ -r "$MOUNT_FILE" ]] || usage_fail "cannot read the mount file '$MOUNT_FILE'"
    [[ $MOUNT_FILE == /* ]] || MOUNT_FILE="$PWD/$MOUNT_FILE"
fi

# ---------------------------------------------------------------- helpers
# Quote a value for the POSIX shell (env.sh, mount.sh).
sq() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

# Write content to a file atomically, but only when it differs; returns 1 when
# the file was already right (so callers can say ::skip).
write_if_changed() {
    local path=$1 mode=$2 content=$3 tmp
    if [[ -f "$path" ]] && printf '%s\n' "$content" | cmp -s - "$path"; then
        return 1
    fi
    tmp="$path.tmp.$$"
    printf '%s\n' "$content" >"$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$path"
    return 0
}

state_get() {
    [[ -f "$STATE_FILE" ]] || return 0
    awk -v k="$1" 'index($0, k "=") == 1 { v = substr($0, length(k) + 2) } END { if (v != "") print v }' "$STATE_FILE"
}

state_set() {
    local key=$1 value=$2 content=""
    if [[ -f "$STATE_FILE" ]]; then
        content=$(awk -v k="$1" 'index($0, k "=") != 1' "$STATE_FILE")
    fi
    content=$(printf '%s\n%s=%s' "$content" "$key" "$value" | awk 'NF' | sort)
    write_if_changed "$STATE_FILE" 644 "$content" || true
}

# Version of a package in the venv (empty when absent); never fails.
pkg_version() {
    [[ -x "$PY" ]] || return 0
    "$PY" -c 'import importlib.metadata as m, sys
try:
    print(m.version(sys.argv[1]))
except Exception:
    pass' "$1" 2>/dev/null </dev/null || true
}

uv_pip_install() {
    run uv pip install --python "$PY" "$@"
}

download() {
    local url=$1 out=$2
    if have curl; then
        run curl -fsSL --retry 3 -o "$out" "$url"
    elif have wget; then
        run wget -q -O "$out" "$url"
    else
        say "neither curl nor wget is installed"
        return 1
    fi
}

find_nvcc() {
    if have nvcc; then command -v nvcc; return 0; fi
    local candidate
    for candidate in "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" "/usr/local/cuda-${CUDA_VERSION:-none}/bin/nvcc"; do
        if [[ -x "$candidate" ]]; then printf '%s\n' "$candidate"; return 0; fi
    done
    return 0
}

nvcc_version() {
    "$1" --version 2>/dev/null </dev/null \
        | sed -n 's/.*release \([0-9][0-9.]*\).*/\1/p' | awk 'NR == 1' || true
}

mounted_points() {
    awk '{ print $2 }' /proc/self/mounts 2>/dev/null | sort -u || true
}

is_mounted() {
    local points
    points=$(mounted_points)
    grep -qxF -- "$1" <<<"$points"
}

SUDO=()
can_admin() {
    if [[ "$(id -u)" == 0 ]]; then SUDO=(); return 0; fi
    if have sudo && sudo -n true 2>/dev/null </dev/null; then SUDO=(sudo -n); return 0; fi
    return 1
}

# ---------------------------------------------------------------- start
mkdir -p "$ROOT"
cd "$ROOT"
if ! (set -C; printf '%s\n' "$$" >"$PID_FILE") 2>/dev/null; then
    other=$(cat "$PID_FILE" 2>/dev/null || true)
    other_cmd=""
    if [[ "$other" =~ ^[0-9]+$ ]]; then other_cmd=$(tr '\0' ' ' <"/proc/$other/cmdline" 2>/dev/null || true); fi
    if [[ "$other" =~ ^[0-9]+$ && "$other" != "$$" && $other_cmd == *pod_setup* ]]; then
        say "::fail setup another setup is already running on this host (pid $other)"
        exit 1
    fi
    printf '%s\n' "$$" >"$PID_FILE"
fi
TMPD=$(mktemp -d "${TMPDIR:-/tmp}/gpumod-setup.XXXXXX")

say "gpumod pod setup in $ROOT (user $(id -un), home $HOME)"
if [[ $NO_INSTALL == 1 ]]; then say "--no-install: detecting only; nothing is installed or changed"; fi

# ---------------------------------------------------------------- 1. GPUs
step gpu "detecting GPUs (nvidia-smi)"
if ! have nvidia-smi; then
    fail "nvidia-smi not found: this host has no NVIDIA driver; use a GPU image with the driver installed"
fi
if ! gpu_csv=$(nvidia-smi --query-gpu=index,name,memory.total,driver_version \
    --format=csv,noheader,nounits 2>&1 </dev/null); then
    fail "nvidia-smi failed: $(printf '%s\n' "$gpu_csv" | awk 'NF { print; exit }')"
fi
GPU_COUNT=$(printf '%s\n' "$gpu_csv" | awk -F', *' 'NF >= 4 { n++ } END { print n + 0 }')
DRIVER_VERSION=$(printf '%s\n' "$gpu_csv" | awk -F', *' 'NF >= 4 { print $4; exit }')
if [[ "$GPU_COUNT" -eq 0 ]]; then
    fail "nvidia-smi lists no GPU: $(printf '%s\n' "$gpu_csv" | awk 'NF { print; exit }')"
fi
printf '%s\n' "$gpu_csv" | awk -F', *' 'NF >= 4 { printf "GPU %s: %s, %s MiB\n", $1, $2, $3 }'
CUDA_VERSION=$(nvidia-smi 2>/dev/null </dev/null \
    | sed -n 's/.*CUDA Version[[:space:]]*:[[:space:]]*\([0-9][0-9.]*\).*/\1/p' | awk 'NR == 1' || true)
CUDA_VERSION=${CUDA_VERSION:-unknown}
say "driver $DRIVER_VERSION, supports CUDA $CUDA_VERSION"
ok

# ---------------------------------------------------------------- 2. CUDA toolkit
os_release() {
    awk -F= -v k="$1" '$1 == k { gsub(/"/, "", $2); print $2 }' /etc/os-release 2>/dev/null || true
}

install_cuda_toolkit() {
    local pkg=$1 distro arch id version_id
    if ! apt-cache show "$pkg" >/dev/null 2>&1 </dev/null; then
        id=$(os_release ID)
        version_id=$(os_release VERSION_ID)
        distro="$id${version_id//./}"
        case $(uname -m) in
            x86_64) arch=x86_64 ;;
            aarch64 | arm64) arch=sbsa ;;
            *) say "no NVIDIA CUDA repository for $(uname -m)"; return 1 ;;
        esac
        say "adding NVIDIA's CUDA repository for $distro/$arch"
        download "https://developer.download.nvidia.com/compute/cuda/repos/$distro/$arch/cuda-keyring_1.1-1_all.deb" \
            "$TMPD/cuda-keyring.deb" || return 1
        run "${SUDO[@]}" dpkg -i "$TMPD/cuda-keyring.deb" || return 1
        run "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update || return 1
    fi
    run "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$pkg"
}

step cuda "CUDA toolkit matching the driver (CUDA $CUDA_VERSION)"
NVCC=$(find_nvcc)
if [[ -n "$NVCC" ]]; then
    skip "nvcc $(nvcc_version "$NVCC") present at $NVCC"
elif [[ $NO_INSTALL == 1 ]]; then
    skip "--no-install: nvcc not found"
elif ! [[ $CUDA_VERSION =~ ^[0-9]+\.[0-9]+ ]]; then
    warn "the driver's CUDA version is unknown: install the CUDA toolkit by hand if you need nvcc"
    skip "best effort: driver CUDA version unknown"
else
    CUDA_MAJOR=${CUDA_VERSION%%.*}
    CUDA_MINOR=${CUDA_VERSION#*.}
    CUDA_MINOR=${CUDA_MINOR%%.*}
    CUDA_PKG="cuda-toolkit-$CUDA_MAJOR-$CUDA_MINOR"
    if ! have apt-get; then
        warn "no apt-get on this host: install $CUDA_PKG by hand if you need nvcc (vLLM wheels bring their own CUDA runtime)"
        skip "best effort: no apt-get to install $CUDA_PKG"
    elif ! can_admin; then
        warn "installing $CUDA_PKG needs root or passwordless sudo"
        skip "best effort: not root, no sudo to install $CUDA_PKG"
    elif install_cuda_toolkit "$CUDA_PKG"; then
        NVCC=$(find_nvcc)
        if [[ -n "$NVCC" ]]; then
            say "nvcc $(nvcc_version "$NVCC") at $NVCC"
        else
            warn "$CUDA_PKG installed but nvcc was not found"
        fi
        ok
    else
        warn "could not install $CUDA_PKG (see above); vLLM wheels bring their own CUDA runtime"
        skip "best effort: installing $CUDA_PKG failed"
    fi
fi

# ---------------------------------------------------------------- 3. uv
step uv "uv (Python package manager)"
if have uv; then
    skip "$(uv --version 2>/dev/null </dev/null || echo uv) at $(command -v uv)"
elif [[ $NO_INSTALL == 1 ]]; then
    skip "--no-install: uv not found"
else
    download "$UV_INSTALLER_URL" "$TMPD/uv-install.sh" || fail "could not download the uv installer from $UV_INSTALLER_URL"
    run env UV_INSTALL_DIR="$HOME/.local/bin" UV_NO_MODIFY_PATH=1 INSTALLER_NO_MODIFY_PATH=1 \
        sh "$TMPD/uv-install.sh" || fail "the uv installer failed"
    hash -r
    have uv || fail "uv was installed but is not on PATH ($HOME/.local/bin)"
    ok
fi

# ---------------------------------------------------------------- 4. Python 3.12
step python "Python 3.12"
if ! have uv; then
    skip "--no-install: uv not found"
elif py312=$(uv python find 3.12 2>/dev/null </dev/null); then
    skip "Python 3.12 found at $py312"
elif [[ $NO_INSTALL == 1 ]]; then
    skip "--no-install: Python 3.12 not installed"
else
    run uv python install 3.12 || fail "uv python install 3.12 failed"
    ok
fi

# ---------------------------------------------------------------- 5. venv
step venv "virtual environment at $VENV"
if [[ -x "$PY" ]] && "$PY" -c 'import sys' >/dev/null 2>&1 </dev/null; then
    skip "exists (Python $("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null </dev/null || echo '?')); kept"
elif [[ -e "$VENV" || -L "$VENV" ]]; then
    if [[ $NO_INSTALL == 1 ]]; then
        skip "--no-install: $VENV exists but has no working Python"
    else
        fail "$VENV exists but has no working Python; move it away (setup never deletes it) and run setup again"
    fi
elif [[ $NO_INSTALL == 1 ]]; then
    skip "--no-install: no venv at $VENV"
else
    run uv venv --python 3.12 --seed "$VENV" || fail "uv venv failed"
    ok
fi

need_venv() {
    [[ -x "$PY" ]] || fail "no Python in $VENV"
}

# ---------------------------------------------------------------- 6. PyTorch
step torch "PyTorch (uv --torch-backend=auto)"
v=$(pkg_version torch)
if [[ -n "$v" ]]; then
    skip "torch $v installed"
elif [[ $NO_INSTALL == 1 ]]; then
    skip "--no-install: torch not installed"
else
    need_venv
    uv_pip_install torch --torch-backend=auto || fail "installing PyTorch failed (see above)"
    ok
fi

# ---------------------------------------------------------------- 7. vLLM
vllm_satisfies() { # installed-version specifier -> 0 yes, 1 no, 2 cannot tell
    "$PY" - "$1" "$2" 2>/dev/null <<'EOF' || return $?
import sys
try:
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version
except ImportError:
    try:
        from pip._vendor.packaging.specifiers import SpecifierSet
        from pip._vendor.packaging.version import Version
    except ImportError:
        sys.exit(2)
sys.exit(0 if Version(sys.argv[1]) in SpecifierSet(sys.argv[2], prereleases=True) else 1)
EOF
}

step vllm "vLLM (${VLLM_WANT:-release, or keep the installed one})"
have_vllm=$(pkg_version vllm)
vllm_args=()
case $VLLM_WANT in
    "")
        if [[ -n "$have_vllm" ]]; then
            skip "vLLM $have_vllm installed (pass --vllm to change it)"
        else
            vllm_args=(-U vllm --torch-backend=auto)
        fi
        ;;
    release)
        if [[ -n "$have_vllm" && $have_vllm != *dev* ]]; then
            skip "vLLM release $have_vllm installed"
        else
            vllm_args=(-U vllm --torch-backend=auto)
        fi
        ;;
    nightly)
        if [[ $have_vllm == *dev* ]]; then
            skip "vLLM nightly $have_vllm installed"
        else
            vllm_args=(-U vllm --torch-backend=auto --extra-index-url "$NIGHTLY_INDEX")
        fi
        ;;
    *)
        if [[ -n "$have_vllm" && "vllm==$have_vllm" == "$VLLM_REQ" ]]; then
            skip "vLLM $have_vllm installed"
        elif [[ -n "$have_vllm" && $VLLM_REQ != vllm==* ]] && vllm_satisfies "$have_vllm" "${VLLM_REQ#vllm}"; then
            skip "vLLM $have_vllm installed satisfies ${VLLM_REQ#vllm}"
        else
            vllm_args=("$VLLM_REQ" --torch-backend=auto)
        fi
        ;;
esac
if [[ ${#vllm_args[@]} -gt 0 ]]; then
    if [[ $NO_INSTALL == 1 ]]; then
        skip "--no-install: vLLM ${have_vllm:-not installed}"
    else
        need_venv
        uv_pip_install "${vllm_args[@]}" || fail "installing vLLM failed (see above)"
        say "vLLM $(pkg_version vllm) installed"
        ok
    fi
fi

# ---------------------------------------------------------------- 7b. Ray (--ray)
if [[ $WANT_RAY == 1 ]]; then
    step ray "Ray for multi-node vLLM ($RAY_REQ)"
    have_ray=$(pkg_version ray)
    # version order by sort -V (GNU coreutils): needs no Python packaging module
    if [[ -n "$have_ray" && "$(printf '%s\n' "$RAY_MIN" "$have_ray" | sort -V | head -n 1)" == "$RAY_MIN" ]]; then
        skip "ray $have_ray installed"
    elif [[ $NO_INSTALL == 1 ]]; then
        skip "--no-install: ray ${have_ray:-not installed} (multi-node needs $RAY_REQ)"
    else
        need_venv
        uv_pip_install "$RAY_REQ" || fail "installing Ray failed (see above)"
        say "ray $(pkg_version ray) installed"
        ok
    fi
fi

# ---------------------------------------------------------------- 8. FlashInfer
step flashinfer "FlashInfer (best effort)"
v=$(pkg_version flashinfer-python)
if [[ -n "$v" ]]; then
    skip "flashinfer-python $v installed"
elif [[ $NO_INSTALL == 1 ]]; then
    skip "--no-install: flashinfer-python not installed"
else
    need_venv
    if uv_pip_install flashinfer-python; then
        ok
    else
        warn "flashinfer-python could not be installed; vLLM falls back to its other attention backends"
        skip "best effort: flashinfer-python not installed"
    fi
fi

# ---------------------------------------------------------------- 9. Hugging Face hub
hub_major() { local v; v=$(pkg_version huggingface_hub); printf '%s' "${v%%.*}"; }

step hf "huggingface_hub with fast transfer (hf_xet; hf_transfer for hub < 1.0)"
hub=$(pkg_version huggingface_hub)
xet=$(pkg_version hf_xet)
hft=$(pkg_version hf_transfer)
major=$(hub_major)
if [[ -n "$hub" && -n "$xet" && ( -n "$hft" || ${major:-0} -ge 1 ) ]]; then
    skip "huggingface_hub $hub, hf_xet $xet${hft:+, hf_transfer $hft}"
elif [[ $NO_INSTALL == 1 ]]; then
    skip "--no-install: huggingface_hub ${hub:-missing}, hf_xet ${xet:-missing}"
else
    need_venv
    missing=()
    [[ -n "$hub" ]] || missing+=(huggingface_hub)
    [[ -n "$xet" ]] || missing+=(hf_xet)
    if [[ ${#missing[@]} -gt 0 ]]; then
        # no -U: keep the hub version vLLM/transformers resolved
        uv_pip_install "${missing[@]}" || fail "installing ${missing[*]} failed (see above)"
    fi
    major=$(hub_major)
    if [[ ${major:-0} -lt 1 && -z "$(pkg_version hf_transfer)" ]]; then
        uv_pip_install hf_transfer || warn "hf_transfer could not be installed; downloads use hf_xet only"
    fi
    ok
fi

# ---------------------------------------------------------------- 10. secrets file
step secrets "secrets file $SECRETS_FILE (values never shown)"
if [[ -f "$SECRETS_FILE" ]]; then
    keys=$(awk -F= '/^[A-Za-z_][A-Za-z0-9_]*=/ { printf "%s%s", sep, $1; sep = ", " }' "$SECRETS_FILE")
    mode=$(stat -c %a "$SECRETS_FILE" 2>/dev/null || echo unknown)
    if [[ $mode == 600 ]]; then
        skip "present (${keys:-no keys}), mode 0600"
    elif [[ $NO_INSTALL == 1 ]]; then
        warn "$SECRETS_FILE has mode $mode; it should be 0600"
        skip "--no-install: mode $mode left as is"
    else
        chmod 600 "$SECRETS_FILE"
        say "mode was $mode, now 0600"
        ok
    fi
else
    warn "no $SECRETS_FILE: HF_TOKEN and PI_API_KEY are not configured on this host"
    skip "absent"
fi

# ---------------------------------------------------------------- 11. mount
MOUNT_TARGET=""
render_mount_script() {
    printf '%s\n' '#!/usr/bin/env bash' \
        "# gpumod: the user's mount command (pi pods setup --mount), kept here to run again" \
        "# after a reboot (systemd unit gpumod-mount.service where systemd runs, else re-run setup)." \
        'set -e'
    printf '%s' "$1"
}

persist_mount_unit() {
    [[ -d /run/systemd/system ]] && have systemctl && [[ "$(id -u)" == 0 ]] || return 1
    local unit=/etc/systemd/system/gpumod-mount.service
    local content
    content=$(printf '%s\n' '[Unit]' \
        'Description=gpumod: mount persistent model storage' \
        'Wants=network-online.target' 'After=network-online.target' '' \
        '[Service]' 'Type=oneshot' 'RemainAfterExit=yes' \
        "ExecStart=/bin/bash $MOUNT_SCRIPT" '' \
        '[Install]' 'WantedBy=multi-user.target')
    if write_if_changed "$unit" 644 "$content"; then
        run systemctl daemon-reload || true
    fi
    systemctl is-enabled --quiet gpumod-mount.service 2>/dev/null </dev/null \
        || run systemctl enable gpumod-mount.service || return 1
    return 0
}

if [[ -n "$MOUNT_FILE" ]]; then
    step mount "persistent storage (your mount command)"
    mount_cmd=$(cat "$MOUNT_FILE")
    # The last word of the command, when it is an absolute path, is taken as the
    # mount point (as in "mount -t nfs server:/x /mnt/models").
    last_word=$(printf '%s\n' "$mount_cmd" | awk 'NF { w = $NF } END { print w }')
    last_word=${last_word%/}
    new_script=$(render_mount_script "$mount_cmd")
    old_points=""
    if [[ -f "$MOUNT_POINTS" ]]; then old_points=$(cat "$MOUNT_POINTS"); fi
    all_mounted=1
    while IFS= read -r point; do
        [[ -z "$point" ]] || is_mounted "$point" || all_mounted=0
    done <<<"$old_points"
    if [[ -z "${mount_cmd//[[:space:]]/}" ]]; then
        fail "the mount command is empty"
    elif [[ $NO_INSTALL == 1 ]]; then
        skip "--no-install: the mount command was not run"
    elif [[ -f "$MOUNT_SCRIPT" ]] && printf '%s\n' "$new_script" | cmp -s - "$MOUNT_SCRIPT" \
        && [[ $all_mounted == 1 ]]; then
        skip "already done (${old_points:-command ran before; no new mount point was seen})"
    elif [[ $last_word == /* ]] && is_mounted "$last_word"; then
        say "$last_word is already a mount point: not running the command again"
        write_if_changed "$MOUNT_SCRIPT" 700 "$new_script" || true
        write_if_changed "$MOUNT_POINTS" 644 "$last_word" || true
        ok
    else
        before=$(mounted_points)
        write_if_changed "$MOUNT_SCRIPT.new" 700 "$new_script" || true
        if ! run bash "$MOUNT_SCRIPT.new"; then
            rm -f "$MOUNT_SCRIPT.new"
            fail "the mount command failed; check it on the host (pi ssh) and run setup again"
        fi
        mv -f "$MOUNT_SCRIPT.new" "$MOUNT_SCRIPT"
        after=$(mounted_points)
        points=$(comm -13 <(printf '%s\n' "$before") <(printf '%s\n' "$after") | awk 'NF')
        write_if_changed "$MOUNT_POINTS" 644 "$points" || true
        say "mounted: ${points:-no new mount point seen in /proc/mounts}"
        if persist_mount_unit; then
            say "persisted: systemd unit gpumod-mount.service runs $MOUNT_SCRIPT at boot"
        else
            say "persisted as $MOUNT_SCRIPT (no systemd here: after a reboot, run setup again to remount)"
        fi
        ok
    fi
    points=$(cat "$MOUNT_POINTS" 2>/dev/null || true)
    if [[ $(printf '%s\n' "$points" | awk 'NF' | wc -l) -eq 1 ]]; then
        MOUNT_TARGET=$points
    elif [[ $last_word == /* && -d $last_word ]]; then
        MOUNT_TARGET=$last_word
    fi
fi

# ---------------------------------------------------------------- 12. HF cache
step hf_cache "Hugging Face cache (HF_HOME)"
HF_TARGET=""
if [[ -n "$MODELS_PATH" ]]; then
    HF_TARGET=$MODELS_PATH
elif [[ -n "$MOUNT_TARGET" ]]; then
    HF_TARGET=$MOUNT_TARGET
elif [[ -n "$MOUNT_FILE" && $NO_INSTALL == 0 ]]; then
    fail "cannot tell where the mount command mounts; pass --models-path PATH (a folder on the mount)"
else
    HF_TARGET=$(state_get hf_home)
    HF_TARGET=${HF_TARGET:-$DEFAULT_HF_HOME}
fi
say "HF_HOME: $HF_TARGET"
if [[ $NO_INSTALL == 1 ]]; then
    skip "--no-install: $HF_TARGET $( [[ -d "$HF_TARGET" ]] && echo exists || echo 'does not exist')"
else
    changed=0
    if [[ ! -d "$HF_TARGET" ]]; then
        mkdir -p "$HF_TARGET" || fail "cannot create $HF_TARGET"
        changed=1
    fi
    if [[ "$HF_TARGET" != "$DEFAULT_HF_HOME" ]]; then
        # ~/.cache/huggingface points at the target, so tools that do not read
        # env.sh use it too. Data is never deleted or moved.
        if [[ -L "$DEFAULT_HF_HOME" ]]; then
            current=$(readlink "$DEFAULT_HF_HOME")
            if [[ "$current" != "$HF_TARGET" ]]; then
                ln -sfn "$HF_TARGET" "$DEFAULT_HF_HOME"
                say "$DEFAULT_HF_HOME now links to $HF_TARGET (it linked to $current)"
                changed=1
            fi
        elif [[ -d "$DEFAULT_HF_HOME" ]] && [[ -z "$(ls -A "$DEFAULT_HF_HOME")" ]]; then
            rmdir "$DEFAULT_HF_HOME"
            ln -s "$HF_TARGET" "$DEFAULT_HF_HOME"
            say "$DEFAULT_HF_HOME (was empty) now links to $HF_TARGET"
            changed=1
        elif [[ -e "$DEFAULT_HF_HOME" ]]; then
            say "kept the existing cache at $DEFAULT_HF_HOME (not moved, not deleted);" \
                "HF_HOME points at $HF_TARGET for new downloads." \
                "To reuse its models, move $DEFAULT_HF_HOME/hub/* into $HF_TARGET/hub/ by hand."
        else
            mkdir -p "$(dirname "$DEFAULT_HF_HOME")"
            ln -s "$HF_TARGET" "$DEFAULT_HF_HOME"
            say "$DEFAULT_HF_HOME links to $HF_TARGET"
            changed=1
        fi
    fi
    if [[ "$(state_get hf_home)" != "$HF_TARGET" ]]; then
        state_set hf_home "$HF_TARGET"
        changed=1
    fi
    if [[ $changed == 1 ]]; then ok; else skip "already set"; fi
fi

# ---------------------------------------------------------------- 13. env.sh
render_env() {
    local nvcc_dir cuda_home
    printf '%s\n' \
        "# Managed by gpumod (pod_setup.sh): replaced on every setup run; edits here are lost." \
        "# Secrets are not in this file: they are read from secrets.env (mode 0600) below."
    printf 'export GPUMOD_REMOTE_HOME=%s\n' "$(sq "$ROOT")"
    # shellcheck disable=SC2016 # written literally: expanded when env.sh is sourced
    printf '%s\n' '_gpumod_path() { case ":$PATH:" in *":$1:"*) ;; *) PATH="$1:$PATH" ;; esac; }'
    printf '_gpumod_path %s\n' "$(sq "$HOME/.local/bin")"
    NVCC=$(find_nvcc)
    if [[ -n "$NVCC" ]]; then
        nvcc_dir=$(dirname "$NVCC")
        if [[ $nvcc_dir != /usr/bin && $nvcc_dir != /bin ]]; then
            cuda_home=$(dirname "$(readlink -f "$NVCC")")
            cuda_home=$(dirname "$cuda_home")
            printf 'export CUDA_HOME=%s\n' "$(sq "$cuda_home")"
            printf '_gpumod_path %s\n' "$(sq "$nvcc_dir")"
        fi
    fi
    if [[ -x "$PY" ]]; then printf '_gpumod_path %s\n' "$(sq "$VENV/bin")"; fi
    printf '%s\n' 'export PATH' 'unset -f _gpumod_path'
    printf 'export HF_HOME=%s\n' "$(sq "$HF_TARGET")"
    if [[ -n "$(pkg_version hf_transfer)" && ${major:-0} -lt 1 ]]; then
        printf '%s\n' 'export HF_HUB_ENABLE_HF_TRANSFER=1'
    fi
    if [[ -n "$(pkg_version hf_xet)" ]]; then
        printf '%s\n' 'export HF_XET_HIGH_PERFORMANCE=1'
    fi
    printf 'if [ -r %s ]; then . %s; export HF_TOKEN PI_API_KEY; fi\n' \
        "$(sq "$SECRETS_FILE")" "$(sq "$SECRETS_FILE")"
}

step env "environment file $ENV_FILE"
if [[ $NO_INSTALL == 1 ]]; then
    skip "--no-install: $( [[ -f "$ENV_FILE" ]] && echo 'left as is' || echo 'not written')"
else
    major=$(hub_major)
    if write_if_changed "$ENV_FILE" 644 "$(render_env)"; then ok; else skip "up to date"; fi
fi

# ---------------------------------------------------------------- 14. ~/.bashrc
step bashrc "load env.sh from ~/.bashrc (one marked line)"
BASHRC_LINE="if [ -r $(sq "$ENV_FILE") ]; then . $(sq "$ENV_FILE"); fi  $BASHRC_MARKER"
if [[ $NO_INSTALL == 1 ]]; then
    skip "--no-install: ~/.bashrc left as is"
elif [[ -f "$BASHRC" ]] && grep -qxF -- "$BASHRC_LINE" "$BASHRC"; then
    skip "already loads env.sh"
else
    target=$BASHRC
    if [[ -L "$BASHRC" ]]; then target=$(readlink -f "$BASHRC"); fi
    tmp="$target.gpumod.$$"
    {
        # At the top, so that commands run over SSH (which skip the rest of a
        # typical ~/.bashrc) get the environment too.
        printf '%s\n' "$BASHRC_LINE"
        if [[ -f "$target" ]]; then grep -vF -- "$BASHRC_MARKER" "$target" || true; fi
    } >"$tmp"
    if [[ -f "$target" ]]; then chmod --reference="$target" "$tmp"; else chmod 644 "$tmp"; fi
    mv -f "$tmp" "$target"
    ok
fi

# ---------------------------------------------------------------- facts
fact gpu_count "$GPU_COUNT"
fact driver_version "$DRIVER_VERSION"
fact cuda_version "$CUDA_VERSION"
NVCC=$(find_nvcc)
fact nvcc_version "$( [[ -n "$NVCC" ]] && nvcc_version "$NVCC" || echo none)"
if [[ -x "$PY" ]]; then fact python "$PY"; fact venv "$VENV"; else fact python none; fact venv none; fi
v=$(pkg_version vllm); fact vllm_version "${v:-none}"
v=$(pkg_version torch); fact torch_version "${v:-none}"
v=$(pkg_version ray); fact ray_version "${v:-none}"
fact hf_cache "$HF_TARGET"
fact env_file "$( [[ -f "$ENV_FILE" ]] && echo "$ENV_FILE" || echo none)"
fact systemd "$( [[ -d /run/systemd/system ]] && echo yes || echo no)"
fact docker "$(have docker && echo yes || echo no)"
say "setup finished"
