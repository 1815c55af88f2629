"""Turn a public IQA data set, as its authors distribute it, into the kit's layout (SPEC §1).

One step from a download to something the notebooks train on::

    python -m iqa_lib.datasets.prepare NAME SRC DEST [--holdout 0.2] [--seed 0] [--max-side N]
                                       [--copy | --link] [--overwrite] [--score COLUMN]
                                       [--mos-scale S] [--workers N]

or ``prepare(name, src, dest, holdout=None, seed=0, max_side=None, mode="copy")``.

``SRC`` is the unpacked download (the folder below is also searched, so ``SRC`` may be the
folder that holds ``ChallengeDB_release/`` or ``koniq10k/``). ``DEST`` gets::

    train.csv               img_name,img_path,mos,comments[,group]   (comments empty)
    train/                  the images (copied, hard-linked, or shrunk with --max-side)
    dataset.json            source, mos_scale, MOS direction, licence, citation, counts, command
    test.csv                img_name,img_path                         } only with --holdout:
    test/                   the held-out images                       } a split by seed,
    sample_submission.csv   img_name,mos,comments                     } group-aware where the
    test_labels.csv         img_name,mos[,group]  (to score; hidden)  } data set has groups
    + any README / licence text files found at the top of the source, copied as they are

Data sets (``NAME``), each read by its own module, whose docstring describes the original
layout and what is done with it: ``clive`` (clive.py), ``koniq`` (koniq.py), ``kadid``
(kadid.py), ``kit`` (kit.py: a folder already in the kit's layout, to re-split) and ``spaq``
(spaq.py). :data:`DATASETS` maps each name to its :class:`~iqa_lib.datasets.common.DatasetInfo`,
whose ``reader`` reads it.

Shrinking (``max_side``): an image whose longer side exceeds ``max_side`` is decoded (JPEGs
at a reduced DCT scale, never below twice the target), EXIF-rotated upright, resized with
Lanczos keeping its aspect ratio and saved as JPEG quality 95 (JPEG sources) or PNG (any
other source); smaller images are copied as they are. The kit's reader applies EXIF
orientation too, so the shrunk copy shows what the full-size file would have shown.

Nothing is written into ``SRC``. ``DEST`` must be empty or new unless ``overwrite=True``,
which removes the files a previous run wrote there (as listed by its CSVs) and nothing else.
The result is checked with :func:`iqa_lib.data.load_table` before returning.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from ..checkpoint import atomic_write_text
from ..data import DataError, Problem, load_table
from . import clive, kadid, kit, koniq, spaq
from .cli import check_dest, remove_written, run_command
from .common import DatasetInfo, Scores

MODULE = "iqa_lib.datasets.prepare"  # what `python -m` runs: recorded in each dataset.json's command
# dataset.json's format tag, as it was when this module was iqa_lib/prepare.py: an --overwrite
# run still finds the licence files (source_docs) an earlier conversion copied.
FORMAT = "iqa_lib.prepare/1"
MODES = ("copy", "link")
JPEG_QUALITY = 95
TOP_FILES = ("train.csv", "test.csv", "sample_submission.csv", "test_labels.csv", "dataset.json")
DOC_PATTERN = re.compile(r"(readme|licen[cs]e|copyright)", re.IGNORECASE)
DOC_SUFFIXES = (".txt", ".md")

# --------------------------------------------------------------------------------------------
# the data sets
# --------------------------------------------------------------------------------------------
DATASETS: dict[str, DatasetInfo] = {m.INFO.name: m.INFO for m in (clive, koniq, kadid, kit, spaq)}


# --------------------------------------------------------------------------------------------
# split, images, tables
# --------------------------------------------------------------------------------------------
def _holdout_mask(table: pd.DataFrame, holdout: float, seed: int) -> np.ndarray:
    """True for the rows held out as the test set: a seeded random share `holdout` of the
    images, drawn as whole groups when the table has a `group` column (the group count that
    lands nearest the target). Independent of row order."""
    rng = np.random.default_rng(seed)
    n = len(table)
    target = min(max(round(holdout * n), 1), n - 1)
    if "group" not in table:
        order = np.argsort(table["img_name"].to_numpy(dtype=str), kind="stable")
        test = np.zeros(n, dtype=bool)
        test[order[rng.permutation(n)[:target]]] = True
        return test
    sizes = table.groupby("group", sort=True).size()
    if len(sizes) < 2:
        raise ValueError(f"--holdout needs at least 2 groups; this data set has {len(sizes)}")
    chosen, count = [], 0
    for i in rng.permutation(len(sizes)):
        if count >= target or len(chosen) == len(sizes) - 1:
            break
        size = int(sizes.iloc[i])
        if count and abs(count + size - target) > abs(count - target):
            break  # adding this group would overshoot more than stopping here undershoots
        chosen.append(sizes.index[i])
        count += size
    return table["group"].isin(chosen).to_numpy()


def _place(source: str, dest: Path, stem: str, max_side: int | None, mode: str) -> tuple[str, str]:
    """Write one image as `dest/stem.<ext>`; returns (file name, "copied" | "linked" | "shrunk")."""
    src = Path(source)
    if max_side:
        with Image.open(src) as im:
            fmt = im.format
            w, h = im.size
            if max(w, h) > max_side:
                scale = max_side / max(w, h)
                if fmt == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale when that stays >= 2x the target
                    im.draft("RGB", (max(1, round(w * scale * 2)), max(1, round(h * scale * 2))))
                im.load()
                im = ImageOps.exif_transpose(im)
                if im.mode in ("P", "PA"):  # palette images resize only with NEAREST: expand first
                    im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
                elif im.mode not in ("L", "LA", "RGB", "RGBA", "I", "I;16", "F"):
                    im = im.convert("RGB")
                w2, h2 = im.size
                k = max_side / max(w2, h2)
                size = (max(1, round(w2 * k)), max(1, round(h2 * k)))
                small = im.resize(size, Image.Resampling.LANCZOS)
                if fmt == "JPEG":
                    name = f"{stem}.jpg"
                    if small.mode not in ("L", "RGB"):
                        small = small.convert("RGB")
                    small.save(dest / name, format="JPEG", quality=JPEG_QUALITY)
                else:
                    name = f"{stem}.png"
                    small.save(dest / name, format="PNG")
                return name, "shrunk"
    name = f"{stem}{src.suffix.lower()}"
    target = dest / name
    target.unlink(missing_ok=True)
    if mode == "link":
        try:
            os.link(src, target)
            return name, "linked"
        except OSError:
            pass  # another file system (or no hard links there): copy instead, counted in dataset.json
    shutil.copyfile(src, target)
    return name, "copied"


def _write_images(table: pd.DataFrame, dest: Path, split: str, max_side: int | None, mode: str,
                  workers: int, progress: bool) -> tuple[list[str], dict[str, int]]:
    from tqdm.auto import tqdm

    folder = dest / split
    folder.mkdir(parents=True, exist_ok=True)
    jobs = list(zip(table["source"], table["img_name"]))
    problems: list[Problem] = []

    def one(job):
        try:
            return _place(job[0], folder, job[1], max_side, mode)
        except (OSError, Image.DecompressionBombError, ValueError) as e:
            problems.append(Problem("unreadable image", job[0], f"{type(e).__name__}: {e}",
                                    "re-download the file, or remove its row from the original score file"))
            return None, "failed"

    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(tqdm(pool.map(one, jobs), total=len(jobs), desc=f"{split} images", unit="img",
                            disable=not progress))
    if problems:
        raise DataError(problems, f"could not write {len(problems)} image(s) to {folder}")
    counts: dict[str, int] = {}
    for _, action in results:
        counts[action] = counts.get(action, 0) + 1
    return [f"./{split}/{name}" for name, _ in results], counts


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    atomic_write_text(path, df.to_csv(index=False, lineterminator="\n"))


def _check_dest(dest: Path, src: Path, overwrite: bool) -> None:
    """Refuse SRC itself, a file, or a non-empty folder (unless overwrite) as DEST."""
    if dest.resolve() == src.resolve():  # SRC is a folder: a DEST that is a file never matches it
        raise ValueError(f"DEST must differ from SRC ('{src}'): the converted copy goes to a new folder.")
    check_dest(dest, overwrite, "DEST", holds="for the converted data set",
               replaces="a previous conversion there (only the files it wrote are removed)")


def _clear_previous(dest: Path) -> None:
    """Remove what a previous conversion wrote to DEST (the images its CSVs list, its top-level
    files, then train/ and test/ if empty); anything else stays."""
    if not dest.is_dir():
        return
    try:
        old = json.loads((dest / "dataset.json").read_text())
        docs = old.get("source_docs", []) if old.get("format") == FORMAT else []
    except (OSError, ValueError, AttributeError):
        docs = []
    remove_written(dest, ("train.csv", "test.csv"), list(TOP_FILES) + [Path(d).name for d in docs])
    for sub in ("train", "test"):
        try:
            (dest / sub).rmdir()  # only when empty: anything else there stays
        except OSError:
            pass


def _command(name, src, dest, holdout, seed, max_side, mode, overwrite, score, mos_scale=None) -> str:
    args = ["python", "-m", MODULE, name, str(src), str(dest)]
    if holdout is not None:
        args += ["--holdout", f"{holdout:g}", "--seed", str(seed)]
    if max_side is not None:
        args += ["--max-side", str(max_side)]
    if score is not None:
        args += ["--score", score]
    if mos_scale is not None:
        args += ["--mos-scale", f"{mos_scale:g}"]
    args.append("--link" if mode == "link" else "--copy")
    if overwrite:
        args.append("--overwrite")
    return shlex.join(args)


def _check_args(name, holdout, seed, max_side, mode, workers) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}: choose one of {sorted(DATASETS)}")
    if holdout is not None and (isinstance(holdout, bool) or not isinstance(holdout, (int, float))
                                or not 0 < holdout < 1):
        raise ValueError(f"holdout must be a fraction in (0, 1), e.g. 0.2, or None; got {holdout!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer))
                                 or max_side < 0):
        raise ValueError(f"max_side must be a positive integer, 0 (never shrink) or None (the data set's "
                         f"default); got {max_side!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
    return DATASETS[name]


def _check_table(scores: Scores, info: DatasetInfo) -> None:
    t = scores.table
    problems = []
    dup = t["img_name"][t["img_name"].duplicated(keep=False)]
    if len(dup):
        problems += [Problem("duplicate image name", n, f"{int((dup == n).sum())} source files give the name {n!r}",
                             "each image needs its own file stem; remove the duplicates from the score file")
                     for n in dup.unique()]
    out = t[(t["mos"] < 0) | (t["mos"] > scores.mos_scale)]
    problems += [Problem("score out of range", r.img_name, f"mos={r.mos:g} outside [0, {scores.mos_scale:g}]",
                         f"{info.name} scores ({scores.score_column}) should lie in [0, {scores.mos_scale:g}]; "
                         "check that the score file is the original")
                 for r in out.itertuples()]
    if len(t) < 2:
        problems.append(Problem("too few images", str(scores.root), f"{len(t)} image(s) with scores",
                                "the score file lists (almost) nothing: is it the original?"))
    if problems:
        raise DataError(problems, f"cannot convert {info.name}")


def _source_docs(root: Path) -> list[Path]:
    try:
        return sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in DOC_SUFFIXES
                      and DOC_PATTERN.search(p.name) and p.name not in TOP_FILES)
    except OSError:
        return []


# --------------------------------------------------------------------------------------------
# the entry points
# --------------------------------------------------------------------------------------------
def prepare(
    name: str,
    src: str | os.PathLike,
    dest: str | os.PathLike,
    holdout: float | None = None,
    seed: int = 0,
    max_side: int | None = None,
    mode: str = "copy",
    *,
    overwrite: bool = False,
    score: str | None = None,
    mos_scale: float | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Convert data set `name` from its original layout in `src` to the kit's layout in `dest`.

    Args:
        name: "clive", "koniq", "kadid" or "spaq" (see the module docstring for each layout).
        src: the unpacked download (or a folder up to two levels above its files).
        dest: a new or empty folder (any folder with ``overwrite=True``).
        holdout: fraction of the images to hold out as a test set (test.csv, test/,
            sample_submission.csv, test_labels.csv); whole groups where the data set has
            them. None: everything goes to train.csv.
        seed: the holdout's random seed (same seed, same split).
        max_side: shrink images whose longer side exceeds this many pixels (aspect ratio
            kept). None: the data set's default (512 for SPAQ, else never); 0: never.
        mode: "copy" the images, or "link" (hard links: no extra disk space; files on another
            file system are copied instead). Shrunk images are always new files.
        overwrite: replace a previous conversion in a non-empty `dest`.
        score: which score column to use where there is a choice (KonIQ: "MOS", the default,
            or "MOS_zscore").
        mos_scale: "kit" only: the top of the source's MOS range when it has no dataset.json.
        workers: threads writing images (default: up to 8).
        progress: show progress bars.

    Returns:
        `dest`, which then loads with ``load_table(dest, mos_scale=<dataset.json mos_scale>)``.

    Raises:
        DataError: an original file, column or image is missing or unreadable; the message
            names it and shows the layout expected.
        FileExistsError: `dest` is not empty and `overwrite` is False.
        ValueError: an invalid argument.
    """
    info = _check_args(name, holdout, seed, max_side, mode, workers)
    if score is not None and (name != "koniq" or score not in koniq.SCORES):
        raise ValueError(f"score= only chooses KonIQ-10k's column ({sorted(koniq.SCORES)}); got {score!r} for {name}")
    src, dest = Path(src).expanduser(), Path(dest).expanduser()
    if not src.is_dir():
        raise DataError([Problem("source folder missing", str(src), "not a folder",
                                 f"pass SRC = the unpacked {info.title} download, laid out as:\n{info.layout}")],
                        f"cannot read {name}")
    _check_dest(dest, src, overwrite)
    start = time.perf_counter()
    if mos_scale is not None and (name != "kit" or isinstance(mos_scale, bool)
                                  or not isinstance(mos_scale, (int, float)) or mos_scale <= 0):
        raise ValueError(f"mos_scale= is for the 'kit' source only and must be > 0; got {mos_scale!r} for {name}")
    # read and check everything before touching DEST
    scores = kit.read(src, score, mos_scale) if name == "kit" else info.reader(src, score)
    _check_table(scores, info)
    shrink_to = info.default_max_side if max_side is None else (max_side or None)

    table = scores.table.reset_index(drop=True)
    test_mask = _holdout_mask(table, holdout, seed) if holdout is not None else np.zeros(len(table), dtype=bool)
    _clear_previous(dest)
    dest.mkdir(parents=True, exist_ok=True)

    workers = workers or min(8, os.cpu_count() or 1)
    has_group = "group" in table
    extra = ["group"] if has_group else []
    actions: dict[str, int] = {}
    parts = {}
    for split, rows in (("train", table[~test_mask]), ("test", table[test_mask])):
        if split == "test" and holdout is None:
            continue
        rows = rows.reset_index(drop=True)
        paths, counts = _write_images(rows, dest, split, shrink_to, mode, workers, progress)
        rows = rows.assign(img_path=paths)
        parts[split] = rows
        for k, v in counts.items():
            actions[k] = actions.get(k, 0) + v

    train = parts["train"]
    _write_csv(dest / "train.csv", train[["img_name", "img_path", "mos"]].assign(comments="").join(train[extra]))
    if "test" in parts:
        test = parts["test"]
        _write_csv(dest / "test.csv", test[["img_name", "img_path"]])
        _write_csv(dest / "sample_submission.csv", test[["img_name"]].assign(mos=0.0, comments=""))
        _write_csv(dest / "test_labels.csv", test[["img_name", "mos"] + extra])

    docs = []
    for doc in _source_docs(scores.root):
        shutil.copyfile(doc, dest / doc.name)
        docs.append(doc.name)
    if not docs:
        scores.notes.append("no README or licence file found at the top of the source; the licence terms "
                            "are summarised in this file")

    if mode == "link" and actions.get("copied"):
        scores.notes.append(f"{actions['copied']} image(s) could not be hard-linked (another file system?) "
                            "and were copied")
    counts = {"source_images": len(table) + len(scores.details.get("dropped", [])),
              "dropped": len(scores.details.get("dropped", [])), "images": len(table),
              "train": len(parts["train"]), "test": len(parts.get("test", [])),
              **({"groups": int(table["group"].nunique()),
                  "train_groups": int(parts["train"]["group"].nunique()),
                  "test_groups": int(parts["test"]["group"].nunique()) if "test" in parts else 0}
                 if has_group else {})}
    meta = {
        "format": FORMAT,
        "dataset": name,
        "title": info.title,
        "source_dir": str(src.resolve()),
        "mos_scale": scores.mos_scale,
        "mos_direction": "higher is better",
        "inverted": False,
        "score_column": scores.score_column,
        "direction_note": info.direction,
        "licence": info.licence,
        "citation": info.citation,
        "url": info.url,
        "counts": counts,
        "mos": {"min": float(table["mos"].min()), "max": float(table["mos"].max()),
                "mean": round(float(table["mos"].mean()), 6), "sd": round(float(table["mos"].std()), 6)},
        "group_column": "group" if has_group else None,
        "holdout": holdout,
        "seed": seed if holdout is not None else None,
        "max_side": shrink_to,
        "mode": mode,
        "images_written": actions,
        "source_docs": docs,
        "details": scores.details,
        "notes": scores.notes,
        "command": _command(name, src, dest, holdout, seed, max_side, mode, overwrite, score, mos_scale),
        "kit_params": {"data_dir": str(dest.resolve()), "mos_scale": scores.mos_scale},
        "seconds": round(time.perf_counter() - start, 1),
    }
    # Prove the result loads the way the kit will load it, before recording it as done.
    load_table(dest, "train.csv", mos_scale=scores.mos_scale, check_images="open", progress=False)
    if "test" in parts:
        load_table(dest, "test.csv", labelled=False, mos_scale=scores.mos_scale, check_images="open",
                   progress=False)
    atomic_write_text(dest / "dataset.json", json.dumps(meta, indent=2, default=str) + "\n")
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Convert a public IQA data set from its original layout into the kit's "
                    "(train.csv, train/, dataset.json; with --holdout also test.csv, test/, "
                    "sample_submission.csv and test_labels.csv).",
    )
    parser.add_argument("name", choices=sorted(DATASETS), help="which data set SRC holds")
    parser.add_argument("src", help="the unpacked download")
    parser.add_argument("dest", help="new (or empty) folder for the kit's layout")
    parser.add_argument("--holdout", type=float, default=None,
                        help="hold out this fraction as a test set, e.g. 0.2 (group-aware where groups exist)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the holdout split (default 0)")
    parser.add_argument("--max-side", type=int, default=None,
                        help="shrink images whose longer side exceeds N pixels (default: 512 for spaq, else "
                             "never; 0: never)")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--copy", dest="mode", action="store_const", const="copy", help="copy the images (default)")
    how.add_argument("--link", dest="mode", action="store_const", const="link",
                     help="hard-link the images instead of copying (same file system only)")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous conversion in DEST")
    parser.add_argument("--score", default=None, help="koniq only: MOS (default) or MOS_zscore")
    parser.add_argument("--mos-scale", type=float, default=None,
                        help="kit only: the top of the MOS range when SRC has no dataset.json (e.g. 100 for CLIVE)")
    parser.add_argument("--workers", type=int, default=None, help="threads writing images (default: up to 8)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    dest = run_command(lambda: prepare(
        args.name, args.src, args.dest, holdout=args.holdout, seed=args.seed, max_side=args.max_side,
        mode=args.mode or "copy", overwrite=args.overwrite, score=args.score, mos_scale=args.mos_scale,
        workers=args.workers, progress=not args.quiet))
    if dest is None:
        return 2
    meta = json.loads((dest / "dataset.json").read_text())
    c = meta["counts"]
    print(f"wrote {c['train']} train" + (f" + {c['test']} test" if meta["holdout"] is not None else "")
          + f" images of {meta['title']} to {dest} (mos_scale {meta['mos_scale']:g}, higher is better)")
    for note in meta["notes"]:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
