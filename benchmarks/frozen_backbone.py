"""What freezing (some of) the backbone and the feature cache buy: training images/s of one step.

(a) full fine-tuning: the ViT and the head train (the team's recipe);
(b) the last blocks fine-tuned: the embeddings and the first N blocks fixed (train.freeze_blocks:
    the profile's, else the first feature block), backpropagation stops at block N;
(c) frozen backbone, no cache: the ViT runs forward only (no gradients), the head trains;
(d) frozen backbone with the cache: the head trains on stored features (train.feature_cache).
Each in fp32 and, on a GPU or a CPU with bf16 instructions, in bf16 autocast (train.cpu_bf16).

    python benchmarks/frozen_backbone.py --profile cpu              # its sizes, its backbone, random weights
    python benchmarks/frozen_backbone.py --profile team --batch 32  # on a GPU: the team's ViT-B/16

Random weights and inputs (speed does not depend on them; nothing is downloaded). The same fused
Adam and autocast as the trainer. Writes benchmarks/results/frozen_backbone_{device}.json.
"""
import argparse

import torch

from common import make_step, save, table, timeit
from iqa_lib.config import load_config, profile_resolutions
from iqa_lib.infer import autocast_dtype, cpu_has_bf16, model_config, pick_device
from iqa_lib.model import MANIQA
from iqa_lib.train import HeadOnly


def measure(cfg, batch: int, device, repeat: int, amp) -> dict:
    mcfg = model_config(cfg)
    tail = cfg.train.freeze_blocks or min(mcfg.feature_blocks)
    x = torch.randn(batch, 3, mcfg.img_size, mcfg.img_size, device=device)
    y = torch.rand(batch, device=device)
    row = {"res": cfg.res, "img_size": mcfg.img_size, "batch": batch, "autocast": str(amp).replace("torch.", ""),
           "feature_blocks": list(mcfg.feature_blocks), "freeze_blocks": tail}
    for name in ("full", "tail", "frozen", "cached"):
        torch.manual_seed(0)
        model = MANIQA(mcfg, pretrained=False).to(device).train()
        inputs = x
        if name != "full":
            model.freeze_backbone(tail if name == "tail" else None)
        forward = model
        if name == "cached":
            with torch.no_grad():
                inputs = model.features(x)
            forward = HeadOnly(model)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
        seconds = timeit(make_step(forward, opt, inputs, y, amp), device, warmup=1, repeat=repeat)
        row[f"{name}_images_per_s"] = round(batch / seconds, 2)
        del model, opt
    row["tail_speedup_over_full"] = round(row["tail_images_per_s"] / row["full_images_per_s"], 2)
    row["cache_speedup_over_frozen"] = round(row["cached_images_per_s"] / row["frozen_images_per_s"], 2)
    row["cache_speedup_over_full"] = round(row["cached_images_per_s"] / row["full_images_per_s"], 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for res in profile_resolutions(args.profile):
        cfg = load_config(args.profile, res, 0)
        device = pick_device(cfg.train.device)
        fast = autocast_dtype(cfg.train.precision, device, cpu_bf16=device.type == "cuda" or cpu_has_bf16())
        for amp in dict.fromkeys([None, fast]):
            rows.append(measure(cfg, args.batch, device, args.repeat, amp))
            print(rows[-1], flush=True)
    cols = ["img_size", "autocast", "full_images_per_s", "tail_images_per_s", "frozen_images_per_s",
            "cached_images_per_s", "tail_speedup_over_full", "cache_speedup_over_full"]
    print(table(rows, cols))
    save("frozen_backbone", {"profile": args.profile, "backbone": cfg.model.backbone, "rows": rows}, device)


if __name__ == "__main__":
    main()
