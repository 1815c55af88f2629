"""Predict a test set with one checkpoint: `predict(ckpt, data_dir) -> (img_name, mos)` table."""
from pathlib import Path

import numpy as np
import pandas as pd

from . import data as D
from .checkpoint import CheckpointError, atomic_write_text, load_model_checkpoint
from .crops import whole_image_view
from .model import MANIQA, MANIQAConfig
from .train import autocast_dtype, pick_device, predict_indices


def load_model(checkpoint: str | Path, expect: MANIQAConfig | None = None) -> tuple[MANIQA, dict]:
    """The model a kit checkpoint holds (no download: every weight comes from the file)."""
    ckpt = load_model_checkpoint(checkpoint, expect=expect.to_dict() if expect else None)
    model = MANIQA(MANIQAConfig.from_dict(ckpt["model_config"]), pretrained=False)
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
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """MOS for every image of `csv_name`, in its order, on the checkpoint's MOS scale, clipped to it.

    `tta=True` averages the image with its vertical and horizontal flips. A checkpoint trained
    on crops (`model.load_size`) is scored over its grid of crops (iqa_lib.crops). `expect` (the
    config the caller means to use) makes a checkpoint of another variant fail clearly.
    """
    model, ckpt = load_model(checkpoint, expect)
    dev = pick_device(device)
    model.to(dev)
    scale = float(ckpt["mos_scale"])
    table = D.load_table(data_dir, csv_name, labelled=False, check_images="open")
    table = table.drop_duplicates("img_name").reset_index(drop=True)
    # Checkpoints trained on crops say how they saw images; older ones saw them whole.
    view = ckpt.get("input") or whole_image_view(model.cfg.img_size)
    store = D.ImageStore.open(table["path"].tolist(), int(view["load_size"]), cache_dir=cache_dir,
                              num_workers=num_workers, progress=progress)
    preds = predict_indices(model, D.IQADataset(store), np.arange(len(table)), dev, autocast_dtype(precision, dev),
                            batch_size=batch_size, num_workers=num_workers, tta=tta,
                            crop=model.cfg.img_size, crop_grid=int(view["crop_grid"]))
    return pd.DataFrame({"img_name": table["img_name"], "mos": np.clip(preds * scale, 0.0, scale)})


def write_predictions(df: pd.DataFrame, path: str | Path) -> Path:
    """`img_name,mos` CSV, written atomically (an older file survives a failed run)."""
    path = Path(path)
    atomic_write_text(path, df[["img_name", "mos"]].to_csv(index=False))
    return path

