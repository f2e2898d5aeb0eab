"""sop_plugin.bench.results.stats: intervals over seeds and verdicts.

Student-t and bootstrap intervals over seeds, and the verdict drawn from them.
"""

from __future__ import annotations

import math

import pytest

from sop_plugin.bench.results.stats import (
    bootstrap_interval,
    flip,
    paired,
    prediction_interval,
    t_interval,
    verdict,
)

T_975_DF2 = 4.302652729911275  # Student t, 97.5th percentile, 2 degrees of freedom (tables)


def test_t_interval_is_mean_plus_minus_t_times_the_standard_error() -> None:
    low, high = t_interval([1.0, 2.0, 3.0])
    half = T_975_DF2 * 1.0 / math.sqrt(3)
    assert (low, high) == pytest.approx((2.0 - half, 2.0 + half))


def test_fewer_than_two_values_have_no_interval_and_zero_spread_a_point() -> None:
    assert t_interval([0.4]) is None and bootstrap_interval([0.4]) is None
    assert t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert bootstrap_interval([0.5, 0.5]) == (0.5, 0.5)


def test_bootstrap_lies_within_the_values_and_is_reproducible() -> None:
    diffs = [-0.25, 0.10, -0.19]
    low, high = bootstrap_interval(diffs)
    assert min(diffs) - 1e-12 <= low < high <= max(diffs) + 1e-12
    assert bootstrap_interval(diffs) == (low, high)


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        ((0.1, 2.0), "ahead"),
        ((-2.0, -0.1), "behind"),
        ((-0.1, 2.0), "level"),
        ((0.0, 1.0), "level"),
        (None, "level"),
    ],
)
def test_verdict_needs_the_whole_interval_on_one_side_of_zero(
    interval: tuple[float, float] | None, expected: str
) -> None:
    assert verdict(interval) == expected
    assert flip(flip(verdict(interval))) == expected


def test_paired_uses_only_the_shared_seeds() -> None:
    p = paired({0: 82.5, 1: 82.4, 2: 82.6}, {0: 82.0, 2: 82.0, 3: 70.0})
    assert p is not None
    assert (
        p["seeds"] == [0, 2] and p["diffs"] == pytest.approx([0.5, 0.6]) and p["mean"] == pytest.approx(0.55)
    )
    assert p["verdict"] == "level"  # two seeds: t with 1 degree of freedom, 0.55 +- 12.7 * 0.05 spans 0
    assert p["ci95_t"] == pytest.approx([0.55 - 12.706204736 * 0.05, 0.55 + 12.706204736 * 0.05])
    assert paired({0: 1.0}, {1: 1.0}) is None


def test_prediction_interval_is_where_one_more_seed_lands() -> None:
    """t(n - 1) around the mean with scale sd * sqrt(1 + 1/n), the spread of one new run (not of the mean)."""
    low, high = prediction_interval([70.0, 72.0, 74.0])
    assert (low, high) == pytest.approx((72.0 - 9.9366, 72.0 + 9.9366), abs=1e-3)
    t_low, t_high = t_interval([70.0, 72.0, 74.0])
    assert low < t_low and high > t_high  # wider than the interval of the mean
    assert prediction_interval([5.0]) is None
    assert prediction_interval([5.0, 5.0]) == (5.0, 5.0)
