"""Combine per-checkpoint predictions and write the submission (SPEC §5).

The team's ensemble takes, per test image, its predictions from every run,
drops Tukey outliers (outside Q1 - 1.5 IQR .. Q3 + 1.5 IQR, bounds excluded)
and averages the rest. Here that is one vectorised pass over an
(images x runs) table instead of a per-image loop.
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


ENSEMBLE_METHODS = {"iqr": iqr_mean, "mean": plain_mean}


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


def ensemble(pred_table: pd.DataFrame, method: str = "iqr") -> pd.Series:
    """Combine the runs of a :func:`load_predictions` table into one MOS per image.

    Args:
        pred_table: (images, runs) table indexed by img_name.
        method: ``"iqr"`` (the team's outlier-filtered mean) or ``"mean"``.

    Returns:
        Series named ``mos`` with the table's index.
    """
    if method not in ENSEMBLE_METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(ENSEMBLE_METHODS)}")
    return pd.Series(ENSEMBLE_METHODS[method](pred_table), index=pred_table.index, name="mos")


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


def oof_scores(outputs: Outputs, run_names: Sequence[str]) -> pd.DataFrame:
    """Out-of-fold PLCC / SRCC / challenge score of each run, each resolution (its folds'
    oof.csv together) and the ensemble across resolutions (mean and IQR-filtered mean of the
    resolutions' predictions, on the images every resolution predicted)."""
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
