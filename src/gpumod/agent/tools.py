"""The four read-only tools of `pi prompt`: ls, read, glob, rg.

They run locally, inside one workspace folder (the current directory unless
told otherwise), because what they return is sent to the model's endpoint,
often a rented pod. Every failure becomes an ``error: ...`` text the model can
read and act on; nothing here raises to the caller.
"""

from __future__ import annotations

import fnmatch
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpumod.agent.client import parse_arguments
from gpumod.errors import UsageError

MAX_RESULT_CHARS = 32_000      # what one tool result may hand to the model
MAX_LINE_CHARS = 2_000         # `read` cuts longer lines
DEFAULT_READ_LINES = 2_000     # `read` without a limit
MAX_ENTRIES = 1_000            # `ls` and `glob` list at most this many
MAX_GLOB_VISITS = 100_000      # stop walking huge trees
RG_TIMEOUT_S = 20.0
BINARY_SNIFF_BYTES = 8_192

TOOL_NAMES = ("ls", "read", "glob", "rg")

_SPECS: list[dict[str, Any]] = [
    {
        "name": "ls",
        "description": "List files and directories at path (absolute), with optional ignore "
                       "patterns. Directories end with '/'.",
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "Absolute path of a directory."},
                "ignore": {"type": "array", "items": {"type": "string"},
                           "description": "Glob patterns of names to leave out, e.g. "
                                          "[\"*.pyc\", \"node_modules\"]."},
            },
            "required": ["path"],
        },
    },
    {
        "name": "read",
        "description": "Read a text file (absolute path) with line numbers; optional line "
                       "offset (1-based first line) and limit (number of lines).",
        "parameters": {
            "type": "object",
            "properties": {
                "file_path": {"type": "string", "description": "Absolute path of a file."},
                "offset": {"type": "integer", "description": "First line to read (1-based)."},
                "limit": {"type": "integer", "description": "How many lines to read."},
            },
            "required": ["file_path"],
        },
    },
    {
        "name": "glob",
        "description": "Find files matching a glob pattern such as \"**/*.py\" or "
                       "\"src/**/*.ts\", relative to path (absolute; default: the working "
                       "directory). Returns absolute paths.",
        "parameters": {
            "type": "object",
            "properties": {
                "pattern": {"type": "string", "description": "Glob pattern, e.g. **/*.py"},
                "path": {"type": "string", "description": "Absolute directory to search in."},
            },
            "required": ["pattern"],
        },
    },
    {
        "name": "rg",
        "description": "Run ripgrep with the given arguments in the working directory, e.g. "
                       "\"pattern -t py -C 3\" or \"TODO --type-not test\".",
        "parameters": {
            "type": "object",
            "properties": {
                "args": {"type": "string",
                         "description": "ripgrep arguments, quoted as in a shell."},
            },
            "required": ["args"],
        },
    },
]


def chat_tool_schemas() -> list[dict[str, Any]]:
    """Tool definitions for the Chat Completions API."""
    return [{"type": "function", "function": dict(spec)} for spec in _SPECS]


def responses_tool_schemas() -> list[dict[str, Any]]:
    """Tool definitions for the Responses API (flat function tools)."""
    return [{"type": "function", **spec} for spec in _SPECS]


class ToolError(Exception):
    """A tool could not do what it was asked; the message goes to the model."""


@dataclass(frozen=True)
class ToolOutcome:
    """What a tool call produced: the text for the model, and whether it failed."""

    text: str
    is_error: bool
    full_length: int  # characters before capping


def cap(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    """Cut text to `limit` characters, saying how long it really was."""
    if len(text) <= limit:
        return text
    return (text[:limit]
            + f"\n[truncated: showing the first {limit} of {len(text)} characters]")


class Tools:
    """The tools, bound to one workspace folder."""

    def __init__(self, workspace: Path | str | None = None) -> None:
        self.workspace = Path(workspace or os.getcwd()).resolve()

    # -- dispatch --------------------------------------------------------
    def call(self, name: str, arguments: str | dict[str, Any] | None) -> ToolOutcome:
        """Run tool `name` with the model's JSON arguments; never raises."""
        try:
            if name not in TOOL_NAMES:
                raise ToolError(f"unknown tool {name!r}; the tools are: "
                                + ", ".join(TOOL_NAMES))
            try:
                args = parse_arguments(arguments)
            except UsageError as exc:
                raise ToolError(exc.message) from None
            text = getattr(self, f"_{name}")(**_check_arguments(name, args))
        except ToolError as exc:
            text = f"error: {exc}"
            return ToolOutcome(text, True, len(text))
        except Exception as exc:  # a bug or an OS oddity must not end the session
            text = f"error: {name} failed: {type(exc).__name__}: {exc}"
            return ToolOutcome(text, True, len(text))
        return ToolOutcome(cap(text), False, len(text))

    # -- paths -------------------------------------------------------------
    def _resolve(self, raw: str, what: str) -> Path:
        if not isinstance(raw, str) or not raw:
            raise ToolError(f"{what} must be a non-empty string")
        if "\x00" in raw:
            raise ToolError(f"{what} contains a NUL character")
        path = Path(raw).expanduser() if raw.startswith("~") else Path(raw)
        if not path.is_absolute():
            raise ToolError(f"{what} must be an absolute path (got {raw!r}); the working "
                            f"directory is {self.workspace}")
        resolved = path.resolve()
        if not resolved.is_relative_to(self.workspace):
            raise ToolError(f"{raw!r} is outside the working directory {self.workspace}; "
                            "only files inside it can be read")
        return resolved

    def _inside(self, path: Path) -> bool:
        try:
            return path.resolve().is_relative_to(self.workspace)
        except OSError:
            return False

    # -- ls ------------------------------------------------------------------
    def _ls(self, path: str, ignore: list[str] | None = None) -> str:
        folder = self._resolve(path, "path")
        if not folder.exists():
            raise ToolError(f"{path}: no such file or directory")
        if not folder.is_dir():
            raise ToolError(f"{path} is not a directory; use read for files")
        patterns = list(ignore or [])
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise ToolError(f"{path}: cannot list: {exc.strerror or exc}") from exc
        lines: list[str] = []
        skipped = 0
        for entry in entries:
            if any(fnmatch.fnmatch(entry.name, p) for p in patterns):
                continue
            if len(lines) >= MAX_ENTRIES:
                skipped += 1
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            lines.append(entry.name + ("/" if is_dir else ""))
        if skipped:
            lines.append(f"[{skipped} more entries not shown]")
        return "\n".join(lines) if lines else "(empty directory)"

    # -- read ----------------------------------------------------------------
    def _read(self, file_path: str, offset: int | None = None,
              limit: int | None = None) -> str:
        path = self._resolve(file_path, "file_path")
        if not path.exists():
            raise ToolError(f"{file_path}: no such file")
        if path.is_dir():
            raise ToolError(f"{file_path} is a directory; use ls to list it")
        if not path.is_file():
            raise ToolError(f"{file_path} is not a regular file")
        first = 1 if offset is None else offset
        count = DEFAULT_READ_LINES if limit is None else limit
        if first < 1:
            raise ToolError("offset is the first line to read and starts at 1")
        if count < 1:
            raise ToolError("limit must be at least 1")
        try:
            with path.open("rb") as handle:
                if b"\x00" in handle.read(BINARY_SNIFF_BYTES):
                    size = path.stat().st_size
                    raise ToolError(f"{file_path} is a binary file ({size} bytes); "
                                    "only text files can be read")
                handle.seek(0)
                out: list[str] = []
                chars = 0
                number = 0
                more = False
                for number, raw in enumerate(handle, start=1):
                    if number < first:
                        continue
                    if len(out) >= count:
                        more = True
                        break
                    line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                    if len(line) > MAX_LINE_CHARS:
                        line = line[:MAX_LINE_CHARS] + f" [line cut at {MAX_LINE_CHARS} chars]"
                    numbered = f"{number:6d}\t{line}"
                    if out and chars + len(numbered) + 1 > MAX_RESULT_CHARS - 200:
                        more = True  # leave room for the note below, within the cap
                        break
                    out.append(numbered)
                    chars += len(numbered) + 1
        except PermissionError as exc:
            raise ToolError(f"{file_path}: permission denied") from exc
        except OSError as exc:
            raise ToolError(f"{file_path}: cannot read: {exc.strerror or exc}") from exc
        if not out:
            if number == 0:
                return "(empty file)"
            raise ToolError(f"offset {first} is past the end of the file ({number} lines)")
        if more:
            out.append(f"[more lines follow; continue with offset={first + len(out)}]")
        return "\n".join(out)

    # -- glob ----------------------------------------------------------------
    def _glob(self, pattern: str, path: str | None = None) -> str:
        base = self._resolve(path, "path") if path else self.workspace
        if not base.is_dir():
            raise ToolError(f"{path} is not a directory")
        if not pattern:
            raise ToolError("pattern must not be empty")
        if pattern.startswith("/"):
            raise ToolError("pattern must be relative to path, e.g. \"**/*.py\"; "
                            "put the folder in path")
        found: list[str] = []
        visited = 0
        truncated = False
        try:
            for match in base.glob(pattern):
                visited += 1
                if visited > MAX_GLOB_VISITS:
                    truncated = True
                    break
                if not self._inside(match):
                    continue  # `..` in the pattern or a symlink leading out
                found.append(str(match))
                if len(found) > MAX_ENTRIES:
                    truncated = True
                    break
        except (ValueError, NotImplementedError) as exc:
            raise ToolError(f"bad glob pattern {pattern!r}: {exc}") from exc
        except OSError as exc:
            raise ToolError(f"cannot search {base}: {exc.strerror or exc}") from exc
        found = sorted(found)[:MAX_ENTRIES]
        if not found:
            return f"no files match {pattern!r} under {base}"
        if truncated:
            found.append(f"[stopped after {len(found)} matches; narrow the pattern]")
        return "\n".join(found)

    # -- rg ----------------------------------------------------------------
    def _rg(self, args: str) -> str:
        try:
            argv = shlex.split(args)
        except ValueError as exc:
            raise ToolError(f"cannot split the arguments: {exc}") from exc
        if not argv:
            raise ToolError("rg needs at least a pattern, e.g. \"TODO -t py\"")
        self._check_rg_argv(argv)
        binary = shutil.which("rg")
        if binary is None:
            raise ToolError("ripgrep (rg) is not installed on this machine; "
                            "use glob and read instead")
        try:
            proc = subprocess.run(
                [binary, "--no-config", "--color", "never", *argv],
                cwd=self.workspace, capture_output=True, timeout=RG_TIMEOUT_S,
                stdin=subprocess.DEVNULL, check=False,
                env={**os.environ, "RIPGREP_CONFIG_PATH": ""},
            )
        except subprocess.TimeoutExpired as exc:
            raise ToolError(f"rg took longer than {RG_TIMEOUT_S:.0f} s and was stopped; "
                            "narrow the search") from exc
        except OSError as exc:
            raise ToolError(f"cannot run rg: {exc.strerror or exc}") from exc
        out = proc.stdout.decode("utf-8", errors="replace")
        err = proc.stderr.decode("utf-8", errors="replace").strip()
        if proc.returncode == 1 and not out:
            return "no matches"
        if proc.returncode not in (0, 1):
            raise ToolError(f"rg exited with {proc.returncode}: {err or 'no message'}")
        return out + (f"\n[rg: {err}]" if err else "")

    def _check_rg_argv(self, argv: list[str]) -> None:
        """Refuse options that run programs or leave the workspace; check path arguments."""
        pattern_given = False
        positional_seen = False
        i = 0
        while i < len(argv):
            arg = argv[i]
            i += 1
            if arg == "--":
                for rest in argv[i:]:
                    if pattern_given or positional_seen:
                        self._rg_path(rest)
                    positional_seen = True
                return
            if arg.startswith("--"):
                name, eq, value = arg.partition("=")
                if name in _RG_FORBIDDEN:
                    raise ToolError(f"rg option {name} is not allowed here "
                                    "(it runs programs or follows links out of the folder)")
                if name in _RG_VALUE_LONG:
                    if not eq:
                        if i >= len(argv):
                            raise ToolError(f"rg option {name} needs a value")
                        value = argv[i]
                        i += 1
                    if name in ("--regexp", "--file"):
                        pattern_given = True
                    if name in _RG_PATH_VALUED:
                        self._rg_path(value)
                continue
            if arg.startswith("-") and len(arg) > 1:
                letters = arg[1:]
                for j, letter in enumerate(letters):
                    if letter in _RG_FORBIDDEN_SHORT:
                        raise ToolError(f"rg option -{letter} is not allowed here "
                                        "(it follows links out of the folder)")
                    if letter in _RG_VALUE_SHORT:
                        value = letters[j + 1:]
                        if not value:
                            if i >= len(argv):
                                raise ToolError(f"rg option -{letter} needs a value")
                            value = argv[i]
                            i += 1
                        if letter in "ef":
                            pattern_given = True
                        if letter == "f":
                            self._rg_path(value)
                        break
                continue
            # A positional argument: the pattern first (unless -e/-f gave one), then paths.
            if not pattern_given and not positional_seen:
                positional_seen = True
                continue
            positional_seen = True
            self._rg_path(arg)

    def _rg_path(self, raw: str) -> None:
        path = Path(raw).expanduser() if raw.startswith("~") else Path(raw)
        if not path.is_absolute():
            path = self.workspace / path
        if not path.resolve().is_relative_to(self.workspace):
            raise ToolError(f"{raw!r} is outside the working directory {self.workspace}; "
                            "rg may only search inside it")


_RG_FORBIDDEN = {"--pre", "--pre-glob", "--hostname-bin", "--follow", "--search-zip"}
_RG_FORBIDDEN_SHORT = set("Lz")
_RG_VALUE_SHORT = set("ABCEMTefgjmrt")
_RG_VALUE_LONG = {
    "--after-context", "--before-context", "--color", "--colors", "--context",
    "--context-separator", "--dfa-size-limit", "--encoding", "--engine",
    "--field-context-separator", "--field-match-separator", "--file", "--glob", "--iglob",
    "--ignore-file", "--max-columns", "--max-count", "--max-depth", "--max-filesize",
    "--path-separator", "--regex-size-limit", "--regexp", "--replace", "--sort", "--sortr",
    "--threads", "--type", "--type-add", "--type-clear", "--type-not",
}
_RG_PATH_VALUED = {"--file", "--ignore-file"}


def _check_arguments(name: str, args: dict[str, Any]) -> dict[str, Any]:
    spec = next(s for s in _SPECS if s["name"] == name)
    props: dict[str, Any] = spec["parameters"]["properties"]
    required: list[str] = spec["parameters"]["required"]
    unknown = sorted(set(args) - set(props))
    if unknown:
        raise ToolError(f"{name} does not take {', '.join(unknown)}; it takes "
                        + ", ".join(props))
    missing = [key for key in required if args.get(key) in (None, "")]
    if missing:
        raise ToolError(f"{name} needs {', '.join(missing)}")
    checked: dict[str, Any] = {}
    for key, value in args.items():
        if value is None:
            continue
        kind = props[key]["type"]
        if kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ToolError(f"{key} must be an integer")
            try:
                value = int(value)
            except ValueError as exc:
                raise ToolError(f"{key} must be an integer (got {value!r})") from exc
        elif kind == "string" and not isinstance(value, str):
            raise ToolError(f"{key} must be a string")
        elif kind == "array":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ToolError(f"{key} must be a list of strings")
        checked[key] = value
    return checked
