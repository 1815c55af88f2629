"""Experiment tracking (train.logger): TensorBoard, W&B offline, MLflow, several at once, and the errors.

Tiny fits on 40 images (4 optimiser steps per epoch, 2 epochs). No network: W&B runs offline.
"""
import importlib.util
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import iqa_lib.data as D
from conftest import make_exposure_data
from iqa_lib.config import ConfigError, load_config
from iqa_lib.train import fit
from iqa_lib.trackers import FLUSH_EVERY, Trackers, TrackerUnavailable, group_name, open_trackers, run_key

EPOCH_TAGS = {"val/loss": "val_loss", "val/plcc": "plcc", "val/srcc": "srcc", "val/score": "score",
              "val/plcc_srcc": "plcc_srcc", "train/epoch_loss": "train_loss", "train/images_per_s": "train_images_per_s"}
BEST = ("plcc", "srcc", "score", "plcc_srcc", "val_loss")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_exposure_data(tmp_path_factory.mktemp("trackers"), n_train=40, n_test=4)


def params(data, out_dir, logger, **overrides):
    return load_config("demo", 64, 0, {"train.epochs": 2, "train.num_workers": 0, "train.logger": logger,
                                       "train.deterministic": True, **overrides},
                       data_dir=str(data), out_dir=str(out_dir))


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B without network, keys or writes outside tmp_path."""
    for name in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_GROUP", "WANDB_RUN_ID", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    return tmp_path / "wandb-home"


def read_scalars(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        assert len(steps) == len(set(steps)), f"{tag} logged twice at a step: {steps}"
        out[tag] = {e.step: e.value for e in events}
    return out


def wandb_records(run_dir: Path, timeout: float = 60.0) -> list:
    """The records of an offline run's run-ID.wandb file, once complete. wandb's service process writes
    the file and may still be flushing it when `run.finish()` has returned (seen on a loaded 2-core
    machine), so this waits for the exit record and a settled size (at most `timeout` seconds)."""
    (path,) = run_dir.glob("run-*.wandb")
    deadline, size = time.monotonic() + timeout, -1
    while True:
        records = _read_wandb_log(path.read_bytes())
        done = any(r.WhichOneof("record_type") == "exit" for r in records) and path.stat().st_size == size
        if done or time.monotonic() > deadline:
            return records
        size = path.stat().st_size
        time.sleep(0.5)


def _read_wandb_log(raw: bytes) -> list:
    """The records of a run-ID.wandb file's bytes (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    pos, chunk, records, block = 7, b"", [], 32768  # 7: the ':W&B' header
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if kind == 0:
            pos += block - pos % block
            continue
        chunk += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def wandb_run(records):
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            for u in r.summary.update:
                summary["/".join(u.nested_key) or u.key] = json.loads(u.value_json)
    history = [{"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    return run, config, summary, history


def assert_matches_metrics_csv(scalars, cfg):
    history = pd.read_csv(cfg.run.metrics)
    manifest = json.loads(cfg.run.manifest.read_text())
    last = int(history["step"].iloc[-1])
    assert sorted(scalars["train/loss"]) == list(range(1, last + 1))  # every optimiser step, once
    assert sorted(scalars["train/lr"]) == list(range(1, last + 1))
    for i, row in history.iterrows():
        step = int(row["step"])
        for tag, column in EPOCH_TAGS.items():
            assert scalars[tag][step] == pytest.approx(row[column], rel=1e-5, abs=1e-6), (tag, step)
        assert scalars["train/lr"][step] == pytest.approx(row["lr"], rel=1e-6)  # metrics.csv's lr convention
        # the step losses of an epoch average to its train_loss (one batch per step)
        first = int(history["step"].shift(fill_value=0)[i]) + 1
        steps = [scalars["train/loss"][s] for s in range(first, step + 1)]
        assert np.mean(steps) == pytest.approx(row["train_loss"], rel=1e-4)
    for key in BEST:
        assert scalars[f"best/{key}"][last] == pytest.approx(manifest["best"][key], rel=1e-5, abs=1e-6)
    assert scalars["best/epoch"][last] == manifest["best_epoch"]


# --------------------------------------------------------------------------------------------
# the trackers
# --------------------------------------------------------------------------------------------
def test_tensorboard_logs_steps_epochs_config_and_best(data, tmp_path):
    cfg = params(data, tmp_path / "grid", "tensorboard")
    result = fit(cfg, progress=False)
    assert result.status == "completed" and len(result.history) == 2
    folder = cfg.outputs.tensorboard / "64_fold0"
    assert folder == tmp_path / "grid" / "tensorboard" / "64_fold0" and list(folder.glob("events.out.tfevents.*"))
    scalars = read_scalars(folder)
    assert_matches_metrics_csv(scalars, cfg)
    assert scalars["epoch"] == {int(s): e for s, e in zip(result.history["step"], result.history["epoch"])}

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    acc.Reload()
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text.replace("\n    ", "\n"))["train"]["logger"] == "tensorboard"
    assert "_hparams_/session_start_info" in acc.summary_metadata  # the HPARAMS tab


def test_a_resumed_run_continues_its_curves(data, tmp_path, monkeypatch):
    """Stopped in epoch 1 after step 7, one step past its last save (step 6, mid-epoch), then resumed:
    the resumed process hides the old step 7 and logs it again, exactly; every step shows once."""
    cfg = params(data, tmp_path, "tensorboard", **{"train.save_every_steps": 3})
    real, batches = D.to_model_input, {"n": 0}

    def stop_at_batch_8(*args, **kwargs):
        if kwargs.get("train"):
            batches["n"] += 1
            if batches["n"] == 8:
                raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(D, "to_model_input", stop_at_batch_8)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, progress=False)
    monkeypatch.undo()
    assert torch.load(cfg.run.last, weights_only=False)["step"] == 6
    before = read_scalars(cfg.outputs.tensorboard / "64_fold0")
    assert sorted(before["train/loss"]) == list(range(1, 8))  # the steps before the stop were flushed

    assert fit(cfg, progress=False).status == "completed"
    scalars = read_scalars(cfg.outputs.tensorboard / "64_fold0")  # asserts no step twice
    assert_matches_metrics_csv(scalars, cfg)  # incl. epoch 1's step losses, from both processes
    # deterministic: the replayed step 7 (from the saved partial epoch loss) equals the first one
    assert {s: scalars["train/loss"][s] for s in before["train/loss"]} == pytest.approx(before["train/loss"])


def test_wandb_offline_run_is_named_grouped_with_config_and_best(data, tmp_path, offline_wandb, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))  # the user's choice wins over out_dir
    cfg = params(data, tmp_path / "demo", "wandb")
    fit(cfg, progress=False)
    (run_dir,) = (tmp_path / "wandb-dir" / "wandb").glob("offline-run-*")
    assert not cfg.outputs.wandb.exists()
    run, config, summary, history = wandb_run(wandb_records(run_dir))
    assert (run.display_name, run.run_group, run.project) == ("64_fold0", "demo-demo", "iqa-kit")
    assert run.run_id == run_key(cfg, json.loads(cfg.run.manifest.read_text())["started"])
    assert run_dir.name.endswith(run.run_id)
    assert config["train"] == cfg.to_dict()["train"] and config["model"] == cfg.to_dict()["model"]
    manifest = json.loads(cfg.run.manifest.read_text())
    assert summary["best/epoch"] == manifest["best_epoch"]
    for key in BEST:
        assert summary[f"best/{key}"] == pytest.approx(manifest["best"][key])
    metrics = pd.read_csv(cfg.run.metrics)
    srcc = {h["_step"]: h["val/srcc"] for h in history if "val/srcc" in h}
    assert srcc == pytest.approx(dict(zip(metrics["step"], metrics["srcc"])))
    assert sorted(h["_step"] for h in history if "train/loss" in h) == list(range(1, int(metrics["step"].iloc[-1]) + 1))
    assert [r for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "exit"][0].exit.exit_code == 0


def test_wandb_respects_the_users_project(data, tmp_path, offline_wandb, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "my-project")
    cfg = params(data, tmp_path / "out", "wandb", **{"train.epochs": 1})
    fit(cfg, progress=False)
    (run_dir,) = cfg.outputs.wandb.glob("offline-run-*")  # no WANDB_DIR: under out_dir
    run, *_ = wandb_run(wandb_records(run_dir))
    assert (run.project, run.run_group) == ("my-project", "demo-out")


def test_several_loggers_at_once(data, tmp_path, offline_wandb):
    cfg = params(data, tmp_path / "grid", " TensorBoard , wandb")
    assert cfg.train.logger == "tensorboard,wandb" and cfg.train.loggers == ("tensorboard", "wandb")
    fit(cfg, progress=False)
    assert_matches_metrics_csv(read_scalars(cfg.outputs.tensorboard / "64_fold0"), cfg)
    (run_dir,) = cfg.outputs.wandb.glob("offline-run-*")
    run, config, summary, _ = wandb_run(wandb_records(run_dir))
    assert (run.display_name, run.run_group) == ("64_fold0", "demo-grid")
    assert summary["best/srcc"] == pytest.approx(json.loads(cfg.run.manifest.read_text())["best"]["srcc"])


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (iqa-lib[mlflow])")
def test_mlflow_run_in_the_grids_experiment(data, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from mlflow.tracking import MlflowClient

    cfg = params(data, tmp_path / "demo", "mlflow")
    fit(cfg, progress=False)
    assert cfg.outputs.mlflow.is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{cfg.outputs.mlflow}")
    experiment = client.get_experiment_by_name("demo-demo")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "64_fold0" and run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2" and run.data.params["train.logger"] == "mlflow"
    metrics, manifest = pd.read_csv(cfg.run.metrics), json.loads(cfg.run.manifest.read_text())
    srcc = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/srcc")}
    assert srcc == pytest.approx(dict(zip(metrics["step"], metrics["srcc"])))
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == metrics["step"].iloc[-1]
    assert run.data.metrics["best/srcc"] == pytest.approx(manifest["best"]["srcc"])
    assert run.data.metrics["best/epoch"] == manifest["best_epoch"]


# --------------------------------------------------------------------------------------------
# errors and the no-op
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("logger, missing, module", [("wandb", "wandb", "wandb"),
                                                     ("tensorboard", "tensorboard", "tensorboard"),
                                                     ("tensorboard,mlflow", "mlflow", "mlflow")])
def test_a_missing_package_fails_before_training_naming_the_extra(data, tmp_path, monkeypatch, logger, missing,
                                                                  module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    cfg = params(data, tmp_path, logger)
    with pytest.raises(TrackerUnavailable, match=rf'needs {missing}.*pip install "iqa-lib\[{missing}\]"'):
        fit(cfg, progress=False)
    assert not cfg.run.manifest.exists() and not cfg.run.metrics.exists() and not cfg.outputs.folds.exists()
    assert isinstance(TrackerUnavailable("x"), ImportError)


@pytest.mark.parametrize("value, message", [
    ("tensorbord", r"unknown logger 'tensorbord' \(did you mean 'tensorboard'\?\): choose none or one or several "
                   r"of tensorboard, wandb, mlflow"),
    ("wandb,comet", r"unknown logger 'comet'.*tensorboard, wandb, mlflow"),
    ("none,wandb", r"none cannot be combined"),
    (" , ", r"write none or a comma list of tensorboard, wandb, mlflow"),
    (3, r"train\.logger = 3 .*string"),
])
def test_bad_logger_is_a_config_error_naming_the_choices(value, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", 64, 0, {"train.logger": value})


def test_logger_values_and_the_notebook_shortcut():
    assert load_config("demo", 64, 0).train.logger == "none" and load_config("demo", 64, 0).train.loggers == ()
    assert load_config("demo", 64, 0, logger="wandb,tensorboard,wandb").train.loggers == ("wandb", "tensorboard")
    assert load_config("demo", 64, 0, {"train.logger": ["mlflow", "wandb"]}).train.logger == "mlflow,wandb"
    assert load_config("demo", 64, 0, logger="NONE").train.logger == "none"
    cfg = load_config("demo", 64, 0, out_dir="outputs/demo")
    assert group_name(cfg) == "demo-demo" and cfg.outputs.tensorboard == Path(cfg.out_dir) / "tensorboard"


def test_none_and_other_ranks_log_nothing(tmp_path):
    cfg = load_config("demo", 64, 0, out_dir=str(tmp_path), logger="tensorboard")
    assert not open_trackers(cfg, rank=1)  # DDP: only rank 0 logs
    assert not open_trackers(load_config("demo", 64, 0, out_dir=str(tmp_path)))
    noop = open_trackers(cfg, rank=1)
    noop.log_step(10, torch.tensor(1.0), 1, 0.1), noop.log_epoch({"step": 10}), noop.finish()
    assert not list(tmp_path.iterdir())


class Recorder:
    def __init__(self):
        self.rows, self.closed = [], None

    def log(self, rows):
        self.rows += rows

    def finish(self, best, status, step):
        self.closed = (best, status, step)


def test_step_losses_are_read_lazily_and_exactly():
    """Every FLUSH_EVERY steps, in one transfer; the step's own loss (here 2 batches a step), after a resume too."""
    rec = Recorder()
    trackers = Trackers({"rec": rec}, loss_base=(3.0, 2), step=20)  # resumed mid-epoch: 2 batches summed to 3.0
    loss_sum, n = torch.tensor(3.0), 2
    losses = [float(i) for i in range(1, 2 * FLUSH_EVERY + 1)]
    for k in range(FLUSH_EVERY):
        for batch in losses[2 * k:2 * k + 2]:
            loss_sum += batch  # in place, as the trainer does
            n += 1
        trackers.log_step(21 + k, loss_sum, n, lr=0.1 * k)
        if 21 + k < 30:
            assert rec.rows == []  # nothing read before the 10-step mark
    assert [s for s, _ in rec.rows] == list(range(21, 31))
    assert [r["train/loss"] for _, r in rec.rows] == [np.mean(losses[2 * k:2 * k + 2]) for k in range(10)]
    assert [r["train/lr"] for _, r in rec.rows] == [0.1 * k for k in range(10)]
    trackers.log_epoch({"epoch": 3, "step": 30, "srcc": 0.5, "plcc": 0.4, "lr": 9.0})
    assert rec.rows[10:] == [(30, {"val/srcc": 0.5, "val/plcc": 0.4, "epoch": 3.0})]
    trackers.log_step(31, torch.tensor(2.0), 1, 0.5)  # a new epoch's sum starts from zero
    trackers.finish({"epoch": 2, "srcc": 0.7}, status="completed")
    assert rec.rows[-1] == (31, {"train/loss": 2.0, "train/lr": 0.5})
    assert rec.closed == ({"epoch": 2.0, "srcc": 0.7}, "completed", 31)


def test_a_failing_tracker_is_switched_off_not_the_training(capsys):
    class Broken(Recorder):
        def log(self, rows):
            raise OSError("disk full")

    good, broken = Recorder(), Broken()
    trackers = Trackers({"good": good, "broken": broken})
    trackers.log_epoch({"epoch": 0, "step": 4, "srcc": 0.1})
    trackers.log_epoch({"epoch": 1, "step": 8, "srcc": 0.2})
    assert [s for s, _ in good.rows] == [4, 8] and broken.closed[1] == "failed"
    assert "broken tracker failed (OSError: disk full); it is off" in capsys.readouterr().out


def test_run_key_is_stable_across_resumes_and_new_for_a_fresh_start(tmp_path):
    cfg = load_config("demo", 64, 0, out_dir=str(tmp_path))
    assert run_key(cfg, "2025-01-01T00:00:00") == run_key(cfg, "2025-01-01T00:00:00")
    assert run_key(cfg, "2025-01-01T00:00:00") != run_key(cfg, "2025-01-02T00:00:00")
    assert run_key(cfg, "t") != run_key(load_config("demo", 64, 1, out_dir=str(tmp_path)), "t")
