"""Score a finished grid on real data and write the numbers README quotes.

    python benchmarks/real_data_report.py --profile cpu --name clive [--grid-seconds S]

Reads `{out_dir}/runs/*/` (oof.csv, manifest.json), `{out_dir}/preds/*.csv` and
`{data_dir}/test_labels.csv` (a holdout made by `iqa_lib.datasets.prepare ... --holdout`), and writes
`benchmarks/results/real_{name}_{device}.json` plus two figures under `docs/figures/`:
out-of-fold PLCC / SRCC / challenge score per run, per resolution and for the ensemble across
resolutions; holdout scores per run and for the 15-run ensembles; training times.
Nothing here trains or predicts: it reads what the grid wrote.
"""
import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402

from common import RESULTS, machine  # noqa: E402  (puts the repository on sys.path)
from iqa_lib import plots  # noqa: E402
from iqa_lib.ensemble import ensemble, label_scores, load_predictions, oof_scores, oof_weights  # noqa: E402
from iqa_lib.notebook import run_config  # noqa: E402

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"


def run_times(runs_dir: Path) -> dict:
    times = {}
    for manifest in sorted(runs_dir.glob("*/manifest.json")):
        m = json.loads(manifest.read_text())
        curve = pd.read_csv(manifest.parent / "metrics.csv")
        times[manifest.parent.name] = {
            "status": m.get("status"), "epochs": int(m.get("epochs_run", len(curve))), "best_epoch": m.get("best_epoch"),
            "stop_reason": m.get("stop_reason"), "train_seconds": round(float(curve["train_seconds"].sum()), 1),
            "train_images_per_s": round(float(curve["train_images_per_s"].median()), 1),
            "device": m.get("environment", {}).get("device"),
        }
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--name", default="clive", help="names the result file: real_{name}_{device}.json")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--grid-seconds", type=float, default=None, help="wall time of the whole grid, as measured")
    ap.add_argument("--command", default=None, help="the command that ran the grid, recorded as given")
    args = ap.parse_args(argv)

    cfg = run_config(args.profile, data_dir=args.data_dir, out_dir=args.out_dir)
    out, data_dir = cfg.outputs, Path(cfg.data_dir)
    runs = sorted(p.parent.name for p in out.runs.glob("*/oof.csv"))
    if not runs:
        print(f"no finished runs under {out.runs}: run the grid first", file=sys.stderr)
        return 2
    oof = oof_scores(out, runs)
    result = {"profile": args.profile, "data_dir": str(data_dir), "out_dir": str(out.root),
              "mos_scale": cfg.mos_scale, "grid_seconds": args.grid_seconds, "command": args.command,
              "out_of_fold": oof.to_dict(orient="records"), "runs": run_times(out.runs)}
    print("out of fold:\n" + oof.to_string(index=False))

    labels_path = data_dir / "test_labels.csv"
    pred_files = sorted(out.preds.glob("*.csv"))
    if labels_path.is_file() and pred_files:
        labels = pd.read_csv(labels_path, dtype={"img_name": str})
        table = load_predictions({p.stem: p for p in pred_files})
        columns = {name: table[name] for name in table}
        by_res = {}
        for name in table:
            by_res.setdefault(name.split("_fold")[0], []).append(name)
        for res, names in sorted(by_res.items()):
            columns[f"{res} (iqr over {len(names)} folds)"] = ensemble(table[names], "iqr")
        columns[f"ensemble iqr ({len(table.columns)} runs)"] = ensemble(table, "iqr")
        columns[f"ensemble mean ({len(table.columns)} runs)"] = ensemble(table, "mean")
        try:  # per-resolution weights fitted on the out-of-fold predictions (05_ensemble's oof_weighted)
            weights = oof_weights(out, list(table.columns))
            columns[f"ensemble oof_weighted ({len(table.columns)} runs)"] = ensemble(table, "oof_weighted", weights)
            result["oof_weights"] = weights.to_dict()
        except ValueError as e:
            print(f"no oof_weighted ensemble: {e}")
        holdout = label_scores(columns, labels)
        result["holdout"] = holdout.reset_index().to_dict(orient="records")
        print("\nholdout (test_labels.csv):\n" + holdout.to_string())
        FIGURES.mkdir(parents=True, exist_ok=True)
        best = pd.concat({"pred": columns[f"ensemble iqr ({len(table.columns)} runs)"],
                          "mos": labels.set_index("img_name")["mos"]}, axis=1, join="inner")
        fig = plots.plot_pred_vs_true(best.reset_index(), title=f"{args.name} holdout: {len(table.columns)}-run ensemble")
        fig.savefig(FIGURES / f"real_{args.name}_holdout.png", dpi=100, bbox_inches="tight")
        per_run = oof[oof["level"] == "run"].sort_values("score")
        typical = per_run["name"].iloc[len(per_run) // 2]  # the run with the median out-of-fold score
        fig = plots.plot_learning_curves(out.runs / typical / "metrics.csv",
                                         best_epoch=result["runs"].get(typical, {}).get("best_epoch"),
                                         title=f"{args.name}: {typical} (median out-of-fold score)")
        fig.savefig(FIGURES / f"real_{args.name}_curves.png", dpi=100, bbox_inches="tight")
        result["figures"] = [f"docs/figures/real_{args.name}_holdout.png", f"docs/figures/real_{args.name}_curves.png"]
    else:
        print(f"\nno holdout scores: {labels_path} or {out.preds} missing")

    info = machine()
    slug = "cpu" if info["device_type"] == "cpu" else info["device"].lower().replace(" ", "-")
    path = RESULTS / f"real_{args.name}_{slug}.json"
    path.write_text(json.dumps({"benchmark": f"real_{args.name}", **info, **result}, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
