"""Time to train all 15 runs of the team's recipe on one device, from measured step throughput.

    python benchmarks/grid_estimate.py [--epochs 30] [--results benchmarks/results/train_step_<device>.json]

Per run: epochs x (80% of 54,662 images at the kit's training images/s + 20% at ~3x that
rate for validation, a forward being about a third of a training step). Only resolutions
present in the results file are estimated.
"""
import argparse
import json
from pathlib import Path

from common import RESULTS, save, table

IMAGES = 54_662


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=30, help="epochs per run (early stopping decides in practice)")
    ap.add_argument("--results", type=Path, default=None)
    args = ap.parse_args()
    files = [args.results] if args.results else sorted(RESULTS.glob("train_step_*.json"))
    if not files:
        raise SystemExit("no train_step results: run benchmarks/bench_train_step.py first")
    for f in files:
        res = json.loads(f.read_text())
        rows = []
        for r in res["rows"]:
            train_s = 0.8 * IMAGES / r["images_per_s"]
            val_s = 0.2 * IMAGES / (3 * r["images_per_s"])
            run_h = args.epochs * (train_s + val_s) / 3600
            rows.append({"res": r["res"], "path": r["path"], "images_per_s": r["images_per_s"],
                         "hours_per_run": run_h, "hours_5_folds": 5 * run_h})
        print(f"{f.name} ({res['device']}), {args.epochs} epochs per run:")
        print(table(rows, ["res", "path", "images_per_s", "hours_per_run", "hours_5_folds"]))
        for path in ("reference", "kit"):
            total = sum(r["hours_5_folds"] for r in rows if r["path"] == path)
            print(f"  {path}: {total:.1f} h for the {len({r['res'] for r in rows})} resolution(s) measured")
        save("grid_estimate", slug=f.stem.removeprefix("train_step_"), result={"source": f.name, "epochs": args.epochs, "images": IMAGES, "rows": rows,
                               "measured_on": res["device"]})


if __name__ == "__main__":
    main()
