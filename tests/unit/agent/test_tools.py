"""The read-only tools: what the model gets back, including every way to get it wrong."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gpumod.agent import tools as tools_mod
from gpumod.agent.tools import (
    MAX_RESULT_CHARS,
    Tools,
    chat_tool_schemas,
    responses_tool_schemas,
)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "a.py").write_text("import os\n# TODO: fix\nprint('a')\n")
    (root / "src" / "b.py").write_text("x = 1\n")
    (root / "notes.txt").write_text("hello\nworld\n")
    (root / "cache.pyc").write_bytes(b"\x00\x01")
    return root


def call(tools: Tools, name: str, **args: object):
    return tools.call(name, json.dumps(args))


def test_schemas_name_the_four_seed_tools_with_their_parameters() -> None:
    chat = {t["function"]["name"]: t["function"]["parameters"] for t in chat_tool_schemas()}
    assert set(chat) == {"ls", "read", "glob", "rg"}
    assert set(chat["ls"]["properties"]) == {"path", "ignore"}
    assert set(chat["read"]["properties"]) == {"file_path", "offset", "limit"}
    assert set(chat["glob"]["properties"]) == {"pattern", "path"}
    assert chat["rg"]["required"] == ["args"]
    flat = {t["name"] for t in responses_tool_schemas()}
    assert flat == set(chat)
    assert all(t["type"] == "function" for t in responses_tool_schemas())


# -- ls -------------------------------------------------------------------


def test_ls_lists_sorted_with_dirs_marked_and_ignores(ws: Path) -> None:
    out = call(Tools(ws), "ls", path=str(ws))
    assert not out.is_error
    assert out.text.splitlines() == ["cache.pyc", "notes.txt", "src/"]
    out = call(Tools(ws), "ls", path=str(ws), ignore=["*.pyc", "src"])
    assert out.text.splitlines() == ["notes.txt"]


def test_ls_needs_an_absolute_path(ws: Path) -> None:
    out = call(Tools(ws), "ls", path="src")
    assert out.is_error
    assert "absolute path" in out.text and str(ws) in out.text


def test_ls_of_a_file_or_missing_path_is_a_tool_error(ws: Path) -> None:
    assert "not a directory" in call(Tools(ws), "ls", path=str(ws / "notes.txt")).text
    assert "no such" in call(Tools(ws), "ls", path=str(ws / "nope")).text


# -- path traversal ----------------------------------------------------------


def test_dotdot_out_of_the_workspace_is_refused(ws: Path) -> None:
    secret = ws.parent / "secret.txt"
    secret.write_text("top secret\n")
    for name, args in [("read", {"file_path": f"{ws}/../secret.txt"}),
                       ("ls", {"path": f"{ws}/src/../.."}),
                       ("read", {"file_path": "/etc/passwd"})]:
        out = call(Tools(ws), name, **args)
        assert out.is_error, (name, args)
        assert "outside the working directory" in out.text
        assert "top secret" not in out.text


def test_symlink_leading_out_is_refused(ws: Path) -> None:
    secret = ws.parent / "secret.txt"
    secret.write_text("top secret\n")
    (ws / "link.txt").symlink_to(secret)
    out = call(Tools(ws), "read", file_path=str(ws / "link.txt"))
    assert out.is_error and "outside" in out.text and "top secret" not in out.text


def test_glob_does_not_return_files_outside(ws: Path) -> None:
    (ws.parent / "outside.py").write_text("x")
    out = call(Tools(ws), "glob", pattern="../*.py")
    assert "outside.py" not in out.text
    out = call(Tools(ws), "glob", pattern="/etc/*")
    assert out.is_error and "relative" in out.text


def test_rg_paths_outside_and_dangerous_options_are_refused(ws: Path) -> None:
    tools = Tools(ws)
    for args in ["root /etc", "x ../", "-e x -- /etc/passwd", "--pre cat x",
                 "--pre=cat x", "-L x", "-iL x", "--follow x", "-f /etc/passwd",
                 "--ignore-file=/etc/passwd x"]:
        out = call(tools, "rg", args=args)
        assert out.is_error, args
        assert "root:" not in out.text


# -- read ------------------------------------------------------------------


def test_read_numbers_lines_and_honours_offset_and_limit(ws: Path) -> None:
    path = str(ws / "src" / "pkg" / "a.py")
    out = call(Tools(ws), "read", file_path=path)
    assert out.text.splitlines() == ["     1\timport os", "     2\t# TODO: fix",
                                     "     3\tprint('a')"]
    out = call(Tools(ws), "read", file_path=path, offset=2, limit=1)
    assert out.text.splitlines()[0] == "     2\t# TODO: fix"
    assert "continue with offset=3" in out.text


def test_read_bad_offsets_are_tool_errors(ws: Path) -> None:
    path = str(ws / "notes.txt")
    assert "past the end" in call(Tools(ws), "read", file_path=path, offset=99).text
    assert "starts at 1" in call(Tools(ws), "read", file_path=path, offset=0).text
    assert "integer" in call(Tools(ws), "read", file_path=path, offset="two").text
    assert "at least 1" in call(Tools(ws), "read", file_path=path, limit=0).text


def test_read_binary_file_is_a_tool_error(ws: Path) -> None:
    out = call(Tools(ws), "read", file_path=str(ws / "cache.pyc"))
    assert out.is_error and "binary file" in out.text


def test_read_huge_file_is_capped_and_says_so(ws: Path) -> None:
    big = ws / "big.txt"
    big.write_text(("y" * 100 + "\n") * 200_000)  # ~20 MB
    out = call(Tools(ws), "read", file_path=str(big))
    assert not out.is_error
    assert len(out.text) <= MAX_RESULT_CHARS + 200
    assert "continue with offset=" in out.text


def test_read_very_long_line_is_cut(ws: Path) -> None:
    (ws / "long.txt").write_text("z" * 50_000)
    out = call(Tools(ws), "read", file_path=str(ws / "long.txt"))
    assert "line cut at" in out.text and len(out.text) < 3000


def test_read_unreadable_file_is_a_tool_error(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = ws / "locked.txt"
    path.write_text("x")
    real_open = Path.open

    def refuse(self: Path, *args: object, **kwargs: object):
        if self == path:
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)  # root could read a chmod 0 file
    out = call(Tools(ws), "read", file_path=str(path))
    assert out.is_error and "permission denied" in out.text


def test_read_a_directory_or_fifo_is_a_tool_error(ws: Path) -> None:
    assert "use ls" in call(Tools(ws), "read", file_path=str(ws / "src")).text
    fifo = ws / "pipe"
    os.mkfifo(fifo)
    out = call(Tools(ws), "read", file_path=str(fifo))
    assert out.is_error and "not a regular file" in out.text


# -- glob --------------------------------------------------------------------


def test_glob_finds_recursively_with_absolute_results(ws: Path) -> None:
    out = call(Tools(ws), "glob", pattern="**/*.py")
    assert out.text.splitlines() == [str(ws / "src" / "b.py"), str(ws / "src/pkg/a.py")]
    out = call(Tools(ws), "glob", pattern="*.py", path=str(ws / "src"))
    assert out.text.splitlines() == [str(ws / "src" / "b.py")]
    assert "no files match" in call(Tools(ws), "glob", pattern="*.rs").text


# -- rg ----------------------------------------------------------------------


def test_rg_runs_ripgrep_with_arguments_split_like_a_shell(ws: Path) -> None:
    out = call(Tools(ws), "rg", args="'TODO: fix' -t py -n")
    assert not out.is_error, out.text
    assert "src/pkg/a.py:2:# TODO: fix" in out.text
    assert call(Tools(ws), "rg", args="nothing-here-zz").text == "no matches"


def test_rg_shell_syntax_is_not_interpreted(ws: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    out = call(Tools(ws), "rg", args=f"x; touch {marker}")
    assert not marker.exists()
    out = call(Tools(ws), "rg", args=f"$(touch {marker})")
    assert not marker.exists()
    assert not out.is_error or "rg" in out.text


def test_rg_bad_quoting_and_bad_regex_are_tool_errors(ws: Path) -> None:
    out = call(Tools(ws), "rg", args="'unclosed")
    assert out.is_error and "cannot split" in out.text
    out = call(Tools(ws), "rg", args="'(unclosed'")
    assert out.is_error and "rg exited with 2" in out.text


def test_missing_rg_is_a_clear_tool_error(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(ws / "empty-bin"))
    out = call(Tools(ws), "rg", args="TODO")
    assert out.is_error
    assert "ripgrep (rg) is not installed" in out.text


def test_rg_timeout_is_a_tool_error(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slow = ws / "bin"
    slow.mkdir()
    (slow / "rg").write_text("#!/bin/sh\nexec /bin/sleep 5\n")
    (slow / "rg").chmod(0o755)
    monkeypatch.setenv("PATH", str(slow))
    monkeypatch.setattr(tools_mod, "RG_TIMEOUT_S", 0.3)
    out = call(Tools(ws), "rg", args="x")
    assert out.is_error and "longer than" in out.text


def test_rg_huge_output_is_capped_with_full_length(ws: Path) -> None:
    (ws / "many.txt").write_text("match line here\n" * 20_000)
    out = call(Tools(ws), "rg", args="match many.txt")
    assert out.full_length > MAX_RESULT_CHARS
    assert f"of {out.full_length} characters" in out.text
    assert len(out.text) < MAX_RESULT_CHARS + 200


# -- bad calls from the model ----------------------------------------------------


def test_invalid_json_arguments_are_a_tool_error(ws: Path) -> None:
    out = Tools(ws).call("ls", '{"path": "/tmp"')
    assert out.is_error and "not valid JSON" in out.text
    out = Tools(ws).call("ls", '["/tmp"]')
    assert out.is_error and "JSON object" in out.text


def test_unknown_tool_is_a_tool_error_listing_the_tools(ws: Path) -> None:
    out = Tools(ws).call("bash", '{"cmd": "rm -rf /"}')
    assert out.is_error
    assert "unknown tool 'bash'" in out.text and "ls, read, glob, rg" in out.text


def test_missing_and_unexpected_arguments_are_tool_errors(ws: Path) -> None:
    assert "read needs file_path" in Tools(ws).call("read", "{}").text
    out = Tools(ws).call("ls", json.dumps({"path": str(ws), "recursive": True}))
    assert out.is_error and "does not take recursive" in out.text
    assert "must be a string" in Tools(ws).call("ls", '{"path": 5}').text
