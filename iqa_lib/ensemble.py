"""Combine per-run test predictions into one MOS per image, and write the submission (SPEC §5).

Three ways to combine, named in METHODS:
- "iqr": the team's ensemble. Per image, drop the runs outside the Tukey fences
  (Q1 - 1.5 IQR .. Q3 + 1.5 IQR, bounds excluded) and average the rest. It is one
  vectorised pass over the (images x runs) table, not a per-image loop.
- "mean": the plain mean of the runs.
- "oof_weighted": one non-negative weight per resolution plus an intercept, fitted by
  least squares on the runs' out-of-fold predictions (oof_weights, weighted_ensemble).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .checkpoint import atomic_write_text
from .config import Outputs, parse_run_name, read_json, run_name
from .metrics import all_metrics

PathLike = str | os.PathLike
SUBMISSION_COLUMNS = ["img_name", "mos", "comments"]
INTERCEPT = "intercept"  # the entry of the OOF weights that is not a resolution


# --------------------------------------------------------------------------------------------
# per image: the IQR-filtered mean and the plain mean
# --------------------------------------------------------------------------------------------
def _as_matrix(preds: Any) -> np.ndarray:
    """(images, runs) float64 copy of `preds`, every non-finite value set to NaN."""
    # C order: row sums then add in the same order whatever the input layout (a DataFrame
    # converts column-major), so arrays and tables give bit-identical results.
    x = np.array(preds, dtype=np.float64, order="C")
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"preds must be 2-D (images, runs) with at least one run, got shape {x.shape}")
    # An inf prediction is as broken as a NaN one: both are "no prediction from this run".
    x[~np.isfinite(x)] = np.nan
    no_pred = np.isnan(x).all(axis=1)
    if no_pred.any():
        warnings.warn(f"{int(no_pred.sum())} image(s) have no finite prediction; their ensemble value is NaN",
                      RuntimeWarning, stacklevel=3)
    return x


def _row_quantiles(x: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """Per-row quantiles ignoring NaN, by numpy's default "linear" method (which pandas uses);
    shape (len(qs), rows). By hand, because np.nanquantile loops over the rows in Python."""
    s = np.sort(x, axis=1)  # NaN sorts to the end of each row
    last = np.maximum((~np.isnan(x)).sum(axis=1) - 1, 0)[:, None]
    pos = last * np.asarray(qs, dtype=np.float64)[None, :]  # fractional index into the sorted values
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, last)
    t = pos - lo
    rows = np.arange(len(x))[:, None]
    a, b = s[rows, lo], s[rows, hi]
    # Interpolate from the nearer end, exactly as numpy does, so the fences match to the bit.
    return np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t).T


def iqr_mean(preds: Any) -> np.ndarray:
    """Per image (row of `preds`, images x runs), the mean of its predictions strictly inside
    the Tukey fences Q1 - 1.5 IQR .. Q3 + 1.5 IQR.

    When the fences keep nothing (IQR 0, e.g. all runs agree) the median is returned: for
    identical predictions, the common value. NaN and inf predictions are ignored; an image
    with none left gives NaN and a RuntimeWarning.
    """
    x = _as_matrix(preds)
    q1, med, q3 = _row_quantiles(x, [0.25, 0.5, 0.75])
    iqr = q3 - q1
    # Comparisons with NaN are False, so missing predictions drop out of `keep` by themselves.
    keep = (x > (q1 - 1.5 * iqr)[:, None]) & (x < (q3 + 1.5 * iqr)[:, None])
    n_kept = keep.sum(axis=1)
    total = np.where(keep, x, 0.0).sum(axis=1)
    return np.where(n_kept > 0, total / np.maximum(n_kept, 1), med)


def plain_mean(preds: Any) -> np.ndarray:
    """Per image, the mean of its finite predictions (NaN, with a warning, if it has none)."""
    x = _as_matrix(preds)
    n = (~np.isnan(x)).sum(axis=1)
    return np.where(n > 0, np.nansum(x, axis=1) / np.maximum(n, 1), np.nan)


ENSEMBLE_METHODS = {"iqr": iqr_mean, "mean": plain_mean}  # per image, nothing fitted
OOF_WEIGHTED = "oof_weighted"
METHODS = (*ENSEMBLE_METHODS, OOF_WEIGHTED)  # every `method` of ensemble() and 05_ensemble.ipynb


def ensemble(pred_table: pd.DataFrame, method: str = "iqr", weights: Any = None) -> pd.Series:
    """One MOS per image (a Series named "mos") from a load_predictions table, by one of METHODS.
    "oof_weighted" needs `weights` (oof_weights of these runs); the others take none."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")
    if method == OOF_WEIGHTED:
        if weights is None:
            raise ValueError(f"method {OOF_WEIGHTED!r} needs weights: pass weights=oof_weights(outputs, "
                             f"list(pred_table.columns)), fitted on these runs' oof.csv")
        return weighted_ensemble(pred_table, weights)
    if weights is not None:
        raise ValueError(f"weights are used by method {OOF_WEIGHTED!r} only, not {method!r}: drop them or "
                         f"use method={OOF_WEIGHTED!r}")
    return pd.Series(ENSEMBLE_METHODS[method](pred_table), index=pred_table.index, name="mos")


# --------------------------------------------------------------------------------------------
# prediction files in, submission out
# --------------------------------------------------------------------------------------------
def _read_csv(path: PathLike, columns: Sequence[str] = ()) -> pd.DataFrame:
    """A CSV with image names kept verbatim ("0012", "NA" stay strings). Each of `columns` must
    be there; those other than img_name are read as floats (an empty cell is NaN)."""
    try:
        df = pd.read_csv(path, dtype={"img_name": str}, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        raise ValueError(f"{path}: not a readable CSV ({err}): rewrite it with the step that made it") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; columns present: {list(df.columns)}")
    for col in columns:
        if col != "img_name":
            try:
                df[col] = pd.to_numeric(df[col].replace("", np.nan)).astype(np.float64)
            except (ValueError, TypeError) as err:
                raise ValueError(f"{path}: column {col!r} is not numeric ({err})") from err
    return df


def _first(items: Sequence[Any], n: int = 10) -> str:
    """Short listing for error messages: the first `n` items and how many more."""
    items = list(items)
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return f"{items[:n]}{more}"


def load_predictions(paths_or_dict: Sequence[PathLike] | Mapping[str, PathLike] | PathLike) -> pd.DataFrame:
    """Read prediction CSVs (img_name,mos) into one table: a float column per run, indexed by
    img_name in the first file's order. A run is named by its file's stem (448_fold1.csv ->
    "448_fold1") or by its key in a {run name: path} mapping. A file that lacks a column, has a
    non-numeric MOS, or other or duplicated image names than the first file is refused, named."""
    if isinstance(paths_or_dict, (str, os.PathLike)):  # one path, not a sequence of characters
        paths_or_dict = [paths_or_dict]
    if isinstance(paths_or_dict, Mapping):
        files = {str(name): Path(p) for name, p in paths_or_dict.items()}
    else:
        paths = [Path(p) for p in paths_or_dict]
        stems = [p.stem for p in paths]
        repeated = sorted({s for s in stems if stems.count(s) > 1})
        if repeated:
            raise ValueError(f"runs must have distinct file stems; repeated: {repeated}")
        files = dict(zip(stems, paths))
    if not files:
        raise ValueError("no prediction files given")

    columns = {}
    for name, path in files.items():
        df = _read_csv(path, ["img_name", "mos"])
        images = pd.Index(df["img_name"], name="img_name")
        dup = images[images.duplicated()].unique()
        if len(dup):
            raise ValueError(f"{path}: {len(dup)} duplicated img_name(s): {_first(dup)}")
        if not columns:  # the first file sets the image order the others must match
            first_path, index = path, images
        missing, extra = index.difference(images, sort=False), images.difference(index, sort=False)
        if len(missing) or len(extra):
            raise ValueError(f"{path}: img_names differ from the first file ({first_path}): "
                             f"{len(missing)} missing {_first(missing)}, {len(extra)} extra {_first(extra)}")
        columns[name] = pd.Series(df["mos"].to_numpy(), index=images).reindex(index)
    return pd.DataFrame(columns, index=index)


def write_submission(img_names_in_test_order: Sequence[str], mos: Any, path: PathLike,
                     comments: str | Sequence[str] = "") -> None:
    """Write img_name,mos,comments rows in test order, atomically (a temporary file renamed over
    `path`: an interrupted run never leaves half a submission), once `validate_submission` passes.

    `mos`: one value per image. A Series with a non-default index (such as ensemble()'s, indexed
    by img_name) is aligned by name; anything else is taken in the given order.
    `comments`: one string for every row, or one per row.
    """
    names = pd.Index(img_names_in_test_order, name="img_name")
    if isinstance(mos, pd.Series) and not mos.index.equals(pd.RangeIndex(len(mos))):
        if mos.index.has_duplicates:
            raise ValueError("mos is indexed by img_name but its index has duplicates")
        absent = names.difference(mos.index, sort=False)
        if len(absent):
            raise ValueError(f"mos has no value for {len(absent)} test image(s): {_first(absent)}")
        values = mos.reindex(names).to_numpy(dtype=np.float64)
    else:
        values = np.asarray(mos, dtype=np.float64).reshape(-1)
        if len(values) != len(names):
            raise ValueError(f"got {len(values)} mos values for {len(names)} test images")
    sub = pd.DataFrame({"img_name": names, "mos": values, "comments": comments})
    try:  # checked before writing: an invalid submission never replaces the one in place
        validate_submission(sub, pd.DataFrame({"img_name": names}))
    except ValueError as e:
        raise ValueError(f"{e}\nNothing was written ({path} is as it was).") from None
    atomic_write_text(path, sub.to_csv(index=False))


def save_submission(outputs: Outputs, img_names_in_test_order: Sequence[str], mos: Any,
                    runs: Sequence[str]) -> Path:
    """write_submission to outputs.submission, recording which runs it combines. When the
    submission in place combined more runs (or is of unknown make), it is kept first as
    submission.prev.csv, unless that file already holds one of at least as many runs: a grid that
    lost some predictions never silently replaces a fuller one."""
    old = read_json(outputs.submission_runs)  # None: no record, or an unreadable one
    previous = None  # the submission in place, to keep aside once the new one is written
    if outputs.submission.is_file() and (old is None or len(runs) < len(old)):
        kept = read_json(outputs.submission_prev_runs) if outputs.submission_prev.is_file() else None
        if kept is not None and old is not None and len(kept) >= len(old):
            print(f"{outputs.submission_prev} ({len(kept)} runs) stays the previous submission: this one combines "
                  f"{len(runs)}, the one it replaces {len(old)}.")
        else:
            previous = outputs.submission.read_text()
    write_submission(img_names_in_test_order, mos, outputs.submission)  # validated first: raises, nothing changed
    if previous is not None:
        atomic_write_text(outputs.submission_prev, previous)
        atomic_write_text(outputs.submission_prev_runs, json.dumps(old and sorted(old)) + "\n")
        print(f"kept the previous submission ({len(old) if old else 'an unknown number of'} runs) as "
              f"{outputs.submission_prev}: this one combines {len(runs)}.")
    atomic_write_text(outputs.submission_runs, json.dumps(sorted(runs)) + "\n")
    return outputs.submission


def validate_submission(sub_df_or_path: pd.DataFrame | PathLike,
                        test_df_or_path: pd.DataFrame | PathLike) -> None:
    """Check a submission against the test list; raise one ValueError listing every problem:
    columns other than img_name,mos,comments; missing, extra or duplicated img_names; a mos that
    is not a finite number; rows out of test order. Each list shows at most 10 entries."""
    sub = sub_df_or_path if isinstance(sub_df_or_path, pd.DataFrame) else _read_csv(sub_df_or_path)
    test = test_df_or_path if isinstance(test_df_or_path, pd.DataFrame) else _read_csv(test_df_or_path)
    if "img_name" not in test.columns:
        raise ValueError(f"test table has no 'img_name' column; columns present: {list(test.columns)}")
    if test["img_name"].duplicated().any():
        raise ValueError("test table has duplicated img_names; cannot define the expected order")

    problems = []
    if list(sub.columns) != SUBMISSION_COLUMNS:
        problems.append(f"columns must be {SUBMISSION_COLUMNS}, got {list(sub.columns)}")
    if "img_name" in sub.columns:
        names, expected = pd.Index(sub["img_name"]), pd.Index(test["img_name"])
        missing = expected.difference(names, sort=False)
        extra = names.difference(expected, sort=False)
        dup = names[names.duplicated()].unique()
        for what, items in (("missing", missing), ("extra", extra), ("duplicated", dup)):
            if len(items):
                problems.append(f"{len(items)} {what} img_name(s): {_first(items)}")
        # Order only means something once the two name lists are the same set, once each.
        if not (len(missing) or len(extra) or len(dup)):
            wrong = np.flatnonzero(names.to_numpy() != expected.to_numpy())
            if len(wrong):
                problems.append(f"{len(wrong)} row(s) out of test order, "
                                f"first at positions {_first(wrong.tolist())}")
        if "mos" in sub.columns:
            mos = pd.to_numeric(sub["mos"].replace("", np.nan), errors="coerce").to_numpy(dtype=np.float64)
            bad = names[~np.isfinite(mos)]
            if len(bad):
                problems.append(f"{len(bad)} missing or non-finite mos value(s), for: {_first(bad)}")
    if problems:
        raise ValueError("invalid submission:\n- " + "\n- ".join(problems))


# --------------------------------------------------------------------------------------------
# the ensemble weighted on out-of-fold predictions
# --------------------------------------------------------------------------------------------
def _by_resolution(run_names: Sequence[Any]) -> dict[str, dict[int, Any]]:
    """{res: {fold: run name}} of names like '448_fold1', resolutions ascending ('384', '448'...)."""
    groups: dict[int, dict[int, Any]] = {}
    for name in run_names:
        res, fold = parse_run_name(name)
        groups.setdefault(res, {})[fold] = name
    return {str(res): groups[res] for res in sorted(groups)}


def _read_oofs(outputs: Outputs, groups: Mapping[str, Mapping[int, Any]]) -> tuple[dict, list[str]]:
    """Each resolution's out-of-fold predictions: its runs' oof.csv together (img_name, mos, pred,
    and "run": the run's name), indexed by img_name; and "name (path)" of the runs without one."""
    found, missing = {}, []
    for res, runs in groups.items():
        parts = []
        for fold, name in runs.items():
            path = outputs.run(int(res), fold).oof
            if path.is_file():
                parts.append(_read_csv(path, ["img_name", "mos", "pred"]).assign(run=name))
            else:
                missing.append(f"{name} ({path})")
        if parts:  # the folds are disjoint; an image in two of them counts once, from the last
            found[res] = pd.concat(parts).drop_duplicates("img_name", keep="last").set_index("img_name")
    return found, missing


def _across_resolutions(oofs: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """On the images every resolution predicted: a column of predictions per resolution, and "mos"."""
    table = pd.concat({res: oof["pred"] for res, oof in oofs.items()}, axis=1, join="inner")
    return table.assign(mos=next(iter(oofs.values()))["mos"].reindex(table.index))


def _weighted_sum(means: pd.DataFrame, weights: Any, groups: Mapping[str, Mapping[int, Any]]) -> np.ndarray:
    """sum_r w_r * means[r] + intercept over the resolutions r (the columns of `means`), which
    `weights` (oof_weights' Series, or a mapping {res: w, "intercept": b}) must match exactly.
    `groups` (as _by_resolution) names the runs in the error messages."""
    w = pd.Series(weights, dtype=np.float64).rename(str)
    if INTERCEPT not in w.index or len(w) < 2:
        raise ValueError(f"weights need one entry per resolution and an {INTERCEPT!r} entry (as oof_weights "
                         f"returns), got {w.to_dict()}")
    if not np.isfinite(w.to_numpy()).all():
        raise ValueError(f"weights must be finite numbers, got {w.to_dict()}")
    weighted = [r for r in w.index if r != INTERCEPT]
    unweighted = [r for r in means.columns if r not in weighted]
    if unweighted:
        runs = [name for r in unweighted for name in groups[r].values()]
        raise ValueError(f"no weight for resolution(s) {unweighted} (runs {runs}); the weights cover {weighted}: "
                         "fit them on these runs, oof_weights(outputs, list(pred_table.columns))")
    absent = [r for r in weighted if r not in means.columns]
    if absent:
        raise ValueError(f"the weights give resolution(s) {absent} a weight but there is no run of them here "
                         f"(resolutions {list(means.columns)}): fit the weights on the runs you combine")
    return means[weighted].to_numpy(dtype=np.float64) @ w[weighted].to_numpy() + w[INTERCEPT]


def oof_weights(outputs: Outputs, run_names: Sequence[str]) -> pd.Series:
    """Per-resolution ensemble weights fitted on the runs' out-of-fold predictions.

    A resolution's out-of-fold prediction of a training image is that of its run whose
    validation fold holds the image. On the images every resolution predicted, the MOS is
    fitted by least squares as sum_r w_r * pred_r + intercept with w_r >= 0 (one resolution:
    a linear recalibration). oof_scores scores the fit on the very predictions it saw, so
    optimistically; a holdout's test labels tell whether the weights carry over.

    Returns a Series named "weight": one entry per resolution ("384", "448"..., ascending),
    then "intercept"; .attrs["images"] is the number of training images fitted on.
    """
    groups = _by_resolution(run_names)
    if not groups:
        raise ValueError("no runs given: pass run names like '448_fold0' (e.g. the prediction table's columns)")
    # Every resolution needs the same folds, or their out-of-fold predictions cover other images.
    every = sorted({k for runs in groups.values() for k in runs})
    gaps = {res: [k for k in every if k not in runs] for res, runs in groups.items()}
    lacking = [f"resolution {res} lacks fold(s) {ks} (runs {[run_name(res, k) for k in ks]})"
               for res, ks in gaps.items() if ks]
    if lacking:
        raise ValueError(f"the resolutions' out-of-fold predictions do not cover the same training images: "
                         f"{'; '.join(lacking)}. Combine runs with the same folds {every} at every resolution "
                         "(train the missing ones, or leave the extra folds out)")
    oofs, missing = _read_oofs(outputs, groups)
    if missing:
        raise ValueError(f"no out-of-fold predictions for {len(missing)} run(s): {_first(missing)}. Training "
                         "(notebooks/03_train.ipynb) writes a run's oof.csv at its best epoch: train or finish "
                         "those runs, or leave them out of the runs you combine")

    table = _across_resolutions(oofs)
    table = table.replace([np.inf, -np.inf], np.nan).dropna()
    n_params = len(groups) + 1
    if len(table) <= n_params:
        raise ValueError(f"only {len(table)} training image(s) have a finite out-of-fold prediction at every "
                         f"resolution ({list(groups)}) and a MOS: too few to fit {n_params} weights. Check the "
                         f"runs' oof.csv files under {outputs.runs}")

    from scipy.optimize import lsq_linear

    a = np.column_stack([table[list(groups)].to_numpy(dtype=np.float64), np.ones(len(table))])
    lower = np.r_[np.zeros(len(groups)), -np.inf]  # the intercept is free
    fit = lsq_linear(a, table["mos"].to_numpy(dtype=np.float64), bounds=(lower, np.inf))
    weights = pd.Series(fit.x, index=[*groups, INTERCEPT], name="weight")
    weights.attrs["images"] = len(table)
    return weights


def weighted_ensemble(pred_table: pd.DataFrame, weights: Any) -> pd.Series:
    """Per image, sum_r w_r * mean_r + intercept, mean_r the plain mean of the runs of
    resolution r (the columns {r}_fold{k}), with oof_weights' `weights`. A Series named "mos"."""
    groups = _by_resolution(pred_table.columns)
    means = pd.DataFrame({res: plain_mean(pred_table[list(runs.values())]) for res, runs in groups.items()},
                         index=pred_table.index)
    return pd.Series(_weighted_sum(means, weights, groups), index=pred_table.index, name="mos")


# --------------------------------------------------------------------------------------------
# scoring runs and ensembles
# --------------------------------------------------------------------------------------------
def _scores(pred: Any, truth: Any) -> dict[str, float]:
    return {k: round(v, 4) for k, v in all_metrics(np.asarray(pred, float), np.asarray(truth, float)).items()}


def oof_scores(outputs: Outputs, run_names: Sequence[str], weights: Any = None) -> pd.DataFrame:
    """Out-of-fold PLCC / SRCC / challenge score of each run, each resolution (its folds' oof.csv
    together) and the ensembles across resolutions (mean and IQR mean of the resolutions'
    predictions, on the images every resolution predicted). Runs without an oof.csv are left out.
    With `weights` (oof_weights), a row for the weighted sum too, marked "(in-sample)": its
    weights were fitted on these very predictions, so its score is optimistic."""
    groups = _by_resolution(run_names)
    oofs, _ = _read_oofs(outputs, groups)
    rows = [{"level": "run", "name": name, "runs": 1, "images": len(run), **_scores(run["pred"], run["mos"])}
            for oof in oofs.values() for name, run in oof.groupby("run", sort=False)]
    rows += [{"level": "resolution", "name": res, "runs": oof["run"].nunique(), "images": len(oof),
              **_scores(oof["pred"], oof["mos"])} for res, oof in oofs.items()]
    table = _across_resolutions(oofs) if oofs else pd.DataFrame()
    if len(table):
        preds, over = table.drop(columns="mos"), f"over {len(oofs)} resolution(s)"
        combined = {f"mean {over}": plain_mean(preds), f"iqr {over}": iqr_mean(preds)}
        if weights is not None:
            combined[f"{OOF_WEIGHTED} {over} (in-sample)"] = _weighted_sum(preds, weights, groups)
        n_runs = sum(oof["run"].nunique() for oof in oofs.values())
        rows += [{"level": "ensemble", "name": name, "runs": n_runs, "images": len(table),
                  **_scores(pred, table["mos"])} for name, pred in combined.items()]
    return pd.DataFrame(rows)


def label_scores(columns: Mapping[str, pd.Series], labels: pd.DataFrame) -> pd.DataFrame:
    """Scores of test predictions ({name: Series indexed by img_name}) against the true MOS
    (`labels`: img_name, mos), e.g. a holdout's test_labels.csv."""
    truth = labels.drop_duplicates("img_name").set_index("img_name")["mos"]
    rows = []
    for name, pred in columns.items():
        both = pd.concat({"pred": pred, "mos": truth}, axis=1, join="inner").dropna()
        rows.append({"name": name, "images": len(both), **_scores(both["pred"], both["mos"])})
    return pd.DataFrame(rows).set_index("name")
