"""Tests for the ensemble weighted on out-of-fold predictions (iqa_lib.ensemble.oof_weights,
weighted_ensemble, and the method names ensemble() and 05_ensemble share)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from iqa_lib.config import Outputs
from iqa_lib.ensemble import METHODS, ensemble, iqr_mean, oof_scores, oof_weights, plain_mean, weighted_ensemble

N_IMAGES, N_FOLDS = 200, 5


def truth_mos(n: int = N_IMAGES, seed: int = 0) -> pd.Series:
    rng = np.random.default_rng(seed)
    return pd.Series(rng.uniform(1, 9, n), index=[f"img{i:03d}" for i in range(n)], name="mos")


def write_oof(outputs: Outputs, res: int, mos: pd.Series, pred: np.ndarray, folds=range(N_FOLDS)) -> list[str]:
    """{res}_fold{k}/oof.csv as training writes them: image i is in fold i % N_FOLDS."""
    names = []
    for k in folds:
        idx = np.arange(len(mos)) % N_FOLDS == k
        path = outputs.run(res, k).oof
        path.parent.mkdir(parents=True, exist_ok=True)
        oof = pd.DataFrame({"img_name": mos.index[idx], "mos": mos.to_numpy()[idx], "pred": pred[idx]})
        oof.to_csv(path, index=False)
        names.append(f"{res}_fold{k}")
    return names


@pytest.fixture
def good_and_noise(tmp_path):
    """448: the truth plus small noise; 640: pure noise around the mean MOS."""
    out, mos = Outputs(tmp_path / "out"), truth_mos()
    rng = np.random.default_rng(1)
    runs = write_oof(out, 448, mos, mos.to_numpy() + rng.normal(0, 0.1, len(mos)))
    runs += write_oof(out, 640, mos, rng.normal(5, 2, len(mos)))
    return out, runs


def test_good_resolution_gets_the_weight(good_and_noise):
    out, runs = good_and_noise
    w = oof_weights(out, runs)
    assert w.index.tolist() == ["448", "640", "intercept"] and w.name == "weight"
    assert w.attrs["images"] == N_IMAGES
    assert w["448"] > 0.95 and w["640"] < 0.02
    assert abs(w["intercept"]) < 0.3


def test_weights_are_non_negative(tmp_path):
    # 640 predicts the MOS upside down: unconstrained least squares would give it a large negative weight.
    out, mos = Outputs(tmp_path / "out"), truth_mos()
    rng = np.random.default_rng(2)
    runs = write_oof(out, 448, mos, mos.to_numpy() + rng.normal(0, 1.0, len(mos)))
    runs += write_oof(out, 640, mos, 10 - mos.to_numpy() + rng.normal(0, 0.3, len(mos)))
    w = oof_weights(out, runs)
    assert (w.drop("intercept") >= 0).all()
    assert w["640"] < 1e-6 and w["448"] > 0.5  # at the bound (lsq_linear stops within rounding of it)


def test_exact_affine_relation_is_recovered(tmp_path):
    # One resolution: MOS = 1.7 * pred - 0.4 exactly, so weight and intercept come back (a recalibration).
    out, mos = Outputs(tmp_path / "out"), truth_mos()
    runs = write_oof(out, 384, mos, (mos.to_numpy() + 0.4) / 1.7)
    w = oof_weights(out, runs)
    assert w.index.tolist() == ["384", "intercept"]
    np.testing.assert_allclose(w.to_numpy(), [1.7, -0.4], atol=1e-6)


def test_weighted_ensemble_by_hand():
    table = pd.DataFrame({"448_fold0": [1.0, 2.0, 4.0], "448_fold1": [3.0, 2.0, np.nan], "640_fold0": [5.0, 6.0, 7.0],
                          "640_fold1": [7.0, 8.0, 9.0], "640_fold2": [6.0, 7.0, 8.0]}, index=["a", "b", "c"])
    weights = pd.Series({"448": 0.25, "640": 0.5, "intercept": 1.0})
    expected = [0.25 * 2.0 + 0.5 * 6.0 + 1.0, 0.25 * 2.0 + 0.5 * 7.0 + 1.0, 0.25 * 4.0 + 0.5 * 8.0 + 1.0]
    got = weighted_ensemble(table, weights)
    assert got.name == "mos" and got.index.tolist() == ["a", "b", "c"]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # A mapping with int resolutions works alike, and so does ensemble(..., "oof_weighted").
    np.testing.assert_allclose(weighted_ensemble(table, {448: 0.25, 640: 0.5, "intercept": 1.0}), expected)
    np.testing.assert_allclose(ensemble(table, "oof_weighted", weights=weights), expected)


def test_weighted_ensemble_on_fitted_weights(good_and_noise):
    out, runs = good_and_noise
    w = oof_weights(out, runs)
    rng = np.random.default_rng(3)
    table = pd.DataFrame(rng.uniform(1, 9, (20, len(runs))), columns=runs)
    by_hand = (w["448"] * table.filter(like="448_").mean(axis=1) + w["640"] * table.filter(like="640_").mean(axis=1)
               + w["intercept"])
    np.testing.assert_allclose(weighted_ensemble(table, w), by_hand, rtol=0, atol=1e-12)


def test_missing_oof_names_the_file(good_and_noise):
    out, runs = good_and_noise
    out.run(640, 3).oof.unlink()
    with pytest.raises(ValueError) as err:
        oof_weights(out, runs)
    assert "640_fold3" in str(err.value) and str(out.run(640, 3).oof) in str(err.value)
    assert "03_train" in str(err.value)


def test_resolution_lacking_folds_is_named(good_and_noise):
    out, runs = good_and_noise
    with pytest.raises(ValueError, match=r"resolution 640 lacks fold\(s\) \[2, 4\].*640_fold2"):
        oof_weights(out, [r for r in runs if r not in ("640_fold2", "640_fold4")])
    # The same folds at every resolution line up: fold 0 alone is fine.
    w = oof_weights(out, ["640_fold0", "448_fold0"])
    assert w.attrs["images"] == N_IMAGES // N_FOLDS
    assert w.index.tolist() == ["448", "640", "intercept"]  # by resolution, whatever the run order


def test_bad_names_and_files(good_and_noise, tmp_path):
    out, runs = good_and_noise
    with pytest.raises(ValueError, match="'448-1' is not of the form"):
        oof_weights(out, ["448-1"])
    with pytest.raises(ValueError, match="no runs given"):
        oof_weights(out, [])
    out.run(448, 0).oof.write_text("img_name,mos\na,1\n")
    with pytest.raises(ValueError, match=r"448_fold0.oof.csv: missing column\(s\) \['pred'\]"):
        oof_weights(out, runs)


def test_weighted_ensemble_errors():
    table = pd.DataFrame({"448_fold0": [1.0], "640_fold0": [2.0]}, index=["a"])
    with pytest.raises(ValueError, match=r"no weight for resolution\(s\) \['640'\].*640_fold0"):
        weighted_ensemble(table, {"448": 1.0, "intercept": 0.0})
    with pytest.raises(ValueError, match=r"resolution\(s\) \['384'\] a weight but there is no run"):
        weighted_ensemble(table, {"384": 1.0, "448": 1.0, "640": 1.0, "intercept": 0.0})
    with pytest.raises(ValueError, match="'intercept' entry"):
        weighted_ensemble(table, {"448": 1.0, "640": 1.0})
    with pytest.raises(ValueError, match="not of the form"):
        weighted_ensemble(table.rename(columns={"640_fold0": "best"}), {"448": 1.0, "intercept": 0.0})


def test_methods_in_one_place():
    assert METHODS == ("iqr", "mean", "oof_weighted")
    table = pd.DataFrame({"448_fold0": [1.0, 2.0], "448_fold1": [3.0, 5.0]}, index=["a", "b"])
    # Backwards compatible: iqr (the default) and mean need no weights. Five runs with an outlier
    # (image b, 40.0), so that the two methods give different scores.
    five = pd.DataFrame({f"448_fold{k}": [float(k), 2.0 + k % 2] for k in range(4)}, index=["a", "b"])
    five["448_fold4"] = [4.0, 40.0]
    assert not np.allclose(iqr_mean(five), plain_mean(five))
    np.testing.assert_allclose(ensemble(five), iqr_mean(five))
    np.testing.assert_allclose(ensemble(five, "mean"), plain_mean(five))
    with pytest.raises(ValueError, match=r"unknown method 'median'; choose from \['iqr', 'mean', 'oof_weighted'\]"):
        ensemble(table, "median")
    with pytest.raises(ValueError, match="'oof_weighted' needs weights.*oof_weights"):
        ensemble(table, "oof_weighted")
    with pytest.raises(ValueError, match="weights are used by method 'oof_weighted' only"):
        ensemble(table, "iqr", weights={"448": 1.0, "intercept": 0.0})


def test_notebook_offers_the_methods():
    """05_ensemble takes its choices from METHODS and scores the weighted ensemble on the holdout."""
    import nbformat

    nb = nbformat.read(Path(__file__).parents[1] / "notebooks" / "05_ensemble.ipynb", as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert 'choices={"method": METHODS}' in code and '("iqr", "mean")' not in code
    assert "oof_weights(OUT, list(pred_table.columns))" in code
    assert 'combined["oof_weighted"] = ensemble(pred_table, "oof_weighted", weights=weights)' in code
    assert "oof_scores(OUT, list(pred_table.columns), weights=weights)" in code
    assert '**{f"ensemble ({m})": combined[m] for m in METHODS if m in combined}' in code  # section 8


def test_oof_scores_row_for_the_fitted_weights(good_and_noise):
    out, runs = good_and_noise
    plain = oof_scores(out, runs)
    table = oof_scores(out, runs, weights=oof_weights(out, runs))
    assert len(table) == len(plain) + 1
    row = table.iloc[-1]
    assert row["level"] == "ensemble" and "oof_weighted" in row["name"] and "(in-sample)" in row["name"]
    assert row["images"] == N_IMAGES
    # Nearly all weight on the good resolution: far better than averaging it with noise.
    means = plain.set_index("name")["score"]
    assert row["score"] > means["mean over 2 resolution(s)"] + 0.05
    assert row["score"] >= means["448"] - 1e-3
