"""The one token parser: every front end and engine-args reader takes the same text."""

from __future__ import annotations

import pytest

from gpumod.errors import UsageError
from gpumod.units import MAX_CONTEXT, parse_bytes, parse_tokens


@pytest.mark.parametrize(("text", "tokens"), [("8192", 8192), ("32k", 32768), (" 16K ", 16384),
                                              ("1m", 1048576), ("2m", 2097152), (4096, 4096)])
def test_tokens(text, tokens):
    assert parse_tokens(text) == tokens


@pytest.mark.parametrize("text", ["", "k", "1.5k", "-4k", "0", "0k", "32kb", "lots", "4 k x"])
def test_bad_tokens(text):
    with pytest.raises(UsageError):
        parse_tokens(text)


def test_limits_are_the_callers():
    with pytest.raises(UsageError, match="out of range"):
        parse_tokens("2m", what="context size", maximum=MAX_CONTEXT)
    with pytest.raises(UsageError, match="too small"):
        parse_tokens("32", bare_minimum=256)
    assert parse_tokens("1k", bare_minimum=256) == 1024


def test_the_engines_the_planner_and_the_tui_agree():
    from gpumod.engines.base import parse_context
    from gpumod.planner.estimate import parse_llamacpp_args, parse_vllm_args
    from gpumod.tui.commands import parse

    assert parse_context("32k") == parse_vllm_args(["--max-model-len", "32k"]).max_model_len \
        == parse_llamacpp_args(["-c", "32k"]).ctx == 32768
    assert parse("/simulate code --context chat=32k").contexts == {"chat": 32768}
    for bad in ("1.5k", "32kb"):
        with pytest.raises(UsageError):
            parse_context(bad)
        with pytest.raises(UsageError):
            parse_vllm_args(["--max-model-len", bad])
        with pytest.raises(UsageError):
            parse(f"/simulate code --context chat={bad}")


def test_bytes():
    assert parse_bytes("20G") == parse_bytes("20GiB") == 20 * 2**30
    assert parse_bytes("512M") == 512 * 2**20 and parse_bytes("1000") == 1000
    with pytest.raises(UsageError):
        parse_bytes("lots")
