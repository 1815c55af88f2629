"""The baseline a trained head must beat: ridge regression on a frozen ViT's pooled features.

    python benchmarks/linear_probe.py --profile cpu --sizes 112,224 [--blocks all|6,7,8,9|0-5] [--load-size 448 --crop-grid 2]

For each input size, the profile's backbone (its weights file) computes, for every training and
holdout image of the profile's data (a folder made by `iqa_lib.datasets.prepare ... --holdout`),
the mean and the standard deviation over the tokens of each chosen block's output (with --load-size,
of each crop of an n x n grid of the image stored at that side, averaged over the crops); a ridge
regression (closed form, its penalty chosen by 5-fold cross-validation on the training images
only) is fitted on the training images and scored once on the holdout (`test_labels.csv`).
Writes `benchmarks/results/linear_probe_{blocks}_{device}.json`.
"""
import argparse
import time

import numpy as np
import pandas as pd
import torch

from common import save  # noqa: E402  (puts the repository on sys.path)
from iqa_lib import data as D  # noqa: E402
from iqa_lib.config import load_config  # noqa: E402
from iqa_lib.crops import grid_crops  # noqa: E402
from iqa_lib.infer import model_config, pick_device  # noqa: E402
from iqa_lib.metrics import plcc, srcc  # noqa: E402
from iqa_lib.model import MANIQA, describe_backbone  # noqa: E402

PENALTIES = 10.0 ** np.arange(-3, 5)


def parse_blocks(text: str, depth: int) -> tuple[int, ...]:
    if text == "all":
        return tuple(range(depth))
    if "-" in text:
        a, b = map(int, text.split("-"))
        return tuple(range(a, b + 1))
    return tuple(int(b) for b in text.split(","))


@torch.no_grad()
def pooled_features(model: MANIQA, paths: list[str], size: int, device, batch_size: int = 16,
                    load_size: int | None = None, crop_grid: int = 1) -> np.ndarray:
    store = D.ImageStore.open(paths, load_size or size, progress=False)
    out = []
    for start in range(0, len(store), batch_size):
        x = D.to_model_input(np.stack([store[i] for i in range(start, min(start + batch_size, len(store)))]),
                             device=device, mean=model.cfg.mean, std=model.cfg.std)
        pooled = []
        for crop in grid_crops(x, size, crop_grid):  # the whole image when load_size is the model's size
            f = model.features(crop).float()  # (B, blocks * D, N)
            pooled.append(torch.cat([f.mean(-1), f.std(-1)], dim=1))
        out.append(torch.stack(pooled).mean(0).cpu().numpy())
    return np.concatenate(out)


def ridge(x: np.ndarray, y: np.ndarray, penalty: float):
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    # The dual form: an (images x images) system, far smaller than (features x features) here.
    w = z.T @ np.linalg.solve(z @ z.T + penalty * len(z) * np.eye(len(z)), y - y.mean())
    return lambda x_new: ((x_new - mu) / sd) @ w + y.mean()


def choose_penalty(x: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    folds = np.random.default_rng(seed).permutation(len(x)) % 5
    scores = []
    for lam in PENALTIES:
        pred = np.empty(len(y))
        for k in range(5):
            pred[folds == k] = ridge(x[folds != k], y[folds != k], lam)(x[folds == k])
        scores.append(srcc(pred, y))
    return float(PENALTIES[int(np.argmax(scores))]), float(max(scores))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--sizes", default="112,224")
    ap.add_argument("--blocks", default="all", help="all, a range like 0-5, or a list like 6,7,8,9")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--load-size", type=int, default=None, help="store images at this side and pool over crops")
    ap.add_argument("--crop-grid", type=int, default=1, help="n: an n x n grid of crops (with --load-size)")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for size in map(int, args.sizes.split(",")):
        cfg = load_config(args.profile, None, 0, data_dir=args.data_dir, overrides={"model.img_size": size})
        mcfg = model_config(cfg)
        depth = describe_backbone(mcfg.backbone, size, mcfg.vit_kwargs)["depth"]
        blocks = parse_blocks(args.blocks, depth)
        mcfg = type(mcfg).from_dict({**mcfg.to_dict(), "feature_blocks": list(blocks)})
        device = pick_device(cfg.train.device)
        model = MANIQA(mcfg, pretrained=cfg.model.pretrained, weights_file=cfg.model.weights_file).to(device).eval()
        train = D.load_table(cfg.data_dir, "train.csv", labelled=True, mos_scale=cfg.mos_scale,
                             check_images="none").drop_duplicates("img_name")
        test = D.load_table(cfg.data_dir, "test.csv", labelled=False, check_images="none").drop_duplicates("img_name")
        labels = pd.read_csv(f"{cfg.data_dir}/test_labels.csv", dtype={"img_name": str})
        test = test.merge(labels, on="img_name", validate="one_to_one")
        t0 = time.perf_counter()
        view = dict(load_size=args.load_size, crop_grid=args.crop_grid)
        x_train = pooled_features(model, train["path"].tolist(), size, device, **view)
        x_test = pooled_features(model, test["path"].tolist(), size, device, **view)
        seconds = time.perf_counter() - t0
        lam, cv_srcc = choose_penalty(x_train, train["mos"].to_numpy())
        pred = ridge(x_train, train["mos"].to_numpy(), lam)(x_test)
        row = {"size": size, "blocks": list(blocks), "features": int(x_train.shape[1]), "penalty": lam,
               "load_size": args.load_size or size, "crop_grid": args.crop_grid, "cv_srcc": round(cv_srcc, 4),
               "n_train": len(train), "n_holdout": len(test), "holdout_srcc": round(srcc(pred, test["mos"]), 4),
               "holdout_plcc": round(plcc(pred, test["mos"]), 4), "feature_seconds": round(seconds, 1)}
        print(row, flush=True)
        rows.append(row)
    crops = f"_crops{args.load_size}x{args.crop_grid}" if args.load_size else ""
    save(f"linear_probe_{args.blocks.replace(',', '_')}{crops}", {"profile": args.profile, "backbone": cfg.model.backbone,
                                                        "data_dir": cfg.data_dir, "rows": rows}, device)


if __name__ == "__main__":
    main()
