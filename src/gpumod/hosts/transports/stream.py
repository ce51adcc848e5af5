"""Stream: a command's output read as it comes, for long work (logs -f, health waits, setup).

A transport hands one out from ``Transport.stream(argv)``, a context manager, in the
spirit of httpx's ``client.stream()``::

    with transport.stream(argv) as out:
        for line in out.iter_lines():
            show(line)
    code = out.returncode

When the output ends, the exit code is known and a failure of the transport itself
(ssh's exit 255) has been raised as the same typed error ``Transport.run()`` raises,
so callers never look at exit codes that belong to ssh. Leaving the ``with`` block
early (a ``break``, an error, Ctrl+C) stops the local process: the caller decides
what else to stop on the host.
"""

from __future__ import annotations

import contextlib
import errno
import io
import subprocess
from collections.abc import Callable, Iterator, Sequence

from gpumod.errors import GpumodError, TransportError, UsageError

# One argument of a command line (Linux MAX_ARG_STRLEN, with its terminating NUL).
MAX_ARG_BYTES = 131072


class Stream:
    """The merged stdout and stderr of one command, read once, as bytes or as lines."""

    def __init__(self, chunks: Iterator[bytes], finish: Callable[[], int]) -> None:
        self._chunks = chunks
        self._finish = finish
        self._returncode: int | None = None

    @property
    def returncode(self) -> int:
        """The exit code, known once the output has been read to its end."""
        if self._returncode is None:
            raise RuntimeError("the exit code is known once the output has been read to its end")
        return self._returncode

    def iter_bytes(self) -> Iterator[bytes]:
        """Chunks as they arrive (a partial line is not held back)."""
        yield from self._chunks
        self._done()

    def iter_lines(self, *, carriage_return: bool = False) -> Iterator[str]:
        """Lines without their newline; with `carriage_return`, '\\r' also ends a line
        (progress bars redraw with it)."""
        buffer = b""
        for chunk in self._chunks:
            if carriage_return:
                chunk = chunk.replace(b"\r", b"\n")
            *lines, buffer = (buffer + chunk).split(b"\n")
            for line in lines:
                yield line.decode("utf-8", "replace")
        if buffer:
            yield buffer.decode("utf-8", "replace")
        self._done()

    def _done(self) -> None:
        if self._returncode is None:
            self._returncode = self._finish()


@contextlib.contextmanager
def process_stream(local_argv: Sequence[str], *, input: str | None,
                   label: str, separate_stderr: bool = False,
                   on_exit: Callable[[int, str], None] = lambda code, err: None,
                   missing: TransportError | None = None) -> Iterator[Stream]:
    """Run local_argv with its output piped, as a Stream.

    `on_exit(returncode, stderr)` runs when the output ends and may raise (the transport's
    own failures). With `separate_stderr` the process's stderr goes to a file that only
    `on_exit` sees (ssh's own messages, while the remote command merges its stderr).
    A program that is not installed raises `missing` when given (ssh itself), else reads
    like a shell's "command not found", exit 127 (as run() answers).
    """
    import tempfile  # here: it brings shutil, random and the compressors

    err_file = tempfile.TemporaryFile() if separate_stderr else None  # noqa: SIM115
    try:
        proc = subprocess.Popen(list(local_argv), stdout=subprocess.PIPE,
                                stderr=err_file if err_file else subprocess.STDOUT,
                                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL)
    except FileNotFoundError as exc:
        if err_file:
            err_file.close()
        if missing is not None:
            raise missing from exc
        yield canned_stream(f"{local_argv[0]}: command not found\n", 127)
        return
    except OSError as exc:
        if err_file:
            err_file.close()
        if exc.errno == errno.E2BIG:
            raise too_long(label, local_argv) from None
        raise
    stdout = proc.stdout
    assert isinstance(stdout, io.BufferedReader)  # Popen's default buffering: read1 exists

    def chunks() -> Iterator[bytes]:
        while chunk := stdout.read1(65536):
            yield chunk

    def finish() -> int:
        code = proc.wait()
        stderr = ""
        if err_file is not None:
            err_file.seek(0)
            stderr = err_file.read().decode("utf-8", "replace")
        on_exit(code, stderr)
        return code

    try:
        if input is not None:
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(input.encode())
                proc.stdin.close()
        yield Stream(chunks(), finish)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        stdout.close()
        if err_file is not None:
            err_file.close()


def canned_stream(stdout: str, returncode: int) -> Stream:
    """A finished command's output as a Stream (MockTransport)."""
    return Stream(iter([stdout.encode()] if stdout else []), lambda: returncode)


def too_long(label: str, argv: Sequence[str]) -> GpumodError:
    """E2BIG: the command line is longer than the kernel takes."""
    longest = max((len(a.encode()) for a in argv), default=0)
    total = sum(len(a.encode()) + 1 for a in argv)
    return UsageError(f"{label}: the command is too long to run ({total:,} bytes, the longest "
                      f"argument {longest:,}; Linux takes at most {MAX_ARG_BYTES:,} bytes per "
                      "argument)", hint="shorten the arguments, or pass long values in a file")


def check_remote_length(label: str, command: str) -> None:
    """ssh hands the remote shell the whole command as ONE argument (`sh -c COMMAND`)."""
    size = len(command.encode())
    if size >= MAX_ARG_BYTES:
        raise UsageError(f"{label}: the command is too long to send over SSH ({size:,} bytes; "
                         f"the remote shell takes at most {MAX_ARG_BYTES - 1:,} bytes in one "
                         "command line)",
                         hint="shorten the arguments, or pass long values in a file")
