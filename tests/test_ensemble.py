"""Tests for iqa_lib.ensemble (SPEC §5)."""

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from iqa_lib.ensemble import (
    ensemble,
    iqr_mean,
    load_predictions,
    plain_mean,
    validate_submission,
    write_submission,
)


def reference_iqr_mean(preds: np.ndarray) -> np.ndarray:
    """The team's filter, one image at a time with pandas; the median when nothing survives."""
    out = []
    for row in preds:
        s = pd.Series(row).dropna()
        q1, q3 = s.quantile(0.25), s.quantile(0.75)
        iqr = q3 - q1
        kept = s[(s > q1 - 1.5 * iqr) & (s < q3 + 1.5 * iqr)]
        out.append(kept.mean() if len(kept) else s.median())
    return np.array(out)


@pytest.fixture
def preds() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(5.5, 0.8, size=(500, 1)) + rng.normal(0, 0.15, size=(500, 15))
    # Plant outliers: one to three runs per image far off in either direction.
    for i in range(0, 500, 3):
        runs = rng.choice(15, size=rng.integers(1, 4), replace=False)
        x[i, runs] += rng.choice([-1, 1], size=len(runs)) * rng.uniform(1, 4, size=len(runs))
    return x


def test_iqr_mean_matches_per_image_loop(preds):
    got = iqr_mean(preds)
    np.testing.assert_allclose(got, reference_iqr_mean(preds), rtol=0, atol=1e-12)
    # The filter must actually have removed the planted outliers.
    assert np.abs(got - preds.mean(axis=1)).max() > 0.05


def test_iqr_mean_on_coarse_values_hitting_the_fences():
    # Few distinct values make quantiles and fences land exactly on data points often,
    # so any rounding difference from pandas' quantile would flip what is kept.
    rng = np.random.default_rng(2)
    x = rng.integers(0, 5, size=(2000, 6)).astype(np.float64) / 4
    x[rng.random(x.shape) < 0.1] = np.nan
    x = x[~np.isnan(x).all(axis=1)]
    np.testing.assert_allclose(iqr_mean(x), reference_iqr_mean(x), rtol=0, atol=1e-12)


def test_fences_are_exclusive():
    # Sorted [a, b, c, d, e]: Q1 = b, Q3 = d, so the fences are b - 1.5 IQR and d + 1.5 IQR.
    x = np.array([[0.0, 2.0, 3.0, 4.0, 7.0], [-1.0, 2.0, 3.0, 4.0, 5.0]])  # 7 and -1 sit on a fence
    np.testing.assert_array_equal(iqr_mean(x), [2.25, 3.5])
    np.testing.assert_array_equal(reference_iqr_mean(x), [2.25, 3.5])


def test_iqr_mean_accepts_dataframe(preds):
    df = pd.DataFrame(preds, index=[f"img{i}" for i in range(500)])
    np.testing.assert_array_equal(iqr_mean(df), iqr_mean(preds))


def test_iqr_zero_returns_common_value():
    x = np.array([[4.2] * 15, [7.0] * 15])
    np.testing.assert_array_equal(iqr_mean(x), [4.2, 7.0])
    # IQR 0 with a few stragglers: the open fences keep nothing, the median is the majority value.
    y = np.array([[5.0] * 12 + [5.1, 9.0, 1.0]])
    assert iqr_mean(y)[0] == 5.0
    assert iqr_mean(y)[0] == reference_iqr_mean(y)[0]
    # A single run: nothing to filter against.
    assert iqr_mean(np.array([[3.3]]))[0] == 3.3


def test_nan_predictions_are_ignored_per_image(preds):
    x = preds[:50].copy()
    rng = np.random.default_rng(1)
    x[rng.random(x.shape) < 0.2] = np.nan
    np.testing.assert_allclose(iqr_mean(x), reference_iqr_mean(x), rtol=0, atol=1e-12)
    expected_mean = [np.mean(r[~np.isnan(r)]) for r in x]
    np.testing.assert_allclose(plain_mean(x), expected_mean, rtol=0, atol=1e-12)
    # inf is treated like NaN.
    with_nan = x.copy()
    x[0, 0], with_nan[0, 0] = np.inf, np.nan
    np.testing.assert_allclose(iqr_mean(x), iqr_mean(with_nan), rtol=0, atol=1e-12)
    np.testing.assert_allclose(plain_mean(x), plain_mean(with_nan), rtol=0, atol=1e-12)


def test_all_nan_image_gives_nan_and_warns():
    x = np.array([[1.0, 2.0, 3.0], [np.nan, np.nan, np.nan], [2.0, np.nan, 2.0]])
    for fn in (iqr_mean, plain_mean):
        with pytest.warns(RuntimeWarning, match="1 image"):
            out = fn(x)
        assert np.isfinite(out[[0, 2]]).all() and np.isnan(out[1])
        assert out[2] == 2.0


def test_no_warning_on_clean_input(preds):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iqr_mean(preds)
        plain_mean(preds)


def test_input_not_modified_and_shape_checked(preds):
    x = preds.copy()
    x[0, 0] = np.inf
    before = x.copy()
    iqr_mean(x)
    np.testing.assert_array_equal(x, before)
    with pytest.raises(ValueError, match="2-D"):
        iqr_mean(preds[0])
    with pytest.raises(ValueError, match="at least one run"):
        plain_mean(np.empty((3, 0)))


def write_csv(path: Path, names, mos) -> Path:
    pd.DataFrame({"img_name": names, "mos": mos}).to_csv(path, index=False)
    return path


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    names = ["0012", "NA", "b", "a"]  # names pandas would otherwise turn into numbers / NaN
    return [
        write_csv(tmp_path / "384_fold0.csv", names, [1.0, 2.0, 3.0, 4.0]),
        write_csv(tmp_path / "448_fold1.csv", names[::-1], [40.0, 30.0, 20.0, 10.0]),
        write_csv(tmp_path / "640_fold2.csv", names, [1.5, 2.5, 3.5, 4.5]),
    ]


def test_load_predictions_wide_table(runs):
    table = load_predictions(runs)
    assert table.index.tolist() == ["0012", "NA", "b", "a"]
    assert table.index.name == "img_name"
    assert table.columns.tolist() == ["384_fold0", "448_fold1", "640_fold2"]
    assert table["448_fold1"].tolist() == [10.0, 20.0, 30.0, 40.0]  # aligned by name, not row
    assert table.dtypes.eq(np.float64).all()
    named = load_predictions({"x": runs[1], "y": runs[0]})
    assert named.columns.tolist() == ["x", "y"]
    assert named.index.tolist() == ["a", "b", "NA", "0012"]


def test_load_predictions_single_path_and_empty_cells(tmp_path):
    path = tmp_path / "run.csv"
    path.write_text("img_name,mos\na,1.5\nb,\n")
    table = load_predictions(path)
    assert table.columns.tolist() == ["run"]
    assert table.loc["a", "run"] == 1.5 and np.isnan(table.loc["b", "run"])


@pytest.mark.parametrize(
    "names, mos, message",
    [
        (["0012", "NA", "b"], [1.0, 2.0, 3.0], r"1 missing \['a'\], 0 extra"),
        (["0012", "NA", "b", "a", "z"], [1.0] * 5, r"0 missing \[\], 1 extra \['z'\]"),
        (["0012", "NA", "b", "a", "a"], [1.0] * 5, r"1 duplicated img_name\(s\): \['a'\]"),
    ],
)
def test_load_predictions_rejects_mismatched_names(runs, tmp_path, names, mos, message):
    bad = write_csv(tmp_path / "bad_run.csv", names, mos)
    with pytest.raises(ValueError, match=message) as err:
        load_predictions([*runs, bad])
    assert "bad_run.csv" in str(err.value)


def test_load_predictions_rejects_bad_files(runs, tmp_path):
    no_mos = tmp_path / "no_mos.csv"
    no_mos.write_text("img_name,score\na,1.0\n")
    with pytest.raises(ValueError, match=r"no_mos.csv: missing column\(s\) \['mos'\]"):
        load_predictions([runs[0], no_mos])
    text = tmp_path / "text.csv"
    text.write_text("img_name,mos\n0012,1\nNA,high\nb,2\na,3\n")
    with pytest.raises(ValueError, match="text.csv: column 'mos' is not numeric"):
        load_predictions([runs[0], text])
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    with pytest.raises(ValueError, match="distinct file stems"):
        load_predictions([runs[0], write_csv(other_dir / runs[0].name, ["a"], [1.0])])
    with pytest.raises(ValueError, match="no prediction files"):
        load_predictions([])


def test_ensemble_series(runs):
    table = load_predictions(runs)
    mean = ensemble(table, method="mean")
    assert mean.name == "mos" and mean.index.equals(table.index)
    np.testing.assert_allclose(mean, table.mean(axis=1))
    np.testing.assert_allclose(ensemble(table), iqr_mean(table))
    # With three runs the fences keep every value; with five and an outlier the default must filter it.
    five = pd.DataFrame({f"448_fold{k}": [1.0, 2.0, 3.0, 4.0, 5.0][k:k + 1] * 2 for k in range(5)}, index=["a", "b"])
    five.loc["b", "448_fold4"] = 50.0
    np.testing.assert_allclose(ensemble(five), [3.0, 2.5])
    np.testing.assert_allclose(ensemble(five, method="mean"), [3.0, 12.0])
    with pytest.raises(ValueError, match="unknown method 'median'"):
        ensemble(table, method="median")


@pytest.fixture
def test_csv(tmp_path: Path) -> Path:
    path = tmp_path / "test.csv"
    names = ["j00", "0012", "NA", "x9"]
    pd.DataFrame({"img_name": names, "img_path": [f"./test/{n}.jpg" for n in names]}).to_csv(path, index=False)
    return path


def test_submission_round_trip(tmp_path, test_csv):
    names = ["j00", "0012", "NA", "x9"]
    mos = np.array([5.123456789012345, 1 / 3, 9.999, 0.0])
    out = tmp_path / "sub" / "submission.csv"
    write_submission(names, mos, out)
    validate_submission(out, test_csv)
    assert out.read_text().splitlines()[0] == "img_name,mos,comments"
    back = pd.read_csv(out, dtype={"img_name": str}, keep_default_na=False)
    assert back["img_name"].tolist() == names
    np.testing.assert_array_equal(back["mos"].to_numpy(), mos)  # full float precision
    assert back["comments"].tolist() == [""] * 4
    assert [p.name for p in out.parent.iterdir()] == ["submission.csv"]  # no temp file left
    assert oct(out.stat().st_mode & 0o777) == oct(0o644)


def test_write_submission_aligns_series_by_name(tmp_path, test_csv):
    mos = pd.Series([4.0, 3.0, 2.0, 1.0], index=pd.Index(["x9", "NA", "0012", "j00"], name="img_name"))
    out = tmp_path / "s.csv"
    write_submission(["j00", "0012", "NA", "x9"], mos, out, comments="ensemble v1")
    sub = pd.read_csv(out, dtype={"img_name": str}, keep_default_na=False)
    assert sub["mos"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert sub["comments"].tolist() == ["ensemble v1"] * 4
    with pytest.raises(ValueError, match=r"no value for 1 test image\(s\): \['zz'\]"):
        write_submission(["j00", "zz"], mos, out)
    with pytest.raises(ValueError, match="3 mos values for 4 test images"):
        write_submission(["j00", "0012", "NA", "x9"], [1.0, 2.0, 3.0], out)
    with pytest.raises(ValueError, match=r"(?s)1 missing or non-finite mos value\(s\), for: \['NA'\].*Nothing was "
                                         r"written \(.*s\.csv is as it was\)"):
        write_submission(["j00", "0012", "NA", "x9"], [1.0, 2.0, np.nan, 4.0], out)  # all runs NaN for one image
    # A failed write leaves the previous file intact.
    assert pd.read_csv(out)["mos"].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_write_submission_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "submission.csv"
    out.write_text("previous\n")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_submission(["a"], [1.0], out)
    assert out.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def good_submission() -> pd.DataFrame:
    return pd.DataFrame({"img_name": ["j00", "0012", "NA", "x9"], "mos": [1.0, 2.0, 3.0, 4.0], "comments": ""})


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.drop(index=1), r"1 missing img_name\(s\): \['0012'\]"),
        (lambda s: pd.concat([s, s.iloc[[0]].assign(img_name="zz")]), r"1 extra img_name\(s\): \['zz'\]"),
        (lambda s: pd.concat([s, s.iloc[[2]]]), r"1 duplicated img_name\(s\): \['NA'\]"),
        (
            lambda s: s.assign(mos=[1.0, np.nan, np.inf, 4.0]),
            r"2 missing or non-finite mos value\(s\), for: \['0012', 'NA'\]",
        ),
        (lambda s: s.assign(mos=["1.0", "", "x", "4"]), r"2 missing or non-finite mos"),
        (lambda s: s.iloc[[0, 2, 1, 3]], r"2 row\(s\) out of test order, first at positions \[1, 2\]"),
        (lambda s: s.drop(columns="comments"), r"columns must be \['img_name', 'mos', 'comments'\]"),
        (lambda s: s.rename(columns={"mos": "MOS"}), "columns must be"),
        (lambda s: s[["mos", "img_name", "comments"]], "columns must be"),
    ],
)
def test_validator_rejections(test_csv, mutate, message):
    validate_submission(good_submission(), test_csv)  # the unmutated one passes
    with pytest.raises(ValueError, match=message):
        validate_submission(mutate(good_submission()), test_csv)


def test_validator_lists_first_ten_and_all_problems(test_csv):
    names = ["j00", "0012", "NA", "x9"] + [f"extra{i:02d}" for i in range(12)]
    sub = pd.DataFrame({"img_name": names, "mos": [np.nan] * 16, "comments": ""})
    with pytest.raises(ValueError) as err:
        validate_submission(sub, pd.read_csv(test_csv, dtype={"img_name": str}, keep_default_na=False))
    msg = str(err.value)
    assert "12 extra img_name(s)" in msg and "'extra09'" in msg and "'extra10'" not in msg
    assert "(and 2 more)" in msg
    assert "16 missing or non-finite mos" in msg


def test_validator_fails_on_all_nan_image(tmp_path, test_csv):
    table = pd.DataFrame(
        {"r1": [1.0, np.nan, 3.0, 4.0], "r2": [1.0, np.nan, 3.0, 4.0]},
        index=pd.Index(["j00", "0012", "NA", "x9"], name="img_name"),
    )
    with pytest.warns(RuntimeWarning):
        mos = ensemble(table)
    out = tmp_path / "submission.csv"
    with pytest.raises(ValueError, match=r"(?s)non-finite mos value\(s\), for: \['0012'\].*Nothing was written"):
        write_submission(table.index, mos, out)  # the kit never writes it
    assert not out.exists()
    pd.DataFrame({"img_name": table.index, "mos": np.asarray(mos), "comments": ""}).to_csv(out, index=False)  # by hand
    with pytest.raises(ValueError, match=r"non-finite mos value\(s\), for: \['0012'\]"):
        validate_submission(out, test_csv)
