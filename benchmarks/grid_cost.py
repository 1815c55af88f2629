"""What a profile's whole grid costs in arithmetic, and the least time this machine needs for it.

    python benchmarks/grid_cost.py --profile cpu --data-dir data/clive \
        --grid-results benchmarks/results/real_clive_cpu.json
    python benchmarks/grid_cost.py --profile cpu --data-dir data/clive --params-dir my_params --name grid_cost_cpu_fast

Counts the multiply-adds of one training image and one evaluated crop at each input size (torch's
FLOP counter: matmuls, convolutions and attention), multiplies them out over the grid the profile
describes (folds x epochs x training images, the epochs validated x validation images x crops,
and 04_infer's test images x crops for every run), and times the same passes here (training at
train.batch_size, evaluation at train.val_batch_size, the trainer's autocast, random weights and
inputs). FLOPs / measured rate is the grid's floor on this machine: what it would take with no kernel
starts, data loading, checkpoints or notebooks. Given a measured grid (a real_data_report JSON), it
records that grid's wall time and its runs' training-loop time beside the floor. A shared VM's speed
changes from hour to hour: the rates are this run's, a grid's times are its own hour's.
Profiles that freeze ViT blocks, flip at test time or accumulate gradients are refused (not counted).
"""
import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from common import profile_step, save, table


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def per_image(cfg, warmup: int, steps: int) -> dict:
    """FLOPs per training image and per evaluated crop, and their measured rates here."""
    model, step, amp = profile_step(cfg)
    side, batch, val_batch = cfg.model.img_size, cfg.train.batch_size, cfg.train.val_batch_size
    train_flops = count_flops(step) / batch
    x_val = torch.randn(val_batch, 3, side, side)

    def evaluate():
        with torch.no_grad(), torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            model(x_val)

    model.eval()
    eval_flops = count_flops(evaluate) / val_batch
    rates = {}
    for name, fn, mode, n in (("train", step, True, batch), ("eval", evaluate, False, val_batch)):
        model.train(mode)
        for _ in range(warmup):
            fn()
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        rates[name] = n * steps / (time.perf_counter() - t)
    return {"side": side, "batch": batch, "eval_batch": val_batch,
            "train_gflop_per_image": train_flops / 1e9, "eval_gflop_per_crop": eval_flops / 1e9,
            "train_images_per_s": rates["train"], "eval_crops_per_s": rates["eval"],
            "train_gflop_per_s": train_flops * rates["train"] / 1e9,
            "eval_gflop_per_s": eval_flops * rates["eval"] / 1e9}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--data-dir", type=Path, required=True, help="a prepared data folder: train.csv and test.csv")
    ap.add_argument("--params-dir", type=Path,
                    help="a folder of profile YAMLs (base.yaml too) read instead of params/: a variant of a profile")
    ap.add_argument("--grid-results", type=Path, help="a real_data_report JSON of a whole grid, to compare with")
    ap.add_argument("--name", help="result file benchmarks/results/{name}_cpu.json (default: grid_cost_{profile})")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    from iqa_lib.config import load_config, profile_resolutions

    n_train = len(pd.read_csv(args.data_dir / "train.csv"))
    n_test = len(pd.read_csv(args.data_dir / "test.csv"))
    rows, phases, total_flops = [], {"train": 0.0, "validate": 0.0, "infer": 0.0}, 0.0
    for res in profile_resolutions(args.profile, args.params_dir):
        cfg = load_config(args.profile, res, 0, {"data_dir": str(args.data_dir)}, params_folder=args.params_dir)
        tp, folds = cfg.train, cfg.n_folds
        if tp.freeze_backbone or tp.freeze_blocks or cfg.infer.tta or tp.grad_accum != 1:
            raise SystemExit(f"{args.profile} at {res} px freezes ViT blocks, flips at test time or accumulates "
                             "gradients: this script counts none of those")
        n_val = n_train / folds
        validated = sum((e + 1) % tp.val_every == 0 or e + 1 == tp.epochs for e in range(tp.epochs))
        crops = cfg.model.crop_grid ** 2 if cfg.model.load_size > cfg.model.img_size else 1
        m = per_image(cfg, args.warmup, args.steps)
        images = folds * tp.epochs * (n_train - n_val)  # training images over the size's runs
        crops_val = folds * validated * n_val * crops  # validation crops
        crops_test = folds * n_test * crops  # 04_infer's crops
        flops = 1e9 * (images * m["train_gflop_per_image"] + (crops_val + crops_test) * m["eval_gflop_per_crop"])
        seconds = {"train": images / m["train_images_per_s"], "validate": crops_val / m["eval_crops_per_s"],
                   "infer": crops_test / m["eval_crops_per_s"]}
        rows.append({"res": res, **m, "epochs": tp.epochs, "validations": validated, "crops": crops,
                     "grid_tflop": flops / 1e12, "floor_s": seconds})
        for phase, sec in seconds.items():
            phases[phase] += sec
        total_flops += flops
        print(table([{k: v for k, v in rows[-1].items() if k != "floor_s"}],
                    ["res", "side", "train_gflop_per_image", "eval_gflop_per_crop", "train_images_per_s",
                     "eval_crops_per_s", "train_gflop_per_s", "eval_gflop_per_s", "grid_tflop"]), flush=True)
    result = {"what": "the grid's FLOPs (torch FlopCounterMode: 2 per multiply-add) and its compute floor on this "
                      "machine: training, validation and 04_infer passes at the measured rates, nothing else",
              "profile": args.profile, "params_dir": str(args.params_dir or "params"), "data_dir": str(args.data_dir),
              "train_images": n_train, "test_images": n_test,
              "rows": rows, "grid_tflop": total_flops / 1e12, "floor_minutes": sum(phases.values()) / 60,
              "floor_minutes_by_phase": {k: v / 60 for k, v in phases.items()}}
    print(f"\ngrid: {total_flops / 1e12:.0f} TFLOP; floor here now {result['floor_minutes']:.1f} min ("
          + ", ".join(f"{k} {v / 60:.1f}" for k, v in phases.items()) + ")")
    if args.grid_results:
        grid = json.loads(args.grid_results.read_text())
        result["measured_grid"] = {"file": args.grid_results.name, "date": grid["date"],
                                   "minutes": grid["grid_seconds"] / 60,
                                   "train_seconds": sum(r["train_seconds"] for r in grid["runs"].values())}
        print(f"measured grid ({grid['date'][:10]}): {grid['grid_seconds'] / 60:.1f} min, of which the runs' "
              f"training loops {result['measured_grid']['train_seconds'] / 60:.1f} min")
    save(args.name or f"grid_cost_{args.profile}", result, torch.device("cpu"))


if __name__ == "__main__":
    main()
