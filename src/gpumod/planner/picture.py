"""The ASCII VRAM picture from the gpumod design: one bar per GPU, a segment per service.

::

    GPU 0  RTX 4090 (24.0 GiB)
        0          6          12         18         24 GiB
        |----------|----------|----------|----------|
        [██████████████████████████████████████████░░] 21.7 GiB
        |--emb-----|--------devstral------------------|
           2.5                19.1

Overflow is drawn past the card's edge with ``▒`` and marked ``!``.

The one GPU-bar renderer: `gpumod simulate --visual` and `gpumod status --visual`
draw text with :func:`render_gpu_bars`; the TUI colours the same bars
(:func:`live_bars` and :func:`segment_cells`) cell for cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

FILL, FREE, OVER = "█", "░", "▒"
ASCII_FILL, ASCII_FREE, ASCII_OVER = "#", ".", "X"


@dataclass
class Segment:
    label: str
    mib: int
    detail: str = ""            # e.g. "32K ctx", "asleep (l1)"
    kind: str = "service"       # service | process (not a service) | other (unlisted memory)


@dataclass
class GPUBar:
    index: int
    name: str
    total_mib: int
    segments: list[Segment] = field(default_factory=list)
    title: str = ""             # e.g. "current (code mode)"


def _gib(mib: float) -> str:
    return f"{mib / 1024:.1f}"


def _scale_line(total_gib: float, width: int) -> tuple[str, str]:
    ticks = 4
    labels = [round(total_gib * i / ticks) for i in range(ticks + 1)]
    step = width // ticks
    head = ""
    for i, label in enumerate(labels):
        text = str(label)
        pos = i * step
        head = head.ljust(pos) + text
    head += " GiB"
    rule = "|" + "|".join("-" * (step - 1) for _ in range(ticks)) + "|"
    return head, rule[: width + 1] if len(rule) > width + 1 else rule


def segment_cells(segments: Sequence[Segment], total_mib: int, width: int) -> list[int]:
    """Columns per segment; every non-empty segment gets at least one."""
    out = []
    acc = 0.0
    drawn = 0
    for seg in segments:
        acc += seg.mib / total_mib * width if total_mib else 0
        cols = max(1 if seg.mib > 0 else 0, round(acc) - drawn)
        out.append(cols)
        drawn += cols
    return out


def render_gpu_bars(gpus: Sequence[GPUBar], *, width: int = 48, unicode: bool = True,
                    indent: int = 4) -> str:
    """Draw every GPU's planned or live memory. Returns text (no trailing newline)."""
    fill, free_c, over_c = (FILL, FREE, OVER) if unicode else (ASCII_FILL, ASCII_FREE, ASCII_OVER)
    pad = " " * indent
    lines: list[str] = []
    for gpu in gpus:
        total = max(1, gpu.total_mib)
        used = sum(s.mib for s in gpu.segments)
        lines.append(f"GPU {gpu.index}  {gpu.name} ({_gib(total)} GiB)"
                     + (f"  - {gpu.title}" if gpu.title else ""))
        head, rule = _scale_line(total / 1024, width)
        lines += [pad + head, pad + rule]
        widths = segment_cells(gpu.segments, total, width)
        drawn = sum(widths)
        inside = min(drawn, width)
        bar = fill * inside + free_c * (width - inside)
        overflow = used - total
        if drawn > width:
            bar = bar + "]" + over_c * (drawn - width)
            status = f" {_gib(used)} GiB  ! exceeds by {_gib(overflow)} GiB"
            lines.append(pad + "[" + bar + status)
        else:
            lines.append(pad + "[" + bar + "]" + f" {_gib(used)} GiB"
                         + (f"  ({_gib(total - used)} free)" if used < total else ""))
        # labels under the segments, and sizes under the labels
        label_line, size_line = " ", " "
        for seg, cols in zip(gpu.segments, widths, strict=True):
            if cols <= 0:
                continue
            name = seg.label
            if cols >= 4:
                inner = cols - 1
                text = ("--" + name) if len(name) + 2 <= inner else name[:inner]
                label_line += "|" + text.ljust(inner, "-")
            else:
                label_line += "|" + "-" * (cols - 1)
            size = _gib(seg.mib)
            size_line += size.center(cols)[:cols] if cols >= len(size) else " " * cols
        if gpu.segments:
            lines.append(pad + label_line[1:] + "|")
            lines.append((pad + size_line).rstrip())
        if gpu.segments:
            lines.append(pad + "legend:")
            for seg in gpu.segments:
                detail = f"  {seg.detail}" if seg.detail else ""
                lines.append(f"{pad}  {seg.label:<24} {_gib(seg.mib):>6} GiB{detail}")
        if overflow > 0:
            lines.append(f"{pad}! over by {_gib(overflow)} GiB")
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def live_bars(status: dict[str, Any]) -> list[GPUBar]:
    """Bars from a HostStatus JSON (gpus + processes): a segment per service or process.

    Each GPU process is a segment (named after its service when known);
    memory nvidia-smi counts as used but no listed process holds is "(other)".
    """
    bars = []
    processes = status.get("processes") or []
    for g in status.get("gpus") or []:
        total = int(g.get("memory_total_mib") or 0)
        used = int(g.get("memory_used_mib") or 0)
        by_label: dict[str, tuple[int, str]] = {}
        for p in processes:
            if p.get("gpu") != g.get("index") or not p.get("used_mib"):
                continue
            service = p.get("service")
            label = str(service or f"{p.get('name') or 'pid'}:{p.get('pid')}")
            mib, _ = by_label.get(label, (0, ""))
            by_label[label] = (mib + int(p["used_mib"]), "service" if service else "process")
        segments = [Segment(label, mib, kind=kind) for label, (mib, kind) in by_label.items()]
        rest = used - sum(s.mib for s in segments)
        if rest > 0:
            segments.append(Segment("(other)", rest, "driver, other users", kind="other"))
        bars.append(GPUBar(int(g.get("index") or 0), str(g.get("name") or "GPU"), total,
                           segments))
    return bars


def render_live_status(status: dict[str, Any], *, width: int = 48, unicode: bool = True) -> str:
    """`gpumod status --visual`: bars from a HostStatus JSON (gpus + processes)."""
    return render_gpu_bars(live_bars(status), width=width, unicode=unicode)
