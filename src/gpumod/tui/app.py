"""`gpumod tui`: a live dashboard over the operations layer (Textual).

Everything slow (nvidia-smi, SSH, health probes, starts, switches) runs in
thread workers; the UI thread only draws. Data comes from `gpumod.ops.api`,
the same calls the MCP server makes. Untrusted text (service names, model ids,
log lines, error messages) is drawn as `rich.text.Text`, never parsed as markup.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Input, RichLog, Static, Tab, Tabs
from textual.worker import Worker

from gpumod.errors import GpumodError
from gpumod.tui.commands import Command, help_lines, parse

STATE_STYLE = {
    "running": ("●", "green"), "sleeping": ("◐", "cyan"), "starting": ("◌", "yellow"),
    "stopping": ("◌", "yellow"), "unhealthy": ("▲", "yellow"),
    "degraded": ("▲", "yellow"), "crashed": ("✖", "red"),
    "failed": ("✖", "red"),
    "stopped": ("○", "dim"), "unreachable": ("?", "magenta"), "unknown": ("?", "magenta"),
}
SEGMENT_STYLES = ("green", "cyan", "magenta", "yellow", "blue", "bright_red", "bright_green")
OTHER_STYLE = "grey50"
BAR_WIDTH = 60


def _gib(mib: float | None) -> str:
    return "?" if mib is None else f"{mib / 1024:.1f}"


def render_gpus(status: dict[str, Any], width: int = BAR_WIDTH) -> Text:
    """One bar per GPU; a coloured segment per service (other processes in grey).

    The bars and their cells are the planner's picture (``gpumod status --visual``);
    only the colours are the TUI's.
    """
    from gpumod.ops.status import bar_cells, gpu_bars

    out = Text()
    if not status.get("gpus"):
        out.append(f"{status.get('host', '?')}: no NVIDIA GPU (nvidia-smi not available)",
                   style="dim")
        return out
    colours: dict[str, str] = {}
    by_index = {g.get("index"): g for g in status["gpus"]}
    for bar in gpu_bars(status):
        g = by_index.get(bar.index, {})
        used = g.get("memory_used_mib")
        total = bar.total_mib
        share = f"{round(100 * used / total)}%" if used is not None and total else "?"
        out.append(f"GPU {bar.index} ")
        out.append(bar.name, style="bold")
        out.append(f"  VRAM {_gib(used)}/{_gib(total)} GiB ({share})\n")
        styles = [OTHER_STYLE if seg.kind != "service" else colours.setdefault(
            seg.label, SEGMENT_STYLES[len(colours) % len(SEGMENT_STYLES)]) for seg in bar.segments]
        out.append("[")
        drawn = 0
        for cells, style in zip(bar_cells(bar, width), styles, strict=True):
            cells = min(cells, width - drawn)
            out.append("█" * cells, style=style)
            drawn += cells
        out.append("░" * (width - drawn), style="dim")
        out.append("]\n")
        for seg, style in zip(bar.segments, styles, strict=True):
            out.append("  ■ ", style=style)
            out.append(seg.label)
            out.append(f" {_gib(seg.mib)} GiB")
        if bar.segments:
            out.append("\n")
    return out


def state_cell(state: str) -> Text:
    icon, style = STATE_STYLE.get(state, ("?", "magenta"))
    return Text(f"{icon} {state}", style=style)


class GpumodApp(App[None]):
    """Live GPU and service view with a command line."""

    TITLE = "gpumod"
    CSS = """
    #hosts { height: 2; }
    #gpus { height: auto; max-height: 14; padding: 0 1; }
    #services { height: auto; max-height: 14; }
    #output { height: 1fr; border-top: solid $primary-darken-2; padding: 0 1; }
    #statusline { height: 1; padding: 0 1; color: $text-muted; }
    #command { dock: bottom; margin-bottom: 1; }
    """
    BINDINGS: ClassVar = [
        Binding("q", "quit", "Quit"),
        Binding("r", "refresh", "Refresh"),
        Binding("h", "next_host", "Next host"),
        Binding("slash", "focus_command", "Command", key_display="/"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("escape", "leave_command", "Back", show=False),
    ]

    def __init__(self, *, pod: str | None = None, interval: float = 2.0,
                 bridge: Any = None) -> None:
        super().__init__()
        if bridge is None:
            from gpumod.ops import api as default_bridge

            bridge = default_bridge
        self.bridge = bridge
        self.interval = interval
        self.requested_pod = pod
        self.host: str | None = pod
        self.hosts: list[str] = []
        self.services: list[dict[str, Any]] = []
        self.gpu: dict[str, Any] = {}
        self.refreshes = 0
        self.busy: str = ""
        self._refresh_worker: Worker[None] | None = None
        self._refresh_again = False

    # -- layout ------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Tabs(id="hosts")
        with Vertical():
            yield Static(Text("loading...", style="dim"), id="gpus")
            table: DataTable[Any] = DataTable(id="services", cursor_type="row", zebra_stripes=True)
            yield table
            yield RichLog(id="output", markup=False, highlight=False, wrap=True)
            yield Static(Text(""), id="statusline")
        yield Input(placeholder="/status  /switch MODE  /simulate MODE --add NAME  /sleep NAME  "
                                "/wake NAME  /logs NAME  /help  /quit", id="command",
                    select_on_focus=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#services", DataTable)
        for column in ("SERVICE", "STATE", "ENGINE", "MODEL", "PORT", "GPUS", "DETAIL"):
            table.add_column(column, key=column.lower())
        self.say(Text("gpumod: type /help for commands; q quits, r refreshes, h switches host",
                      style="dim"))
        self.load_hosts()
        if self.interval > 0:
            self.set_interval(self.interval, self.action_refresh)
        table.focus()

    # -- output ------------------------------------------------------------------

    def say(self, message: str | Text, style: str = "") -> None:
        log = self.query_one("#output", RichLog)
        log.write(message if isinstance(message, Text) else Text(str(message), style=style))

    def set_status(self, message: str | Text) -> None:
        self.query_one("#statusline", Static).update(
            message if isinstance(message, Text) else Text(message))

    # -- hosts -------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="hosts")
    def load_hosts(self) -> None:
        try:
            hosts = self.bridge.host_list()
        except GpumodError as exc:
            self.call_from_thread(self.say, exc.text(), "red")
            hosts = []
        self.call_from_thread(self._show_hosts, hosts)

    def _show_hosts(self, hosts: list[dict[str, Any]]) -> None:
        self.hosts = [h["name"] for h in hosts] or ["local"]
        if self.host is None or self.host not in self.hosts:
            active = next((h["name"] for h in hosts if h.get("active")), self.hosts[0])
            if self.host is not None:
                self.say(Text(f"unknown pod {self.host!r}; showing {active}", style="red"))
            self.host = active
        tabs = self.query_one("#hosts", Tabs)
        tabs.clear()
        for index, name in enumerate(self.hosts):
            tabs.add_tab(Tab(Text(name), id=f"host-{index}"))
        tabs.active = f"host-{self.hosts.index(self.host)}"
        self.action_refresh()

    def on_tabs_tab_activated(self, event: Tabs.TabActivated) -> None:
        if event.tab is None or not event.tab.id:
            return
        index = int(event.tab.id.removeprefix("host-"))
        if index < len(self.hosts) and self.hosts[index] != self.host:
            self.host = self.hosts[index]
            self.action_refresh()

    def action_next_host(self) -> None:
        if len(self.hosts) < 2 or self.host is None:
            return
        nxt = (self.hosts.index(self.host) + 1) % len(self.hosts)
        self.query_one("#hosts", Tabs).active = f"host-{nxt}"

    def switch_host(self, name: str) -> None:
        if name not in self.hosts:
            self.say(Text(f"unknown pod {name!r}; known: {', '.join(self.hosts)}", style="red"))
            return
        self.query_one("#hosts", Tabs).active = f"host-{self.hosts.index(name)}"

    # -- refresh -----------------------------------------------------------------

    def action_refresh(self) -> None:
        """Refresh now, or as soon as the refresh in flight is done (never two at once:
        a thread stuck on a slow pod cannot be cancelled, so ticks must not pile up)."""
        if self.host is None:
            return
        if self._refresh_worker is not None and self._refresh_worker.is_running:
            self._refresh_again = True
            return
        self._refresh_again = False
        self._refresh_worker = self.refresh_data(self.host)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is self._refresh_worker and event.worker.is_finished \
                and self._refresh_again:
            self.action_refresh()

    @work(thread=True, group="refresh")
    def refresh_data(self, host: str) -> None:
        errors: list[str] = []
        gpu: dict[str, Any] = {"host": host, "gpus": [], "processes": []}
        services: list[dict[str, Any]] = []
        try:
            gpu = self.bridge.gpu_status(host)
        except GpumodError as exc:
            errors.append(f"GPUs: {exc.message}")
        try:
            services = self.bridge.service_list(host)
        except GpumodError as exc:
            errors.append(f"services: {exc.message}")
        self.call_from_thread(self._show_snapshot, host, gpu, services, errors)

    def _show_snapshot(self, host: str, gpu: dict[str, Any], services: list[dict[str, Any]],
                       errors: list[str]) -> None:
        if host != self.host:  # the user switched host meanwhile
            return
        self.gpu, self.services = gpu, services
        self.refreshes += 1
        self.query_one("#gpus", Static).update(render_gpus(gpu))
        table = self.query_one("#services", DataTable)
        table.clear()
        for s in services:
            table.add_row(Text(str(s.get("name", ""))), state_cell(str(s.get("state", "?"))),
                          Text(str(s.get("engine", ""))), Text(str(s.get("model", ""))),
                          Text(str(s.get("port", ""))),
                          Text(",".join(str(g) for g in s.get("gpus") or []) or "-"),
                          Text(str(s.get("detail", "")), style="dim"),
                          key=str(s.get("name")))
        if not services:
            table.add_row(Text("(no services)", style="dim"), Text(""), Text(""), Text(""),
                          Text(""), Text(""), Text(""))
        line = Text(f"{host} · updated {time.strftime('%H:%M:%S')}")
        if self.busy:
            line.append(f" · {self.busy}", style="yellow")
        for err in errors:
            line.append(f" · {err}", style="red")
        self.set_status(line)

    # -- commands ----------------------------------------------------------------

    def action_focus_command(self) -> None:
        box = self.query_one("#command", Input)
        box.focus()
        if not box.value:
            box.value = "/"
            box.cursor_position = 1

    def action_leave_command(self) -> None:
        self.query_one("#services", DataTable).focus()

    def action_help(self) -> None:
        for line in help_lines():
            self.say(Text(line))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        line = event.value
        event.input.value = ""
        if not line.strip():
            return
        self.say(Text(f"> {line}", style="bold"))
        try:
            command = parse(line)
        except GpumodError as exc:
            self.say(Text(exc.text(), style="red"))
            return
        self.run_command(command)

    def run_command(self, command: Command) -> None:
        if command.name == "quit":
            self.exit()
        elif command.name == "help":
            self.action_help()
        elif command.name == "host":
            self.switch_host(command.target)
        elif command.name == "status":
            self.action_refresh()
            self._in_worker(command, lambda progress: self.bridge.gpu_picture(self.host))
        elif command.name == "gateway":
            self._in_worker(command, lambda progress: self.bridge.gateway_status(self.host))
        elif command.name == "simulate":
            self._in_worker(command, lambda progress: self.bridge.simulate_mode(
                command.target or None, add=command.add, remove=command.remove,
                contexts=command.contexts, pod=None if command.target else self.host))
        elif command.name == "logs":
            self._in_worker(command, lambda progress: self.bridge.service_logs(
                command.target, command.lines))
        elif command.name == "switch":
            self._in_worker(command, lambda progress: self.bridge.mode_switch(
                command.target, progress=progress))
        elif command.name == "start":
            self._in_worker(command, lambda progress: self.bridge.service_start(
                command.target, progress=progress))
        elif command.name == "stop":
            self._in_worker(command, lambda progress: self.bridge.service_stop(
                command.target, progress=progress))
        elif command.name == "sleep":
            self._in_worker(command, lambda progress: self.bridge.service_sleep(
                command.target, command.level, progress=progress))
        elif command.name == "wake":
            self._in_worker(command, lambda progress: self.bridge.service_wake(
                command.target, progress=progress))

    def _in_worker(self, command: Command, call: Callable[[Callable[[str], None]], Any]) -> None:
        label = f"/{command.name} {' '.join(command.args)}".strip()
        self.busy = f"running {label} ..."
        self.set_status(Text(self.busy, style="yellow"))
        self._command_worker(command, label, call)

    @work(thread=True, group="command")
    def _command_worker(self, command: Command, label: str,
                        call: Callable[[Callable[[str], None]], Any]) -> None:
        def progress(message: str) -> None:
            self.call_from_thread(self.say, Text(f"  {message}", style="dim"))

        try:
            result = call(progress)
        except GpumodError as exc:
            self.call_from_thread(self._command_done, command, label, None,
                                  exc.text())
            return
        except Exception as exc:  # a bug: show it, keep the dashboard alive
            self.call_from_thread(self._command_done, command, label, None,
                                  f"internal error: {type(exc).__name__}: {exc}")
            return
        self.call_from_thread(self._command_done, command, label, result, None)

    def _command_done(self, command: Command, label: str, result: Any,
                      error: str | None) -> None:
        self.busy = ""
        if error is not None:
            self.say(Text(f"{label} failed: {error}", style="red"))
        else:
            for line in describe(command, result):
                self.say(line)
        if command.name not in ("logs", "simulate", "gateway"):
            self.action_refresh()
        self.set_status(Text(f"{label}: {'failed' if error else 'done'}",
                             style="red" if error else "green"))


def describe(command: Command, result: Any) -> list[Text]:
    """A command's result as plain lines."""
    if command.name in ("status", "logs"):
        text = str(result or "").rstrip("\n")
        return [Text(line) for line in text.splitlines()] or [Text("(empty)", style="dim")]
    if command.name == "gateway":
        return gateway_lines(result)
    if command.name == "simulate":
        lines = [Text(("fits" if result.get("fits") else "DOES NOT FIT: ")
                      + ("" if result.get("fits") else str(result.get("reason", ""))),
                      style="green" if result.get("fits") else "red")]
        lines += [Text(line) for line in str(result.get("picture", "")).splitlines()]
        for alt in result.get("alternatives") or []:
            lines.append(Text(f"  [{alt.get('rank')}] {alt.get('description')}"))
        for warning in result.get("warnings") or []:
            lines.append(Text(f"  warning: {warning}", style="yellow"))
        return lines
    if command.name == "switch":
        done = result.get("done") or []
        return [Text(f"now in mode {command.target}", style="green"),
                *[Text(f"  {step}") for step in done]]
    if command.name in ("sleep", "wake"):
        return [Text(f"{result.get('service')}: {result.get('result')} "
                     f"(GPU memory {result.get('memory_before_mib')} -> "
                     f"{result.get('memory_after_mib')} MiB)", style="green")]
    if command.name == "start":
        return [Text(f"started: {', '.join(result.get('started') or []) or 'nothing'}",
                     style="green")]
    if command.name == "stop":
        return [Text(f"stopped: {', '.join(result.get('stopped') or []) or 'nothing'}",
                     style="green")]
    return [Text(str(result))]


def gateway_lines(status: dict[str, Any]) -> list[Text]:
    """The gateway's state and one line per model (state, in flight, idle time, TTL)."""
    from gpumod.ops.idle import format_ttl

    head = Text(f"gateway on {status.get('host')}: ")
    head.append(str(status.get("state")), style="green" if status.get("state") == "running"
                else "yellow")
    if status.get("url"):
        head.append(f"  {status['url']}")
    if status.get("detail"):
        head.append(f"  ({status['detail']})", style="dim")
    lines = [head]
    for m in status.get("models") or []:
        line = Text("  ")
        line.append_text(state_cell(str(m.get("state", "?"))))
        idle = m.get("idle_s")
        line.append(f"  {m.get('served_model')} ({m.get('name')})"
                    f"  in flight {m.get('in_flight', 0)}, queued {m.get('queued', 0)}"
                    f"  idle {'-' if idle is None else format_ttl(round(idle))}"
                    f"  ttl {format_ttl(m.get('ttl_s'))}")
        lines.append(line)
    return lines
