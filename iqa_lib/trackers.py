"""Experiment tracking for `fit`: `train.logger` = none, tensorboard, wandb, mlflow, or several.

Each tracker is an optional extra (`pip install "iqa-lib[tensorboard]"`, `[wandb]`, `[mlflow]`);
`require(cfg)` fails before training when one is missing, naming the extra. `open_trackers`
returns one object that fans out to every tracker asked for (a no-op for none, and on every
DDP rank but 0)::

    trackers.log_step(step, loss_sum, loss_n, lr)  # after each optimiser step
    trackers.log_epoch(row)                         # after each epoch's metrics.csv row
    trackers.finish(best)                           # at the end; finish(status="failed") on an error

One training run = one tracker run named `cfg.run.name` ({res}_fold{k}) in the group
`group_name(cfg)` (profile and out_dir's folder name: demo-demo), so a grid's runs sit together.
The x axis is the global optimiser step, so a resumed run continues its curves. Logged:

    train/loss, train/lr          every optimiser step: the step's training loss (train.loss, rank 0's batches) and
                                  the learning rate after the step (metrics.csv's `lr` convention)
    val/loss, val/plcc, val/srcc, val/score, val/plcc_srcc, train/epoch_loss, train/images_per_s, epoch
                                  every epoch, at the epoch's last step (the metrics.csv row)
    best/epoch, best/plcc, ...    at the end: the best checkpoint's metrics
    the config                    cfg.to_dict() (W&B nested; TensorBoard hparams and MLflow params flat)

The step losses stay on the device and are read in one transfer every 10 steps (when the
trainer syncs anyway), so tracking adds no GPU sync per step.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import time
from pathlib import Path
from typing import Any

from .config import Config, flatten

# tracker -> the modules it needs; the extra to install has the tracker's name.
PACKAGES = {"tensorboard": ("tensorboard", "torch.utils.tensorboard"), "wandb": ("wandb",), "mlflow": ("mlflow",)}
WANDB_PROJECT = "iqa-kit"  # unless $WANDB_PROJECT is set
FLUSH_EVERY = 10  # optimiser steps between reads of the step losses (the trainer's own check_finite cadence)
EPOCH_KEYS = {"val_loss": "val/loss", "plcc": "val/plcc", "srcc": "val/srcc", "score": "val/score",
              "plcc_srcc": "val/plcc_srcc", "train_loss": "train/epoch_loss",
              "train_images_per_s": "train/images_per_s", "epoch": "epoch"}


class TrackerUnavailable(ImportError):
    """train.logger names a tracker whose package is not installed; the message names the extra."""


def require(cfg: Config) -> None:
    """Import every tracker `cfg.train.logger` asks for; raise TrackerUnavailable for a missing one."""
    for name in cfg.train.loggers:
        for module in PACKAGES[name]:
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise TrackerUnavailable(
                    f"train.logger={cfg.train.logger!r} needs {name}, which cannot be imported ({e}). Install it "
                    f"with `pip install \"iqa-lib[{name}]\"` (from a checkout: `pip install -e \".[{name}]\"`), or set "
                    f"logger to none."
                ) from e


def group_name(cfg: Config) -> str:
    """The tracker group of a grid: the profile and out_dir's folder name ('demo-demo')."""
    return f"{cfg.profile}-{Path(cfg.out_dir).name}"


def run_key(cfg: Config, started: str | None) -> str:
    """A stable id for one training run: the same across resumes, a new one when it restarts from scratch."""
    text = f"{Path(cfg.out_dir).resolve()}|{cfg.run.name}|{started}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _scalar(value: Any) -> Any:
    """A flat hyper-parameter as TensorBoard and MLflow take it: a number or text."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return json.dumps(value)
    return value


# --------------------------------------------------------------------------------------------
# the trackers: each with log(rows) and finish(best, status)
# --------------------------------------------------------------------------------------------
class _TensorBoard:
    def __init__(self, cfg: Config, start_step: int, key: str):
        from torch.utils.tensorboard import SummaryWriter

        self.cfg = cfg
        # purge_step: events a crashed run logged after its last saved step are hidden on resume
        # (and a run retrained from scratch hides the old one's).
        self.writer = SummaryWriter(str(cfg.outputs.tensorboard / cfg.run.name), purge_step=start_step + 1)
        if start_step == 0:
            text = json.dumps(cfg.to_dict(), indent=2)
            self.writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)

    def log(self, rows):
        for step, values in rows:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def finish(self, best, status, step):
        if best:
            from torch.utils.tensorboard.summary import hparams

            metrics = {f"best/{k}": v for k, v in best.items()}
            params = {k: _scalar(v) for k, v in flatten(self.cfg.to_dict()).items()}
            for summary in hparams(params, metrics):  # the HPARAMS tab: config next to the best metrics
                self.writer.file_writer.add_summary(summary)
            self.log([(step, metrics)])
        self.writer.close()


class _WandB:
    def __init__(self, cfg: Config, start_step: int, key: str):
        import wandb

        root = os.environ.get("WANDB_DIR") or str(cfg.outputs.root)  # wandb writes {dir}/wandb/
        Path(root).mkdir(parents=True, exist_ok=True)
        # WANDB_MODE (offline, disabled), WANDB_ENTITY and the API key are read by wandb itself.
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or WANDB_PROJECT, group=group_name(cfg), name=cfg.run.name,
            job_type="train", config=cfg.to_dict(), dir=root, id=key, resume="allow",
            # a run of its own, whatever else the process has open (a notebook's own wandb.init)
            reinit="create_new",
        )

    def log(self, rows):
        for step, values in rows:
            self.run.log(values, step=step)

    def finish(self, best, status, step):
        if best:
            self.run.summary.update({f"best/{k}": v for k, v in best.items()})
        self.run.finish(exit_code=0 if status == "completed" else 1)


class _MLflow:
    def __init__(self, cfg: Config, start_step: int, key: str):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{cfg.outputs.mlflow}"
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            cfg.outputs.root.mkdir(parents=True, exist_ok=True)
        self.client = client = MlflowClient(tracking_uri=uri)
        group = group_name(cfg)
        experiment = client.get_experiment_by_name(group)
        exp_id = experiment.experiment_id if experiment else client.create_experiment(group)
        found = client.search_runs([exp_id], filter_string=f"tags.`iqa.run_key` = '{key}'", max_results=1)
        if found:  # a resumed run continues its MLflow run
            self.run_id = found[0].info.run_id
            client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = client.create_run(exp_id, run_name=cfg.run.name,
                                            tags={"iqa.run_key": key, "profile": cfg.profile}).info.run_id
            params = [Param(k, str(_scalar(v))[:6000]) for k, v in flatten(cfg.to_dict()).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per call
                client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, rows):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for step, values in rows for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def finish(self, best, status, step):
        if best:
            self.log([(step, {f"best/{k}": v for k, v in best.items()})])
        self.client.set_terminated(self.run_id, {"completed": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED"))


BACKENDS = {"tensorboard": _TensorBoard, "wandb": _WandB, "mlflow": _MLflow}


# --------------------------------------------------------------------------------------------
# the fan-out
# --------------------------------------------------------------------------------------------
class Trackers:
    """Every tracker of one run behind one interface; with none, every call does nothing."""

    def __init__(self, backends: dict, loss_base=(0.0, 0), step: int = 0):
        self.backends = backends
        self._pending: list = []  # (step, loss_sum on the device, loss_n, lr) not yet read
        self._base = (float(loss_base[0]), int(loss_base[1]))  # loss_sum, loss_n after the last step read
        self._step = step

    def __bool__(self) -> bool:
        return bool(self.backends)

    def log_step(self, step: int, loss_sum, loss_n: int, lr: float) -> None:
        """After an optimiser step: the epoch's running loss sum/count (a tensor: kept, read later)."""
        if not self.backends:
            return
        self._pending.append((step, loss_sum.detach().clone() if hasattr(loss_sum, "detach") else loss_sum, loss_n, lr))
        if step % FLUSH_EVERY == 0:
            self._flush()

    def log_epoch(self, row: dict) -> None:
        """After an epoch: its metrics.csv row, at its last step."""
        self._flush()
        self._base = (0.0, 0)  # the next epoch's loss sum starts from zero
        self._send([(int(row["step"]), {EPOCH_KEYS[k]: float(row[k]) for k in EPOCH_KEYS if k in row})])

    def finish(self, best: dict | None = None, status: str = "completed") -> None:
        """Close every tracker; with `best` ({"epoch": e, metric: value}) log the best checkpoint's metrics."""
        try:
            self._flush()
        except Exception:  # a failing device or tracker: close the others anyway
            if status == "completed":
                raise
        best = None if not best or best.get("epoch") is None else {k: float(v) for k, v in best.items()}
        for name, backend in list(self.backends.items()):
            try:
                backend.finish(best, status, self._step)
            except Exception as e:
                print(f"WARNING closing the {name} tracker failed: {type(e).__name__}: {e}")
        self.backends = {}

    def _flush(self) -> None:
        if not self._pending:
            return
        import torch

        pending, self._pending = self._pending, []
        sums = [p[1] for p in pending]
        if all(isinstance(s, torch.Tensor) for s in sums):
            sums = torch.stack([s.float().reshape(()) for s in sums]).tolist()  # one transfer
        rows = []
        base_sum, base_n = self._base
        for (step, _, n, lr), s in zip(pending, sums):
            s = float(s)
            loss = (s - base_sum) / (n - base_n) if n > base_n else s / max(n, 1)
            rows.append((step, {"train/loss": loss, "train/lr": float(lr)}))
            base_sum, base_n = s, n
        self._base = (base_sum, base_n)
        self._send(rows)

    def _send(self, rows) -> None:
        self._step = max([self._step] + [step for step, _ in rows])
        for name, backend in list(self.backends.items()):
            try:
                backend.log(rows)
            except Exception as e:  # logging must not end hours of training
                print(f"WARNING the {name} tracker failed ({type(e).__name__}: {e}); it is off for the rest of "
                      f"this run, training goes on.")
                self.backends.pop(name)
                try:
                    backend.finish(None, "failed", self._step)
                except Exception:
                    pass


def open_trackers(cfg: Config, rank: int = 0, *, step: int = 0, loss_base=(0.0, 0),
                  started: str | None = None) -> Trackers:
    """The trackers of `cfg.train.logger` for one run, resumed at optimiser step `step` with the
    epoch's loss so far `loss_base` (sum, count); only rank 0 logs. `started` (the manifest's start
    time) identifies the run across resumes."""
    names = cfg.train.loggers if rank == 0 else ()
    if not names:
        return Trackers({})
    require(cfg)
    key = run_key(cfg, started)
    backends = {}
    try:
        for name in names:
            backends[name] = BACKENDS[name](cfg, step, key)
    except BaseException:
        Trackers(backends).finish(status="failed")
        raise
    return Trackers(backends, loss_base, step)
