"""Losses of iqa_lib.losses against hand-computed numpy values, the spec parser, and a tiny fit per loss."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from iqa_lib.config import LOSSES, loss_terms as parse_loss
from iqa_lib.losses import RANK_TEMPERATURE, make_loss

PRED = np.array([0.1, 0.4, 0.35, 0.8])
TARGET = np.array([0.2, 0.3, 0.5, 0.9])


def loss_value(spec, pred=PRED, target=TARGET):
    t = lambda a: torch.tensor(a, dtype=torch.float32)
    return make_loss(spec)(t(pred), t(target)).item()


# --- each loss against numpy ---------------------------------------------------

def test_mse_matches_numpy():
    assert loss_value("mse") == pytest.approx(np.mean((PRED - TARGET) ** 2), rel=1e-5)


def test_plcc_matches_numpy():
    assert loss_value("plcc") == pytest.approx(1 - np.corrcoef(PRED, TARGET)[0, 1], rel=1e-4)


def test_nin_matches_numpy():
    p, t = PRED - PRED.mean(), TARGET - TARGET.mean()
    p, t = p / np.sqrt(np.sum(p ** 2)), t / np.sqrt(np.sum(t ** 2))
    expected = np.sum(np.abs(p - t)) / (2 * np.sqrt(len(p)))
    assert expected > 0.05  # the example is not trivially 0
    assert loss_value("nin") == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("target", [TARGET, np.array([0.2, 0.3, 0.3, 0.9])])  # the second has a tie
def test_rank_matches_pair_loops(target):
    terms = []
    for i in range(len(PRED)):
        for j in range(len(PRED)):
            if target[i] > target[j]:  # ties and i == j are not pairs
                terms.append(math.log1p(math.exp(-(PRED[i] - PRED[j]) / RANK_TEMPERATURE)))
    assert len(terms) == (6 if len(set(target)) == 4 else 5)
    assert loss_value("rank", target=target) == pytest.approx(np.mean(terms), rel=1e-5)


# --- sanity --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["plcc", "nin"])
def test_plcc_nin_zero_on_affine_map_and_affine_invariant(name):
    assert loss_value(name, pred=2 * TARGET + 0.5) == pytest.approx(0, abs=1e-6)
    assert loss_value(name) > 0.01
    assert loss_value(name, pred=3 * PRED + 1) == pytest.approx(loss_value(name), rel=1e-4)
    assert loss_value(name, pred=-PRED) > loss_value(name)  # anti-correlated is worse


def test_rank_small_when_ordered_large_when_reversed():
    right, reversed_ = loss_value("rank", pred=TARGET), loss_value("rank", pred=TARGET[::-1].copy())
    assert right < 0.25 < math.log(2) < reversed_
    assert loss_value("rank", pred=TARGET + 1) == pytest.approx(right, rel=1e-5)  # only differences matter


def test_weighted_sum_equals_weighted_parts():
    spec = "0.5*mse + 1.0*nin + 0.1*rank"
    expected = 0.5 * loss_value("mse") + loss_value("nin") + 0.1 * loss_value("rank")
    assert loss_value(spec) == pytest.approx(expected, rel=1e-5)
    assert repr(make_loss(spec)) == "0.5*mse + 1*nin + 0.1*rank"
    assert repr(make_loss()) == "1*mse"


@pytest.mark.parametrize("spec, terms", [
    ("mse", [(1.0, "mse")]),
    ("plcc+rank", [(1.0, "plcc"), (1.0, "rank")]),
    (" 0.5 * mse + 1.0*nin+0.1*rank ", [(0.5, "mse"), (1.0, "nin"), (0.1, "rank")]),
    ("2e-1*PLCC", [(0.2, "plcc")]),
])
def test_parse_loss(spec, terms):
    assert parse_loss(spec) == terms


@pytest.mark.parametrize("spec, hint", [
    ("rnak", "did you mean 'rank'?"),
    ("0.5*mse+0.5*nn", "did you mean 'nin'?"),
    ("huber", "unknown loss 'huber'"),
    ("mse+mse", "appears twice"),
    ("mse+", "empty term"),
    ("", "empty term"),
    ("*mse", "empty term"),
    ("0*mse", "positive, finite number"),
    ("-1*mse", "positive, finite number"),
    ("nan*mse", "positive, finite number"),
    ("inf*mse", "positive, finite number"),
    ("half*mse", "'half' of 'mse' is not a number"),
    (None, "a string is needed"),
])
def test_bad_spec_names_the_parameter_and_the_fix(spec, hint):
    with pytest.raises(ValueError) as info:
        make_loss(spec)
    msg = str(info.value)
    assert "train.loss" in msg and repr(spec) in msg and hint in msg
    assert "0.5*mse+0.5*rank" in msg and all(name in msg for name in LOSSES)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="1-D"):
        make_loss("mse")(torch.zeros(4, 1), torch.zeros(4))


# --- degenerate batches ----------------------------------------------------------

@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("pred, target", [
    ([0.5, 0.5, 0.5], [0.2, 0.4, 0.9]),  # constant pred
    ([0.1, 0.4, 0.3], [0.6, 0.6, 0.6]),  # constant target (all tied for rank)
    ([0.3], [0.7]),                      # size 1
])
def test_degenerate_batches_are_finite_with_a_gradient(name, pred, target):
    p = torch.tensor(pred, requires_grad=True)
    loss = make_loss(name)(p, torch.tensor(target))
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert p.grad is not None and torch.isfinite(p.grad).all()


# --- it trains -------------------------------------------------------------------

@pytest.mark.parametrize("name", LOSSES)
def test_each_loss_trains_a_tiny_model(name):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512 + 256, 8, generator=gen)
    y = torch.sigmoid(x @ torch.randn(8, generator=gen))
    x_train, y_train, x_test, y_test = x[:512], y[:512], x[512:], y[512:]
    torch.manual_seed(1)
    model = torch.nn.Linear(8, 1)
    rho = lambda: spearmanr(model(x_test).squeeze(1).detach().numpy(), y_test.numpy())[0]
    rho_init = rho()
    loss_fn, opt = make_loss(name), torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(200):
        idx = torch.randint(0, 512, (16,), generator=gen)
        loss = loss_fn(model(x_train[idx]).squeeze(1), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert rho_init < 0.5
    assert rho() > 0.9
