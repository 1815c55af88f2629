"""Tests for iqa_lib.metrics."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from iqa_lib.metrics import all_metrics, plcc, srcc


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    target = rng.normal(5.5, 0.8, size=300)
    pred = target + rng.normal(0, 0.6, size=300)
    return pred, target


def test_matches_scipy(data):
    pred, target = data
    assert plcc(pred, target) == pytest.approx(stats.pearsonr(pred, target).statistic, abs=1e-15)
    assert srcc(pred, target) == pytest.approx(stats.spearmanr(pred, target).statistic, abs=1e-15)


def test_all_metrics_and_combinations(data):
    pred, target = data
    m = all_metrics(pred, target)
    assert set(m) == {"plcc", "srcc", "plcc_srcc", "score"}
    assert all(type(v) is float for v in m.values())
    assert m["plcc"] == plcc(pred, target) and m["srcc"] == srcc(pred, target)
    assert m["plcc_srcc"] == pytest.approx(m["plcc"] + m["srcc"], abs=0)
    assert m["score"] == pytest.approx((m["plcc"] + m["srcc"]) / 2, abs=0)


def test_score_clips_negative_correlations(data):
    pred, target = data
    # Anti-correlated prediction: both correlations negative, so the challenge score is 0.
    m = all_metrics(-pred, target)
    assert m["plcc"] < -0.5 and m["srcc"] < -0.5
    assert m["plcc_srcc"] == pytest.approx(m["plcc"] + m["srcc"])
    assert m["score"] == 0.0
    # Mixed signs: only the positive one counts, halved.
    pred_mixed = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 100.0])
    target_mixed = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 20.0])
    p, s = plcc(pred_mixed, target_mixed), srcc(pred_mixed, target_mixed)
    assert p > 0 > s
    assert all_metrics(pred_mixed, target_mixed)["score"] == pytest.approx(p / 2)


def test_input_types_agree(data):
    pred, target = data
    expected = all_metrics(pred, target)
    variants = [
        (pred.tolist(), target.tolist()),
        (pd.Series(pred, index=np.arange(300)[::-1]), pd.Series(target)),
        (torch.tensor(pred, requires_grad=True), torch.tensor(target)),
        (torch.tensor(pred, dtype=torch.float64).unsqueeze(1), target),  # (N, 1) column
        (pred.astype(np.float32), target),
    ]
    for p, t in variants[:-1]:
        assert all_metrics(p, t) == expected
    assert all_metrics(*variants[-1])["plcc"] == pytest.approx(expected["plcc"], abs=1e-6)


def test_bfloat16_tensor(data):
    pred, target = data
    assert plcc(torch.tensor(pred).bfloat16(), target) == pytest.approx(plcc(pred, target), abs=1e-2)


@pytest.mark.parametrize(
    "pred, target, reason",
    [
        ([], [], "need at least 2 samples, got 0"),
        ([1.0], [2.0], "need at least 2 samples, got 1"),
        ([3.0, 3.0, 3.0], [1.0, 2.0, 3.0], "pred is constant"),
        ([1.0, 2.0, 3.0], [4.0, 4.0, 4.0], "target is constant"),
        ([1.0, np.nan, 3.0], [1.0, 2.0, 3.0], "pred has 1 non-finite"),
        ([1.0, np.inf, -np.inf], [1.0, 2.0, 3.0], "pred has 2 non-finite"),
    ],
)
def test_degenerate_inputs_give_zero_with_warning(pred, target, reason):
    for fn, name in [(plcc, "PLCC"), (srcc, "SRCC")]:
        with pytest.warns(RuntimeWarning, match=f"{name} set to 0.0: {reason}"):
            assert fn(pred, target) == 0.0
    with pytest.warns(RuntimeWarning, match=reason):
        m = all_metrics(pred, target)
    assert m == {"plcc": 0.0, "srcc": 0.0, "plcc_srcc": 0.0, "score": 0.0}


def test_overflow_gives_zero_with_warning():
    # Finite but huge: scipy's centring overflows to NaN; PLCC must still be a number.
    pred = [1.7e308, -1.7e308, 1.7e308, 1.0]
    with pytest.warns(RuntimeWarning, match="PLCC set to 0.0: the correlation overflowed"):
        assert plcc(pred, [1.0, 2.0, 3.0, 4.0]) == 0.0


def test_warning_points_at_caller():
    with pytest.warns(RuntimeWarning) as record:
        plcc([1.0, 1.0], [1.0, 2.0])
        all_metrics([1.0, 1.0], [1.0, 2.0])
    assert {w.filename for w in record} == {__file__}


def test_no_warning_on_normal_input(data):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        all_metrics(*data)


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="lengths differ: 3 != 2"):
        plcc([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="lengths differ"):
        all_metrics([1.0], [])


def test_non_finite_target_raises():
    with pytest.raises(ValueError, match="target has 1 non-finite"):
        srcc([1.0, 2.0, 3.0], [1.0, np.nan, 3.0])


def test_two_dimensional_input_raises():
    with pytest.raises(ValueError, match="must be 1-D"):
        plcc(np.ones((3, 2)), np.ones(3))
