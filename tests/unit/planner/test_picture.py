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
