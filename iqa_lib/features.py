"""Backbone features computed once, for training MANIQA's head on a frozen ViT.

With `train.freeze_backbone` the ViT never changes, so what it computes for an image is fixed:
the outputs of the feature blocks for each view training uses (the image as stored and, with
`train.flip`, its flip; with crops, `model.load_size` > `img_size`, each crop of the
`model.crop_grid` n x n grid and its flip: a fixed set of crops in place of random ones).
`FeatureCache.build` computes them once and stores them in fp16,

    {out_dir}/cache/features/{key}.npy     (images, views, len(feature_blocks) * D, tokens)

and an epoch then runs only the head (`MANIQA.head`) on one random view per image. The key
hashes everything the numbers depend on (the backbone's weights, input size, feature blocks,
normalisation, the images and their order, the views), so the five folds of a resolution share
one file and anything else gets its own. The result is exact up to fp16 rounding:
validation from the cache gives what `infer.predict_indices` gives for the same images (the mean
over the crop grid), in eval mode (tests/test_frozen.py).

What it buys: MANIQA's head costs about as much as its backbone, so skipping the backbone saves
at most about half an epoch's time on MANIQA's own ViT-B, more when the head is small next to
the backbone; benchmarks/frozen_backbone.py measures it. What it costs: disk, images x views x
blocks x D x tokens x 2 bytes (54k challenge images at 384 px: hundreds of GB), checked before
anything is written.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from . import data as D
from .crops import grid_crops
from .model import MANIQA

FORMAT = 1
DTYPE = np.float16


class FeatureCacheError(RuntimeError):
    """The feature cache cannot be built here; the message says what to change."""


def views(flip: str, crop_grid: int = 0) -> tuple[str, ...]:
    """The views training draws from: the stored image, and its flip when `train.flip` is on; with
    crops (`crop_grid` n > 0), each of the n x n grid's crops, and each crop's flip."""
    flips = ("none",) if flip == "none" else ("none", flip)
    if not crop_grid:
        return flips
    return tuple(f"crop{p}" + ("" if f == "none" else f"+{f}") for p in range(crop_grid**2) for f in flips)


def _flips(view_names: tuple[str, ...]) -> tuple[str, ...]:
    """The flips among `views(...)` names, in order: ('crop0', 'crop0+horizontal', ...) -> ('none', 'horizontal')."""
    return tuple(dict.fromkeys((v.partition("+")[2] or "none") if v.startswith("crop") else v for v in view_names))


def _key(model: MANIQA, paths: list[str], view_names: tuple[str, ...], amp_dtype: torch.dtype | None) -> str:
    c = model.cfg
    h = hashlib.sha256(json.dumps({
        "format": FORMAT, "backbone": c.backbone, "img_size": c.img_size, "blocks": list(c.feature_blocks),
        "mean": list(c.mean), "std": list(c.std), "vit_kwargs": c.vit_kwargs, "views": list(view_names),
        "amp": str(amp_dtype),
    }, sort_keys=True, default=str).encode())
    for name, t in model.vit.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for p in paths:  # the images, in the order the rows are stored, and their size / mtime
        h.update(f"{p}\0{D._fingerprint(p)}\0".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


class FeatureCache:
    """The cached features of a store's images: `train_batch` and `predict` for the training loop."""

    def __init__(self, array: np.ndarray, view_names: tuple[str, ...], path: Path):
        self.array, self.path = array, path
        self.flips = _flips(view_names)
        self.places = len(view_names) // len(self.flips)  # crops per image (1: the whole image); view = place x flip

    @classmethod
    def build(cls, model: MANIQA, store: D.ImageStore, view_names: tuple[str, ...], folder: Path, *,
              device: torch.device, amp_dtype: torch.dtype | None = None, batch_size: int = 32,
              progress: bool = True) -> "FeatureCache":
        """Open the cache of `store`'s images (in its order), computing it first if needed."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        key = _key(model, store.paths, view_names, amp_dtype)
        path = folder / f"{key}.npy"
        shape = (len(store), len(view_names), len(model.cfg.feature_blocks) * model.cfg.embed_dim, model.cfg.grid**2)
        with FileLock(folder / f"{key}.lock"):  # DDP ranks, parallel folds: the first one builds it
            if not path.is_file():
                needed, free = math.prod(shape) * np.dtype(DTYPE).itemsize, shutil.disk_usage(folder).free
                if needed > free:
                    raise FeatureCacheError(
                        f"the feature cache needs {needed / 1e9:.1f} GB ({shape[0]} images x {shape[1]} views x "
                        f"{shape[2]} channels x {shape[3]} tokens x 2 bytes) but {folder} has {free / 1e9:.1f} GB "
                        f"free. Free some space, or set train.feature_cache: false (the frozen backbone then runs "
                        f"every step), or use fewer model.feature_blocks, a smaller input size, fewer views (a smaller "
                        f"model.crop_grid, train.flip: none).")
                for stale in folder.glob(f".{key}.*.tmp.npy"):  # left by killed builds (we hold the lock)
                    stale.unlink(missing_ok=True)
                cls._compute(model, store, view_names, path, shape, device, amp_dtype, batch_size, progress)
        array = np.load(path, mmap_mode="r")
        if array.shape != shape or array.dtype != DTYPE:
            raise FeatureCacheError(f"{path} holds {array.shape} {array.dtype}, not {shape}: delete it to rebuild it.")
        return cls(array, view_names, path)

    @staticmethod
    @torch.no_grad()
    def _compute(model, store, view_names, path, shape, device, amp_dtype, batch_size, progress) -> None:
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=DTYPE, shape=shape)
        flips = _flips(view_names)
        crop_grid = math.isqrt(len(view_names) // len(flips)) if view_names[0].startswith("crop") else 0
        was_training = model.training
        model.eval()
        try:
            for start in tqdm(range(0, len(store), batch_size), desc=f"backbone features -> {path.name}",
                              disable=not progress, leave=False):
                rows = range(start, min(start + batch_size, len(store)))
                x = D.to_model_input(np.stack([store[i] for i in rows]), device=device, mean=model.cfg.mean,
                                     std=model.cfg.std)
                # The crops infer.predict_indices averages over (crops.grid_crops), or the whole image.
                places = grid_crops(x, model.cfg.img_size, crop_grid) if crop_grid else [x]
                for p, x_place in enumerate(places):
                    for f, flip in enumerate(flips):
                        # NCHW: rows are dim -2 ("vertical", as data.to_model_input flips them), columns dim -1.
                        x_view = x_place if flip == "none" else x_place.flip(-2 if flip == "vertical" else -1)
                        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                            feats = model.features(x_view).float()
                        if not torch.isfinite(feats.half()).all():
                            raise FeatureCacheError(f"backbone features of {store.paths[rows[0]]} (batch) overflow "
                                                    f"fp16: set train.feature_cache: false for this backbone.")
                        out[rows.start:rows.stop, p * len(flips) + f] = feats.cpu().numpy().astype(DTYPE)
            out.flush()
            del out
            os.replace(tmp, path)  # complete or absent: a killed build leaves only a temp file
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            model.train(was_training)

    def train_batch(self, indices, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """Features of images `indices`, each in a random view: one of the crops (drawn uniformly),
        flipped with probability 0.5, drawn from `generator` (the flip coin as data.to_model_input
        draws it for images)."""
        idx = np.asarray(indices)
        which = np.zeros(len(idx), dtype=np.int64)
        if self.places > 1:
            place = torch.randint(self.places, (len(idx),), generator=generator, device=generator.device)
            which += place.cpu().numpy().astype(np.int64) * len(self.flips)
        if len(self.flips) > 1:
            coin = torch.rand(len(idx), generator=generator, device=generator.device) < 0.5
            which += coin.cpu().numpy().astype(np.int64)
        order = np.argsort(idx, kind="stable")  # ascending rows read faster from the memmap
        feats = np.empty((len(idx), *self.array.shape[2:]), dtype=DTYPE)
        feats[order] = self.array[idx[order], which[order]]
        return torch.from_numpy(feats).to(device, non_blocking=True).float()

    @torch.no_grad()
    def predict(self, model: MANIQA, indices, device: torch.device, amp_dtype: torch.dtype | None = None,
                batch_size: int = 32) -> np.ndarray:
        """The model's scores (0-1 scale) of images `indices` from their unflipped features (the mean
        over the crops), in eval mode: what `infer.predict_indices` gives, to fp16 rounding."""
        was_training = model.training
        model.eval()
        out = []
        for start in range(0, len(indices), batch_size):
            rows = np.asarray(indices[start:start + batch_size])
            scores = []
            for p in range(self.places):
                x = torch.from_numpy(np.asarray(self.array[rows, p * len(self.flips)])).to(device).float()
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    scores.append(model.head(x).float().cpu())
            out.append(torch.stack(scores).mean(0))
        model.train(was_training)
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)
