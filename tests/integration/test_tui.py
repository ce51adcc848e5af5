"""`gpumod tui` through Textual's Pilot, over the real operations and a fake vLLM.

The GPUs are the fake nvidia-smi's; the service is a real process (the fake vLLM
started by gpumod's own lifecycle), so state changes on screen are real ones.
"""

from __future__ import annotations

import asyncio
import html
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual.widgets import DataTable, RichLog, Static

from gpumod.ops import api as bridge
from gpumod.store.db import open_store
from gpumod.tui.app import GpumodApp
from tests.support.services import chat_service

SIZE = (130, 45)


def screen_text(app: GpumodApp) -> str:
    """The screen as text, from the SVG screenshot (what a snapshot test compares)."""
    svg = app.export_screenshot()
    rows: dict[float, list[tuple[float, str]]] = {}
    for m in re.finditer(r'<text[^>]*?x="([\d.]+)" y="([\d.]+)"[^>]*>(.*?)</text>', svg):
        text = html.unescape(m[3]).replace("\xa0", " ")
        rows.setdefault(float(m[2]), []).append((float(m[1]), text))
    return "\n".join("".join(t for _, t in sorted(r)) for _, r in sorted(rows.items()))


def output_lines(app: GpumodApp) -> list[str]:
    log = app.query_one("#output", RichLog)
    return [strip.text for strip in log.lines]


def table_rows(app: GpumodApp) -> dict[str, list[str]]:
    table = app.query_one("#services", DataTable)
    rows = {}
    for key in table.rows:
        cells = [c.plain if isinstance(c, Text) else str(c) for c in table.get_row(key)]
        rows[cells[0]] = cells
    return rows


async def settle(app: GpumodApp, pilot: Any, rounds: int = 3) -> None:
    for _ in range(rounds):
        await app.workers.wait_for_complete()
        await pilot.pause()


async def until(pilot: Any, check, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            app = pilot.app
            raise AssertionError("condition not reached in time; output:\n"
                                 + "\n".join(output_lines(app)) + "\nscreen:\n"
                                 + screen_text(app))
        await pilot.pause(0.05)


@pytest.fixture
def chat(fake_gpus: Path) -> Iterator[str]:
    with chat_service(8131) as name:
        yield name


def test_dashboard_shows_gpu_bar_service_table_and_footer(chat: str) -> None:
    bridge.service_start(chat)

    async def main() -> None:
        app = GpumodApp(interval=0)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            screen = screen_text(app)
            assert "GPU 0 NVIDIA H100 80GB HBM3" in screen
            assert "VRAM 23.9/79.6 GiB (30%)" in screen
            assert "■ chat 23.9 GiB" in screen          # the service's segment
            assert re.search(r"\[█{15,}░+\]", screen)     # a bar, partly filled
            assert "chat" in table_rows(app)
            assert table_rows(app)["chat"][1] == "● running"
            assert "q Quit" in screen and "r Refresh" in screen and "/ Command" in screen
            assert "local" in screen                      # the host switcher
            # layout, top to bottom: hosts, GPU bars, service table, output, command, footer
            lines = screen.splitlines()

            def row(needle: str) -> int:
                return next(i for i, line in enumerate(lines) if needle in line)

            assert row("local") < row("GPU 0") < row("SERVICE") < row("gpumod: type /help") \
                < row("/switch MODE") < row("q Quit")

    asyncio.run(main())


def test_refresh_shows_a_state_change(chat: str) -> None:
    """Stopped -> running (started outside the TUI) -> seen on the next automatic refresh."""
    async def main() -> None:
        app = GpumodApp(interval=0.3)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            assert table_rows(app)["chat"][1] == "○ stopped"
            assert "chat" not in str(app.query_one("#gpus", Static).render())
            await asyncio.to_thread(bridge.service_start, chat)
            await until(pilot, lambda: table_rows(app)["chat"][1] == "● running")
            await until(pilot, lambda: "■ chat" in screen_text(app))

    asyncio.run(main())


def test_sleep_and_wake_commands_run_in_workers_and_update_the_table(chat: str) -> None:
    bridge.service_start(chat)

    async def main() -> None:
        app = GpumodApp(interval=0)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("slash", *"sleep chat", "enter")
            await until(pilot, lambda: any("asleep l1" in line for line in output_lines(app)))
            await settle(app, pilot)
            assert table_rows(app)["chat"][1] == "◐ sleeping"
            assert "chat 0.5 GiB" in screen_text(app)     # the CUDA context left on the GPU
            await pilot.press("slash", *"wake chat", "enter")
            await until(pilot, lambda: any("awake" in line for line in output_lines(app)))
            await settle(app, pilot)
            assert table_rows(app)["chat"][1] == "● running"

    asyncio.run(main())


def test_logs_are_plain_text_never_markup(chat: str, gpumod_home: Path) -> None:
    bridge.service_start(chat)
    log = gpumod_home / "services" / "chat" / "service.log"
    with open(log, "a") as fh:
        fh.write("[bold red]not markup[/bold red] [link=http://x]y[/link]\n")

    async def main() -> None:
        app = GpumodApp(interval=0)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("slash", *"logs chat 5", "enter")
            await until(pilot, lambda: any("not markup" in line for line in output_lines(app)))
            lines = output_lines(app)
            assert any("[bold red]not markup[/bold red] [link=http://x]y[/link]" in line
                       for line in lines)

    asyncio.run(main())


def test_bad_commands_and_failures_show_errors_and_the_app_goes_on(chat: str) -> None:
    async def main() -> None:
        app = GpumodApp(interval=0)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("slash", *"frobnicate", "enter")
            await pilot.press("slash", *"switch nosuchmode", "enter")
            await pilot.press("slash", *"wake ghost", "enter")
            await until(pilot, lambda: sum("failed" in line for line in output_lines(app)) >= 2)
            text = "\n".join(output_lines(app))
            assert "unknown command /frobnicate" in text
            assert "/switch nosuchmode failed: unknown mode 'nosuchmode'" in text
            assert "/wake ghost failed: unknown service 'ghost'" in text
            await pilot.press("slash", *"help", "enter")
            await pilot.pause()
            assert any("/simulate" in line for line in output_lines(app))
            await pilot.press("escape", "q")
            await pilot.pause()
        assert app.return_code == 0

    asyncio.run(main())


def test_quit_command(chat: str) -> None:
    async def main() -> None:
        app = GpumodApp(interval=0)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("slash", *"quit", "enter")
            await pilot.pause()
            assert not app.is_running

    asyncio.run(main())


class SlowBridge:
    """The real bridge, with a GPU query that hangs until released (a slow SSH pod)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(bridge, name)

    def gpu_status(self, pod: str | None = None) -> dict[str, Any]:
        self.release.wait(20)
        return bridge.gpu_status(pod)


def test_a_slow_host_never_freezes_the_screen(chat: str) -> None:
    slow = SlowBridge()

    async def main() -> None:
        app = GpumodApp(interval=0, bridge=slow)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause(0.3)
            started = time.monotonic()
            await pilot.press("slash", *"help", "enter")   # answered while the refresh hangs
            await pilot.pause()
            assert any("/switch MODE" in line for line in output_lines(app))
            assert time.monotonic() - started < 5
            assert app.refreshes == 0
            slow.release.set()
            await until(pilot, lambda: app.refreshes >= 1)
            assert "GPU 0" in screen_text(app)

    asyncio.run(main())


def test_host_switcher_moves_to_a_pod_and_shows_its_failure(chat: str) -> None:
    from gpumod.hosts.model import Host
    from gpumod.hosts.sshcmd import parse_ssh_command
    from gpumod.ops.hosts import save_host
    from gpumod.testing.harness import free_port

    command = f"ssh -p {free_port()} -o ConnectTimeout=2 nobody@127.0.0.1"
    target = parse_ssh_command(command)
    save_host(open_store(), Host("deadpod", "ssh", ssh_command=command,
                                 ssh_argv=(*target.options, target.destination),
                                 root="/tmp/none"), replace=False)

    async def main() -> None:
        app = GpumodApp(interval=0)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            assert app.hosts == ["local", "deadpod"] and app.host == "local"
            await pilot.press("h")
            await until(pilot, lambda: app.host == "deadpod")
            await until(pilot, lambda: "deadpod ·" in screen_text(app), timeout=30)
            status = str(app.query_one("#statusline", Static).render())
            assert "GPUs:" in status              # the pod's failure, on the status line
            await pilot.press("slash", *"host local", "enter")
            await until(pilot, lambda: app.host == "local")
            await until(pilot, lambda: "chat" in table_rows(app))

    asyncio.run(main())
