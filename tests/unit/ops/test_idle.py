"""The idle-TTL rule shared by the gateway and `gpumod watch` (ops/idle.py)."""

from __future__ import annotations

import pytest

from gpumod.errors import UsageError
from gpumod.ops.idle import NEVER, Activity, format_ttl, gateway_extra, parse_ttl, service_ttl
from gpumod.spec import ServiceSpec


@pytest.mark.parametrize(("text", "seconds"), [
    ("10m", 600.0), ("90s", 90.0), ("1h", 3600.0), ("600", 600.0), (" 2d ", 172800.0),
    ("0.5", 0.5), ("1.5m", 90.0), ("never", NEVER), ("off", NEVER)])
def test_parse_ttl(text, seconds):
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "-5", "m", "1e9", "inf", "nan", "10 minutes", "0",
                                  "0s", "0.0m"])
def test_bad_ttl_is_a_usage_error_with_a_hint(text):
    with pytest.raises(UsageError) as exc:
        parse_ttl(text)
    assert "10m" in (exc.value.hint or "")


def test_format_ttl():
    assert [format_ttl(v) for v in (600, 90, 5400, 7200, None, NEVER, 0.5)] == \
        ["10m", "90s", "90m", "2h", "-", "never", "0.5s"]


def test_service_ttl_own_beats_default_and_never_wins():
    spec = ServiceSpec("a", "local", "vllm", "m", 1)
    assert service_ttl(spec, None) is None
    assert service_ttl(spec, 300) == 300
    assert service_ttl(spec.with_(extra={"idle_ttl": 60}), 300) == 60
    assert service_ttl(spec.with_(extra={"idle_ttl": NEVER}), 300) is None
    assert service_ttl(spec.with_(extra={"idle_ttl": "junk"}), 300) == 300


def test_activity_counts_from_the_end_and_never_while_in_flight():
    act = Activity()
    assert not act.due(100.0, 10)          # never seen: not idle
    act.begin()
    act.begin()
    act.end(5.0)
    assert act.idle_for(50.0) is None      # one still in flight
    assert not act.due(50.0, 10)
    act.end(20.0)
    assert act.idle_for(25.0) == 5.0
    assert not act.due(29.9, 10) and act.due(30.0, 10)
    act.observe(40.0)                      # outside activity restarts the count
    assert not act.due(45.0, 10)
    assert not act.due(1e9, None)          # no TTL: never


def test_gateway_extra_validates_aliases():
    assert gateway_extra("10m", ["gpt-4o", " fast "]) == {"idle_ttl": 600.0,
                                                         "aliases": ["gpt-4o", "fast"]}
    assert gateway_extra(None, ()) == {}
    for bad in ("two words", "x\n", ""):
        with pytest.raises(UsageError):
            gateway_extra(None, [bad])
