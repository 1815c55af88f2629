"""One training run: `fit(cfg)` trains one (resolution, fold) with the team's recipe (SPEC §4).

`cfg` comes from `iqa_lib.config.load_config(profile, res, fold, ...)`. Writes under
`{out_dir}/runs/{res}_fold{k}/` (the names are `cfg.run`'s, iqa_lib.config.RunFiles):
  {res}_fold{k}.ckpt   best weights (a kit checkpoint, see checkpoint.py)
  last.pt              everything needed to resume: model, optimiser, scheduler, scaler,
                       epoch, step, position in the epoch, RNG states, history, config
                       (deleted once the run completes when train.keep_last is false)
  metrics.csv          one row per epoch (validation columns on the epochs validated: train.val_every)
  oof.csv              out-of-fold predictions of the best validated epoch (img_name, mos, pred)
  manifest.json        config, git commit, versions, device, times, status, best metrics

With `train.logger` the run is also logged to TensorBoard, W&B or MLflow (iqa_lib/trackers.py).

Rerunning the same call resumes from `last.pt`; a run whose manifest says `completed`
returns at once. Every output file is written atomically (temp file + rename).
"""
import math
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from . import data as D
from .checkpoint import (KIT_FORMAT, CheckpointError, atomic_torch_save, atomic_write_json, atomic_write_text,
                         check_writable, load_model_checkpoint, remove_stale_temp_files, safe_torch_load)
from .config import Config, RunFiles, file_digest, flatten, loss_terms, run_name
from .crops import grid_size, random_crops, whole_image_view
from .features import FeatureCache, views as feature_views
from .folds import folds_for_table, recorded_split, split_fingerprint, stale_message, write_folds
from .infer import autocast_dtype, cpu_bf16_on, input_view, model_config, pick_device, predict_indices
from .lock import hold
from .losses import make_loss
from .metrics import all_metrics
from .model import MANIQA, MANIQAConfig
from .runinfo import environment_info, now_iso
from .schedule import CosineAnnealingWarmupRestarts
from .trackers import open_trackers, require as require_trackers

VAL_METRIC = "plcc_srcc"  # the team's model-selection metric


class DivergenceError(RuntimeError):
    """The loss became NaN/inf: training stopped before saving anything from it."""


class DeadHeadError(RuntimeError):
    """Every training prediction of an epoch was 0: the score head's final ReLU is dead, so no weight
    gets a gradient and the run cannot learn; the message says what to change."""


class StaleRunError(RuntimeError):
    """A run's files were trained on another split or other data than today's; the message says what to do."""


@dataclass
class RunResult:
    run_dir: Path
    status: str
    best_epoch: int | None
    best: dict
    checkpoint: Path
    history: pd.DataFrame = field(repr=False)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
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


def epoch_seed(seed: int, epoch: int) -> int:
    # A fresh, reproducible stream per epoch: resuming at an epoch needs no saved RNG.
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def load_folds(cfg: Config) -> pd.DataFrame:
    """One row per training image with its `fold` and absolute `path`.

    The split is `{out_dir}/folds.csv` (written by 02_folds, or here when it is missing), so
    every run of a grid shares one. It must still describe `train.csv`: the same images with
    the same MOS and `n_folds` folds (a CSV read, no image opened); else this run refuses.
    """
    folds_csv = cfg.outputs.folds
    check = cfg.train.check_images if not folds_csv.is_file() else "none"
    table = D.load_table(cfg.data_dir, "train.csv", labelled=True, mos_scale=cfg.mos_scale, check_images=check,
                         progress=False)
    images = table.drop_duplicates("img_name")
    if not folds_csv.is_file():
        folds = folds_for_table(table, n_folds=cfg.n_folds)
        write_folds(folds, cfg.out_dir)
        return folds.reset_index(drop=True)
    try:
        saved = pd.read_csv(folds_csv, dtype={"img_name": str})
        saved["mos"] = pd.to_numeric(saved["mos"])
    except (ValueError, KeyError) as e:  # empty, garbled or hand-edited
        raise ValueError(f"{folds_csv} is not a readable split ({type(e).__name__}: {e}): rerun "
                         f"notebooks/02_folds.ipynb (or delete {folds_csv}) to rebuild the folds.") from None
    same = ({"img_name", "fold", "mos"} <= set(saved) and len(saved) == len(images)
            and set(saved["img_name"]) == set(images["img_name"])
            and sorted(saved["fold"].unique()) == list(range(cfg.n_folds))
            and np.allclose(saved.set_index("img_name")["mos"].loc[images["img_name"]], images["mos"]))
    if not same:
        raise ValueError(
            f"{folds_csv} does not match {cfg.data_dir}/train.csv with n_folds={cfg.n_folds} (other images, MOS or "
            f"number of folds): rerun notebooks/02_folds.ipynb (or delete {folds_csv}) to rebuild the folds."
        )
    return saved.drop(columns=["path"], errors="ignore").merge(images[["img_name", "path"]], on="img_name")


class EpochBatches(torch.utils.data.Sampler):
    """The batches of one epoch for one rank: a seeded permutation of `indices`, cut into
    global batches, each split across ranks. `start` skips batches already trained on
    (resuming mid-epoch) without touching their images."""

    def __init__(self, indices, batch_size, seed, epoch, start=0, rank=0, world=1):
        self.batch_size, self.start, self.rank, self.world = batch_size, start, rank, world
        g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        self.indices = np.asarray(indices)[torch.randperm(len(indices), generator=g).numpy()]

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
def fit(cfg: Config, *, progress: bool = True, force: bool = False) -> RunResult:
    """Train one run; resume it if interrupted; return at once if it already completed.

    `force=True` trains from scratch even if the run completed or has a resume state.

    `cfg` is a run's parameters (`iqa_lib.config.load_config`). With `train.devices` > 1 it
    spawns one process per device (DistributedDataParallel, NCCL on GPUs, gloo on CPUs) from
    Python, so it also works inside a notebook run by papermill.
    """
    files = cfg.run
    check_writable(cfg.out_dir, "out_dir", "pass -p out_dir (or out_dir=) a folder you can write to")
    require_trackers(cfg)  # train.logger's packages, before anything starts
    # One process trains a run at a time: a second one (another papermill, a grid runner) stops here.
    with hold(files.lock, f"run {files.name} ({files.dir})"):
        folds = load_folds(cfg)
        split = split_fingerprint(folds)
        if not force:
            done = completed_result(files)
            if done is not None:
                _check_same_recipe(cfg)
                if recorded_split(cfg.outputs, files.name) not in (None, split):
                    raise StaleRunError(stale_message([files.name], cfg.outputs))
                print(f"{files.name}: already completed (best epoch {done.best_epoch}); pass force=True to retrain.")
                source = files.retrained_source()
                if source is not None:
                    print(f"{files.name}: WARNING it started from {source} (train.init_from), which has been retrained "
                          f"since: its results are kept. Pass force=True to retrain it from the new {source}.")
                return done
        # (not the executed notebook and its log: a papermill calling fit(force=True) is writing them)
        if force and files.set_aside(keep=(files.notebook.name, files.notebook.with_suffix(".log").name)):
            print(f"{files.name}: retraining from scratch; the previous files stay in {files.aside} until the new "
                  f"run completes (move them back to {files.dir} to keep the old run instead).")
        world = cfg.train.devices
        if world > 1:
            port = _free_port()
            torch.multiprocessing.start_processes(
                _ddp_worker, args=(world, cfg, folds, port, progress, force), nprocs=world, start_method="spawn"
            )
        else:
            _train_process(cfg, folds, rank=0, world=1, progress=progress, fresh=force)
    return read_result(files)


# Keys that may change between the run and a later call without changing what was trained.
_RUNTIME_KEYS = ("data_dir", "out_dir", "profile", "model.weights_file", "train.device", "train.devices",
                 "train.num_workers", "train.cache", "train.check_images", "train.val_batch_size", "train.compile",
                 "train.save_every_steps", "train.keep_last", "train.logger", "infer.")


def _check_same_recipe(cfg: Config) -> None:
    """A completed run asked for again with other parameters: fail if it is another model, else warn."""
    old = cfg.run.read_manifest().get("config")
    if not old:
        return
    before, now = flatten(old), flatten(cfg.to_dict())
    mcfg = model_config(cfg)  # null patch_size / embed_dim mean the backbone's: compare what they resolve to
    for key, value in (("model.patch_size", mcfg.patch_size), ("model.embed_dim", mcfg.embed_dim)):
        for d in (before, now):
            if d.get(key) is None:
                d[key] = value
    for d in (before, now):  # cpu_bf16 auto: what it means on this machine (True before auto existed)
        if "train.cpu_bf16" in d:
            d["train.cpu_bf16"] = cpu_bf16_on(d["train.cpu_bf16"])
    # Keys the run's manifest lacks are parameters added since, at their defaults: not a change.
    changed = sorted(k for k in before.keys()
                     if before.get(k) != now.get(k) and not k.startswith(_RUNTIME_KEYS))
    if not changed:
        return
    listing = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:8])
    if any(k.startswith("model.") for k in changed):
        raise RuntimeError(
            f"{cfg.run.dir} holds a completed run of another model ({listing}). Pass force=True (run_all --force) "
            f"to retrain it, or use another out_dir to keep both."
        )
    print(f"{cfg.run.name}: WARNING it completed with other parameters ({listing}); its results are kept. "
          f"Pass force=True to retrain with the new ones.")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, cfg: Config, folds: pd.DataFrame, port: int, progress: bool,
                fresh: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = pick_device(cfg.train.device, rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cpu":  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        _train_process(cfg, folds, rank=rank, world=world, progress=progress and rank == 0, fresh=fresh)
    finally:
        dist.destroy_process_group()


def _train_process(cfg: Config, folds: pd.DataFrame, rank: int, world: int, progress: bool,
                   fresh: bool = False) -> None:
    tp = cfg.train
    files = cfg.run
    run_dir, name = files.dir, files.name
    is_main = rank == 0
    device = pick_device(tp.device, rank)
    amp_dtype = autocast_dtype(tp.precision, device, tp.cpu_bf16)
    set_deterministic(tp.deterministic)
    seed = cfg.seed
    seed_everything(seed + rank)

    # -- data ------------------------------------------------------------------------------
    mos_scale = cfg.mos_scale
    split = split_fingerprint(folds)
    mcfg = model_config(cfg)
    view = input_view(cfg)
    store = D.ImageStore.open(
        folds["path"].tolist(), view["load_size"],
        cache_dir=cfg.outputs.cache if tp.cache else None, num_workers=tp.num_workers, progress=progress,
    )
    dataset = D.IQADataset(store, folds["mos"].to_numpy(np.float32))
    train_idx = np.flatnonzero(folds["fold"].to_numpy() != cfg.fold)
    val_idx = np.flatnonzero(folds["fold"].to_numpy() == cfg.fold)

    # -- state -----------------------------------------------------------------------------
    last_path = files.last
    # fresh: start over (force=True, the run's files set aside by fit; or another seed, below).
    state = None
    if last_path.is_file() and not fresh:
        try:
            state = safe_torch_load(last_path, "resume state")
        except CheckpointError as e:
            raise CheckpointError(
                f"{e} To restart this run from its first epoch, delete {last_path} (the best checkpoint "
                f"{files.checkpoint.name} and metrics.csv stay until the new run replaces them), or pass force=True "
                f"(run_all --force): the run's files then wait in {files.aside} until the new run completes.") from e
    old_seed = (state or {}).get("config", {}).get("seed", cfg.seed)
    if old_seed != cfg.seed:  # another seed is another run (e.g. after a DeadHeadError): do not resume this one
        if is_main:
            print(f"{name}: {last_path.name} was trained with seed {old_seed}, this call asks for {cfg.seed}: "
                  f"starting over (the old files stay until the new run replaces each of them)")
        state, fresh = None, True
    if state is not None and state.get("split") not in (None, split):
        raise StaleRunError(stale_message([name], cfg.outputs))
    if state is not None and (state.get("model_config") != mcfg.to_dict()
                              or state.get("input", whole_image_view(mcfg.img_size)) != view):
        raise RuntimeError(
            f"{last_path} was written by a run with another model configuration. Pass force=True (run_all "
            f"--force) to start this run afresh (its files wait in {files.aside} until the new run completes), "
            f"or rerun with the parameters it was started with."
        )
    # Resuming, or starting from another size's run, replaces every weight: no backbone download.
    source = run_name(tp.init_from, cfg.fold) if state is None and tp.init_from else None
    source_digest = None  # which checkpoint of `source` (config.file_digest)
    from_backbone = state is None and source is None  # the weights come from the backbone's own source
    pretrained = cfg.model.pretrained and from_backbone
    if from_backbone and not pretrained and is_main:
        print(f"{name}: WARNING the backbone starts from RANDOM weights (model.pretrained=false).")
    model = MANIQA(mcfg, pretrained=pretrained, weights_file=cfg.model.weights_file if pretrained else None)
    if state is not None:
        model.load_state_dict(state["model"])
    elif source is not None:
        weights, source_digest = _init_source(cfg, split, mcfg)
        model.load_other_size(weights)
        if is_main:
            print(f"{name}: starting from the best checkpoint of {source} (train.init_from)")
    model.to(device)
    if tp.freeze_backbone or tp.freeze_blocks:
        model.freeze_backbone(None if tp.freeze_backbone else tp.freeze_blocks)
    optimizer = torch.optim.Adam(
        param_groups(model, cfg.optim.backbone_lr_scale), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
        fused=True,  # one kernel for all parameters, on CUDA and CPU alike
    )
    # EMA of the weights (train.ema_decay): validated, and saved as the checkpoint, in place of the raw ones.
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tp.ema_decay)) if tp.ema_decay else None)
    if ema is not None and state is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    eval_model = ema.module if ema is not None else model
    loss_fn = make_loss(tp.loss)
    # Frozen backbone + feature cache: the ViT's outputs computed once, then an epoch runs the head only.
    cache = None
    if tp.freeze_backbone and tp.feature_cache:
        views = feature_views(tp.flip, grid_size(view, mcfg.img_size))  # a fixed set: the grid's crops
        cache = FeatureCache.build(model, store, views, cfg.outputs.features, device=device,
                                   amp_dtype=amp_dtype, batch_size=tp.val_batch_size, progress=progress)
    scheduler = CosineAnnealingWarmupRestarts(optimizer, **cfg.schedule.model_dump())
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
    ddp_model = HeadOnly(model) if cache is not None else model  # with the cache, batches are features
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            ddp_model, device_ids=[device.index] if device.type == "cuda" else None,
        )
    train_model = torch.compile(ddp_model) if tp.compile else ddp_model
    targets_all = torch.as_tensor(folds["mos"].to_numpy(np.float32))

    # -- bookkeeping -------------------------------------------------------------------------
    manifest = {}
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(run_dir)
        manifest = (None if fresh else files.read_manifest()) or {"started": now_iso()}
        manifest.update(
            run=name, status="running", config=cfg.to_dict(), model_config=mcfg.to_dict(),
            environment=environment_info(device), resumed_from_epoch=epoch if state else None,
            n_train=int(len(train_idx)), n_val=int(len(val_idx)), split=split,
        )
        if state is None:  # the run whose weights it started from (train.init_from) and which checkpoint, or None
            manifest.update(init_from=source, init_from_checkpoint=source_digest)
        atomic_write_json(files.manifest, manifest)

    flip_gen = torch.Generator(device=device)

    def save_last(epoch_, batch_in_epoch, partial_loss=(0.0, 0)):
        if not is_main:
            return
        atomic_torch_save({
            "format": KIT_FORMAT + "+last", "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch_,
            "step": step, "batch_in_epoch": batch_in_epoch, "partial_loss": list(partial_loss),
            "history": history, "best": best, "ema": ema.state_dict() if ema is not None else None,
            "rng": {"torch": torch.get_rng_state(), "flip": flip_gen.get_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            "model_config": mcfg.to_dict(), "input": view, "config": cfg.to_dict(), "split": split,
        }, last_path)

    # (a run killed after deciding to stop early, before its manifest said so, stops at once on resume)
    stop_reason = "early_stopping" if _patience_spent(history, best, tp.patience) else None
    trackers = open_trackers(cfg, rank, step=step, loss_base=partial, started=manifest.get("started"))
    try:
        while epoch < tp.epochs and stop_reason is None:
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
            sampler = EpochBatches(train_idx, tp.batch_size, seed, epoch, start=start_batch, rank=rank, world=world)
            if cache is None:
                loader = D.make_loader(
                    dataset, batch_size=None, shuffle=False, num_workers=tp.num_workers,
                    seed=seed, sampler=sampler,
                )
            else:  # features, no image: a batch is rows of the cache
                loader = ((rows, targets_all[rows], rows) for rows in sampler)
            model.train()
            t0, seen = time.perf_counter(), 0
            loss_sum, loss_n = torch.tensor(float(partial[0]), device=device), int(partial[1])
            alive = torch.zeros((), device=device)  # training predictions above 0 (summed on the device: no sync)
            partial = (0.0, 0)
            bar = tqdm(loader, desc=f"{name} epoch {epoch}", disable=not progress, leave=False,
                       total=len(sampler), dynamic_ncols=True)
            for b, (images, targets, _) in enumerate(bar, start=start_batch):
                if cache is not None:
                    x = cache.train_batch(images, flip_gen, device)
                else:
                    if view["load_size"] > mcfg.img_size:
                        images = random_crops(images, mcfg.img_size, flip_gen)
                    x = D.to_model_input(images, train=True, flip=tp.flip, generator=flip_gen, device=device,
                                         mean=mcfg.mean, std=mcfg.std)
                y = targets.to(device, non_blocking=True) / mos_scale
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    pred = train_model(x)
                loss = loss_fn(pred.float(), y)
                scaler.scale(loss / tp.grad_accum).backward()
                loss_sum += loss.detach()
                alive += (pred.detach() > 0).sum()
                loss_n += 1
                seen += len(images) * world
                if (b + 1) % tp.grad_accum == 0 or b + 1 == start_batch + len(sampler):
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    if ema is not None:
                        ema.update_parameters(model)
                    step += 1
                    trackers.log_step(step, loss_sum, loss_n, scheduler.get_last_lr()[0])
                    if step % 10 == 0 or progress:
                        _check_finite(loss_sum, name, epoch, step)
                        bar.set_postfix(loss=f"{loss_sum.item() / loss_n:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                                        img_s=f"{seen / (time.perf_counter() - t0):.1f}", refresh=False)
                    if tp.save_every_steps and step % tp.save_every_steps == 0:
                        _check_finite(loss_sum, name, epoch, step)
                        save_last(epoch, b + 1, (loss_sum.item(), loss_n))
                    if tp.max_steps and step >= tp.max_steps:
                        stop_reason = "max_steps"
                        break
            bar.close()
            _check_finite(loss_sum, name, epoch, step)
            train_loss, n_alive = _across_ranks(loss_sum, loss_n, alive, world)
            if seen and not n_alive:
                raise DeadHeadError(f"{name}: every training prediction of epoch {epoch} was 0, so no weight got a "
                                    f"gradient: the score head's final ReLU is dead {_dead_head_hint(tp.loss)}")
            train_seconds = time.perf_counter() - t0
            row = {"epoch": epoch, "step": step, "train_loss": train_loss}
            timing = {"lr": scheduler.get_last_lr()[0], "train_seconds": train_seconds,
                      "train_images_per_s": seen / max(train_seconds, 1e-9)}
            validate = (epoch + 1) % tp.val_every == 0 or epoch + 1 == tp.epochs or stop_reason is not None
            improved = False
            if validate:  # every rank predicts its share, all get every prediction (the cache: each predicts all)
                if cache is not None:
                    preds = cache.predict(eval_model, val_idx, device, amp_dtype, batch_size=tp.val_batch_size)
                else:
                    preds = predict_indices(eval_model, dataset, val_idx, device, amp_dtype,
                                            batch_size=tp.val_batch_size, num_workers=tp.num_workers, rank=rank,
                                            world=world, crop=mcfg.img_size, crop_grid=view["crop_grid"])
                truth = folds["mos"].to_numpy(np.float64)[val_idx]
                if is_main and not np.any(preds):
                    print(f"{name}: WARNING every validation prediction is 0: the score head's final ReLU is dead "
                          + _dead_head_hint(tp.loss))
                scores = np.clip(preds * mos_scale, 0, mos_scale)  # as predict gives them, and oof.csv holds
                metrics = all_metrics(scores, truth)
                row.update(val_loss=float(np.mean((preds - truth / mos_scale) ** 2)), **metrics)
                improved = metrics[VAL_METRIC] > best[VAL_METRIC]
                if improved:
                    best = {"epoch": epoch, **metrics, "val_loss": row["val_loss"]}
                    if is_main:
                        save_best(eval_model, mcfg, cfg, epoch, metrics)
                        oof = folds.iloc[val_idx][["img_name", "mos"]].assign(pred=scores)
                        atomic_write_text(files.oof, oof.to_csv(index=False))
            row.update(timing)
            history.append(row)  # an epoch not validated (train.val_every) has no validation columns
            trackers.log_epoch(row)
            if is_main:
                atomic_write_text(files.metrics, pd.DataFrame(history).to_csv(index=False))
                scores = (f" val_loss {row['val_loss']:.4f} PLCC {row['plcc']:.4f} SRCC {row['srcc']:.4f} "
                          f"score {row['score']:.4f}" if validate else "")
                print(f"{name} epoch {epoch:3d} step {step:6d} loss {train_loss:.4f}{scores} "
                      f"({row['train_images_per_s']:.1f} img/s){' *' if improved else ''}", flush=True)
            epoch, start_batch = epoch + 1, 0
            if stop_reason is None and _patience_spent(history, best, tp.patience):
                stop_reason = "early_stopping"
            save_last(epoch, 0)
        stop_reason = stop_reason or "max_epochs"
    except BaseException as e:
        if is_main:
            manifest.update(status="failed" if not isinstance(e, KeyboardInterrupt) else "interrupted",
                            error=f"{type(e).__name__}: {e}", ended=now_iso())
            try:
                atomic_write_json(files.manifest, manifest)
            except OSError:  # the disk that just failed may refuse this too: keep the first error
                pass
        trackers.finish(status="failed" if not isinstance(e, KeyboardInterrupt) else "interrupted")
        raise
    if is_main:
        manifest.update(status="completed", stop_reason=stop_reason, ended=now_iso(), epochs_run=epoch,
                        steps=step, best_epoch=best["epoch"], best={k: v for k, v in best.items() if k != "epoch"})
        manifest.pop("error", None)
        atomic_write_json(files.manifest, manifest)
        if not tp.keep_last and files.checkpoint.is_file():  # after the manifest says completed
            last_path.unlink(missing_ok=True)
        shutil.rmtree(files.aside, ignore_errors=True)  # a forced retrain's predecessor, no longer needed
    trackers.finish(best)


def _init_source(cfg: Config, split: str, mcfg: MANIQAConfig) -> tuple[dict, str]:
    """The weights of the best checkpoint of this fold's run at `train.init_from` px (completed, on today's
    split, the same model but for its input size) and the checkpoint's digest."""
    source, name = cfg.outputs.run(cfg.train.init_from, cfg.fold), cfg.run.name
    if not source.completed:
        raise RuntimeError(
            f"{name}: train.init_from={cfg.train.init_from} starts this run from the best checkpoint of "
            f"{source.name}, which has not completed ({source.dir}). Train it first (03_train with -p res "
            f"{cfg.train.init_from} -p fold {cfg.fold}, or run_all over both sizes), or set train.init_from: null.")
    if recorded_split(cfg.outputs, source.name) not in (None, split):
        raise StaleRunError(stale_message([source.name], cfg.outputs))
    try:
        digest = file_digest(source.checkpoint)  # before loading: a checkpoint replaced meanwhile reads as retrained
    except OSError as e:
        raise RuntimeError(f"{name}: train.init_from: the checkpoint of {source.name} went away ({e}); it is being "
                           f"retrained? Train it first, then this run.") from None
    ckpt = load_model_checkpoint(source.checkpoint)
    held, want = ckpt["model_config"], mcfg.to_dict()
    differ = sorted(k for k in want if k != "img_size" and held.get(k) != want[k])
    if differ:
        raise RuntimeError(f"{name}: train.init_from: {source.name} is another model ("
                           + ", ".join(f"{k}: {held.get(k)!r} there, {want[k]!r} here" for k in differ[:4])
                           + f"): give both sizes the same model.* values, or retrain {source.name}.")
    return ckpt["model"], digest


class HeadOnly(torch.nn.Module):
    """MANIQA's head as a module of its own, for batches of cached backbone features (DDP, compile)."""

    def __init__(self, model: MANIQA):
        super().__init__()
        self.model = model

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model.head(feats)


def param_groups(model: MANIQA, backbone_lr_scale: float) -> list[dict]:
    """One group (the team's), or the ViT apart with its learning rate scaled (schedule.py reads `lr_scale`)."""
    if backbone_lr_scale == 1.0:
        return [{"params": list(model.parameters())}]
    vit = {id(p) for p in model.vit.parameters()}
    return [{"params": [p for p in model.parameters() if id(p) not in vit]},
            {"params": list(model.vit.parameters()), "lr_scale": backbone_lr_scale}]


def _check_finite(loss_sum: torch.Tensor, name: str, epoch: int, step: int) -> None:
    if not torch.isfinite(loss_sum).item():
        raise DivergenceError(
            f"{name}: the training loss became NaN/inf at epoch {epoch}, step {step}. Nothing trained since "
            f"was saved; the best checkpoint and last.pt are from before it. Lower optim.lr / "
            f"schedule.max_lr, or use train.precision=fp32, then rerun (it resumes from last.pt)."
        )


def _dead_head_hint(loss: str) -> str:
    if "mse" not in (n for _, n in loss_terms(loss)):  # plcc, nin, rank ignore the scores' level
        return (f"(train.loss {loss!r} ignores the scores' level, so nothing keeps them above 0): add an mse term, "
                f"e.g. \"{loss}+0.1*mse\".")
    return ("(an unlucky initialisation or an early step can leave its input below 0 for every image): train this "
            "run with another seed (papermill or run_all: -p seed N), a lower learning rate (-p lr) or a wider "
            "model.head_hidden.")


def _across_ranks(loss_sum: torch.Tensor, n: int, alive: torch.Tensor, world: int) -> tuple[float, int]:
    """(mean training loss, predictions above 0) over every rank's batches of the epoch."""
    t = torch.stack([loss_sum.detach().float(), torch.tensor(float(n), device=loss_sum.device), alive.float()])
    if world > 1:
        dist.all_reduce(t)
    mean, alive = torch.stack([t[0] / t[1].clamp(min=1), t[2]]).tolist()  # one transfer to the host
    return mean, int(alive)


def _patience_spent(history: list, best: dict, patience: int) -> bool:
    """Early stopping: the last epoch was validated (train.val_every) and came `patience` or more
    epochs after the best (or after the start, with no best yet)."""
    if not history or VAL_METRIC not in history[-1]:
        return False
    since = len(history) if best["epoch"] is None else history[-1]["epoch"] - best["epoch"]
    return since >= patience


def save_best(model, mcfg: MANIQAConfig, cfg: Config, epoch: int, metrics: dict) -> None:
    atomic_torch_save({
        "format": KIT_FORMAT, "model": model.state_dict(), "model_config": mcfg.to_dict(), "input": input_view(cfg),
        "res": cfg.res, "fold": cfg.fold, "mos_scale": cfg.mos_scale,
        "epoch": epoch, "metrics": metrics, "flip": cfg.train.flip,
        "cpu_bf16": cpu_bf16_on(cfg.train.cpu_bf16),  # how its validation ran on a CPU (auto resolved here):
                                                      # predict / score follow it
    }, cfg.run.checkpoint)


def read_result(files: RunFiles) -> RunResult:
    manifest = files.read_manifest()
    history = pd.read_csv(files.metrics) if files.metrics.is_file() else pd.DataFrame()
    return RunResult(files.dir, manifest.get("status", "missing"), manifest.get("best_epoch"),
                     manifest.get("best", {}), files.checkpoint, history)


def completed_result(files: RunFiles) -> RunResult | None:
    """The stored result if the run completed and its checkpoint loads, else None."""
    res = read_result(files)
    if res.status != "completed" or not res.checkpoint.is_file():
        return None
    try:
        safe_torch_load(res.checkpoint)
    except Exception:
        return None
    return res
