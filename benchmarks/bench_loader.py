"""Loader throughput: decode+resize every epoch vs the pre-resized uint8 cache.

    python benchmarks/bench_loader.py [--images 300] [--size 384] [--workers 0 2 16]

Generates JPEGs of the competition's typical size (1024x768) once, then times a full epoch of
the training loader (batch 32) per path and worker count, on a warm cache build (built first,
timed separately). Also runs on ../shared/data/clive_dev when present.
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import measure_loader, save, table
from iqa_lib import data as D

CLIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "clive_dev"


def make_jpegs(folder: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:768, 0:1024] / 768.0
    paths = []
    for i in range(n):
        base = 128 + 100 * np.sin(xx * rng.uniform(3, 20) + yy * rng.uniform(3, 20))[..., None] * rng.uniform(0.3, 1, 3)
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        p = folder / f"{i:05d}.jpg"
        Image.fromarray(img).save(p, quality=90)
        paths.append(str(p))
    return paths


def epoch_rate(store, workers: int, batch: int) -> float:
    loader = D.make_loader(D.IQADataset(store), batch, shuffle=True, num_workers=workers)
    measure_loader(loader, max_batches=2)  # start the workers (persistent) before timing
    return measure_loader(loader)["images_per_s"]


def bench(name, paths, size, workers_list, batch, cache_root):
    rows = []
    t = time.perf_counter()
    cached = D.ImageStore.open(paths, size, cache_dir=cache_root, num_workers=max(workers_list), progress=False)
    build_s = time.perf_counter() - t
    decode = D.ImageStore.open(paths, size, cache_dir=None, progress=False)
    for w in workers_list:
        dec, cac = epoch_rate(decode, w, batch), epoch_rate(cached, w, batch)
        rows.append({"data": name, "images": len(paths), "size": size, "workers": w, "decode_img_s": dec,
                     "cache_img_s": cac, "cache_vs_decode": cac / dec,
                     "decode_img_s_per_worker": dec / max(w, 1), "cache_build_s": build_s})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=sorted({0, 2, os.cpu_count() or 1}))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "jpg").mkdir()
        paths = make_jpegs(tmp / "jpg", args.images)
        rows += bench("generated 1024x768 JPEG", paths, args.size, args.workers, args.batch, tmp / "cache")
        if CLIVE.is_dir():
            clive = D.load_table(CLIVE, mos_scale=100, check_images="none", progress=False)
            rows += bench("CLIVE (500x500 JPEG)", clive["path"].tolist(), args.size, args.workers, args.batch,
                          tmp / "cache")
    print(table(rows, ["data", "workers", "decode_img_s", "cache_img_s", "cache_vs_decode", "cache_build_s"]))
    save("loader", {"batch": args.batch, "rows": rows})


if __name__ == "__main__":
    main()
