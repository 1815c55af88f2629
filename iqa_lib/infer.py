"""Predictions: the one function that scores images with a model (validation and test alike),
and `predict(checkpoint, data_dir)` for a test set.

    predict_indices(model, dataset, indices, ...)   scores on the 0-1 target scale, in order;
                                                    crops grid and flip TTA averaged; DDP shares
    load_model(checkpoint)                           (the MANIQA a kit checkpoint holds, in eval mode; the checkpoint)
    predict(checkpoint, data_dir, "test.csv")        img_name, mos: on the checkpoint's MOS scale

Training (`iqa_lib.train`) validates with `predict_indices`; nothing here imports the trainer.
"""
from __future__ import annotations

import numbers
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from . import data as D
from .checkpoint import CheckpointError, atomic_write_text, load_model_checkpoint
from .config import PRECISIONS, Config, ConfigError
from .crops import grid_crops, grid_size, whole_image_view
from .features import FeatureCache, views
from .model import MANIQA, MANIQAConfig, describe_backbone


def model_config(cfg: Config) -> MANIQAConfig:
    """The checked MANIQAConfig a run's parameters describe. What the backbone decides (its patch,
    width and input normalisation) is read from it; patch_size / embed_dim given in the parameters
    must agree with it."""
    # The model section's keys that are MANIQAConfig fields (the others say how to build or feed it).
    fields = cfg.model.model_dump(include=set(MANIQAConfig.__dataclass_fields__))
    try:
        vit = describe_backbone(cfg.model.backbone, cfg.model.img_size, cfg.model.vit_kwargs)
        for key in ("patch_size", "embed_dim"):
            if fields[key] is None:
                fields[key] = vit[key]
            elif fields[key] != vit[key]:
                raise ValueError(f"model.{key} is {fields[key]} but backbone '{cfg.model.backbone}' has {vit[key]}: "
                                 f"set it to null (read from the backbone) or to {vit[key]}")
        if max(fields["feature_blocks"]) >= vit["depth"]:
            raise ValueError(f"model.feature_blocks {list(fields['feature_blocks'])} need a ViT deeper than the "
                             f"{vit['depth']} blocks of '{cfg.model.backbone}': use blocks 0..{vit['depth'] - 1}")
        mcfg = MANIQAConfig.from_dict({**fields, "mean": vit["mean"], "std": vit["std"]})
        mcfg.validate()
    except ValueError as e:
        raise ConfigError(f"the model parameters (profile {cfg.profile!r}, res {cfg.res}) do not make a valid "
                          f"MANIQA: {e}") from e
    return mcfg


def input_view(cfg: Config) -> dict:
    """How images reach the model (iqa_lib.crops): the stored side and the test-time crop grid."""
    return {"load_size": cfg.model.load_size, "crop_grid": cfg.model.crop_grid}


def pick_device(name: str = "auto", rank: int = 0) -> torch.device:
    """`auto`: a CUDA GPU when one is visible, else the CPU; with DDP, GPU `rank`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("the device asked for is 'cuda' (train.device, or score --device) but no CUDA GPU "
                               "is visible: use 'auto' or 'cpu'.")
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device, cpu_bf16: bool | str = False) -> torch.dtype | None:
    """None means plain fp32. On CUDA bf16/fp16 autocast; on a CPU only with `cpu_bf16` (train.cpu_bf16),
    and then bf16: True always (emulated where the CPU lacks bf16 instructions: many times slower), "auto"
    only where the CPU has them."""
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if not cpu_bf16_on(cpu_bf16):
        return None
    if not cpu_has_bf16():
        warnings.warn("train.cpu_bf16 is on but this CPU has no bf16 instructions (AVX512-BF16 or AMX): bf16 is "
                      "emulated and many times slower than fp32 here. Set train.cpu_bf16: auto or false "
                      "(python -m iqa_lib.score: --precision fp32).", stacklevel=2)
    return torch.bfloat16


def cpu_bf16_on(cpu_bf16: bool | str) -> bool:
    """Whether a train.cpu_bf16 setting means bf16 autocast on this machine's CPU ("auto": if it has bf16)."""
    return cpu_has_bf16() if cpu_bf16 == "auto" else bool(cpu_bf16)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16: AMD Zen 4+; AMX: Intel Sapphire Rapids+)."""
    return any(getattr(torch.cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


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
        x = D.to_model_input(images, train=False, device=device, mean=model.cfg.mean, std=model.cfg.std)
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


def load_model(checkpoint: str | Path, expect: MANIQAConfig | None = None) -> tuple[MANIQA, dict]:
    """(model in eval mode, checkpoint dict) of a kit checkpoint (no download: every weight comes from the
    file); the dict's `input` and `cpu_bf16` are filled in for checkpoints written before they were recorded."""
    ckpt = load_model_checkpoint(checkpoint, expect=expect.to_dict() if expect else None)
    # Defaults for checkpoints written before these records: fp32 on a CPU, whole images.
    ckpt.setdefault("cpu_bf16", False)
    try:
        mcfg = MANIQAConfig.from_dict(ckpt["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"'{checkpoint}': its model_config is not one this version of iqa_lib builds ({e}): score "
                              f"it with the version that wrote it, or retrain the run") from None
    model = MANIQA(mcfg, pretrained=False)
    ckpt["input"] = ckpt.get("input") or whole_image_view(model.cfg.img_size)
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"'{checkpoint}': its weights do not fit the model it describes ({str(e)[:300]})") from e
    return model.eval(), ckpt


def predict(
    checkpoint: str | Path,
    data_dir: str | Path,
    csv_name: str = "test.csv",
    *,
    expect: MANIQAConfig | None = None,
    batch_size: int = 32,
    tta: bool = False,
    device: str = "auto",
    precision: str = "bf16",
    cpu_bf16: bool | str | None = None,
    cache_dir: str | Path | None = None,
    features_dir: str | Path | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """MOS for every image of `csv_name`, in its order, on the checkpoint's MOS scale, clipped to it.

    `tta=True` averages the image with its vertical and horizontal flips. A checkpoint trained
    on crops (`model.load_size`) is scored over its grid of crops (iqa_lib.crops). On a CPU it
    runs in bf16 autocast where the checkpoint's run validated so (its train.cpu_bf16, recorded in
    the checkpoint; checkpoints without the record: fp32), unless `cpu_bf16` (True, False or "auto":
    where this CPU has bf16 instructions) says otherwise.
    `expect` (the config the caller means to use) makes a checkpoint of another model fail clearly.
    `features_dir` (for runs trained on a frozen backbone, without `tta`): the backbone's features
    of these images are stored there once (iqa_lib.features, keyed by the backbone's weights), so
    the folds of one input size share them and each run then costs its head only.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number of at least 1 (04_infer: -p batch_size; the params: "
                         f"infer.batch_size), got {batch_size!r}")
    model, ckpt = load_model(checkpoint, expect)
    dev = pick_device(device)
    model.to(dev)
    scale = float(ckpt["mos_scale"])
    table = D.load_table(data_dir, csv_name, labelled=False, check_images="open")
    table = table.drop_duplicates("img_name").reset_index(drop=True)
    view = ckpt["input"]  # how the run saw images: stored size and crop grid
    store = D.ImageStore.open(table["path"].tolist(), int(view["load_size"]), cache_dir=cache_dir,
                              num_workers=num_workers, progress=progress)
    amp = autocast_dtype(precision, dev, ckpt["cpu_bf16"] if cpu_bf16 is None else cpu_bf16)
    if features_dir is not None and not tta:
        cache = FeatureCache.build(model, store, views("none", grid_size(view, model.cfg.img_size)), Path(features_dir),
                                   device=dev, amp_dtype=amp, batch_size=batch_size, progress=progress)
        preds = cache.predict(model, np.arange(len(table)), dev, amp, batch_size=batch_size)
    else:
        preds = predict_indices(model, D.IQADataset(store), np.arange(len(table)), dev, amp, batch_size=batch_size,
                                num_workers=num_workers, tta=tta, crop=model.cfg.img_size,
                                crop_grid=int(view["crop_grid"]))
    return pd.DataFrame({"img_name": table["img_name"], "mos": np.clip(preds * scale, 0.0, scale)})


def write_predictions(df: pd.DataFrame, path: str | Path) -> Path:
    """`img_name,mos` CSV, written atomically (an older file survives a failed run)."""
    path = Path(path)
    atomic_write_text(path, df[["img_name", "mos"]].to_csv(index=False))
    return path
