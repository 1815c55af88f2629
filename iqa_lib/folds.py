"""Deterministic, MOS-stratified K-fold split (SPEC §2).

The recipe: one row per image, sort by MOS descending (ties by image name),
then deal the sorted images round-robin into folds, so every fold covers the
whole MOS range evenly. Fold ``k`` is the validation set; the rest trains.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def make_folds(
    df: pd.DataFrame,
    n_folds: int = 5,
    mos_col: str = "mos",
    name_col: str = "img_name",
) -> pd.DataFrame:
    """Assign every image to one of ``n_folds`` folds.

    Args:
        df: annotation table, possibly with several rows per image (one per
            caption, as in the challenge's ``train.csv``).
        n_folds: number of folds, at least 2.
        mos_col: column holding the mean opinion score.
        name_col: column identifying an image.

    Returns:
        One row per image (the columns of its first row, minus ``comments``)
        plus an int ``fold`` column, ordered by MOS descending then name, with
        a fresh 0..n-1 index. The image at sorted position ``i`` is in fold
        ``i % n_folds``.

    Raises:
        ValueError: a column is missing, ``n_folds`` is invalid or exceeds the
            number of images, a MOS is missing or not finite, or one image has
            rows with different MOS values.
    """
    for col in (name_col, mos_col):
        if col not in df.columns:
            raise ValueError(f"column {col!r} not found; columns present: {list(df.columns)}")
    if not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    if not pd.api.types.is_numeric_dtype(df[mos_col]):
        raise ValueError(f"column {mos_col!r} must be numeric, got dtype {df[mos_col].dtype}")

    # A NaN MOS cannot be placed in a descending order, so it is a data error.
    bad = df.loc[~np.isfinite(df[mos_col].to_numpy(dtype=np.float64)), name_col]
    if len(bad):
        raise ValueError(
            f"{len(bad)} row(s) have a missing or non-finite {mos_col!r}: "
            f"{bad.unique()[:10].tolist()}"
        )

    # Caption rows must agree on the score; otherwise which one is right is unknowable.
    n_values = df.groupby(name_col, sort=True)[mos_col].nunique()
    conflicting = n_values[n_values > 1].index
    if len(conflicting):
        groups = df[df[name_col].isin(conflicting)].groupby(name_col, sort=True)[mos_col]
        details = [
            f"{name!r} ({len(rows)} rows, {rows.nunique()} values: {sorted(rows.unique().tolist())})"
            for name, rows in groups
        ]
        raise ValueError(
            f"{len(conflicting)} image(s) have conflicting {mos_col!r} values: " + "; ".join(details)
        )

    images = df.drop_duplicates(subset=name_col, keep="first").drop(columns="comments", errors="ignore")
    if n_folds > len(images):
        raise ValueError(f"n_folds={n_folds} exceeds the number of unique images ({len(images)})")

    # (MOS, name) is unique after de-duplication, so this order is total and reproducible.
    images = images.sort_values([mos_col, name_col], ascending=[False, True], kind="stable")
    images = images.reset_index(drop=True)
    images["fold"] = np.arange(len(images), dtype=np.int64) % n_folds
    return images


def fold_split(folds_df: pd.DataFrame, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split the output of :func:`make_folds` into fold ``k``'s (train, val).

    The number of folds is taken as ``max(fold) + 1``; both parts keep the
    sorted order and get a fresh index.

    Raises:
        ValueError: no ``fold`` column, or ``k`` is not a valid fold index.
    """
    if "fold" not in folds_df.columns:
        raise ValueError(f"column 'fold' not found; columns present: {list(folds_df.columns)}")
    n_folds = int(folds_df["fold"].max()) + 1
    if not isinstance(k, (int, np.integer)) or not 0 <= k < n_folds:
        raise ValueError(f"fold index k must be an integer in [0, {n_folds - 1}], got {k!r}")
    is_val = folds_df["fold"] == k
    return folds_df[~is_val].reset_index(drop=True), folds_df[is_val].reset_index(drop=True)
