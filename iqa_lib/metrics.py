"""Correlation metrics for quality prediction (SPEC §1).

PLCC and SRCC follow scipy's ``pearsonr`` / ``spearmanr``. They never return
NaN: inputs where a correlation is undefined (fewer than 2 samples, a constant
vector, a non-finite prediction) give 0.0 with a ``RuntimeWarning`` saying why,
so a degenerate model scores as "no correlation" instead of poisoning a
"best checkpoint" comparison with NaN.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np
from scipy import stats

ArrayLike = Any  # list, numpy array, pandas Series or torch tensor


def _to_1d(x: ArrayLike, what: str) -> np.ndarray:
    """Convert ``x`` to a 1-D float64 array; column vectors are flattened."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().double().numpy()
    arr = np.atleast_1d(np.asarray(x, dtype=np.float64).squeeze())
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {np.shape(x)}")
    return arr


def _prepare(pred: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Validate the inputs; return them as arrays plus why correlation is undefined (or None)."""
    p, t = _to_1d(pred, "pred"), _to_1d(target, "target")
    if len(p) != len(t):
        raise ValueError(f"pred and target lengths differ: {len(p)} != {len(t)}")
    # A broken prediction is a model outcome to score; a broken target is a data bug to surface.
    if not np.isfinite(t).all():
        raise ValueError(f"target has {int((~np.isfinite(t)).sum())} non-finite value(s)")
    if len(p) < 2:
        return p, t, f"need at least 2 samples, got {len(p)}"
    if not np.isfinite(p).all():
        return p, t, f"pred has {int((~np.isfinite(p)).sum())} non-finite value(s)"
    if (p == p[0]).all():
        return p, t, "pred is constant"
    if (t == t[0]).all():
        return p, t, "target is constant"
    return p, t, None


def _correlation(fn: Callable, name: str, p: np.ndarray, t: np.ndarray, reason: str | None) -> float:
    """Run ``fn`` (pearsonr or spearmanr) unless ``reason`` says it is undefined.

    Called by the public functions only: the warning points at the line that called them.
    """
    if reason is None:
        # Huge finite values can still overflow inside scipy; treat that like any other degeneracy.
        with np.errstate(all="ignore"):
            r = float(fn(p, t).statistic)
        if math.isfinite(r):
            return r
        reason = "the correlation overflowed (values too large)"
    warnings.warn(f"{name} set to 0.0: {reason}", RuntimeWarning, stacklevel=3)
    return 0.0


def plcc(pred: ArrayLike, target: ArrayLike) -> float:
    """Pearson linear correlation coefficient (0.0 with a warning if undefined)."""
    p, t, reason = _prepare(pred, target)
    return _correlation(stats.pearsonr, "PLCC", p, t, reason)


def srcc(pred: ArrayLike, target: ArrayLike) -> float:
    """Spearman rank correlation coefficient (0.0 with a warning if undefined)."""
    p, t, reason = _prepare(pred, target)
    return _correlation(stats.spearmanr, "SRCC", p, t, reason)


def all_metrics(pred: ArrayLike, target: ArrayLike) -> dict[str, float]:
    """Return ``{"plcc", "srcc", "plcc_srcc", "score"}``.

    ``plcc_srcc`` is PLCC + SRCC, the team's validation metric; ``score`` is
    the challenge score (max(PLCC, 0) + max(SRCC, 0)) / 2.
    """
    p, t, reason = _prepare(pred, target)
    r_p = _correlation(stats.pearsonr, "PLCC", p, t, reason)
    r_s = _correlation(stats.spearmanr, "SRCC", p, t, reason)
    return {
        "plcc": r_p,
        "srcc": r_s,
        "plcc_srcc": r_p + r_s,
        "score": (max(r_p, 0.0) + max(r_s, 0.0)) / 2,
    }
