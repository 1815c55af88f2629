"""The notebooks' figures: each function takes data and returns a matplotlib Figure.

Figures are made with `matplotlib.figure.Figure`, not pyplot: nothing is shown or kept in
a global figure list, and no backend is assumed. In a notebook the returned figure, as a
cell's last expression (or through `display(fig)`), is drawn inline; elsewhere save it
with `fig.savefig("name.png")`.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

TRAIN_COLOUR, TEST_COLOUR = "tab:blue", "tab:orange"


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (7, 4), squeeze: bool = True):
    """A Figure and its axes: one Axes for 1 x 1, else an array (always 2-D with squeeze=False)."""
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def _hist_density(ax, values: Sequence[float], bins: Any, grid: np.ndarray, colour: str, kde_label: str,
                  **hist_style) -> None:
    """A density histogram of `values` and over it their Gaussian kernel density on `grid`, labelled
    `kde_label` (no density line where it is undefined: fewer than 2 distinct finite values)."""
    from scipy.stats import gaussian_kde

    values = np.asarray(values, dtype=float)
    ax.hist(values, bins=bins, density=True, color=colour, **hist_style)
    finite = values[np.isfinite(values)]
    if len(np.unique(finite)) >= 2:
        ax.plot(grid, gaussian_kde(finite)(grid), color=colour, lw=2, label=kde_label)


def _grid_for(*arrays: np.ndarray) -> np.ndarray:
    """200 points over the range of the arrays' finite values, padded by 5%: where to draw densities."""
    every = np.concatenate([np.asarray(a, dtype=float) for a in arrays])
    every = every[np.isfinite(every)]
    a, b = every.min(), every.max()
    pad = 0.05 * (b - a or 1.0)
    return np.linspace(a - pad, b + pad, 200)


# --------------------------------------------------------------------------------------------
# the data (01_eda)
# --------------------------------------------------------------------------------------------
def plot_mos_hist(mos: Sequence[float], *, bins: int = 40, mos_scale: float | None = None,
                  title: str = "MOS per image") -> Figure:
    """Histogram of the MOS (as a density) with a kernel density estimate and the mean."""
    mos = np.asarray(mos, dtype=float)
    fig, ax = _figure()
    _hist_density(ax, mos, bins, _grid_for(mos), TRAIN_COLOUR, "density (KDE)", alpha=0.45, label="histogram")
    ax.axvline(mos.mean(), color="k", ls="--", lw=1, label=f"mean {mos.mean():.3f}")
    ax.set(xlabel="MOS" + (f" (0-{mos_scale:g} scale)" if mos_scale else ""), ylabel="density",
           title=f"{title}: n = {len(mos):,}, sd = {mos.std(ddof=1) if len(mos) > 1 else 0:.3f}")
    ax.legend()
    return fig


def plot_image_sizes(sizes: pd.DataFrame) -> Figure:
    """Width vs height scatter and aspect-ratio histogram, one colour per split (train/test).

    `sizes` has `width`, `height` and, optionally, a `split` column.
    """
    sizes = sizes.assign(aspect=sizes["width"] / sizes["height"])
    groups = sizes.groupby("split", sort=False) if "split" in sizes else [("images", sizes)]
    fig, (scatter, hist) = _figure(1, 2, (11, 4.2))
    colours = {"train": TRAIN_COLOUR, "test": TEST_COLOUR}
    bins = np.histogram_bin_edges(sizes["aspect"], bins=30)
    for name, g in groups:
        colour = colours.get(name)
        # Many images share a size: jitter nothing, but make overlaps visible through alpha.
        scatter.scatter(g["width"], g["height"], s=12, alpha=0.4, color=colour, label=f"{name} ({len(g):,})")
        hist.hist(g["aspect"], bins=bins, density=True, histtype="step", lw=2, color=colour, label=name)
    scatter.set(xlabel="width (px)", ylabel="height (px)", title="image sizes")
    hist.set(xlabel="aspect ratio (width / height)", ylabel="density", title="aspect ratios")
    scatter.legend()
    hist.legend()
    return fig


def plot_image_grid(table: pd.DataFrame, n: int = 5, *, thumb: int = 192) -> Figure:
    """The `n` best- (top row) and `n` worst-rated (bottom row) images with their MOS, from a
    load_table table (`path`, `mos`, `img_name`)."""
    from .data import read_rgb

    images = table.drop_duplicates("img_name") if "img_name" in table else table
    order = images.sort_values("mos", ascending=False, kind="stable")
    n = max(1, min(n, len(order)))
    rows = [("best", order.head(n)), ("worst", order.tail(n).iloc[::-1])]
    fig, axes = _figure(2, n, (2.4 * n, 5.4), squeeze=False)
    for r, (label, part) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.set_axis_off()
            if c >= len(part):
                continue
            item = part.iloc[c]
            im = read_rgb(item["path"], min_size=thumb)
            im.thumbnail((thumb, thumb))
            ax.imshow(im)
            ax.set_title(f"{label} {c + 1}: MOS {item['mos']:.2f}", fontsize=9)
    fig.suptitle(f"best and worst rated of {len(images):,} images")
    return fig


def plot_rows_per_image(table: pd.DataFrame) -> Figure:
    """How many CSV rows (captions) each image has: number of images per row count."""
    counts = table.groupby("img_name").size().value_counts().sort_index()
    fig, ax = _figure(size=(6, 3.6))
    bars = ax.bar(counts.index.astype(str), counts.values, color=TRAIN_COLOUR)
    ax.bar_label(bars, labels=[f"{v:,}" for v in counts.values])
    ax.set(xlabel="rows per image", ylabel="images",
           title=f"{len(table):,} rows for {counts.sum():,} images")
    ax.margins(y=0.15)
    return fig


# --------------------------------------------------------------------------------------------
# the folds (02_folds)
# --------------------------------------------------------------------------------------------
def fold_table(folds: pd.DataFrame) -> pd.DataFrame:
    """Per fold of make_folds' table: images, mean, sd, min and max MOS."""
    return folds.groupby("fold")["mos"].agg(images="size", mean="mean", sd="std", min="min", max="max").round(4)


def plot_fold_distributions(folds: pd.DataFrame, *, bins: int = 30) -> Figure:
    """The MOS distribution of every validation fold, overlaid (they should coincide)."""
    fig, ax = _figure()
    edges = np.histogram_bin_edges(folds["mos"], bins=bins)
    grid = _grid_for(folds["mos"])
    for i, (k, g) in enumerate(folds.groupby("fold")):
        label = f"fold {k}: n = {len(g):,}, mean {g['mos'].mean():.3f}"
        _hist_density(ax, g["mos"], edges, grid, f"C{i % 10}", label, histtype="step", lw=1, alpha=0.35)
    ax.set(xlabel="MOS", ylabel="density", title="MOS per validation fold")
    ax.legend(fontsize=8)
    return fig


# --------------------------------------------------------------------------------------------
# one run (03_train)
# --------------------------------------------------------------------------------------------
def _as_frame(data: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    return data if isinstance(data, pd.DataFrame) else pd.read_csv(data)


def plot_learning_curves(metrics: pd.DataFrame | str | os.PathLike, *, best_epoch: int | None = None,
                         title: str = "") -> Figure:
    """Train/validation loss and validation PLCC/SRCC per epoch, from a run's metrics.csv.

    The best epoch (highest PLCC + SRCC, the checkpoint kept) is marked on both panels. Epochs not
    validated (`train.val_every`) have only a train loss.
    """
    m = _as_frame(metrics)
    if "val_loss" not in m:  # before a run's first validation
        m = m.assign(val_loss=np.nan, plcc=np.nan, srcc=np.nan)
    v = m.dropna(subset=["val_loss"])  # the validated epochs
    if best_epoch is None and len(v):
        best_epoch = int(v.loc[(v["plcc"] + v["srcc"]).idxmax(), "epoch"])
    fig, (loss, corr) = _figure(1, 2, (11, 4))
    loss.plot(m["epoch"], m["train_loss"], "o-", label="train loss (train.loss)")
    loss.plot(v["epoch"], v["val_loss"], "o-", label="validation MSE")
    loss.set(xlabel="epoch", ylabel="loss (on MOS / mos_scale)", title="loss")
    for col in ("plcc", "srcc"):
        corr.plot(v["epoch"], v[col], "o-", label=f"validation {col.upper()}")
    corr.set(xlabel="epoch", ylabel="correlation", title="validation correlation")
    for ax in (loss, corr):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best_epoch is not None:
            ax.axvline(best_epoch, color="k", ls="--", lw=1, label=f"best epoch {best_epoch}")
        ax.legend()
    if title:
        fig.suptitle(title)
    return fig


def lr_schedule(schedule: Mapping[str, Any], n_steps: int) -> np.ndarray:
    """The learning rate of optimiser steps 0..n_steps-1 under the `schedule:` parameters
    (`cfg.schedule.model_dump()`), computed with the trainer's own scheduler on a dummy optimiser
    (whose own rate the scheduler ignores)."""
    import torch

    from .schedule import CosineAnnealingWarmupRestarts

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = CosineAnnealingWarmupRestarts(opt, **schedule)
    out = np.empty(max(int(n_steps), 0))
    with warnings.catch_warnings():  # stepping the scheduler without optimiser steps is the point here
        warnings.simplefilter("ignore", UserWarning)
        for i in range(len(out)):
            out[i] = sched.get_last_lr()[0]
            sched.step()
    return out


def plot_lr_schedule(schedule: Mapping[str, Any], n_steps: int, *, observed: pd.DataFrame | None = None,
                     steps_per_epoch: int | None = None) -> Figure:
    """The learning rate over a run's optimiser steps.

    `observed`: metrics.csv rows (`step`, `lr`): the rate the trainer logged at each
    epoch's end, drawn as dots on the curve. `steps_per_epoch` marks epoch boundaries.
    """
    lrs = lr_schedule(schedule, n_steps)
    fig, ax = _figure(size=(8, 3.6))
    ax.plot(np.arange(len(lrs)), lrs, lw=2, label="schedule")
    if steps_per_epoch:
        for x in range(steps_per_epoch, len(lrs), steps_per_epoch):
            ax.axvline(x, color="0.85", lw=0.8, zorder=0)
    if observed is not None and len(observed):
        ax.plot(observed["step"], observed["lr"], "o", color="tab:red", label="logged at epoch ends")
    ax.set(xlabel="optimiser step", ylabel="learning rate",
           title=f"learning rate: peak {lrs.max() if len(lrs) else 0:.2e}, {len(lrs):,} steps")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.legend()
    return fig


def plot_pred_vs_true(oof: pd.DataFrame | str | os.PathLike, *, title: str = "validation fold") -> Figure:
    """Predicted (`pred`) vs true MOS (`mos`), e.g. a run's oof.csv, PLCC / SRCC in the title."""
    from .metrics import all_metrics

    df = _as_frame(oof)
    with warnings.catch_warnings():  # a constant prediction scores 0 with a warning: the title says it
        warnings.simplefilter("ignore", RuntimeWarning)
        m = all_metrics(df["pred"].to_numpy(float), df["mos"].to_numpy(float))
    fig, ax = _figure(size=(5.2, 5))
    ax.scatter(df["mos"], df["pred"], s=14, alpha=0.6)
    lo = float(min(df["mos"].min(), df["pred"].min()))
    hi = float(max(df["mos"].max(), df["pred"].max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="prediction = truth")
    ax.set(xlabel="true MOS", ylabel="predicted MOS",
           title=f"{title}: PLCC {m['plcc']:.3f}, SRCC {m['srcc']:.3f} (n = {len(df):,})")
    ax.legend()
    return fig


# --------------------------------------------------------------------------------------------
# the ensemble (05_ensemble)
# --------------------------------------------------------------------------------------------
def plot_prediction_correlation(pred_table: pd.DataFrame, *, method: str = "pearson") -> Figure:
    """Heat map of the correlation between runs' test predictions (columns of the table)."""
    corr = pred_table.corr(method=method)
    n = len(corr)
    side = min(max(4.0, 0.6 * n + 2.5), 12.0)
    fig, ax = _figure(size=(side + 1, side))
    low = float(np.nanmin(corr.to_numpy())) if n else 0.0
    image = ax.imshow(corr.to_numpy(), vmin=min(low, 0.99), vmax=1.0, cmap="viridis")
    ax.set_xticks(range(n), corr.columns, rotation=60, ha="right")
    ax.set_yticks(range(n), corr.index)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                v = corr.iat[i, j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if v > (low + 1) / 2 else "white")
    fig.colorbar(image, ax=ax, shrink=0.8, label=f"{method} correlation")
    ax.set_title(f"test predictions: correlation between {n} runs")
    return fig


def plot_pred_distribution(test_pred: Sequence[float], train_mos: Sequence[float], *, bins: int = 40,
                           label: str = "predicted test MOS") -> Figure:
    """The predicted test MOS distribution against the training MOS distribution.

    A model regresses towards the mean: its predictions are usually narrower than the truth.
    """
    pred = np.asarray(test_pred, dtype=float)
    train = np.asarray(train_mos, dtype=float)
    fig, ax = _figure()
    edges = np.histogram_bin_edges(np.concatenate([pred, train]), bins=bins)
    grid = _grid_for(pred, train)
    for values, name, colour in ((train, "train MOS", TRAIN_COLOUR), (pred, label, TEST_COLOUR)):
        sd = values.std(ddof=1) if len(values) > 1 else 0.0
        kde_label = f"{name}: mean {values.mean():.3f}, sd {sd:.3f}"
        _hist_density(ax, values, edges, grid, colour, kde_label, alpha=0.35)
    ax.set(xlabel="MOS", ylabel="density", title=f"{label} vs train MOS")
    ax.legend()
    return fig
