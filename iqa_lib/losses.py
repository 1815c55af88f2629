"""Training losses for quality scores, and the ``train.loss`` spec that combines them.

Every loss takes ``pred`` and ``target``, 1-D float tensors of the same length
(a batch of predicted and true scores on a 0..1 scale), and returns a scalar
tensor that is differentiable w.r.t. ``pred``:

    mse   mean((pred - target)^2)                          the team's default
    plcc  1 - Pearson correlation of pred and target over the batch
    nin   norm-in-norm loss (Li, Jiang & Jiang, ACM MM 2020), p = 1, q = 2
    rank  RankNet-style logistic loss over the ordered pairs of the batch

plcc, nin and rank compare samples within a batch, so a batch of fewer than 2
gives them nothing to compare: they then return a zero that still carries a
gradient (``pred.sum() * 0``), never NaN: that term adds no gradient (Adam's momentum and
weight decay still move the weights in that step).

A spec is a weighted sum of names, e.g. ``"mse"``, ``"plcc+rank"`` or
``"0.5*mse + 1.0*nin + 0.1*rank"``; ``make_loss(spec)`` parses it once and
returns the callable the training loop uses on every batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import LOSSES, loss_terms  # the choice list and the spec's parser (checked with the parameters)
EPS = 1e-8  # keeps the normalisations of plcc / nin finite on a constant batch
# Scores live on 0..1 and neighbouring images in a batch typically differ by
# 0.05-0.3, so dividing by 0.1 turns those gaps into logits of about 0.5-3: the
# logistic loss is then neither flat (T = 1) nor a hard hinge (T -> 0).
RANK_TEMPERATURE = 0.1


def plcc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - r, with r = <p - mean p, t - mean t> / (|p - mean p| * |t - mean t| + EPS).

    A constant pred or target gives r = 0, so the loss is 1 (finite), not NaN."""
    if pred.numel() < 2:
        return pred.sum() * 0  # no pairs: a zero that still has a gradient
    p, t = pred - pred.mean(), target - target.mean()
    return 1 - (p * t).sum() / (p.norm() * t.norm() + EPS)


def nin_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Norm-in-norm loss, the paper's p = 1, q = 2 case.

    Each vector is centred and divided by its L2 norm (q = 2):
        p_hat = (pred - mean pred) / (|pred - mean pred|_2 + EPS), same for t_hat;
    then, with the paper's scale factor 2^max(1, 1/q) * N^max(0, 1/p - 1/q) = 2 * sqrt(N),
        loss = sum_i |p_hat_i - t_hat_i| / (2 * sqrt(N)),
    which lies in [0, 1] (0 iff pred is a positive affine map of target)."""
    n = pred.numel()
    if n < 2:
        return pred.sum() * 0  # no pairs: a zero that still has a gradient
    p, t = pred - pred.mean(), target - target.mean()
    p, t = p / (p.norm() + EPS), t / (t.norm() + EPS)
    return (p - t).abs().sum() / (2 * math.sqrt(n))


def rank_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean over pairs (i, j) with target_i > target_j of softplus(-(pred_i - pred_j) / RANK_TEMPERATURE).

    No such pair (size 1, or all targets tied) gives a zero with a gradient."""
    better = (target[:, None] > target[None, :]).to(pred.dtype)  # better[i, j]: i should outrank j
    pair_loss = F.softplus(-(pred[:, None] - pred[None, :]) / RANK_TEMPERATURE)
    return (pair_loss * better).sum() / better.sum().clamp(min=1)


LOSS_FNS = {"mse": F.mse_loss, "plcc": plcc_loss, "nin": nin_loss, "rank": rank_loss}
assert set(LOSS_FNS) == set(LOSSES)


class WeightedLoss:
    """sum_k w_k * loss_k(pred, target) for the terms of a parsed spec."""

    def __init__(self, terms: list[tuple[float, str]]):
        self.terms = terms

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape or pred.dim() != 1:
            raise ValueError(f"loss needs 1-D pred and target of equal shape, got {tuple(pred.shape)} and "
                             f"{tuple(target.shape)}")
        return sum(w * LOSS_FNS[name](pred, target) for w, name in self.terms)

    def __repr__(self) -> str:
        return " + ".join(f"{w:g}*{name}" for w, name in self.terms)


def make_loss(spec: str = "mse") -> WeightedLoss:
    """Parse ``spec`` once and return ``loss_fn`` with ``loss_fn(pred, target) -> scalar tensor``."""
    return WeightedLoss(loss_terms(spec))
