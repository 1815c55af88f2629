"""One training run: `fit(params)` trains one (resolution, fold) with the team's recipe (SPEC §4).

Writes under `{out_dir}/runs/{res}_fold{k}/`:
  {res}_fold{k}.ckpt   best weights (a kit checkpoint, see checkpoint.py)
  last.pt              everything needed to resume: model, optimiser, scheduler, scaler,
                       epoch, step, position in the epoch, RNG states, history, config
  metrics.csv          one row per epoch
  oof.csv              out-of-fold predictions of the best epoch (img_name, mos, pred)
  manifest.json        config, git commit, versions, device, times, status, best metrics

Rerunning the same call resumes from `last.pt`; a run whose manifest says `completed`
returns at once. Every file is written atomically (temp file + rename).
"""
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import data as D
from .checkpoint import (KIT_FORMAT, atomic_torch_save, atomic_write_json, atomic_write_text, remove_stale_temp_files,
                         safe_torch_load)
from .crops import grid_crops, random_crops, whole_image_view
from .folds import folds_for_table, write_folds
from .metrics import all_metrics
from .model import MANIQA, MANIQAConfig
from .params import model_config
from .params import run_dir as run_folder
from .runinfo import environment_info, now_iso
from .schedule import CosineAnnealingWarmupRestarts

VAL_METRIC = "plcc_srcc"  # the team's model-selection metric


class DivergenceError(RuntimeError):
    """The loss became NaN/inf: training stopped before saving anything from it."""


@dataclass
class RunResult:
    run_dir: Path
    status: str
    best_epoch: int | None
    best: dict
    history: pd.DataFrame = field(repr=False)

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / f"{self.run_dir.name}.ckpt"


# --------------------------------------------------------------------------------------------
# configuration helpers
# --------------------------------------------------------------------------------------------
def run_dir_of(params: dict) -> Path:
    return run_folder(params["out_dir"], params["res"], params["fold"])


def pick_device(name: str = "auto", rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA GPU is visible: use 'auto' or 'cpu'.")
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None means plain fp32. bf16/fp16 autocast only on CUDA: on CPUs it is usually slower."""
    if precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"train.precision must be 'bf16', 'fp16' or 'fp32', got {precision!r}")
    if device.type != "cuda" or precision == "fp32":
        return None
    return torch.bfloat16 if precision == "bf16" else torch.float16


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(on: bool) -> None:
    """Bit-identical reruns on one machine (slower on GPU: cuBLAS needs a fixed workspace)."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=False)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on


def schedule_args(sp: dict) -> dict:
    """The `schedule:` params as CosineAnnealingWarmupRestarts arguments, with their types."""
    ints = ("first_cycle_steps", "warmup_steps")
    return {k: int(v) if k in ints else float(v) for k, v in sp.items()}


def epoch_seed(seed: int, epoch: int) -> int:
    # A fresh, reproducible stream per epoch: resuming at an epoch needs no saved RNG.
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def load_folds(params: dict) -> pd.DataFrame:
    """One row per training image with its `fold` and absolute `path`.

    Uses `{out_dir}/folds.csv` (written by 02_folds) when it matches the data, else builds
    the folds of SPEC §2 and writes that file, so every run of a grid shares one split.
    """
    table = D.load_table(
        params["data_dir"], "train.csv", labelled=True, mos_scale=float(params["mos_scale"]),
        check_images=params["train"].get("check_images", "open"),
    )
    folds = folds_for_table(table, n_folds=int(params["n_folds"]))
    folds_csv = Path(params["out_dir"]) / "folds.csv"
    if folds_csv.is_file():
        saved = pd.read_csv(folds_csv, dtype={"img_name": str})
        n_folds = int(params["n_folds"])
        mismatch = (
            not {"fold", "mos"} <= set(saved) or set(saved["img_name"]) != set(folds["img_name"])
            or sorted(saved["fold"].unique()) != list(range(n_folds))
            or not np.allclose(saved.set_index("img_name")["mos"].loc[folds["img_name"]], folds["mos"])
        )
        if mismatch:
            raise ValueError(
                f"{folds_csv} does not match {params['data_dir']}/train.csv with n_folds={n_folds} (other images, "
                f"MOS or number of folds): rerun notebooks/02_folds.ipynb (or delete {folds_csv}) to rebuild the folds."
            )
        folds = folds.drop(columns="fold").merge(saved[["img_name", "fold"]], on="img_name", how="left")
    else:
        write_folds(folds, params["out_dir"])
    return folds.reset_index(drop=True)


class EpochBatches(torch.utils.data.Sampler):
    """The batches of one epoch for one rank: a seeded permutation of `indices`, cut into
    global batches, each split across ranks. `start` skips batches already trained on
    (resuming mid-epoch) without touching their images."""

    def __init__(self, indices, batch_size, seed, epoch, start=0, rank=0, world=1, shuffle=True):
        self.indices, self.batch_size, self.start, self.rank, self.world = np.asarray(indices), batch_size, start, rank, world
        if shuffle:
            g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
            self.indices = self.indices[torch.randperm(len(self.indices), generator=g).numpy()]

    def n_batches(self) -> int:
        n, bs = len(self.indices), self.batch_size
        # With several ranks a last batch smaller than the world would leave a rank empty
        # (and DDP waiting for it): drop it on every rank alike.
        return n // bs + (1 if n % bs and (self.world == 1 or n % bs >= self.world) else 0)

    def __len__(self):
        return max(0, self.n_batches() - self.start)

    def __iter__(self):
        for b in range(self.start, self.n_batches()):
            batch = self.indices[b * self.batch_size : (b + 1) * self.batch_size]
            yield batch[self.rank :: self.world].tolist()


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
def fit(params: dict, *, progress: bool = True, force: bool = False) -> RunResult:
    """Train one run; resume it if interrupted; return at once if it already completed.

    `force=True` trains from scratch even if the run completed or has a resume state.

    `params` is a merged parameter dict (see `iqa_lib.params.load_params`). With
    `train.devices` > 1 it spawns one process per device (DistributedDataParallel, NCCL on
    GPUs, gloo on CPUs) from Python, so it also works inside a notebook run by papermill.
    """
    run_dir = run_dir_of(params)
    if not force:
        done = completed_result(run_dir)
        if done is not None:
            _check_same_recipe(run_dir, params)
            print(f"{run_dir.name}: already completed (best epoch {done.best_epoch}); pass force=True to retrain.")
            return done
    world = int(params["train"].get("devices", 1))
    if world > 1:
        port = _free_port()
        torch.multiprocessing.start_processes(
            _ddp_worker, args=(world, params, port, progress, force), nprocs=world, start_method="spawn"
        )
    else:
        _train_process(params, rank=0, world=1, progress=progress, fresh=force)
    return read_result(run_dir)


# Keys that may change between the run and a later call without changing what was trained.
_RUNTIME_KEYS = ("data_dir", "out_dir", "profile", "model.weights_file", "train.device", "train.devices",
                 "train.num_workers", "train.cache", "train.check_images", "train.val_batch_size", "train.compile",
                 "train.save_every_steps", "infer.")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "vit_kwargs" else {f"{prefix}{k}": v})
    return out


def _check_same_recipe(run_dir: Path, params: dict) -> None:
    """A completed run asked for again with other parameters: fail if it is another model, else warn."""
    old = (_read_json(run_dir / "manifest.json") or {}).get("config")
    if not old:
        return
    before, now = _flatten(old), _flatten(_json_round_trip(params))
    changed = sorted(k for k in before.keys() | now.keys()
                     if before.get(k) != now.get(k) and not k.startswith(_RUNTIME_KEYS))
    if not changed:
        return
    listing = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:8])
    if any(k.startswith("model.") for k in changed):
        raise RuntimeError(
            f"{run_dir} holds a completed run of another model ({listing}). Pass force=True (run_all --force) "
            f"to retrain it, or use another out_dir to keep both."
        )
    print(f"{run_dir.name}: WARNING it completed with other parameters ({listing}); its results are kept. "
          f"Pass force=True to retrain with the new ones.")


def _json_round_trip(obj):
    """What `obj` reads back as after a JSON round trip (tuples become lists)."""
    import json

    return json.loads(json.dumps(obj, default=str))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, params: dict, port: int, progress: bool, fresh: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = pick_device(params["train"].get("device", "auto"), rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cpu":  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        _train_process(params, rank=rank, world=world, progress=progress and rank == 0, fresh=fresh)
    finally:
        dist.destroy_process_group()


def _train_process(params: dict, rank: int, world: int, progress: bool, fresh: bool = False) -> None:
    tp = params["train"]
    run_dir = run_dir_of(params)
    name = run_dir.name
    is_main = rank == 0
    device = pick_device(tp.get("device", "auto"), rank)
    amp_dtype = autocast_dtype(tp.get("precision", "bf16"), device)
    set_deterministic(bool(tp.get("deterministic", False)))
    seed = int(params["seed"])
    seed_everything(seed + rank)

    # -- data ------------------------------------------------------------------------------
    mos_scale = float(params["mos_scale"])
    folds = load_folds(params)
    mcfg = model_config(params)
    view = input_view(params)
    store = D.ImageStore.open(
        folds["path"].tolist(), view["load_size"],
        cache_dir=(Path(params["out_dir"]) / "cache") if tp.get("cache", True) else None,
        num_workers=int(tp.get("num_workers", 0)), progress=progress,
    )
    dataset = D.IQADataset(store, folds["mos"].to_numpy(np.float32))
    k = int(params["fold"])
    train_idx = np.flatnonzero(folds["fold"].to_numpy() != k)
    val_idx = np.flatnonzero(folds["fold"].to_numpy() == k)
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise ValueError(f"fold {k} leaves an empty train or validation set ({len(folds)} images).")

    # -- state -----------------------------------------------------------------------------
    last_path = run_dir / "last.pt"
    # fresh (force=True): start over; the old files stay until the new run replaces each of them.
    state = safe_torch_load(last_path, "resume state") if last_path.is_file() and not fresh else None
    if state is not None and (state.get("model_config") != mcfg.to_dict()
                              or state.get("input", whole_image_view(mcfg.img_size)) != view):
        raise RuntimeError(
            f"{last_path} was written by a run with another model configuration. Delete "
            f"{run_dir} to start this run afresh, or rerun with the parameters it was started with."
        )
    mp = params.get("model", {})
    # Resuming replaces every weight, so the backbone need not be downloaded again.
    pretrained = bool(mp.get("pretrained", True)) and state is None
    if not pretrained and state is None and is_main:
        print(f"{name}: WARNING the backbone starts from RANDOM weights (model.pretrained=false).")
    model = MANIQA(mcfg, pretrained=pretrained, weights_file=mp.get("weights_file") if pretrained else None)
    if state is not None:
        model.load_state_dict(state["model"])
    model.to(device)
    op, sp = params["optim"], params["schedule"]
    optimizer = torch.optim.Adam(
        model.parameters(), lr=float(op["lr"]), weight_decay=float(op["weight_decay"]),
        fused=True,  # one kernel for all parameters, on CUDA and CPU alike
    )
    scheduler = CosineAnnealingWarmupRestarts(optimizer, **schedule_args(sp))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    epoch, step, start_batch, history, best = 0, 0, 0, [], {"epoch": None, VAL_METRIC: -math.inf}
    rng, partial = None, (0.0, 0)  # partial: loss sum and count of the batches before a mid-epoch resume
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        epoch, step, start_batch = state["epoch"], state["step"], state["batch_in_epoch"]
        history, best, rng = state["history"], state["best"], state.get("rng")
        partial = state.get("partial_loss", (0.0, 0))
        if is_main:
            print(f"{name}: resuming at epoch {epoch}, batch {start_batch}, step {step}")
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
        )
    train_model = torch.compile(ddp_model) if tp.get("compile", False) else ddp_model

    # -- bookkeeping -------------------------------------------------------------------------
    manifest_path = run_dir / "manifest.json"
    manifest = {}
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(run_dir)
        manifest = (None if fresh else _read_json(manifest_path)) or {"started": now_iso()}
        manifest.update(
            run=name, status="running", config=params, model_config=mcfg.to_dict(),
            environment=environment_info(device), resumed_from_epoch=epoch if state else None,
            n_train=int(len(train_idx)), n_val=int(len(val_idx)),
        )
        atomic_write_json(manifest_path, manifest)

    batch_size = int(tp["batch_size"])
    epochs, max_steps = int(tp["epochs"]), tp.get("max_steps")
    max_steps = int(max_steps) if max_steps else None
    patience, accum = int(tp.get("patience", 15)), int(tp.get("grad_accum", 1))
    save_every = int(tp.get("save_every_steps") or 0)
    flip = tp.get("flip", "vertical")
    flip_gen = torch.Generator(device=device)

    def save_last(epoch_, batch_in_epoch, partial_loss=(0.0, 0)):
        if not is_main:
            return
        atomic_torch_save({
            "format": KIT_FORMAT + "+last", "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch_,
            "step": step, "batch_in_epoch": batch_in_epoch, "partial_loss": list(partial_loss),
            "history": history, "best": best,
            "rng": {"torch": torch.get_rng_state(), "flip": flip_gen.get_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            "model_config": mcfg.to_dict(), "input": view, "config": params,
        }, last_path)

    stop_reason = None
    patience_left = patience - _epochs_since_best(history, best)
    try:
        while epoch < epochs and stop_reason is None:
            # Per-epoch seeds make the epoch reproducible from its number alone; a mid-epoch
            # resume restores the exact RNG states saved with the position (rank 0's: with DDP
            # the other ranks restart their epoch streams, distinct but not a bit-exact replay).
            torch.manual_seed(epoch_seed(seed, epoch) + rank)
            flip_gen.manual_seed(epoch_seed(seed + 1, epoch) + rank)
            if rng is not None and start_batch > 0 and rank == 0:
                torch.set_rng_state(rng["torch"])
                flip_gen.set_state(rng["flip"])
                if device.type == "cuda" and rng.get("cuda") is not None:
                    torch.cuda.set_rng_state(rng["cuda"], device)
            rng = None
            sampler = EpochBatches(train_idx, batch_size, seed, epoch, start=start_batch, rank=rank, world=world)
            loader = D.make_loader(
                dataset, batch_size=None, shuffle=False, num_workers=int(tp.get("num_workers", 0)),
                seed=seed, sampler=sampler,
            )
            model.train()
            t0, seen = time.perf_counter(), 0
            loss_sum, loss_n = torch.tensor(float(partial[0]), device=device), int(partial[1])
            partial = (0.0, 0)
            bar = tqdm(loader, desc=f"{name} epoch {epoch}", disable=not progress, leave=False,
                       total=len(sampler), dynamic_ncols=True)
            for b, (images, targets, _) in enumerate(bar, start=start_batch):
                if view["load_size"] > mcfg.img_size:
                    images = random_crops(images, mcfg.img_size, flip_gen)
                x = D.to_model_input(images, train=True, flip=flip, generator=flip_gen, device=device)
                y = targets.to(device, non_blocking=True) / mos_scale
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    pred = train_model(x)
                loss = F.mse_loss(pred.float(), y)
                scaler.scale(loss / accum).backward()
                loss_sum += loss.detach()
                loss_n += 1
                seen += len(images) * world
                if (b + 1) % accum == 0 or b + 1 == start_batch + len(sampler):
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    step += 1
                    if step % 10 == 0 or progress:
                        _check_finite(loss_sum, name, epoch, step)
                        bar.set_postfix(loss=f"{loss_sum.item() / loss_n:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                                        img_s=f"{seen / (time.perf_counter() - t0):.1f}", refresh=False)
                    if save_every and step % save_every == 0:
                        _check_finite(loss_sum, name, epoch, step)
                        save_last(epoch, b + 1, (loss_sum.item(), loss_n))
                    if max_steps and step >= max_steps:
                        stop_reason = "max_steps"
                        break
            bar.close()
            _check_finite(loss_sum, name, epoch, step)
            train_loss = _mean_across_ranks(loss_sum, loss_n, world)
            train_seconds = time.perf_counter() - t0

            # -- validation (every rank predicts its share; all get every prediction) --------
            preds = predict_indices(model, dataset, val_idx, device, amp_dtype,
                                    batch_size=int(tp.get("val_batch_size", batch_size)),
                                    num_workers=int(tp.get("num_workers", 0)), rank=rank, world=world,
                                    crop=mcfg.img_size, crop_grid=view["crop_grid"])
            truth = folds["mos"].to_numpy(np.float64)[val_idx]
            if is_main and not np.any(preds):
                print(f"{name}: WARNING every validation prediction is 0: the score head's final ReLU is dead "
                      f"(it can happen at random init). Try another seed or a wider model.head_hidden.")
            metrics = all_metrics(preds * mos_scale, truth)
            val_loss = float(np.mean((preds - truth / mos_scale) ** 2))
            row = {"epoch": epoch, "step": step, "train_loss": train_loss, "val_loss": val_loss, **metrics,
                   "lr": scheduler.get_last_lr()[0], "train_seconds": train_seconds,
                   "train_images_per_s": seen / max(train_seconds, 1e-9)}
            history.append(row)
            improved = metrics[VAL_METRIC] > best[VAL_METRIC]
            if improved:
                best = {"epoch": epoch, **metrics, "val_loss": val_loss}
                patience_left = patience
                if is_main:
                    save_best(model, mcfg, params, run_dir, epoch, metrics, view)
                    oof = folds.iloc[val_idx][["img_name", "mos"]].assign(pred=np.clip(preds * mos_scale, 0, mos_scale))
                    atomic_write_text(run_dir / "oof.csv", oof.to_csv(index=False))
            else:
                patience_left -= 1
            if is_main:
                atomic_write_text(run_dir / "metrics.csv", pd.DataFrame(history).to_csv(index=False))
                mark = " *" if improved else ""
                print(f"{name} epoch {epoch:3d} step {step:6d} loss {train_loss:.4f} val_loss {val_loss:.4f} "
                      f"PLCC {metrics['plcc']:.4f} SRCC {metrics['srcc']:.4f} score {metrics['score']:.4f} "
                      f"({row['train_images_per_s']:.1f} img/s){mark}", flush=True)
            epoch, start_batch = epoch + 1, 0
            if patience_left <= 0 and stop_reason is None:
                stop_reason = "early_stopping"
            save_last(epoch, 0)
        stop_reason = stop_reason or "max_epochs"
    except BaseException as e:
        if is_main:
            manifest.update(status="failed" if not isinstance(e, KeyboardInterrupt) else "interrupted",
                            error=f"{type(e).__name__}: {e}", ended=now_iso())
            try:
                atomic_write_json(manifest_path, manifest)
            except OSError:  # the disk that just failed may refuse this too: keep the first error
                pass
        raise
    if is_main:
        manifest.update(status="completed", stop_reason=stop_reason, ended=now_iso(), epochs_run=epoch,
                        steps=step, best_epoch=best["epoch"], best={k: v for k, v in best.items() if k != "epoch"})
        manifest.pop("error", None)
        atomic_write_json(manifest_path, manifest)


def _check_finite(loss_sum: torch.Tensor, name: str, epoch: int, step: int) -> None:
    if not torch.isfinite(loss_sum).item():
        raise DivergenceError(
            f"{name}: the training loss became NaN/inf at epoch {epoch}, step {step}. Nothing from this "
            f"epoch was saved; the best checkpoint and last.pt are from before it. Lower optim.lr / "
            f"schedule.max_lr, or use train.precision=fp32, then rerun (it resumes from last.pt)."
        )


def _mean_across_ranks(loss_sum: torch.Tensor, n: int, world: int) -> float:
    t = torch.stack([loss_sum.detach().float(), torch.tensor(float(n), device=loss_sum.device)])
    if world > 1:
        dist.all_reduce(t)
    return (t[0] / t[1].clamp(min=1)).item()


def _epochs_since_best(history: list, best: dict) -> int:
    if not history or best["epoch"] is None:
        return len(history)
    return history[-1]["epoch"] - best["epoch"]


@torch.no_grad()
def predict_indices(model, dataset, indices, device, amp_dtype, batch_size=32, num_workers=0, rank=0, world=1,
                    tta: bool = False, crop: int | None = None, crop_grid: int = 1) -> np.ndarray:
    """Model outputs (on the 0-1 target scale) for dataset[indices], in that order.

    Images larger than the model's input `crop` are scored as the mean over a `crop_grid` x
    `crop_grid` grid of crops; `tta` adds each view's two flips to the mean. With several
    ranks each predicts a strided share and the shares are gathered.
    """
    was_training = model.training
    model.eval()
    share = np.asarray(indices)[rank::world]
    loader = D.make_loader(torch.utils.data.Subset(dataset, share.tolist()), batch_size=batch_size, shuffle=False,
                           num_workers=num_workers)
    out = []
    for images, _, _ in loader:
        x = D.to_model_input(images, train=False, device=device)
        places = grid_crops(x, crop, crop_grid) if crop and crop < x.shape[-1] else [x]
        views = [v for c in places for v in ((c, c.flip(-2), c.flip(-1)) if tta else (c,))]
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            p = torch.stack([model(v).float() for v in views]).mean(0)
        out.append(p.cpu())
    mine = torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)
    model.train(was_training)
    if world == 1:
        return mine
    parts = [None] * world
    dist.all_gather_object(parts, mine)
    full = np.empty(len(indices))
    for r, p in enumerate(parts):
        full[r::world] = p
    return full


def input_view(params: dict) -> dict:
    """How images reach the model (iqa_lib.crops): the stored side and the test-time crop grid."""
    model = params["model"]
    return {"load_size": int(model.get("load_size") or model["img_size"]), "crop_grid": int(model.get("crop_grid", 1))}


def save_best(model, mcfg: MANIQAConfig, params: dict, run_dir: Path, epoch: int, metrics: dict,
              view: dict | None = None) -> None:
    atomic_torch_save({
        "format": KIT_FORMAT, "model": model.state_dict(), "model_config": mcfg.to_dict(),
        "input": view or input_view(params),
        "variant": str(params["res"]), "fold": int(params["fold"]), "mos_scale": float(params["mos_scale"]),
        "epoch": epoch, "metrics": metrics, "flip": params["train"].get("flip", "vertical"),
    }, run_dir / f"{run_dir.name}.ckpt")


def _read_json(path: Path):
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_result(run_dir: Path) -> RunResult:
    run_dir = Path(run_dir)
    manifest = _read_json(run_dir / "manifest.json") or {}
    metrics_csv = run_dir / "metrics.csv"
    history = pd.read_csv(metrics_csv) if metrics_csv.is_file() else pd.DataFrame()
    return RunResult(run_dir, manifest.get("status", "missing"), manifest.get("best_epoch"),
                     manifest.get("best", {}), history)


def completed_result(run_dir: Path) -> RunResult | None:
    """The stored result if the run completed and its checkpoint loads, else None."""
    res = read_result(run_dir)
    if res.status != "completed" or not res.checkpoint.is_file():
        return None
    try:
        safe_torch_load(res.checkpoint)
    except Exception:
        return None
    return res
