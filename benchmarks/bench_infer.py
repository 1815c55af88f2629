"""Inference throughput of the fast path at each resolution, with and without flip TTA.

    python benchmarks/bench_infer.py [--res 384 448 640] [--batch 32]

Model only (inputs already on the device): bf16 autocast on a GPU, fp32 on a CPU. TTA runs
the image and its two flips (3 forwards per image).
"""
import argparse
import warnings

import torch

from common import save, table, timeit
from iqa_lib.model import MANIQA, variant_config


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", type=int, nargs="+", default=None, help="default: 384 448 640 (GPU), 384 (CPU)")
    ap.add_argument("--batch", type=int, default=None, help="default: 32 (GPU), 4 (CPU)")
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    batch = args.batch or (32 if cuda else 4)
    rows = []
    for res in args.res or ([384, 448, 640] if cuda else [384]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = MANIQA(variant_config(res)).to(device).eval()
        fwd = torch.compile(model) if args.compile else model
        x = torch.randn(batch, 3, res, res, device=device)
        for tta in (False, True):
            @torch.no_grad()
            def run():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                    views = [x, x.flip(-2), x.flip(-1)] if tta else [x]
                    return torch.stack([fwd(v).float() for v in views]).mean(0)
            s = timeit(run, device, warmup=2, repeat=5 if cuda else 2)
            rows.append({"res": res, "batch": batch, "tta": tta, "seconds_per_batch": s, "images_per_s": batch / s})
        print(table(rows[-2:], ["res", "batch", "tta", "seconds_per_batch", "images_per_s"]), flush=True)
        del model
    save("infer", {"compile": args.compile, "precision": "bf16" if cuda else "fp32", "rows": rows}, device)


if __name__ == "__main__":
    main()
