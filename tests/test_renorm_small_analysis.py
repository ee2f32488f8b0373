"""renorm_small's recovery table: paired t intervals (as scipy's) and Fieller's interval for the recovered fraction."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bnlab.results.analysis import load_study_module
from bnlab.results.claim_tests import mean_ci

rs = load_study_module("renorm_small")


def test_mean_ci_matches_scipy():
    d = np.array([-0.68, 1.86, 0.0, 1.56])  # NBS 2 gains of an earlier design
    mean, lo, hi, p = mean_ci(d)
    ref = stats.ttest_1samp(d, 0.0)
    ci = ref.confidence_interval(0.95)
    assert (mean, lo, hi, p) == pytest.approx((d.mean(), ci.low, ci.high, ref.pvalue))
    assert (lo, hi) == pytest.approx((-1.26, 2.63), abs=0.01)  # the numbers the review computed


def test_fieller_interval_is_the_set_of_ratios_a_t_test_does_not_reject():
    rng = np.random.default_rng(0)
    loss = 2.0 + rng.normal(0, 0.3, 8)
    gain = 0.5 * loss + rng.normal(0, 0.2, 8)
    lo, hi = rs.fieller(gain, loss)
    for ratio in np.linspace(-1, 2, 301):  # R is inside iff the paired t test of gain - R * loss = 0 keeps it
        keeps = stats.ttest_1samp(gain - ratio * loss, 0.0).pvalue > 0.05
        assert keeps == (lo <= ratio <= hi) or min(abs(ratio - lo), abs(ratio - hi)) < 0.011
    assert rs.fieller(gain, rng.normal(0, 1, 8)) is None  # a loss whose CI reaches 0: no fraction
