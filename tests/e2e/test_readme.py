"""The README and docs/*.md run as written, so they cannot drift from the code.

Every ```bash block in them is something a reader types. The blocks of one file run in
order, in one bash (`set -eo pipefail`), from the repository root, against the real
llama-server and the repository's .venv, with their own GPUMOD_HOME. A block that needs
what this machine lacks says so after the language, and is skipped with that reason:

    ```bash needs:gpu        a machine with an NVIDIA GPU
    ```bash runs:server      ... (see MARKERS)

An unknown marker fails: a block is never skipped silently.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.real import llama_server_binary, require_real, tiny_gguf

pytestmark = [pytest.mark.llama, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MARKERS = {
    "needs:gpu": "needs a machine with an NVIDIA GPU",
    "needs:pod": "needs a GPU pod reachable over SSH",
    "needs:claude": "needs the Claude Code CLI",
    "needs:llm": "needs an LLM endpoint for `gpumod plan` (GPUMOD_LLM_* or a deployment)",
    "runs:tests": "the test command: it runs this test itself",
    "runs:server": "starts a server that runs until stopped (an MCP client starts it)",
    "runs:terminal": "an interactive terminal program",
}
SHELLS = ("bash", "sh", "shell")
FENCE = re.compile(r"^```(\S*)[ \t]*(.*)$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    marker: str
    body: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def shell_blocks(path: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")),
                   len(lines))
        if match[1] in SHELLS:
            blocks.append(Block(path, i + 1, match[2].strip(), "\n".join(lines[i + 1:end])))
        i = end + 1
    return blocks


DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCKS = [b for doc in DOCS for b in shell_blocks(doc)]
RUNNABLE_DOCS = sorted({b.path for b in BLOCKS if not b.marker}, key=str)


def test_every_shell_block_is_run_or_says_why_not():
    assert BLOCKS, "no shell blocks found: the parser is broken"
    unknown = [f"{b.id}: {b.marker!r}" for b in BLOCKS if b.marker and b.marker not in MARKERS]
    assert not unknown, f"unknown markers (known: {', '.join(MARKERS)}): {unknown}"
    # the README opens with its two commands, and the second is what CI runs
    readme = [b for b in BLOCKS if b.path.name == "README.md"]
    assert [b.body for b in readme[:2]] == ["bash scripts/quickstart.sh", "bash scripts/test.sh"]
    assert "bash scripts/test.sh" in (REPO / ".ci/run").read_text()


def test_the_parser_reads_markers_and_bodies(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("text\n```bash\necho one\n```\n```json\n{}\n```\n"
                   "```bash needs:gpu\nnvidia-smi\n```\n```\nplain\n```\n")
    found = shell_blocks(doc)
    assert [(b.line, b.marker, b.body) for b in found] == [(2, "", "echo one"),
                                                           (8, "needs:gpu", "nvidia-smi")]


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.marker], ids=lambda b: b.id)
def test_marked_block_is_skipped_with_its_reason(block):
    pytest.skip(f"{block.id}: {MARKERS.get(block.marker, block.marker)}")


def _repo_venv() -> Path:
    python = REPO / ".venv" / "bin" / "python"
    if not python.exists():
        require_real("the repository's .venv", "it does not exist (run scripts/setup-dev.sh)")
    return python


def _stop_all(env: dict[str, str]) -> None:
    pi = str(REPO / ".venv" / "bin" / "pi")
    listing = subprocess.run([pi, "list", "--all-pods", "--json"], env=env, text=True,
                             capture_output=True, timeout=120)
    import json

    subprocess.run([str(REPO / ".venv" / "bin" / "gpumod"), "gateway", "stop"], env=env,
                   capture_output=True, timeout=120)  # a block that failed may leave it
    for row in json.loads(listing.stdout or "[]"):
        subprocess.run([pi, "stop", row["name"]], env=env, capture_output=True, timeout=120)


@pytest.mark.parametrize("doc", RUNNABLE_DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_shell_blocks_run_as_written(doc, tmp_path):
    _repo_venv()
    tiny_gguf()
    server = llama_server_binary()
    if shutil.which("curl") is None:
        require_real("curl", "it is not installed (apt-get install curl)")
    blocks = [b for b in shell_blocks(doc) if not b.marker]
    script = tmp_path / "blocks.sh"
    script.write_text("set -eo pipefail\n" + "".join(
        f"echo '>>> block {b.id}' >&2\n{b.body}\n" for b in blocks))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VIRTUAL_ENV", "PI_", "OPENAI_", "HF_TOKEN"))}
    env.update(GPUMOD_HOME=str(tmp_path / "home"), GPUMOD_LLAMA_SERVER=server,
               PATH=os.environ["PATH"].replace(f"{REPO}/.venv/bin:", ""))
    try:
        result = subprocess.run(["bash", str(script)], cwd=REPO, env=env, text=True,
                                capture_output=True, timeout=900)
    finally:
        _stop_all(env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{doc.name} did not run as written:\n{output[-6000:]}"
    for block in blocks:
        assert f">>> block {block.id}" in result.stderr
    if doc.name == "README.md":
        # the quick start asked its questions and got answers; the by-hand steps too
        assert re.search(r"A: \S", result.stdout), output[-3000:]
        assert "401" in result.stdout  # the endpoint refuses a request without the key
        # the gateway started the stopped service on the request and answered through it
        assert "gateway on local is up" in output, output[-3000:]
        assert result.stdout.count('"object":"chat.completion"') >= 2, output[-3000:]
