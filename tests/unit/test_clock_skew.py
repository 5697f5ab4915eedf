"""plugins/action/clock_skew.py: the estimate of a node's clock offset and its verdict (preflight's clock
check); the lab runs it over real ssh in tests/lab/test_preflight.py."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import PROJECT

_spec = importlib.util.spec_from_file_location("clock_skew", PROJECT / "plugins" / "action" / "clock_skew.py")
clock_skew = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(clock_skew)


def test_the_shortest_round_trip_gives_the_estimate_and_its_uncertainty():
    samples = [
        (100.0, 103.9, 101.0),  # a slow read: 1 s round trip
        (200.0, 203.05, 200.1),  # the fastest: node read 3.0 s ahead of the middle, +- 0.05
        (300.0, 303.3, 300.4),
    ]
    offset, uncertainty = clock_skew.estimate(samples)
    assert offset == pytest.approx(3.0) and uncertainty == pytest.approx(0.05)


def test_a_node_behind_has_a_negative_offset():
    offset, _ = clock_skew.estimate([(1000.0, 995.02, 1000.04)])
    assert offset == pytest.approx(-5.0)


def test_a_node_is_reported_only_when_farther_off_than_the_uncertainty_allows():
    assert clock_skew.judge(1.9, 0.05, 2)
    assert not clock_skew.judge(3.0, 0.05, 2)
    assert not clock_skew.judge(-3.0, 0.05, 2)
    assert clock_skew.judge(2.4, 0.5, 2)  # may be 1.9 s off: not proven beyond the limit


def test_no_sample_is_an_error():
    with pytest.raises(ValueError, match="no sample"):
        clock_skew.estimate([])
