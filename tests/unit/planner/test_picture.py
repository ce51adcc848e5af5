from __future__ import annotations

from gpumod.planner.picture import GPUBar, Segment, render_gpu_bars


def test_bars_segments_legend():
    text = render_gpu_bars([GPUBar(0, "RTX 4090", 24576, [Segment("emb", 2560),
                                                          Segment("devstral", 19558, "32K ctx")])])
    lines = text.splitlines()
    assert lines[0].startswith("GPU 0  RTX 4090 (24.0 GiB)")
    bar = next(line for line in lines if "[" in line)
    assert bar.count("█") + bar.count("░") == 48 and "21.6 GiB" in bar
    label_line = lines[lines.index(bar) + 1]
    assert label_line.strip().startswith("|emb") and "|--devstral" in label_line
    assert "32K ctx" in text
    assert "exceeds" not in text


def test_overflow_is_marked():
    text = render_gpu_bars([GPUBar(0, "RTX 4090", 24576, [Segment("a", 20000),
                                                          Segment("b", 8000)])])
    assert "▒" in text and "exceeds by 3.3 GiB" in text and "! over by" in text


def test_ascii_mode():
    text = render_gpu_bars([GPUBar(1, "L4", 23034, [Segment("x", 10000)])], unicode=False)
    assert "#" in text and "█" not in text


def test_live_status_segments_per_service():
    from gpumod.planner.picture import render_live_status

    status = {"gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559,
                        "memory_used_mib": 50000}],
              "processes": [{"gpu": 0, "pid": 10, "name": "python", "used_mib": 40000,
                             "service": "chat"},
                            {"gpu": 0, "pid": 11, "name": "llama-server", "used_mib": 9000,
                             "service": None}]}
    text = render_live_status(status)
    assert "chat" in text and "llama-server:11" in text and "(other)" in text
    assert "48.8 GiB" in text


def test_live_bars_kinds_and_the_tui_columns():
    """The TUI colours what `status --visual` draws: services, other processes, unlisted memory."""
    from gpumod.ops.status import bar_cells, gpu_bars

    status = {"gpus": [{"index": 1, "name": "L4", "memory_total_mib": 23034,
                        "memory_used_mib": 12000},
                       {"index": 2, "name": "L4", "memory_total_mib": 23034,
                        "memory_used_mib": 0}],
              "processes": [{"gpu": 1, "pid": 7, "name": "python", "used_mib": 8000,
                             "service": "chat"},
                            {"gpu": 1, "pid": 8, "name": "python", "used_mib": 2000,
                             "service": "chat"},
                            {"gpu": 1, "pid": 9, "name": "ollama", "used_mib": 30,
                             "service": None}]}
    first, idle = gpu_bars(status)
    assert [(s.label, s.mib, s.kind) for s in first.segments] == [
        ("chat", 10000, "service"), ("ollama:9", 30, "process"), ("(other)", 1970, "other")]
    assert idle.index == 2 and idle.segments == []
    cells = bar_cells(first, 40)
    assert cells[1] == 1                      # a tiny process still shows
    assert sum(cells) == round(12000 / 23034 * 40)
