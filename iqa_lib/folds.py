"""Deterministic, MOS-stratified K-fold split (SPEC §2), optionally group-aware.

The recipe: one row per image, sort by MOS descending (ties by image name),
then deal the sorted images round-robin into folds, so every fold covers the
whole MOS range evenly. Fold ``k`` is the validation set; the rest trains.

Group-aware variant (``group_col=...``, e.g. KADID-10k's reference image): rows that
share a group (all distortions of one scene) must land in one fold, or validation
would score images whose scene the model trained on. The same idea, one level up:

1. Each group gets its size (unique images) and its mean MOS; groups are sorted by
   mean MOS descending, ties by the group's name (as text).
2. The sorted groups are cut into consecutive blocks of ``n_folds`` groups (a MOS
   stratum each; the last block may be shorter).
3. Within a block, every fold gets at most one group: the block's groups, largest
   first (ties: higher mean MOS first), go to the folds with the fewest images so far
   (ties: lower fold index).

Step 3 keeps the folds' MOS distributions matched (each fold draws one group from every
stratum, as the plain recipe draws one image) while steering big groups to small folds,
so fold sizes never differ by more than the largest group. With one image per group
the result is exactly the plain recipe's.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .checkpoint import atomic_write_text
from .config import Outputs, parse_run_name


def make_folds(
    df: pd.DataFrame,
    n_folds: int = 5,
    mos_col: str = "mos",
    name_col: str = "img_name",
    group_col: str | None = None,
) -> pd.DataFrame:
    """One row per image with its fold, from an annotation table that may have several rows
    per image (one per caption, as the challenge's ``train.csv``).

    Each image keeps the columns of its first row, minus ``comments``, plus an int ``fold``;
    the rows are in the recipe's order (MOS descending, then name) with a fresh 0..n-1 index.
    Without ``group_col`` the image at position ``i`` is in fold ``i % n_folds``: the team's
    folds exactly. With ``group_col`` (e.g. ``group``, the source scene) whole groups go to one
    fold, by the scheme of the module docstring.

    A ValueError names the problem: a missing column, ``n_folds`` below 2 or above the number of
    images (of groups), a missing or non-finite MOS, rows of one image with different MOS values
    (or groups), a row without a group.
    """
    for col in (name_col, mos_col) + ((group_col,) if group_col is not None else ()):
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
        raise ValueError(f"n_folds={n_folds} exceeds the number of unique images ({len(images)}): lower n_folds "
                         f"(-p n_folds), or add images")

    # (MOS, name) is unique after de-duplication, so this order is total and reproducible.
    images = images.sort_values([mos_col, name_col], ascending=[False, True], kind="stable")
    images = images.reset_index(drop=True)
    if group_col is None:
        images["fold"] = np.arange(len(images), dtype=np.int64) % n_folds
    else:
        _check_groups(df, name_col, group_col)
        images["fold"] = _group_folds(images, n_folds, mos_col, group_col)
    return images


def _check_groups(df: pd.DataFrame, name_col: str, group_col: str) -> None:
    """Every row needs a group, and all rows of one image the same group."""
    missing = df.loc[df[group_col].isna() | (df[group_col].astype(str).str.strip() == ""), name_col]
    if len(missing):
        raise ValueError(
            f"{len(missing)} row(s) have no {group_col!r} value: {missing.unique()[:10].tolist()}"
        )
    n_groups = df.groupby(name_col, sort=True)[group_col].nunique()
    split = n_groups[n_groups > 1].index
    if len(split):
        raise ValueError(
            f"{len(split)} image(s) have rows in more than one {group_col!r}: {split[:10].tolist()}"
        )


def _group_folds(images: pd.DataFrame, n_folds: int, mos_col: str, group_col: str) -> np.ndarray:
    """The fold of each row of ``images`` (one row per image) under the group scheme."""
    keys = images[group_col].astype(str)
    stats = images.groupby(keys, sort=False)[mos_col].agg(["size", "mean"])
    if n_folds > len(stats):
        raise ValueError(
            f"n_folds={n_folds} exceeds the number of groups in {group_col!r} ({len(stats)}): "
            f"whole groups go to one fold, so every fold needs at least one group: lower n_folds (-p n_folds)"
        )
    stats["name"] = stats.index
    stats = stats.sort_values(["mean", "name"], ascending=[False, True], kind="stable")
    sizes = stats["size"].to_numpy()
    fold_size = np.zeros(n_folds, dtype=np.int64)
    fold_of = {}
    for start in range(0, len(stats), n_folds):
        block = range(start, min(start + n_folds, len(stats)))
        # Largest group first; a stable sort keeps the MOS order among equal sizes.
        by_size = sorted(block, key=lambda i: -sizes[i])
        folds = sorted(range(n_folds), key=lambda k: (fold_size[k], k))
        for i, k in zip(by_size, folds):
            fold_of[stats.index[i]] = k
            fold_size[k] += sizes[i]
    return keys.map(fold_of).to_numpy(dtype=np.int64)


def folds_for_table(df: pd.DataFrame, n_folds: int = 5) -> pd.DataFrame:
    """The kit's default: group-aware when the table has a `group` column (KADID's reference
    images, written by `iqa_lib.datasets.prepare`), else exactly the team's folds (SPEC §2)."""
    return make_folds(df, n_folds=n_folds, group_col="group" if "group" in df.columns else None)


def write_folds(folds: pd.DataFrame, out_dir: str | os.PathLike) -> tuple[Path, bool]:
    """Write `{out_dir}/folds.csv` atomically, as training reads it; return (path, changed),
    where changed says an existing, different folds.csv was replaced."""
    path = Path(out_dir) / "folds.csv"
    text = folds.drop(columns=["path"], errors="ignore").to_csv(index=False)
    changed = path.is_file() and path.read_text() != text
    atomic_write_text(path, text)
    return path, changed


# --------------------------------------------------------------------------------------------
# which split a run was trained on
# --------------------------------------------------------------------------------------------
def split_fingerprint(folds: pd.DataFrame) -> str:
    """A short hash of a split: every image's name, MOS and fold. A run records the one it was
    trained on (its training and validation rows), so a changed MOS, image or fold shows."""
    rows = folds[["img_name", "mos", "fold"]].astype({"img_name": str, "mos": float, "fold": int})
    text = rows.sort_values("img_name").to_csv(index=False, float_format="%.9g")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def current_split(outputs: Outputs) -> str | None:
    """The fingerprint of `folds.csv` as it is now (None when there is none, or it is not one)."""
    try:
        return split_fingerprint(pd.read_csv(outputs.folds, dtype={"img_name": str}))
    except (OSError, ValueError, KeyError):
        return None


def recorded_split(outputs: Outputs, name: str) -> str | None:
    """The split fingerprint a run's manifest records (None: no manifest, or a run from before)."""
    return outputs.run(*parse_run_name(name)).read_manifest().get("split")


def stale_runs(outputs: Outputs, names: list[str]) -> list[str]:
    """The runs among `names` that were trained on another split than today's folds.csv."""
    now = current_split(outputs)
    if now is None:
        return []
    return [name for name in names if recorded_split(outputs, name) not in (None, now)]


def stale_message(names: list[str], outputs: Outputs) -> str:
    """What to do about runs trained on another split: the two ways out."""
    return (f"{len(names)} run(s) in {outputs.runs} were trained on another split or other data than "
            f"{outputs.folds} describes now (train.csv changed since): {', '.join(names)}. Their checkpoints, "
            f"out-of-fold and test predictions would be mixed with the new split. Retrain them "
            f"(fit(cfg, force=True), or python -m iqa_lib.run_all --force), or restore the data they were "
            f"trained on (and folds.csv with it).")
