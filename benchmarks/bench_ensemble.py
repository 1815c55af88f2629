"""Ensemble speed: the kit's vectorised IQR-filtered mean vs a straightforward per-image loop.

    python benchmarks/bench_ensemble.py [--images 13012] [--runs 15]
"""
import argparse
import time

import numpy as np
import pandas as pd

from common import save, table
from iqa_lib.ensemble import iqr_mean


def per_image_loop(long: pd.DataFrame) -> pd.Series:
    """What the team's notebook did: one boolean mask over all rows per image (O(images x rows))."""
    out = {}
    for name in long["img_name"].unique():
        v = long.loc[long["img_name"] == name, "mos"]
        q1, q3 = v.quantile(0.25), v.quantile(0.75)
        iqr = q3 - q1
        kept = v[(v > q1 - 1.5 * iqr) & (v < q3 + 1.5 * iqr)]
        out[name] = kept.mean() if len(kept) else v.median()
    return pd.Series(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=13012)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    preds = rng.normal(5.5, 0.8, (args.images, 1)) + rng.normal(0, 0.15, (args.images, args.runs))
    outliers = rng.random(preds.shape) < 0.03
    preds[outliers] += rng.choice([-3, 3], outliers.sum())
    names = [f"img{i:06d}" for i in range(args.images)]
    wide = pd.DataFrame(preds, index=names)

    t = time.perf_counter()
    kit = iqr_mean(wide)
    kit_s = time.perf_counter() - t
    long = wide.stack().rename("mos").reset_index().rename(columns={"level_0": "img_name"})
    t = time.perf_counter()
    loop = per_image_loop(long)
    loop_s = time.perf_counter() - t
    max_diff = float(np.abs(loop.loc[names].to_numpy() - kit).max())
    rows = [{"method": "kit (vectorised)", "seconds": kit_s}, {"method": "per-image loop", "seconds": loop_s}]
    print(table(rows, ["method", "seconds"]))
    print(f"speed-up {loop_s / kit_s:.0f}x, max |difference| {max_diff:.2e}")
    save("ensemble", {"images": args.images, "runs": args.runs, "kit_seconds": kit_s, "loop_seconds": loop_s,
                      "speedup": loop_s / kit_s, "max_abs_difference": max_diff})


if __name__ == "__main__":
    main()
