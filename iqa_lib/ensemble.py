"""Combine per-checkpoint predictions and write the submission (SPEC §5).

The team's ensemble takes, per test image, its predictions from every run,
drops Tukey outliers (outside Q1 - 1.5 IQR .. Q3 + 1.5 IQR, bounds excluded)
and averages the rest. Here that is one vectorised pass over an
(images x runs) table instead of a per-image loop.

Beside it, an ensemble weighted on the out-of-fold predictions
(:func:`oof_weights`, :func:`weighted_ensemble`): one non-negative weight per
resolution plus an intercept, fitted by least squares to the training MOS.
:data:`METHODS` names every method :func:`ensemble` and 05_ensemble accept.
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
from .config import Outputs
from .metrics import all_metrics

PathLike = str | os.PathLike
SUBMISSION_COLUMNS = ["img_name", "mos", "comments"]


def _as_matrix(preds: Any) -> np.ndarray:
    """(images, runs) float64 copy of ``preds`` with every non-finite value set to NaN."""
    # C order: row sums then add in the same order whatever the input layout (a DataFrame
    # converts column-major), so arrays and tables give bit-identical results.
    x = np.array(preds, dtype=np.float64, order="C")
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"preds must be 2-D (images, runs) with at least one run, got shape {x.shape}")
    # An inf prediction is as broken as a NaN one: both are "no prediction from this run".
    x[~np.isfinite(x)] = np.nan
    no_pred = np.isnan(x).all(axis=1)
    if no_pred.any():
        warnings.warn(
            f"{int(no_pred.sum())} image(s) have no finite prediction; their ensemble value is NaN",
            RuntimeWarning,
            stacklevel=3,
        )
    return x


def _row_quantiles(x: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """Per-row quantiles ignoring NaN, by numpy's default "linear" method (which pandas uses).

    Vectorised by hand because ``np.nanquantile`` along an axis runs a Python
    loop over rows. Returns shape (len(qs), rows); a row with no value gives NaN.
    """
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
    """Per image, the mean of its predictions strictly inside the Tukey fences.

    Q1 and Q3 are linear-interpolation quantiles (as pandas ``quantile``);
    values ``v`` with ``Q1 - 1.5*IQR < v < Q3 + 1.5*IQR`` are averaged. When
    no value is kept, which happens when IQR is 0 and so the open interval is
    empty (e.g. all runs agree), the median is returned instead of NaN: for
    identical predictions that is the common value. NaN (and inf) predictions
    are ignored per image; an image with none left gives NaN and a warning.

    Args:
        preds: array-like or DataFrame of shape (images, runs).

    Returns:
        float64 array of shape (images,).
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
    """Per image, the mean of its finite predictions (NaN if it has none)."""
    x = _as_matrix(preds)
    n = (~np.isnan(x)).sum(axis=1)
    total = np.nansum(x, axis=1)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


ENSEMBLE_METHODS = {"iqr": iqr_mean, "mean": plain_mean}  # per image, nothing fitted
OOF_WEIGHTED = "oof_weighted"  # per-resolution weights fitted on the out-of-fold predictions
METHODS = (*ENSEMBLE_METHODS, OOF_WEIGHTED)  # every `method` of ensemble() and 05_ensemble.ipynb


def _read_csv(path: PathLike) -> pd.DataFrame:
    """Read a CSV keeping image names verbatim (e.g. ``0012`` or ``NA`` stay strings)."""
    return pd.read_csv(path, dtype={"img_name": str}, keep_default_na=False)


def _first(items: Sequence[Any], n: int = 10) -> str:
    """Short listing for error messages: the first ``n`` items and how many in all."""
    items = list(items)
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return f"{items[:n]}{more}"


def load_predictions(paths_or_dict: Sequence[PathLike] | Mapping[str, PathLike]) -> pd.DataFrame:
    """Read prediction CSVs (``img_name,mos``) into one wide table.

    Args:
        paths_or_dict: CSV paths (each run is named by its file stem, e.g.
            ``448_fold1``) or a mapping ``{run name: path}``.

    Returns:
        DataFrame indexed by ``img_name`` in the first file's order, one float
        column of MOS predictions per run. Empty cells become NaN.

    Raises:
        ValueError: no files, two runs with the same name, or a file that
            lacks a column, has non-numeric MOS, or has missing, extra or
            duplicated image names compared with the first file.
    """
    if isinstance(paths_or_dict, (str, os.PathLike)):  # one path, not a sequence of characters
        paths_or_dict = [paths_or_dict]
    if isinstance(paths_or_dict, Mapping):
        runs = {str(name): Path(p) for name, p in paths_or_dict.items()}
    else:
        paths = [Path(p) for p in paths_or_dict]
        stems = [p.stem for p in paths]
        repeated = sorted({s for s in stems if stems.count(s) > 1})
        if repeated:
            raise ValueError(f"runs must have distinct file stems; repeated: {repeated}")
        runs = dict(zip(stems, paths))
    if not runs:
        raise ValueError("no prediction files given")

    read = {name: _read_run(path) for name, path in runs.items()}
    first_path, first_names = next(iter(runs.values())), next(iter(read.values())).index
    table = {}
    for name, path in runs.items():
        run = read[name]
        missing = first_names.difference(run.index, sort=False)
        extra = run.index.difference(first_names, sort=False)
        if len(missing) or len(extra):
            raise ValueError(
                f"{path}: img_names differ from the first file ({first_path}): "
                f"{len(missing)} missing {_first(missing)}, {len(extra)} extra {_first(extra)}"
            )
        table[name] = run.reindex(first_names)
    return pd.DataFrame(table, index=first_names)


def _read_run(path: Path) -> pd.Series:
    """One prediction file as a float Series indexed by (unique) img_name."""
    df = _read_csv(path)
    missing_cols = [c for c in ("img_name", "mos") if c not in df.columns]
    if missing_cols:
        raise ValueError(f"{path}: missing column(s) {missing_cols}; columns present: {list(df.columns)}")
    try:
        mos = pd.to_numeric(df["mos"].replace("", np.nan)).astype(np.float64)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: column 'mos' is not numeric ({err})") from err
    names = pd.Index(df["img_name"], name="img_name")
    dup = names[names.duplicated()].unique()
    if len(dup):
        raise ValueError(f"{path}: {len(dup)} duplicated img_name(s): {_first(dup)}")
    return pd.Series(mos.to_numpy(), index=names)


def ensemble(pred_table: pd.DataFrame, method: str = "iqr", weights: Any = None) -> pd.Series:
    """Combine the runs of a :func:`load_predictions` table into one MOS per image.

    Args:
        pred_table: (images, runs) table indexed by img_name.
        method: one of :data:`METHODS`: ``"iqr"`` (the team's outlier-filtered mean),
            ``"mean"``, or ``"oof_weighted"`` (:func:`weighted_ensemble`, which needs
            ``weights``).
        weights: for ``"oof_weighted"`` only: :func:`oof_weights` of these runs.

    Returns:
        Series named ``mos`` with the table's index.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")
    if method == OOF_WEIGHTED:
        if weights is None:
            raise ValueError(f"method {OOF_WEIGHTED!r} needs weights: pass weights=oof_weights(outputs, "
                             f"list(pred_table.columns)), fitted on these runs' oof.csv")
        return weighted_ensemble(pred_table, weights).rename("mos")
    if weights is not None:
        raise ValueError(f"weights are used by method {OOF_WEIGHTED!r} only, not {method!r}: drop them or "
                         f"use method={OOF_WEIGHTED!r}")
    return pd.Series(ENSEMBLE_METHODS[method](pred_table), index=pred_table.index, name="mos")


# --------------------------------------------------------------------------------------------
# the ensemble weighted on out-of-fold predictions
# --------------------------------------------------------------------------------------------
INTERCEPT = "intercept"


def _split_run_name(name: Any) -> tuple[str, int]:
    """'448_fold1' -> ('448', 1); a ValueError for anything else."""
    res, sep, fold = str(name).partition("_fold")
    if not sep or not res.isdigit() or not fold.isdigit():
        raise ValueError(f"run name {name!r} is not of the form '{{res}}_fold{{k}}' (e.g. '448_fold1'): "
                         "the weighted ensemble groups runs by resolution by their names")
    return str(int(res)), int(fold)


def _by_resolution(run_names: Sequence[Any]) -> dict[str, list[tuple[Any, int]]]:
    """{res: [(run name, fold), ...]} in the order the resolutions first appear."""
    groups: dict[str, list[tuple[Any, int]]] = {}
    for name in run_names:
        res, fold = _split_run_name(name)
        groups.setdefault(res, []).append((name, fold))
    return groups


def _read_oof(path: Path) -> pd.DataFrame:
    """A run's oof.csv (img_name, mos, pred) with numeric mos and pred."""
    df = _read_csv(path)
    missing_cols = [c for c in ("img_name", "mos", "pred") if c not in df.columns]
    if missing_cols:
        raise ValueError(f"{path}: missing column(s) {missing_cols}; columns present: {list(df.columns)}")
    for col in ("mos", "pred"):
        try:
            df[col] = pd.to_numeric(df[col].replace("", np.nan)).astype(np.float64)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: column {col!r} is not numeric ({err})") from err
    return df


def _check_weights(weights: Any) -> pd.Series:
    """`weights` (Series or mapping, resolutions may be int) as a float Series with str labels."""
    w = pd.Series(weights, dtype=np.float64)
    w.index = w.index.map(str)
    if INTERCEPT not in w.index or len(w) < 2:
        raise ValueError(f"weights need one entry per resolution and an {INTERCEPT!r} entry (as oof_weights "
                         f"returns), got {w.to_dict()}")
    if not np.isfinite(w.to_numpy()).all():
        raise ValueError(f"weights must be finite numbers, got {w.to_dict()}")
    return w


def _weighted_sum(means: pd.DataFrame, weights: Any, runs: Mapping[str, Sequence[Any]]) -> np.ndarray:
    """sum_r w_r * means[r] + intercept; `means` has one column per resolution (str)."""
    w = _check_weights(weights)
    resolutions = [r for r in w.index if r != INTERCEPT]
    unweighted = [r for r in means.columns if r not in resolutions]
    if unweighted:
        raise ValueError(f"no weight for resolution(s) {unweighted} (runs {[n for r in unweighted for n in runs[r]]}); "
                         f"the weights cover {resolutions}: fit them on these runs, "
                         f"oof_weights(outputs, list(pred_table.columns))")
    absent = [r for r in resolutions if r not in means.columns]
    if absent:
        raise ValueError(f"the weights give resolution(s) {absent} a weight but there is no run of them here "
                         f"(resolutions {list(means.columns)}): fit the weights on the runs you combine")
    x = means[resolutions].to_numpy(dtype=np.float64)
    return x @ w[resolutions].to_numpy() + w[INTERCEPT]


def oof_weights(outputs: Outputs, run_names: Sequence[str]) -> pd.Series:
    """Per-resolution ensemble weights fitted on the runs' out-of-fold predictions.

    The runs (named ``{res}_fold{k}``) are grouped by resolution. A resolution's
    out-of-fold prediction of a training image comes from the run whose
    validation fold holds it (its folds' ``oof.csv`` together: with every fold,
    each training image once). On the images every resolution covers, the MOS is
    fitted by least squares as ``sum_r w_r * pred_r + intercept`` with
    ``w_r >= 0`` and a free intercept (``scipy.optimize.lsq_linear``). With one
    resolution this is a linear recalibration of it.

    The fit sees the same predictions that :func:`oof_scores` scores it on, so
    its out-of-fold score is optimistic; test labels (a holdout) tell whether
    the weights carry over. Note also that a resolution's OOF prediction is one
    run's, while on the test set :func:`weighted_ensemble` weights the mean of
    its runs.

    Args:
        outputs: the output layout (``outputs.run(res, fold).oof``).
        run_names: the runs to combine, e.g. the columns of a prediction table.

    Returns:
        float Series named ``weight``, indexed by resolution (``"384"``,
        ``"448"``..., ascending) then ``"intercept"``;
        ``.attrs["images"]`` is the number of training images fitted on.

    Raises:
        ValueError: a run name not of the form ``{res}_fold{k}``, a missing or
            malformed ``oof.csv`` (the file is named), resolutions whose folds
            differ (so their images do not line up: the missing runs are named),
            or fewer common images than weights to fit.
    """
    groups = dict(sorted(_by_resolution(run_names).items(), key=lambda item: int(item[0])))
    if not groups:
        raise ValueError("no runs given: pass run names like '448_fold0' (e.g. the prediction table's columns)")
    files = {name: outputs.run(int(res), fold).oof for res, runs in groups.items() for name, fold in runs}
    missing = [f"{name} ({path})" for name, path in files.items() if not path.is_file()]
    if missing:
        raise ValueError(f"no out-of-fold predictions for {len(missing)} run(s): {_first(missing)}. Training "
                         "(notebooks/03_train.ipynb) writes a run's oof.csv at its best epoch: train or finish "
                         "those runs, or leave them out of the runs you combine")
    folds = {res: sorted({fold for _, fold in runs}) for res, runs in groups.items()}
    every = sorted(set().union(*map(set, folds.values())))
    lacking = {res: [k for k in every if k not in ks] for res, ks in folds.items() if ks != every}
    if lacking:
        raise ValueError("the resolutions' out-of-fold predictions do not cover the same training images: "
                         + "; ".join(f"resolution {res} lacks fold(s) {ks} (runs {[f'{res}_fold{k}' for k in ks]})"
                                     for res, ks in lacking.items())
                         + f". Combine runs with the same folds {every} at every resolution (train the missing "
                           "ones, or leave the extra folds out)")

    preds, mos = {}, None
    for res, runs in groups.items():
        oof = pd.concat([_read_oof(files[name]) for name, _ in runs]).drop_duplicates("img_name", keep="last")
        oof = oof.set_index("img_name")
        preds[res] = oof["pred"]
        mos = oof["mos"] if mos is None else mos
    table = pd.concat(preds, axis=1, join="inner")
    table = table.assign(_mos=mos.reindex(table.index)).replace([np.inf, -np.inf], np.nan).dropna()
    n_params = len(groups) + 1
    if len(table) <= n_params:
        raise ValueError(f"only {len(table)} training image(s) have a finite out-of-fold prediction at every "
                         f"resolution ({list(groups)}) and a MOS: too few to fit {n_params} weights. Check the "
                         f"runs' oof.csv files ({_first([str(p) for p in files.values()], 3)})")

    from scipy.optimize import lsq_linear

    a = np.column_stack([table[list(groups)].to_numpy(dtype=np.float64), np.ones(len(table))])
    lower = np.r_[np.zeros(len(groups)), -np.inf]
    fit = lsq_linear(a, table["_mos"].to_numpy(dtype=np.float64), bounds=(lower, np.full(n_params, np.inf)))
    weights = pd.Series(fit.x, index=pd.Index([*groups, INTERCEPT]), name="weight")
    weights.attrs["images"] = len(table)
    return weights


def weighted_ensemble(pred_table: pd.DataFrame, weights: Any) -> pd.Series:
    """Per image, ``sum_r w_r * mean_r + intercept``: ``mean_r`` the plain mean of the
    predictions of resolution ``r``'s runs (the columns ``{r}_fold{k}``).

    Args:
        pred_table: (images, runs) table indexed by img_name, columns named ``{res}_fold{k}``.
        weights: :func:`oof_weights`' Series (or a mapping ``{res: weight, "intercept": b}``).

    Returns:
        Series named ``mos`` with the table's index.

    Raises:
        ValueError: a column not named ``{res}_fold{k}``, a resolution without a
            weight, or a weighted resolution without any column.
    """
    groups = _by_resolution(pred_table.columns)
    if not groups:
        raise ValueError("pred_table has no runs")
    names = {res: [name for name, _ in runs] for res, runs in groups.items()}
    means = pd.DataFrame({res: plain_mean(pred_table[cols]) for res, cols in names.items()}, index=pred_table.index)
    return pd.Series(_weighted_sum(means, weights, names), index=pred_table.index, name="mos")


def write_submission(
    img_names_in_test_order: Sequence[str],
    mos: Any,
    path: PathLike,
    comments: str | Sequence[str] = "",
) -> None:
    """Write ``img_name,mos,comments`` rows in test order, atomically.

    Args:
        img_names_in_test_order: the test images, in ``test.csv`` order.
        mos: one prediction per image. A ``pd.Series`` with a non-default
            index (such as :func:`ensemble`'s output, indexed by img_name) is
            aligned by label; anything else is taken in the given order.
        path: output CSV; missing parent folders are created.
        comments: one string for every row, or one per row.

    The file is written to a temporary file in the same folder and then
    renamed over ``path``, so an interrupted run never leaves a half-written
    submission. Check the result with :func:`validate_submission`.
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

    atomic_write_text(path, sub.to_csv(index=False))


def save_submission(outputs: Outputs, img_names_in_test_order: Sequence[str], mos: Any,
                    runs: Sequence[str]) -> Path:
    """`write_submission` to `outputs.submission`, recording which runs it combines. When the
    submission in place combined more runs (or is of unknown make), it is kept first as
    `submission.prev.csv`: a grid that lost some predictions never silently replaces a fuller one."""
    old = None
    if outputs.submission_runs.is_file():
        try:
            old = json.loads(outputs.submission_runs.read_text())
        except ValueError:
            old = None
    if outputs.submission.is_file() and (old is None or len(runs) < len(old)):
        atomic_write_text(outputs.submission_prev, outputs.submission.read_text())
        print(f"kept the previous submission ({len(old) if old else 'an unknown number of'} runs) as "
              f"{outputs.submission_prev}: this one combines {len(runs)}.")
    write_submission(img_names_in_test_order, mos, outputs.submission)
    atomic_write_text(outputs.submission_runs, json.dumps(sorted(runs)) + "\n")
    return outputs.submission


def validate_submission(
    sub_df_or_path: pd.DataFrame | PathLike, test_df_or_path: pd.DataFrame | PathLike
) -> None:
    """Check a submission against the test list; raise one ValueError listing every problem.

    Checks: columns exactly ``img_name,mos,comments``; no missing, extra or
    duplicated img_names; every mos a finite number; rows in test order.
    Each list in the message shows at most its first 10 entries.
    """
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
        if len(missing):
            problems.append(f"{len(missing)} missing img_name(s): {_first(missing)}")
        if len(extra):
            problems.append(f"{len(extra)} extra img_name(s): {_first(extra)}")
        if len(dup):
            problems.append(f"{len(dup)} duplicated img_name(s): {_first(dup)}")
        # Order only means something once the two name lists are the same set, once each.
        if not (len(missing) or len(extra) or len(dup)):
            wrong = np.flatnonzero(names.to_numpy() != expected.to_numpy())
            if len(wrong):
                problems.append(
                    f"{len(wrong)} row(s) out of test order, first at positions {_first(wrong.tolist())}"
                )
        if "mos" in sub.columns:
            mos = pd.to_numeric(sub["mos"].replace("", np.nan), errors="coerce").to_numpy(dtype=np.float64)
            bad = names[~np.isfinite(mos)]
            if len(bad):
                problems.append(f"{len(bad)} missing or non-finite mos value(s), for: {_first(bad)}")
    if problems:
        raise ValueError("invalid submission:\n- " + "\n- ".join(problems))


# --------------------------------------------------------------------------------------------
# scoring runs and ensembles
# --------------------------------------------------------------------------------------------
def _scores(pred: Any, truth: Any) -> dict[str, float]:
    return {k: round(v, 4) for k, v in all_metrics(np.asarray(pred, float), np.asarray(truth, float)).items()}


def oof_scores(outputs: Outputs, run_names: Sequence[str], weights: Any = None) -> pd.DataFrame:
    """Out-of-fold PLCC / SRCC / challenge score of each run, each resolution (its folds'
    oof.csv together) and the ensemble across resolutions (mean and IQR-filtered mean of the
    resolutions' predictions, on the images every resolution predicted). With `weights`
    (:func:`oof_weights`), a row for the weighted sum too, marked "(in-sample)": its weights
    were fitted on these very predictions, so its score is optimistic."""
    rows, by_res = [], {}
    for name in run_names:
        path = outputs.run(*map(int, name.split("_fold"))).oof
        if not path.is_file():
            continue
        oof = pd.read_csv(path, dtype={"img_name": str})
        rows.append({"level": "run", "name": name, "runs": 1, "images": len(oof), **_scores(oof["pred"], oof["mos"])})
        by_res.setdefault(int(name.split("_fold")[0]), []).append(oof)
    per_res = {}
    for res, parts in sorted(by_res.items()):
        oof = pd.concat(parts).drop_duplicates("img_name", keep="last")
        per_res[res] = oof.set_index("img_name")
        rows.append({"level": "resolution", "name": str(res), "runs": len(parts), "images": len(oof),
                     **_scores(oof["pred"], oof["mos"])})
    if per_res:
        table = pd.concat({res: df["pred"] for res, df in per_res.items()}, axis=1, join="inner")
        if len(table):
            mos = next(iter(per_res.values()))["mos"].reindex(table.index)
            for label, fn in (("mean", plain_mean), ("iqr", iqr_mean)):
                rows.append({"level": "ensemble", "name": f"{label} over {len(per_res)} resolution(s)",
                             "runs": sum(len(p) for p in by_res.values()), "images": len(table),
                             **_scores(fn(table), mos)})
            if weights is not None:
                means = table.rename(columns=str)
                fitted = _weighted_sum(means, weights, {r: [n for n in run_names if n.startswith(f"{r}_fold")]
                                                        for r in means.columns})
                rows.append({"level": "ensemble",
                             "name": f"{OOF_WEIGHTED} over {len(per_res)} resolution(s) (in-sample)",
                             "runs": sum(len(p) for p in by_res.values()), "images": len(table),
                             **_scores(fitted, mos)})
    return pd.DataFrame(rows)


def label_scores(columns: Mapping[str, pd.Series], labels: pd.DataFrame) -> pd.DataFrame:
    """Scores of test predictions ({name: Series indexed by img_name}) against true MOS
    (`labels`: img_name, mos), e.g. a holdout's test_labels.csv."""
    truth = labels.drop_duplicates("img_name").set_index("img_name")["mos"]
    rows = []
    for name, pred in columns.items():
        both = pd.concat({"pred": pred, "mos": truth}, axis=1, join="inner").dropna()
        rows.append({"name": name, "images": len(both), **_scores(both["pred"], both["mos"])})
    return pd.DataFrame(rows).set_index("name")
