"""The training and inference engine on tiny CPU configurations (seconds each)."""
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from iqa_lib.checkpoint import CheckpointError, safe_torch_load
from iqa_lib import infer
from iqa_lib.infer import autocast_dtype, load_model, predict
from iqa_lib.config import load_config
from iqa_lib.infer import model_config
from iqa_lib.score import score_images
from iqa_lib.train import DeadHeadError, DivergenceError, EpochBatches, fit
from conftest import checkpoint_vs_oof, make_exposure_data, metrics_of, tiny_params

# -- learning ------------------------------------------------------------------------------
def test_learns_a_learnable_signal(exposure_data, tmp_path):
    params = tiny_params(exposure_data, tmp_path, **{"train.epochs": 4, "train.deterministic": False})
    result = fit(params, progress=False)
    assert result.status == "completed"
    assert result.best["srcc"] > 0.8, result.history
    run = result.run_dir
    for f in (f"{run.name}.ckpt", "last.pt", "metrics.csv", "oof.csv", "manifest.json"):
        assert (run / f).is_file(), f
    oof = pd.read_csv(run / "oof.csv")
    assert list(oof.columns) == ["img_name", "mos", "pred"] and len(oof) == 20  # fold 0 of 100 images
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["best_epoch"] == result.best_epoch
    assert {"commit", "dirty"} <= set(manifest["environment"]["git"])
    assert torch.__version__.startswith(manifest["environment"]["versions"]["torch"])
    assert (tmp_path / "folds.csv").is_file()


def test_completed_run_is_not_retrained(exposure_data, tmp_path):
    params = tiny_params(exposure_data, tmp_path, **{"train.epochs": 1})
    first = fit(params, progress=False)
    ckpt_mtime = first.checkpoint.stat().st_mtime_ns
    again = fit(params, progress=False)
    assert again.status == "completed" and first.checkpoint.stat().st_mtime_ns == ckpt_mtime
    forced = fit(params, progress=False, force=True)  # trains again from scratch
    assert forced.status == "completed" and first.checkpoint.stat().st_mtime_ns != ckpt_mtime
    assert len(forced.history) == 1


def test_deterministic_runs_are_bit_identical(exposure_data, tmp_path):
    runs = [fit(tiny_params(exposure_data, tmp_path / str(i), **{"train.epochs": 2}), progress=False) for i in (0, 1)]
    pd.testing.assert_frame_equal(metrics_of(runs[0].run_dir), metrics_of(runs[1].run_dir), check_exact=True)
    a, b = (safe_torch_load(r.checkpoint)["model"] for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_validation_scores_the_clipped_predictions_that_oof_csv_holds(exposure_data, tmp_path, monkeypatch):
    from iqa_lib import train
    from iqa_lib.metrics import all_metrics

    real = train.predict_indices

    def overshooting(*args, **kwargs):  # some validation predictions past the top of the MOS scale
        preds = real(*args, **kwargs)
        return preds + np.linspace(0.0, 1.5, len(preds))

    monkeypatch.setattr(train, "predict_indices", overshooting)
    cfg = tiny_params(exposure_data, tmp_path, **{"train.epochs": 1})
    result = fit(cfg, progress=False)
    oof = pd.read_csv(cfg.run.oof)
    assert oof["pred"].max() == cfg.mos_scale and oof["pred"].min() >= 0  # clipped, as predict clips
    # metrics.csv, the manifest and the model selection score exactly these predictions
    expected = all_metrics(oof["pred"].to_numpy(), oof["mos"].to_numpy())
    row = pd.read_csv(cfg.run.metrics).iloc[0]
    for key in ("plcc", "srcc"):
        assert row[key] == pytest.approx(expected[key], abs=1e-6)
        assert result.best[key] == pytest.approx(expected[key], abs=1e-6)


def test_val_every_validates_every_nth_epoch_and_the_last(exposure_data, tmp_path):
    every = fit(tiny_params(exposure_data, tmp_path / "every", **{"train.epochs": 5}), progress=False)
    params = tiny_params(exposure_data, tmp_path / "sparse", **{"train.epochs": 5, "train.val_every": 2,
                                                                "train.keep_last": False})
    sparse = fit(params, progress=False)
    assert (every.run_dir / "last.pt").is_file() and not (sparse.run_dir / "last.pt").exists()  # keep_last
    ended = json.loads((sparse.run_dir / "manifest.json").read_text())["ended"]
    assert fit(params, progress=False).status == "completed"  # still completed without last.pt: not trained again
    assert json.loads((sparse.run_dir / "manifest.json").read_text())["ended"] == ended
    a, b = metrics_of(every.run_dir), metrics_of(sparse.run_dir)
    assert b["srcc"].notna().tolist() == [False, True, False, True, True]  # epochs 1, 3 and the last, 4
    pd.testing.assert_frame_equal(a[["epoch", "step", "train_loss", "lr"]], b[["epoch", "step", "train_loss", "lr"]],
                                  check_exact=True)  # validating less changes nothing in training
    validated = ([1, 3, 4], ["plcc", "srcc", "val_loss"])
    pd.testing.assert_frame_equal(a.loc[validated], b.loc[validated], check_exact=True)
    best = int(b.loc[b["plcc"] + b["srcc"] == (b["plcc"] + b["srcc"]).max(), "epoch"].iloc[0])
    assert sparse.best_epoch == best and best in (1, 3, 4)
    assert json.loads((sparse.run_dir / "manifest.json").read_text())["best_epoch"] == best


def test_early_stopping_counts_epochs_since_the_best_at_validations(exposure_data, tmp_path, monkeypatch):
    from iqa_lib import train as T
    scores = iter([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])  # every validation after the first is worse
    monkeypatch.setattr(T, "all_metrics", lambda pred, truth: dict.fromkeys(
        ("plcc", "srcc", "score"), (s := next(scores))) | {"plcc_srcc": 2 * s})
    ov = {"train.epochs": 8, "train.patience": 2}
    each = fit(tiny_params(exposure_data, tmp_path / "each", **ov), progress=False)
    assert (len(each.history), each.best_epoch) == (3, 0)  # best at 0; epochs 1 and 2 worse: stop
    manifest = each.run_dir / "manifest.json"  # as if killed after last.pt, before the manifest said completed
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "status": "running"}))
    resumed = fit(tiny_params(exposure_data, tmp_path / "each", **ov), progress=False)
    assert (resumed.status, len(resumed.history)) == ("completed", 3)  # stops at once, no epoch more
    scores = iter([0.9, 0.8, 0.7, 0.6])
    sparse = fit(tiny_params(exposure_data, tmp_path / "sparse", **ov, **{"train.val_every": 2}), progress=False)
    assert (len(sparse.history), sparse.best_epoch) == (4, 1)  # validated at 1 (best) and 3: two epochs on
    scores = iter([0.9, 0.8])
    ov["train.patience"] = 1  # checked at validations only: epoch 0 (none yet) does not stop the run
    once = fit(tiny_params(exposure_data, tmp_path / "once", **ov, **{"train.val_every": 2}), progress=False)
    assert (len(once.history), once.best_epoch) == (4, 1)
    for r in (each, sparse, once):
        assert json.loads((r.run_dir / "manifest.json").read_text())["stop_reason"] == "early_stopping"


# -- resume after a real kill ------------------------------------------------------------------
FIT_SCRIPT = """
import json, sys
from iqa_lib.config import load_config
from iqa_lib.train import fit
fit(load_config("demo", 128, 0, json.loads(sys.argv[1])), progress=False)
"""


def test_resume_after_sigkill_matches_uninterrupted_run(exposure_data, tmp_path):
    ov = {"data_dir": str(exposure_data), "train.epochs": 3, "train.batch_size": 8, "train.num_workers": 0,
          "train.deterministic": True, "train.save_every_steps": 3, "train.patience": 10}
    reference = fit(load_config("demo", 128, 0, {**ov, "out_dir": str(tmp_path / "ref")}), progress=False)

    out = tmp_path / "killed"
    args = [sys.executable, "-c", FIT_SCRIPT, json.dumps({**ov, "out_dir": str(out)})]
    last = out / "runs" / "128_fold0" / "last.pt"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Kill as soon as a mid-epoch state exists past the first epoch: the run is mid-flight.
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if last.is_file():
            state = safe_torch_load(last)  # never torn: written to a temp file, then renamed
            if state["epoch"] >= 1 and state["batch_in_epoch"] > 0:
                break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = safe_torch_load(last)
    assert killed_at["epoch"] < 3
    assert json.loads((out / "runs" / "128_fold0" / "manifest.json").read_text())["status"] == "running"

    resumed = fit(load_config("demo", 128, 0, {**ov, "out_dir": str(out)}), progress=False)
    assert resumed.status == "completed"
    pd.testing.assert_frame_equal(metrics_of(reference.run_dir), metrics_of(resumed.run_dir), check_exact=True)
    # no temp file was left under a final name, and the final checkpoint loads
    assert not list(resumed.run_dir.glob("*.tmp"))
    load_model(resumed.checkpoint)


def test_cpu_bf16_trains_under_bf16_autocast_on_a_cpu(exposure_data, tmp_path, monkeypatch, capsys):
    cpu = torch.device("cpu")
    assert autocast_dtype("bf16", cpu) is None and autocast_dtype("fp32", cpu, cpu_bf16=True) is None
    monkeypatch.setattr(infer, "cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning, match="many times slower than fp32 here. Set train.cpu_bf16: auto or false"):
        assert autocast_dtype("bf16", cpu, cpu_bf16=True) is torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto on a CPU without bf16 instructions: fp32, and nothing to warn of
        assert autocast_dtype("bf16", cpu, cpu_bf16="auto") is None
    monkeypatch.setattr(infer, "cpu_has_bf16", lambda: True)
    assert autocast_dtype("fp16", cpu, cpu_bf16=True) is torch.bfloat16  # a CPU autocasts to bf16 only
    assert autocast_dtype("bf16", cpu, cpu_bf16="auto") is torch.bfloat16
    assert autocast_dtype("fp32", cpu, cpu_bf16="auto") is None and autocast_dtype("bf16", cpu, cpu_bf16=False) is None
    preds, losses = {}, {}
    for flag in (False, "auto", True):  # auto on this (patched) CPU with bf16 instructions: bf16
        cfg = tiny_params(exposure_data, tmp_path / str(flag), **{"train.cpu_bf16": flag, "train.epochs": 1})
        assert fit(cfg, progress=False).status == "completed"
        preds[flag] = pd.read_csv(cfg.run.oof)["pred"].to_numpy()
        losses[flag] = pd.read_csv(cfg.run.metrics)["train_loss"].iloc[0]
        assert safe_torch_load(cfg.run.checkpoint)["cpu_bf16"] is bool(flag)  # what ran, auto resolved
    assert np.array_equal(preds["auto"], preds[True]) and losses["auto"] == losses[True]
    # A run done with true, asked for again with auto: the same recipe where the CPU has bf16, not elsewhere.
    capsys.readouterr()
    again = tiny_params(exposure_data, tmp_path / "True", **{"train.cpu_bf16": "auto", "train.epochs": 1})
    fit(again, progress=False)
    assert "already completed" in (out := capsys.readouterr().out) and "WARNING" not in out
    monkeypatch.setattr(infer, "cpu_has_bf16", lambda: False)
    fit(again, progress=False)
    assert "completed with other parameters (train.cpu_bf16: True -> False)" in capsys.readouterr().out
    monkeypatch.setattr(infer, "cpu_has_bf16", lambda: True)
    # The same run in bf16: other rounding in training (its loss) and validation, close to fp32's.
    assert losses[False] != losses[True] and not np.array_equal(preds[False], preds[True])
    assert np.corrcoef(preds[False], preds[True])[0, 1] > 0.9
    # Inference follows the run's cpu_bf16, recorded in its checkpoint: predict (unless told otherwise)
    # and score_images give the bf16 run's oof.csv; fp32 gives other digits.
    assert safe_torch_load(cfg.run.checkpoint)["cpu_bf16"] is True
    for bf16 in (None, True, False):
        both = checkpoint_vs_oof(cfg, exposure_data, cpu_bf16=bf16)
        gap = np.abs(both["mos_y"] - both["pred"]).to_numpy()
        assert (gap.max() > 1e-3) if bf16 is False else (gap.max() < 1e-3), (bf16, gap.max())
    scored = score_images([exposure_data / "train" / f"{n}.jpg" for n in both.img_name], cfg.run.checkpoint,
                          device="cpu").scores
    by_name = dict(zip(scored["path"].map(lambda f: Path(f).stem), scored["mos"]))
    assert len(by_name) == len(both) and max(abs(by_name[n] - p) for n, p in zip(both.img_name, both.pred)) < 1e-3


def test_epoch_batches_skip_and_shard():
    full = list(EpochBatches(range(20), 8, seed=1, epoch=3))
    assert [len(b) for b in full] == [8, 8, 4]
    assert sorted(sum(full, [])) == list(range(20))
    assert list(EpochBatches(range(20), 8, seed=1, epoch=3, start=1)) == full[1:]
    r0 = list(EpochBatches(range(20), 8, seed=1, epoch=3, rank=0, world=2))
    r1 = list(EpochBatches(range(20), 8, seed=1, epoch=3, rank=1, world=2))
    assert [sorted(a + b) for a, b in zip(r0, r1)] == [sorted(b) for b in full]
    assert full != list(EpochBatches(range(20), 8, seed=1, epoch=4))


# -- several processes --------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one(exposure_data, tmp_path):
    """gloo, 2 processes, half the batch each == 1 process with the whole batch (no dropout, no flips)."""
    same = {"train.epochs": 2, "train.flip": "none", "model.head_dropout": 0.0, "model.drop_rate": 0.0,
            "model.drop_path_rate": 0.0, "train.deterministic": False}
    one = fit(tiny_params(exposure_data, tmp_path / "one", **same), progress=False)
    two = fit(tiny_params(exposure_data, tmp_path / "two", **same, **{"train.devices": 2, "train.device": "cpu"}),
              progress=False)
    assert two.status == "completed"
    a, b = metrics_of(one.run_dir), metrics_of(two.run_dir)
    assert np.allclose(a[["train_loss", "val_loss", "plcc", "srcc"]], b[["train_loss", "val_loss", "plcc", "srcc"]],
                       atol=2e-3)
    assert len(pd.read_csv(two.run_dir / "oof.csv")) == 20  # every validation image, gathered from both ranks


# -- divergence -------------------------------------------------------------------------------
def test_nan_loss_stops_with_a_clear_message(exposure_data, tmp_path, monkeypatch):
    params = tiny_params(exposure_data, tmp_path, **{"train.epochs": 2})
    import iqa_lib.losses as L

    real = L.LOSS_FNS["mse"]
    calls = {"n": 0}

    def poisoned(pred, y):  # the 5th step's loss turns NaN, as a diverging run's would
        calls["n"] += 1
        loss = real(pred, y)
        return loss * float("nan") if calls["n"] >= 5 else loss

    monkeypatch.setitem(L.LOSS_FNS, "mse", poisoned)
    with pytest.raises(DivergenceError, match="NaN/inf at epoch 0.*Lower optim.lr"):
        fit(params, progress=False)
    run = tmp_path / "runs" / "64_fold0"
    assert calls["n"] >= 5 and not (run / "64_fold0.ckpt").exists()  # nothing from the diverged epoch was saved
    assert json.loads((run / "manifest.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("loss, fix", [("mse", "another seed.*-p seed N"), ("rank", "add an mse term")])
def test_a_dead_score_head_stops_the_run_after_one_epoch(exposure_data, tmp_path, monkeypatch, loss, fix):
    import iqa_lib.train as T

    class DeadHead(T.MANIQA):  # the final ReLU's input below 0 for every image, as an unlucky init can leave it
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            torch.nn.init.zeros_(self.fc_score[-2].weight)
            torch.nn.init.constant_(self.fc_score[-2].bias, -1.0)

    monkeypatch.setattr(T, "MANIQA", DeadHead)
    with pytest.raises(DeadHeadError, match=f"every training prediction of epoch 0 was 0.*{fix}"):
        fit(tiny_params(exposure_data, tmp_path, **{"train.epochs": 3, "train.loss": loss}), progress=False)
    run = tmp_path / "runs" / "64_fold0"
    assert json.loads((run / "manifest.json").read_text())["status"] == "failed"
    assert not (run / "metrics.csv").exists()  # stopped before a second epoch, or a validation, was spent on it


def test_another_seed_starts_an_interrupted_run_over(exposure_data, tmp_path, monkeypatch, capsys):
    import iqa_lib.losses as L

    real = L.LOSS_FNS["mse"]
    calls = {"n": 0}

    def crashing(pred, y):  # a crash in epoch 1, after epoch 0's last.pt
        calls["n"] += 1
        if calls["n"] == 12:
            raise RuntimeError("crash")
        return real(pred, y)

    monkeypatch.setitem(L.LOSS_FNS, "mse", crashing)
    params = tiny_params(exposure_data, tmp_path, **{"train.epochs": 2})
    with pytest.raises(RuntimeError, match="crash"):
        fit(params, progress=False)
    run = tmp_path / "runs" / "64_fold0"
    assert (run / "last.pt").is_file()
    capsys.readouterr()
    fit(params.model_copy(update={"seed": 7}), progress=False)
    assert "trained with seed 4420, this call asks for 7: starting over" in capsys.readouterr().out
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["resumed_from_epoch"] is None
    assert manifest["config"]["seed"] == 7 and list(metrics_of(run)["epoch"]) == [0, 1]


# -- inference ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(exposure_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    return fit(tiny_params(exposure_data, out, **{"train.epochs": 1}), progress=False)


def test_predict_in_test_order_on_the_data_scale(exposure_data, trained):
    df = predict(trained.checkpoint, exposure_data, progress=False)
    test = pd.read_csv(exposure_data / "test.csv")
    assert list(df["img_name"]) == list(test["img_name"])
    assert df["mos"].between(0, 10).all() and df["mos"].std() > 0


def test_tta_is_the_mean_over_the_flips(exposure_data, trained):
    plain = predict(trained.checkpoint, exposure_data, progress=False)["mos"].to_numpy()
    tta = predict(trained.checkpoint, exposure_data, tta=True, progress=False)["mos"].to_numpy()
    model, ckpt = load_model(trained.checkpoint)
    from iqa_lib.data import ImageStore, load_table, to_model_input

    table = load_table(exposure_data, "test.csv", labelled=False)
    store = ImageStore.open(table["path"].tolist(), model.cfg.img_size, progress=False)
    x = to_model_input(torch.stack([torch.from_numpy(store[i]) for i in range(len(store))]))
    with torch.no_grad():
        manual = torch.stack([model(x), model(x.flip(-2)), model(x.flip(-1))]).mean(0).numpy() * 10
    assert np.allclose(tta, np.clip(manual, 0, 10), atol=1e-5)
    assert not np.allclose(tta, plain)


def test_checkpoint_of_another_variant_is_refused(exposure_data, trained):
    other = model_config(load_config("demo", 192, 0))
    with pytest.raises(CheckpointError, match=r"holds a 64px .* but a 192px .* was asked for"):
        predict(trained.checkpoint, exposure_data, expect=other, progress=False)


def test_files_that_are_not_checkpoints_are_refused(tmp_path):
    plain = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="is not an iqa_lib checkpoint"):
        load_model(plain)
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch file"):
        load_model(text)


def test_loading_never_runs_code_from_the_file(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.ckpt"
    torch.save({"format": "iqa_lib.checkpoint/1", "model": Payload()}, evil)
    with pytest.raises(CheckpointError, match="would run code"):
        load_model(evil)
    assert not marker.exists()


def test_fit_and_the_notebooks_resolve_one_mos_scale(tmp_path):
    """A folder that iqa_lib.datasets.prepare wrote records its MOS scale in dataset.json: the
    trainer (through load_config) and the notebooks (run_config) both take it over the profile's."""
    from iqa_lib.config import load_config
    from iqa_lib.notebook import run_config

    data = make_exposure_data(tmp_path / "data", n_train=30, n_test=2)
    train = pd.read_csv(data / "train.csv")
    train["mos"] *= 10  # MOS on 0-100, as CLIVE
    train.to_csv(data / "train.csv", index=False)
    (data / "dataset.json").write_text('{"dataset": "exposure", "mos_scale": 100.0}')
    cfg = load_config("demo", 64, 0, {"train.epochs": 1, "train.num_workers": 0},
                      data_dir=str(data), out_dir=str(tmp_path / "out"))
    notebook_cfg = run_config("demo", 64, 0, data_dir=str(data), out_dir=str(tmp_path / "out"))
    assert cfg.mos_scale == notebook_cfg.mos_scale == 100.0  # the profile says 10
    result = fit(cfg, progress=False)
    assert safe_torch_load(result.checkpoint)["mos_scale"] == 100.0
    assert json.loads(cfg.run.manifest.read_text())["config"]["mos_scale"] == 100.0
    assert predict(result.checkpoint, data, progress=False)["mos"].between(0, 100).all()
    # validation kept the 0-100 targets, and predict scores on the scale validation scored on
    assert pd.read_csv(cfg.run.oof)["mos"].max() > 10
    both = checkpoint_vs_oof(cfg, data)
    np.testing.assert_allclose(both["pred"], both["mos_y"], atol=1e-3)


# -- progressive resizing (train.init_from) ----------------------------------------------------
def test_init_from_starts_from_the_same_folds_smaller_run(exposure_data, tmp_path):
    import torch.nn.functional as F

    frozen = {"optim.lr": 0.0, "schedule.max_lr": 0.0, "schedule.min_lr": 0.0, "train.epochs": 1,  # weights stay
              "model.num_tab": 0}  # the TABs are sized by the token count: a run of another size cannot share them
    with pytest.raises(RuntimeError, match=r"128_fold0: train.init_from=64 starts this run from the best checkpoint "
                                           r"of 64_fold0, which has not completed .* Train it first"):
        fit(tiny_params(exposure_data, tmp_path, res=128, **{**frozen, "train.init_from": 64}), progress=False)
    fit(tiny_params(exposure_data, tmp_path, res=64, **{"train.epochs": 2, "model.num_tab": 0}), progress=False)
    with pytest.raises(RuntimeError, match=r"128_fold0: train.init_from: 64_fold0 is another model \(head_hidden: 64 "
                                           r"there, 32 here\): give both sizes the same model\.\* values"):
        fit(tiny_params(exposure_data, tmp_path, res=128, **{**frozen, "train.init_from": 64, "model.head_hidden": 32}),
            progress=False)
    big = fit(tiny_params(exposure_data, tmp_path, res=128, **{**frozen, "train.init_from": 64}), progress=False)
    cold = fit(tiny_params(exposure_data, tmp_path / "cold", res=128, **frozen), progress=False)
    src = safe_torch_load(tmp_path / "runs/64_fold0/64_fold0.ckpt")["model"]
    got, fresh = safe_torch_load(big.checkpoint)["model"], safe_torch_load(cold.checkpoint)["model"]
    assert json.loads((big.run_dir / "manifest.json").read_text())["init_from"] == "64_fold0"
    weights = [k for k in src if k != "vit.pos_embed" and not k.endswith("attn_mask")]
    assert all(torch.equal(got[k], src[k]) for k in weights), "every weight is the 64 px run's"
    assert not all(torch.equal(fresh[k], src[k]) for k in weights), "without init_from they are not"
    assert got["vit.pos_embed"].shape == (1, 1 + 8 * 8, 64)  # the 4 x 4 grid of 64 px resampled to 128 px's 8 x 8
    assert torch.equal(got["vit.pos_embed"][:, :1], src["vit.pos_embed"][:, :1])  # the class token's, as it was
    grid = src["vit.pos_embed"][:, 1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(8, 8), mode="bicubic", antialias=True).permute(0, 2, 3, 1).reshape(1, 64, 64)
    torch.testing.assert_close(got["vit.pos_embed"][:, 1:], resized)
    mask = "swintransformer1.layers.0.blocks.1.attn_mask"  # 128 px shifts its windows; 64 px is one window
    assert mask in got and mask not in src


def test_a_run_started_from_a_source_retrained_since_is_kept_with_a_warning(exposure_data, tmp_path, capsys):
    from iqa_lib.config import file_digest

    same = {"train.epochs": 1, "model.num_tab": 0}
    small = tiny_params(exposure_data, tmp_path, res=64, **same)
    big = tiny_params(exposure_data, tmp_path, res=128, **same, **{"train.init_from": 64})
    fit(small, progress=False)
    first = fit(big, progress=False)
    before = json.loads(big.run.manifest.read_text())
    assert before["init_from_checkpoint"] == file_digest(small.run.checkpoint)
    capsys.readouterr()
    assert big.run.retrained_source() is None and "WARNING" not in (fit(big, progress=False), capsys.readouterr().out)[1]

    fit(tiny_params(exposure_data, tmp_path, res=64, **same, seed=7), progress=False, force=True)  # other weights
    stamp = first.checkpoint.stat().st_mtime_ns
    again = fit(big, progress=False)
    out = capsys.readouterr().out
    assert big.run.retrained_source() == "64_fold0"
    assert "128_fold0: WARNING it started from 64_fold0 (train.init_from), which has been retrained since" in out
    assert again.status == "completed" and first.checkpoint.stat().st_mtime_ns == stamp  # kept, not retrained
    fit(big, progress=False, force=True)  # from the new 64_fold0, with a manifest of its own
    after = json.loads(big.run.manifest.read_text())
    assert big.run.retrained_source() is None and after["init_from_checkpoint"] == file_digest(small.run.checkpoint)
    assert after["started"] > before["ended"], "a forced run starts a new manifest, not the old run's"


def test_a_forced_retrain_keeps_the_runs_files_aside_until_it_completes(exposure_data, tmp_path, monkeypatch, capsys):
    from iqa_lib import train

    cfg = tiny_params(exposure_data, tmp_path, **{"train.epochs": 1})
    fit(cfg, progress=False)
    lock = {cfg.run.lock.name, cfg.run.lock.name + ".json"}
    before = {p.name: p.read_bytes() for p in cfg.run.dir.iterdir() if p.name not in lock}
    assert {cfg.run.checkpoint.name, "oof.csv", "manifest.json"} <= set(before)

    def boom(*args, **kwargs):
        raise RuntimeError("validation failed")

    monkeypatch.setattr(train, "all_metrics", boom)  # the retrain fails after its first epoch's training
    with pytest.raises(RuntimeError, match="validation failed"):
        fit(cfg, progress=False, force=True)
    assert f"the previous files stay in {cfg.run.aside}" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in cfg.run.aside.iterdir()} == before, "the old run, intact"
    assert not cfg.run.checkpoint.exists() and json.loads(cfg.run.manifest.read_text())["status"] == "failed"
    with pytest.raises(RuntimeError, match="validation failed"):
        fit(cfg, progress=False, force=True)  # forced again: the old run stays aside, the failed one goes
    assert {p.name: p.read_bytes() for p in cfg.run.aside.iterdir()} == before

    monkeypatch.undo()
    assert fit(cfg, progress=False).status == "completed"  # the retrain, rerun, completes
    assert not cfg.run.aside.exists(), "set aside only until the new run completes"
