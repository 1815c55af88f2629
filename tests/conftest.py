"""Helpers shared by the engine tests (test_train, test_faults, test_crops, test_frozen)."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from iqa_lib.config import load_config

TIMING = ["train_seconds", "train_images_per_s"]


def checkpoint_vs_oof(cfg, data_dir: Path, **predict_kwargs) -> pd.DataFrame:
    """The run's oof.csv (`pred`) beside what `predict` with its checkpoint gives the same
    validation images (`mos_y`), one row per image in oof.csv's order."""
    from iqa_lib.infer import predict  # loads torch: only for the tests that use it

    oof = pd.read_csv(cfg.run.oof, dtype={"img_name": str})
    val = oof[["img_name"]].assign(img_path=[f"./train/{n}.jpg" for n in oof.img_name])
    val.to_csv(data_dir / "val_only.csv", index=False)
    pred = predict(cfg.run.checkpoint, data_dir, "val_only.csv", device="cpu", progress=False, **predict_kwargs)
    both = oof.merge(pred, on="img_name", validate="one_to_one")
    assert len(both) == len(oof) > 0, "every validation image, scored once"
    return both


def make_exposure_data(root: Path, n_train=100, n_test=12, seed=0) -> Path:
    """Textured scenes darkened by an exposure factor; MOS rises with exposure (0-10 scale).

    A quality signal a small model learns from scratch in a few epochs.
    """
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:72, 0:96] / 72.0
    rows, test_rows = [], []
    for i in range(n_train + n_test):
        split = "train" if i < n_train else "test"
        base = 128 + 90 * np.sin(xx * rng.uniform(2, 9) + yy * rng.uniform(2, 9))[..., None] * rng.uniform(0.5, 1, 3)
        exposure = rng.uniform(0.15, 1.0)
        img = np.clip(base * exposure + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)
        name = f"img{i:04d}"
        Image.fromarray(img).save(root / split / f"{name}.jpg", quality=95)
        if split == "train":
            mos = round(1 + 8 * (exposure - 0.15) / 0.85, 4)
            rows += [dict(img_name=name, img_path=f"./train/{name}.jpg", mos=mos, comments=c) for c in ("a", "b")]
        else:
            test_rows.append(dict(img_name=name, img_path=f"./test/{name}.jpg"))
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    pd.DataFrame(test_rows).to_csv(root / "test.csv", index=False)
    return root


@pytest.fixture(scope="module")
def exposure_data(tmp_path_factory):
    return make_exposure_data(tmp_path_factory.mktemp("exposure"))


def tiny_params(data_dir, out_dir, res=64, fold=0, **overrides):
    """The demo profile (a narrow ViT, 64-192 px) with test-sized epochs."""
    ov = {"data_dir": str(data_dir), "out_dir": str(out_dir), "train.epochs": 3, "train.patience": 10,
          "train.num_workers": 0, "train.batch_size": 8, "train.deterministic": True}
    ov.update(overrides)
    return load_config("demo", res, fold, ov)


def metrics_of(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv").drop(columns=TIMING)
