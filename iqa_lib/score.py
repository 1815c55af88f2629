"""Score your own images with a trained checkpoint or a whole trained ensemble: no CSV needed.

    python -m iqa_lib.score photo.jpg more/ --checkpoint outputs/runs/448_fold1/448_fold1.ckpt
    python -m iqa_lib.score photos/ --profile demo          # every run of outputs/demo, IQR-mean ensemble
    python -m iqa_lib.score photos/ --outputs outputs/demo  # every runs/{name}/{name}.ckpt there

In Python: `scores, skipped = score_images(["photos/"], checkpoints)` gives a DataFrame
(path, mos, runs) and the files that could not be scored, each with its reason.

Each checkpoint is applied exactly as `infer.predict` applies it: its own input view
(`ckpt["input"]`: stored side and crop grid; whole images at the model's side for checkpoints
without one), its own MOS scale, predictions clipped to [0, scale], `infer.predict_indices`
for the model work. Several checkpoints are combined per image with `ensemble.iqr_mean`, as the
submission is. Images are decoded once per input size (`data.load_resized`, kept in memory:
N x S x S x 3 bytes per size, e.g. 0.4 GB for 1,000 images at 384 px); a file that cannot be
decoded (not an image, truncated, empty, missing, above Pillow's size limit) is reported and
skipped, never stopping the batch.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np
import pandas as pd

from . import data as D
from .checkpoint import CheckpointError, atomic_write_text
from .config import (DEFAULT_PROFILE, DEVICES, PRECISIONS, ConfigError, Outputs, load_config, profile_resolutions,
                     resolve_path)
from .ensemble import iqr_mean
from .infer import autocast_dtype, load_model, pick_device, predict_indices

MODULE = "iqa_lib.score"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_CSV = "scores.csv"
EXIT_OK, EXIT_NONE_SCORED, EXIT_USAGE = 0, 1, 2
PathLike = str | os.PathLike


class Skipped(NamedTuple):
    """A file (or a folder without images) that was not scored, and why."""

    path: str
    reason: str


class ScoreResult(NamedTuple):
    """`scores`: path, mos, runs (one row per scored image, in the stable file order);
    `skipped`: the files that could not be scored, with their reasons."""

    scores: pd.DataFrame
    skipped: list[Skipped]


class NoCheckpointError(FileNotFoundError):
    """No checkpoint where the command looked; the message says where and how to train one."""


# --------------------------------------------------------------------------------------------
# what to score, with what
# --------------------------------------------------------------------------------------------
def _natural_key(text: str) -> list:
    """'64_fold10' after '64_fold2', and '192_fold0' after '64_fold0'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def find_images(inputs: Iterable[PathLike], recursive: bool = False) -> tuple[list[str], list[Skipped]]:
    """The image files that `inputs` name, in a stable order, and the inputs that name none.

    A file is taken as given, whatever its extension (decoding decides). A folder gives its
    files with an image extension (jpg, jpeg, png, bmp, tif, tiff, webp, any case), sorted by
    name, hidden (dot) files left out; `recursive` descends into its subfolders. Inputs keep
    their order; a file reached twice is scored once. Paths are reported as reached from the
    input as typed (`photos/` gives `photos/a.jpg`).
    """
    files: list[str] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()

    def add(path: str) -> None:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            files.append(path)

    for item in inputs:
        path = os.fspath(item)
        if os.path.isfile(path):
            add(path)
        elif os.path.isdir(path):
            found = []
            for folder, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
                found += [os.path.join(folder, n) for n in names
                          if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)]
            if not found:
                where = "in it or its subfolders" if recursive else "in it (--recursive searches subfolders)"
                skipped.append(Skipped(path, f"folder has no image files ({', '.join(IMAGE_EXTENSIONS)}) {where}"))
            for f in sorted(found, key=lambda p: _natural_key(os.path.relpath(p, path))):
                add(f)
        elif os.path.lexists(path):
            skipped.append(Skipped(path, "not a file or a folder"))
        else:
            skipped.append(Skipped(path, "not found"))
    return files, skipped


def find_checkpoints(outputs: PathLike | None = None, profile: str | None = None) -> tuple[list[Path], list[Path]]:
    """(found, missing) checkpoints of a trained ensemble.

    With `profile`: `Outputs.run(res, fold).checkpoint` for every resolution and fold of the
    profile, under `outputs` (default: the profile's out_dir). Without: every
    `{name}/{name}.ckpt` under `outputs/runs`. A relative `outputs` is taken from the current
    folder when it exists there, else from the repository root (as the kit's `out_dir` is).
    Raises NoCheckpointError (naming where it looked and the training command) when none
    exists, ConfigError for an unknown profile.
    """
    if outputs is None and profile is None:
        profile = DEFAULT_PROFILE
    if outputs is not None and not Path(outputs).expanduser().exists() and resolve_path(outputs).exists():
        outputs = resolve_path(outputs)
    if profile is not None:
        root = Outputs(outputs) if outputs is not None else load_config(profile).outputs
        expected = [root.run(res, fold).checkpoint for res in profile_resolutions(profile)
                    for fold in range(load_config(profile, res).n_folds)]
        found = [p for p in expected if p.is_file()]
        looked = f"{root.runs}/{{res}}_fold{{k}}/{{res}}_fold{{k}}.ckpt for profile {profile!r} ({len(expected)} runs)"
    else:
        root = Outputs(outputs)
        runs = sorted((d for d in root.runs.iterdir() if d.is_dir()), key=lambda d: _natural_key(d.name)) \
            if root.runs.is_dir() else []
        found = [d / f"{d.name}.ckpt" for d in runs if (d / f"{d.name}.ckpt").is_file()]
        expected = found
        looked = f"{root.runs}/{{name}}/{{name}}.ckpt"
    if not found:
        train = f"python -m iqa_lib.run_all --profile {profile or 'PROFILE'}"
        if outputs is not None:
            train += f" --out-dir {outputs}"
        raise NoCheckpointError(
            f"no checkpoint found: looked for {looked}. Train the ensemble first ({train}; one run: "
            f"papermill notebooks/03_train.ipynb OUT.ipynb -k python3 -p res RES -p fold K), "
            f"or pass --checkpoint PATH.ckpt (or --outputs / --profile of a folder that holds trained runs).")
    return found, [p for p in expected if p not in found]


# --------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------
def _reason(e: Exception) -> str:
    if isinstance(e, D.DataError) and e.problems:
        p = e.problems[0]
        return f"{p.kind}: {p.what}" + (f" ({p.fix})" if "size limit" in p.kind else "")
    return f"{type(e).__name__}: {e}"


def _decode(files: list[str], todo: list[int], size: int,
            workers: int) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """(file indices, images (n, size, size, 3) uint8, {file index: reason} of failures).

    Threads: Pillow releases the GIL while it decodes and resizes.
    """
    def one(i: int):
        try:
            return D.load_resized(files[i], size)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported, never fatal
            return e

    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(one, todo))
    ok = [(i, r) for i, r in zip(todo, results) if isinstance(r, np.ndarray)]
    failed = {i: _reason(r) for i, r in zip(todo, results) if not isinstance(r, np.ndarray)}
    images = np.stack([r for _, r in ok]) if ok else np.zeros((0, size, size, 3), np.uint8)
    return np.array([i for i, _ in ok], dtype=np.int64), images, failed


def score_images(
    paths: PathLike | Sequence[PathLike],
    checkpoints: PathLike | Sequence[PathLike],
    *,
    recursive: bool = False,
    tta: bool = False,
    device: str = "auto",
    precision: str = "bf16",
    batch_size: int = 32,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
) -> ScoreResult:
    """MOS of every image that `paths` (files and folders, see `find_images`) name.

    Each checkpoint scores every image with its own input view and MOS scale, clipped to
    [0, scale] (as `infer.predict`); the per-image MOS is the IQR mean (`ensemble.iqr_mean`) of
    the checkpoints' scores, `runs` how many gave a finite score. Each image is decoded once per
    input size. Files that cannot be decoded are left out and listed in `skipped`.

    Raises CheckpointError (a checkpoint is unusable), ValueError (no checkpoint, or checkpoints
    on different MOS scales), RuntimeError (device "cuda" without a GPU).
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    checkpoints = [checkpoints] if isinstance(checkpoints, (str, os.PathLike)) else list(checkpoints)
    checkpoints = list({os.path.realpath(c): Path(c) for c in checkpoints}.values())
    if not checkpoints:
        raise ValueError("no checkpoint given: pass the .ckpt files a training wrote (find_checkpoints finds them)")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    say = log or (lambda msg: None)
    workers = workers or min(8, os.cpu_count() or 1)

    files, skipped = find_images(paths, recursive)
    preds = np.full((len(files), len(checkpoints)), np.nan)
    failed: dict[int, str] = {}
    decoded: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # load size -> (file indices, images)
    dev = pick_device(device)
    scale = None
    for j, ck in enumerate(checkpoints):
        if len(failed) == len(files):
            break  # nothing left to score
        model, ckpt = load_model(ck)
        run_scale = float(ckpt["mos_scale"])
        if scale is not None and run_scale != scale:
            raise ValueError(f"'{ck}' predicts on a 0-{run_scale:g} MOS scale but '{checkpoints[0]}' on 0-{scale:g}: "
                             f"an ensemble needs checkpoints trained on one scale (one data set)")
        scale = run_scale
        view = ckpt["input"]
        size, grid = int(view["load_size"]), int(view["crop_grid"])
        how = (f"whole images at {size} px" if size == model.cfg.img_size and grid == 1
               else f"{grid}x{grid} crops of {model.cfg.img_size} px from {size} px")
        say(f"[{j + 1}/{len(checkpoints)}] {ck} ({how})")
        if size not in decoded:
            todo = [i for i in range(len(files)) if i not in failed]
            idx, images, bad = _decode(files, todo, size, workers)
            failed.update(bad)
            decoded[size] = (idx, images)
        idx, images = decoded[size]
        model.to(dev)
        amp = autocast_dtype(precision, dev, ckpt["cpu_bf16"])  # on a CPU: as the run validated
        p = predict_indices(model, D.IQADataset(images), np.arange(len(idx)), dev, amp, batch_size=batch_size,
                            tta=tta, crop=model.cfg.img_size, crop_grid=grid)
        preds[idx, j] = np.clip(p * run_scale, 0.0, run_scale)
        del model, ckpt

    ok = [i for i in range(len(files)) if i not in failed]
    mine = preds[ok]
    scores = pd.DataFrame({
        "path": [files[i] for i in ok],
        "mos": iqr_mean(mine) if len(ok) else np.zeros(0),
        "runs": np.isfinite(mine).sum(axis=1).astype(int),
    })
    skipped += [Skipped(files[i], failed[i]) for i in sorted(failed)]
    return ScoreResult(scores, skipped)


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------
def format_table(scores: pd.DataFrame, show_runs: bool) -> str:
    """path, MOS (4 decimals) and, for an ensemble, the runs used: one aligned line per image."""
    width = max([4, *map(len, scores["path"])])
    lines = [f"{'path':<{width}}  {'mos':>8}" + ("  runs" if show_runs else "")]
    for path, mos, runs in scores[["path", "mos", "runs"]].itertuples(index=False):
        lines.append(f"{path:<{width}}  {mos:>8.4f}" + (f"  {runs:>4d}" if show_runs else ""))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score image files or folders with one trained checkpoint or a whole trained ensemble "
                    "(IQR mean of every run, as the submission). Prints a table and writes a CSV "
                    "(path,mos,runs).",
        epilog="Files that cannot be read are listed with the reason and skipped.\n"
               "exit status: 0 at least one image scored, 1 none could be scored, 2 bad arguments, "
               "no checkpoint found, an unusable checkpoint or an existing CSV.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and folders of images")
    which = p.add_argument_group("checkpoints (default: the ensemble of --profile team)")
    which.add_argument("--checkpoint", action="append", metavar="CKPT",
                       help="a trained {res}_fold{k}.ckpt (repeat for your own ensemble)")
    which.add_argument("--outputs", metavar="DIR",
                       help="an out_dir: every runs/{name}/{name}.ckpt in it (with --profile: the profile's runs)")
    which.add_argument("--profile", help="the runs of params/PROFILE.yaml (resolutions x folds), in its out_dir "
                                         "unless --outputs is given")
    p.add_argument("--recursive", "-r", action="store_true", help="search folders' subfolders too")
    p.add_argument("--csv", default=DEFAULT_CSV, help="the CSV to write (default: %(default)s in the current folder)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --csv file")
    p.add_argument("--tta", action="store_true", help="average each view with its two flips (3x slower)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="default: %(default)s (a GPU when one is visible)")
    p.add_argument("--precision", default="bf16", choices=PRECISIONS,
                   help="autocast on GPUs (default: %(default)s); on a CPU, bf16 only for checkpoints of cpu_bf16 runs")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: %(default)s)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    err = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    if args.checkpoint and (args.outputs or args.profile):
        parser.error("pass either --checkpoint or --outputs / --profile, not both")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")

    csv_path = Path(args.csv)
    if csv_path.is_dir():
        err(f"{MODULE}: error: --csv '{csv_path}' is a folder: name a file, e.g. {csv_path / DEFAULT_CSV}")
        return EXIT_USAGE
    if csv_path.exists() and not args.overwrite:
        err(f"{MODULE}: error: '{csv_path}' exists and was left as it is: pass --overwrite to replace it, "
            f"or --csv another file")
        return EXIT_USAGE

    try:
        if args.checkpoint:
            checkpoints = [Path(c) for c in args.checkpoint]
            absent = [str(c) for c in checkpoints if not c.is_file()]
            if absent:
                raise NoCheckpointError(f"checkpoint not found: {', '.join(absent)}. Training writes "
                                        f"outputs/runs/{{res}}_fold{{k}}/{{res}}_fold{{k}}.ckpt "
                                        f"(python -m iqa_lib.run_all); or pass --outputs DIR / --profile NAME.")
        else:
            checkpoints, missing = find_checkpoints(args.outputs, args.profile)
            if missing:
                names = ", ".join(p.parent.name for p in missing[:6]) + (" ..." if len(missing) > 6 else "")
                err(f"note: {len(missing)} of {len(checkpoints) + len(missing)} runs have no checkpoint yet "
                    f"({names}): the ensemble uses the other {len(checkpoints)}")
        log = None if args.quiet else err
        result = score_images(args.paths, checkpoints, recursive=args.recursive, tta=args.tta,
                              device=args.device, precision=args.precision, batch_size=args.batch_size, log=log)
    except (NoCheckpointError, CheckpointError, ConfigError, ValueError, RuntimeError) as e:
        err(f"{MODULE}: error: {e}")
        return EXIT_USAGE

    scores, skipped = result
    if len(scores):
        print(format_table(scores, show_runs=len(checkpoints) > 1))
    for s in skipped:
        err(f"skipped {s.path}: {s.reason}")
    if not len(scores):
        err(f"{MODULE}: no image could be scored ({len(skipped)} skipped, listed above): pass image files "
            f"({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) or folders holding them (--recursive for subfolders)")
        return EXIT_NONE_SCORED
    if csv_path.exists() and not args.overwrite:  # appeared while scoring: still never replaced
        err(f"{MODULE}: error: '{csv_path}' appeared while scoring and was left as it is: rerun with "
            f"--overwrite or --csv another file")
        return EXIT_USAGE
    atomic_write_text(csv_path, scores.to_csv(index=False))
    runs = f"{len(checkpoints)} checkpoints (IQR mean)" if len(checkpoints) > 1 else "1 checkpoint"
    err(f"scored {len(scores)} image(s) with {runs}" + (f", skipped {len(skipped)}" if skipped else "")
        + f"; wrote {csv_path}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
