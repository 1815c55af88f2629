"""Turn a public IQA data set, as its authors distribute it, into the kit's layout (SPEC §1).

One step from a download to something the notebooks train on::

    python -m iqa_lib.prepare NAME SRC DEST [--holdout 0.2] [--seed 0] [--max-side N]
                              [--copy | --link] [--overwrite] [--score COLUMN] [--mos-scale S]
                              [--workers N]

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

Data sets (``NAME``), their original layouts and what is done with them:

``clive``  LIVE In the Wild Image Quality Challenge Database (``ChallengeDB_release``):
    ``Data/AllImages_release.mat`` (cell array ``AllImages_release``, 1169 file names),
    ``Data/AllMOS_release.mat`` (``AllMOS_release``, 1169 MOS on 0-100, same order),
    ``Images/<name>`` (``.bmp`` and ``.JPG``), ``Images/trainingImages/t1.bmp`` ... ``t7.bmp``.
    The 7 images the raters practised on (``t1`` ... ``t7``: the first 7 entries) have MOS in
    the file but are not part of the benchmark: dropped, and listed in dataset.json.
    Images are named ``clive_<stem>`` (as in the shared ``clive_dev`` subset). Scale 0-100.
``koniq``  KonIQ-10k: ``koniq10k_scores_and_distributions.csv`` (``image_name``, ``MOS`` on
    1-5, ``SD``, ``c1``..``c5``, ``MOS_zscore`` on 0-100) and ``1024x768/`` (else ``512x384/``).
    ``MOS`` (scale 5) by default; ``score="MOS_zscore"`` uses that column (scale 100).
``kadid``  KADID-10k: ``dmos.csv`` (``dist_img``, ``ref_img``, ``dmos``, ``var``) and ``images/``.
    ``group`` = the reference image, so all 125 distortions of one scene stay together. The
    ``dmos`` column, despite its name, is a mean degradation-category rating (5 =
    imperceptible, 1 = very annoying): higher is better, so it is used as MOS, not inverted
    (dataset.json also records the correlation of the score with the distortion level in the
    file name, which is negative when that holds). Scale 5.
``kit``    A folder already in the kit's layout (``train.csv``, ``train/``), such as the shared
    ``clive_dev`` subset or an earlier conversion: re-split with ``--holdout`` (its
    ``test.csv``, if any, is left out: its images have no MOS). The MOS scale comes from its
    ``dataset.json`` when there is one, else from ``--mos-scale``. A ``group`` column is kept.
``spaq``   SPAQ: ``Annotations/MOS and Image attribute scores.xlsx`` (``Image name``, ``MOS``
    on 0-100, attribute scores) or a CSV export of it, and ``TestImage/``. The photos are
    about 4000x3000, so they are shrunk by default to 512 pixels on the longer side (see
    ``max_side``). Reading the .xlsx needs ``openpyxl``. Scale 100.

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
import importlib.util
import json
import os
import re
import shlex
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from .checkpoint import atomic_write_text
from .data import DataError, Problem, load_table

FORMAT = "iqa_lib.prepare/1"
MODES = ("copy", "link")
JPEG_QUALITY = 95
SEARCH_DEPTH = 2  # how many folder levels below SRC are searched for the original files
TOP_FILES = ("train.csv", "test.csv", "sample_submission.csv", "test_labels.csv", "dataset.json")
DOC_PATTERN = re.compile(r"(readme|licen[cs]e|copyright)", re.IGNORECASE)
DOC_SUFFIXES = (".txt", ".md")


@dataclass
class Scores:
    """What a reader found: one row per image and what to record about it."""

    table: pd.DataFrame  # img_name, source (absolute path), mos, and group when the set has groups
    mos_scale: float
    score_column: str  # where the MOS came from, in the original's words
    root: Path  # the data set's own top folder (where README / licence files are looked for)
    details: dict = field(default_factory=dict)  # extra facts for dataset.json
    notes: list[str] = field(default_factory=list)  # things the user should read


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str
    layout: str  # the original layout, shown in every error about it
    citation: str
    licence: str
    url: str
    direction: str  # why higher = better holds for the score used
    default_max_side: int | None
    reader: Callable[[Path, str | None], Scores]


# --------------------------------------------------------------------------------------------
# finding the original files
# --------------------------------------------------------------------------------------------
def _subdirs(folder: Path, depth: int) -> list[Path]:
    """`folder` and the folders below it, `depth` levels down, breadth first, sorted by name."""
    out, level = [folder], [folder]
    for _ in range(depth):
        nxt = []
        for d in level:
            try:
                nxt += sorted(Path(e.path) for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))
            except OSError:
                continue
        out += nxt
        level = nxt
    return out


def _find(src: Path, relpaths: Sequence[str], kind: str = "file") -> Path | None:
    """The first `relpath` that exists (as a file or folder) under `src` or a folder up to
    SEARCH_DEPTH levels below it; each relpath is tried everywhere before the next one."""
    test = Path.is_file if kind == "file" else Path.is_dir
    folders = _subdirs(src, SEARCH_DEPTH)
    for rel in relpaths:
        for d in folders:
            if test(d / rel):
                return d / rel
    return None


def _missing(info: DatasetInfo, src: Path, what: str) -> DataError:
    return DataError([Problem("original file missing", str(src), f"{what} not found in SRC or the folders below it",
                              f"pass SRC = the unpacked {info.title} download, laid out as:\n{info.layout}")],
                     f"cannot read {info.name} from {src}")


def _image_index(folder: Path) -> dict[str, Path]:
    """Files of `folder` by lower-case name, to forgive a case difference (``.JPG`` vs ``.jpg``)."""
    try:
        return {e.name.lower(): Path(e.path) for e in os.scandir(folder) if e.is_file()}
    except OSError:
        return {}


def _resolve_images(names: Sequence[str], folder: Path, info: DatasetInfo, what: str) -> list[Path]:
    """The file of each name in `folder` (exact name, else the same name in another case);
    a DataError listing every name without a file."""
    index: dict[str, Path] | None = None
    out, problems = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            index = _image_index(folder) if index is None else index
            path = index.get(Path(name).name.lower(), path)
        if not path.is_file():
            problems.append(Problem("image missing", str(folder / name), f"{what} lists {name!r}; no such file",
                                    f"restore the images from the {info.title} download; expected layout:\n"
                                    f"{info.layout}"))
        out.append(path)
    if problems:
        raise DataError(problems, f"{info.name}: images listed in {what} are missing")
    return out


def _require_columns(df: pd.DataFrame, needed: Sequence[str], path: Path, info: DatasetInfo) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError([Problem("missing column", str(path),
                                 f"no column {c!r} (columns: {list(df.columns)})",
                                 f"this does not look like the original {path.name}; expected layout:\n{info.layout}")
                         for c in missing], f"cannot read {info.name} scores")


def _read_csv(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, encoding="utf-8-sig")
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _scores_column(df: pd.DataFrame, col: str, path: Path, info: DatasetInfo) -> np.ndarray:
    """`col` as float64; a DataError naming the rows that are not numbers."""
    values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise DataError([Problem("score not a number", f"{path.name} row {i + 2}", f"{col}={df[col].iloc[i]!r}",
                                 f"every row needs a numeric {col}; restore {path.name} from the {info.title} download")
                         for i in bad], f"cannot read {info.name} scores")
    return values


# --------------------------------------------------------------------------------------------
# the four readers
# --------------------------------------------------------------------------------------------
def _mat_strings(arr: np.ndarray) -> list[str]:
    """A MATLAB cell array of strings (as scipy loads it: object array of 1-element arrays)."""
    out = []
    for x in np.asarray(arr, dtype=object).ravel(order="F"):
        while isinstance(x, np.ndarray):
            x = x.ravel()[0] if x.size else ""
        out.append(str(x).strip())
    return out


def _load_mat_var(path: Path, var: str, info: DatasetInfo) -> np.ndarray:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several types for a bad or v7.3 (HDF5) file
        raise DataError([Problem("unreadable .mat", str(path), f"{type(e).__name__}: {e}",
                                 f"restore the file from the {info.title} download")],
                        f"cannot read {info.name}") from None
    if var not in mat:
        found = [k for k in mat if not k.startswith("__")]
        raise DataError([Problem("missing variable", str(path), f"no variable {var!r} (variables: {found})",
                                 f"this does not look like the original {path.name}; expected layout:\n{info.layout}")],
                        f"cannot read {info.name}")
    return mat[var]


CLIVE_TRAINING = re.compile(r"^t\d+\.[a-z]+$", re.IGNORECASE)
CLIVE_N_TRAINING = 7


def _read_clive(src: Path, score: str | None) -> Scores:
    info = DATASETS["clive"]
    names_mat = _find(src, ["Data/AllImages_release.mat"])
    if names_mat is None:
        raise _missing(info, src, "Data/AllImages_release.mat")
    root = names_mat.parent.parent
    mos_mat = root / "Data" / "AllMOS_release.mat"
    if not mos_mat.is_file():
        raise _missing(info, src, f"{mos_mat.relative_to(root.parent)} (next to AllImages_release.mat)")
    images_dir = root / "Images"
    if not images_dir.is_dir():
        raise _missing(info, src, f"the Images/ folder next to {names_mat.parent.name}/")

    names = _mat_strings(_load_mat_var(names_mat, "AllImages_release", info))
    mos = np.asarray(_load_mat_var(mos_mat, "AllMOS_release", info), dtype=np.float64).ravel()
    if len(names) != len(mos):
        raise DataError([Problem("length mismatch", str(mos_mat),
                                 f"{len(mos)} scores for {len(names)} names in {names_mat.name}",
                                 f"the two files must come from the same release; expected layout:\n{info.layout}")],
                        "cannot read clive")

    # The practice images (t1..t7, stored in Images/trainingImages/) lead the list; their
    # scores are in the file too, but the benchmark is the other 1162.
    base = [re.split(r"[\\/]", n)[-1] for n in names]
    training = [i for i, (n, b) in enumerate(zip(names, base))
                if CLIVE_TRAINING.match(b) or "trainingimages" in n.lower()]
    notes = []
    if not training and len(names) == 1169:
        training = list(range(CLIVE_N_TRAINING))
        notes.append("no t<k> names found; dropped the first 7 entries, the practice images of the release")
    dropped = [{"name": names[i], "mos": float(mos[i])} for i in training]
    keep = [i for i in range(len(names)) if i not in set(training)]
    if len(training) != CLIVE_N_TRAINING:
        notes.append(f"{len(training)} practice image(s) dropped; the original release has {CLIVE_N_TRAINING}")

    rel = [names[i].replace("\\", "/") for i in keep]
    paths = _resolve_images(rel, images_dir, info, names_mat.name)
    table = pd.DataFrame({"img_name": [f"clive_{Path(r).stem}" for r in rel],
                          "source": [str(p) for p in paths], "mos": mos[keep]})
    return Scores(table, 100.0, "AllMOS_release (MOS, 0-100)", root,
                  details={"dropped": dropped, "dropped_reason": "practice images shown to raters before the "
                           "study (Images/trainingImages/t1..t7), not part of the benchmark"},
                  notes=notes)


KONIQ_CSV = "koniq10k_scores_and_distributions.csv"
KONIQ_FOLDERS = ("1024x768", "512x384")
KONIQ_SCORES = {"MOS": 5.0, "MOS_zscore": 100.0}


def _read_koniq(src: Path, score: str | None) -> Scores:
    info = DATASETS["koniq"]
    csv_path = _find(src, [KONIQ_CSV])
    if csv_path is None:
        raise _missing(info, src, KONIQ_CSV)
    df = _read_csv(csv_path)
    if score is None:
        score = "MOS" if "MOS" in df.columns or "MOS_zscore" not in df.columns else "MOS_zscore"
    _require_columns(df, ["image_name", score], csv_path, info)
    folder = None
    for name in KONIQ_FOLDERS:  # the full-size release first
        folder = _find(csv_path.parent, [name], "dir") or _find(src, [name], "dir")
        if folder is not None:
            break
    if folder is None:
        raise _missing(info, src, "an image folder named 1024x768/ or 512x384/")
    names = df["image_name"].astype(str).str.strip().tolist()
    paths = _resolve_images(names, folder, info, csv_path.name)
    table = pd.DataFrame({"img_name": [Path(n).stem for n in names], "source": [str(p) for p in paths],
                          "mos": _scores_column(df, score, csv_path, info)})
    scale = KONIQ_SCORES[score]
    what = "MOS, 1-5" if score == "MOS" else "MOS_zscore: z-scored MOS rescaled to 0-100"
    notes = [] if folder.name == "1024x768" else ["1024x768/ not found: used the half-size 512x384/ images"]
    return Scores(table, scale, f"{score} ({what})", csv_path.parent,
                  details={"image_folder": folder.name}, notes=notes)


KADID_LEVEL = re.compile(r"_(\d+)$")


def _read_kadid(src: Path, score: str | None) -> Scores:
    info = DATASETS["kadid"]
    csv_path = _find(src, ["dmos.csv"])
    if csv_path is None:
        raise _missing(info, src, "dmos.csv")
    folder = csv_path.parent / "images"
    if not folder.is_dir():
        folder = _find(src, ["images"], "dir")
    if folder is None:
        raise _missing(info, src, "the images/ folder")
    df = _read_csv(csv_path)
    _require_columns(df, ["dist_img", "ref_img", "dmos"], csv_path, info)
    names = df["dist_img"].astype(str).str.strip().tolist()
    paths = _resolve_images(names, folder, info, csv_path.name)
    mos = _scores_column(df, "dmos", csv_path, info)
    table = pd.DataFrame({"img_name": [Path(n).stem for n in names], "source": [str(p) for p in paths],
                          "mos": mos, "group": [Path(r).stem for r in df["ref_img"].astype(str).str.strip()]})
    details, notes = {"group": "ref_img: the pristine reference image each distorted image was made from"}, []
    # Evidence for the direction: stronger distortion (higher level in I01_07_05) should score lower.
    levels = pd.to_numeric(table["img_name"].str.extract(KADID_LEVEL)[0], errors="coerce")
    ok = levels.notna().to_numpy()
    if ok.sum() >= 3 and levels[ok].nunique() > 1:
        rho = float(pd.Series(mos[ok]).corr(levels[ok].reset_index(drop=True), method="spearman"))
        details["spearman_score_vs_distortion_level"] = round(rho, 4)
        if rho > 0:
            notes.append(f"the score RISES with the distortion level (Spearman {rho:.2f}); the original "
                         "dmos.csv falls with it. This file may not be the original: check before training")
    return Scores(table, 5.0, "dmos (a mean degradation-category rating, 1-5, higher is better)",
                  csv_path.parent, details=details, notes=notes)


def _read_kit(src: Path, score: str | None, mos_scale: float | None = None) -> Scores:
    info = DATASETS["kit"]
    csv = _find(src, ["train.csv"])
    if csv is None:
        raise _missing(info, src, "train.csv")
    root = csv.parent
    recorded = root / "dataset.json"
    if mos_scale is None and recorded.is_file():
        try:
            mos_scale = float(json.loads(recorded.read_text())["mos_scale"])
        except (ValueError, KeyError, TypeError) as e:
            raise DataError([Problem("unreadable", str(recorded), f"no mos_scale in it ({e})",
                                     "pass --mos-scale (e.g. 100 for CLIVE, 10 for the challenge)")],
                            "cannot read kit") from e
    if mos_scale is None:
        raise DataError([Problem("MOS scale unknown", str(root), "no dataset.json records the MOS scale",
                                 "pass --mos-scale (the top of the MOS range: 10 for the challenge, "
                                 "100 for CLIVE, 5 for KonIQ-10k's MOS)")], "cannot read kit")
    table = load_table(root, "train.csv", mos_scale=mos_scale, check_images="open", progress=False)
    if "group" in table and table["group"].isna().any():
        raise DataError([Problem("empty group", str(csv), f"{int(table['group'].isna().sum())} row(s) have no group",
                                 "fill the group column for every row, or remove the column")], "cannot read kit")
    table = table.drop_duplicates("img_name").reset_index(drop=True)
    out = table[["img_name", "path", "mos"] + (["group"] if "group" in table else [])].rename(columns={"path": "source"})
    notes = [] if not (root / "test.csv").is_file() else [
        f"{root / 'test.csv'} was left out: its images have no MOS to score a holdout with"]
    return Scores(out.reset_index(drop=True), float(mos_scale), f"{csv.name} mos", root,
                  details={"kit_source": str(csv)}, notes=notes)


SPAQ_STEM = "MOS and Image attribute scores"


def _openpyxl_available() -> bool:
    return importlib.util.find_spec("openpyxl") is not None


def _read_spaq(src: Path, score: str | None) -> Scores:
    info = DATASETS["spaq"]
    annotations = _find(src, ["Annotations"], "dir")
    if annotations is None:
        raise _missing(info, src, "the Annotations/ folder")
    root = annotations.parent
    sheet = next((p for p in (annotations / f"{SPAQ_STEM}.csv", annotations / f"{SPAQ_STEM}.xlsx") if p.is_file()), None)
    if sheet is None:  # a CSV export under another name
        sheet = next((p for p in sorted(annotations.glob("*.csv"))
                      if {"Image name", "MOS"} <= set(_read_csv(p).columns)), None)
    if sheet is None:
        raise _missing(info, src, f"Annotations/{SPAQ_STEM}.xlsx (or a CSV export of it)")
    if sheet.suffix == ".xlsx":
        if not _openpyxl_available():
            raise DataError([Problem("openpyxl missing", str(sheet), "reading .xlsx needs the openpyxl package",
                                     f"pip install openpyxl, or save the sheet as CSV (same columns) next to it: "
                                     f"{annotations / (SPAQ_STEM + '.csv')}")], "cannot read spaq")
        df = pd.read_excel(sheet, engine="openpyxl")
        df.columns = [str(c).strip() for c in df.columns]
    else:
        df = _read_csv(sheet)
    _require_columns(df, ["Image name", "MOS"], sheet, info)
    folder = root / "TestImage" if (root / "TestImage").is_dir() else _find(src, ["TestImage"], "dir")
    if folder is None:
        raise _missing(info, src, "the TestImage/ folder")
    names = df["Image name"].astype(str).str.strip().tolist()
    paths = _resolve_images(names, folder, info, sheet.name)
    table = pd.DataFrame({"img_name": [Path(n).stem for n in names], "source": [str(p) for p in paths],
                          "mos": _scores_column(df, "MOS", sheet, info)})
    return Scores(table, 100.0, "MOS (0-100)", root, details={"score_sheet": sheet.name})


# --------------------------------------------------------------------------------------------
# the data sets
# --------------------------------------------------------------------------------------------
DATASETS: dict[str, DatasetInfo] = {
    "clive": DatasetInfo(
        name="clive",
        title="LIVE In the Wild Image Quality Challenge Database (CLIVE)",
        layout=("  SRC/ (the ChallengeDB_release folder, or the folder holding it)\n"
                "    Data/AllImages_release.mat   cell array AllImages_release: 1169 file names\n"
                "    Data/AllMOS_release.mat      AllMOS_release: 1169 MOS (0-100), same order\n"
                "    Images/3.bmp ... Images/1000.JPG ...\n"
                "    Images/trainingImages/t1.bmp ... t7.bmp   (practice images, dropped)"),
        citation=("D. Ghadiyaram and A. C. Bovik, \"Massive Online Crowdsourced Study of Subjective and "
                  "Objective Picture Quality,\" IEEE Transactions on Image Processing, 25(1):372-387, 2016. "
                  "D. Ghadiyaram and A. C. Bovik, \"LIVE In the Wild Image Quality Challenge Database,\" "
                  "http://live.ece.utexas.edu/research/ChallengeDB/index.html, 2015."),
        licence=("Copyright (c) 2015 The University of Texas at Austin. Use, copying, modification and "
                 "distribution are permitted for any purpose provided that the copyright notice in its "
                 "entirety appears in all copies and LIVE (UT Austin) is acknowledged in any publication "
                 "that uses the database. Keep the release's notice (copied here when found in SRC) with "
                 "every copy of these images."),
        url="http://live.ece.utexas.edu/research/ChallengeDB/index.html",
        direction="MOS from a single-stimulus 0-100 rating (higher is better); used as is",
        default_max_side=None,
        reader=_read_clive,
    ),
    "koniq": DatasetInfo(
        name="koniq",
        title="KonIQ-10k",
        layout=("  SRC/\n"
                f"    {KONIQ_CSV}   image_name, c1..c5, c_total, MOS (1-5), SD, MOS_zscore\n"
                "    1024x768/<image_name>   (or the half-size 512x384/)"),
        citation=("V. Hosu, H. Lin, T. Sziranyi and D. Saupe, \"KonIQ-10k: An Ecologically Valid Database "
                  "for Deep Learning of Blind Image Quality Assessment,\" IEEE Transactions on Image "
                  "Processing, 29:4041-4056, 2020."),
        licence=("Images are from YFCC100M (Flickr) under their Creative Commons licences; see the terms "
                 "published with the KonIQ-10k download (not checked by this tool)."),
        url="http://database.mmsp-kn.de/koniq-10k-database.html",
        direction="MOS: mean of 5-point absolute category ratings (5 = excellent), higher is better; used as is",
        default_max_side=None,
        reader=_read_koniq,
    ),
    "kadid": DatasetInfo(
        name="kadid",
        title="KADID-10k",
        layout=("  SRC/\n"
                "    dmos.csv   dist_img, ref_img, dmos (1-5), var\n"
                "    images/I01_01_01.png ... (the distorted images; the references I01.png ... may be there too)"),
        citation=("H. Lin, V. Hosu and D. Saupe, \"KADID-10k: A Large-scale Artificially Distorted IQA "
                  "Database,\" 11th International Conference on Quality of Multimedia Experience (QoMEX), 2019."),
        licence=("Reference images from Pixabay; see the terms published with the KADID-10k download "
                 "(not checked by this tool)."),
        url="http://database.mmsp-kn.de/kadid-10k-database.html",
        direction=("the 'dmos' column is the mean of 5-point degradation category ratings against the "
                   "reference (5 = imperceptible, 1 = very annoying), so higher is better despite the name; "
                   "used as MOS, not inverted"),
        default_max_side=None,
        reader=_read_kadid,
    ),
    "kit": DatasetInfo(
        name="kit",
        title="a data set in the kit's layout",
        layout=("  SRC/\n"
                "    train.csv   img_name, img_path, mos[, comments][, group]\n"
                "    train/...   the images img_path names\n"
                "    dataset.json   (optional) mos_scale; else pass --mos-scale"),
        citation="As recorded by the source's own README / licence files (copied along).",
        licence="As stated by the source's own licence file (copied along when found at its top).",
        url="",
        direction="MOS as in the source's train.csv (higher is better, as the kit expects); used as is",
        default_max_side=None,
        reader=_read_kit,
    ),
    "spaq": DatasetInfo(
        name="spaq",
        title="SPAQ (Smartphone Photography Attribute and Quality)",
        layout=("  SRC/\n"
                f"    Annotations/{SPAQ_STEM}.xlsx   Image name, MOS (0-100), Brightness, ...\n"
                f"        (or {SPAQ_STEM}.csv, the same sheet saved as CSV)\n"
                "    TestImage/00001.jpg ... 11125.jpg"),
        citation=("Y. Fang, H. Zhu, Y. Zeng, K. Ma and Z. Wang, \"Perceptual Quality Assessment of "
                  "Smartphone Photography,\" IEEE/CVF Conference on Computer Vision and Pattern "
                  "Recognition (CVPR), 2020."),
        licence="See the terms published with the SPAQ download (not checked by this tool).",
        url="https://github.com/h4nwei/SPAQ",
        direction="MOS from 0-100 ratings (higher is better); used as is",
        default_max_side=512,
        reader=_read_spaq,
    ),
}


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
    """Refuse a file, SRC itself, or a non-empty folder (unless overwrite) as DEST."""
    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(f"DEST '{dest}' is a file: pass a folder for the converted data set.")
    if dest.resolve() == src.resolve():
        raise ValueError(f"DEST must differ from SRC ('{src}'): the converted copy goes to a new folder.")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise FileExistsError(f"DEST '{dest}' already exists and is not empty: choose another folder, or pass "
                              f"overwrite=True (CLI: --overwrite) to replace a previous conversion there "
                              f"(only the files it wrote are removed).")


def _clear_previous(dest: Path) -> None:
    """Remove what a previous conversion wrote to DEST (the images its CSVs list, its top-level
    files, then train/ and test/ if empty); anything else stays."""
    if not dest.is_dir():
        return
    root = dest.resolve()
    for csv_name in ("train.csv", "test.csv"):
        try:
            rels = pd.read_csv(dest / csv_name, usecols=["img_path"], dtype=str)["img_path"].dropna()
        except (OSError, ValueError):
            continue
        for rel in rels:
            path = (dest / rel).resolve()
            if path.parent.parent == root and path.parent.name in ("train", "test"):
                path.unlink(missing_ok=True)
    try:
        old = json.loads((dest / "dataset.json").read_text())
        docs = old.get("source_docs", []) if old.get("format") == FORMAT else []
    except (OSError, ValueError, AttributeError):
        docs = []
    for name in list(TOP_FILES) + [Path(d).name for d in docs]:
        (dest / name).unlink(missing_ok=True)
    for sub in ("train", "test"):
        try:
            (dest / sub).rmdir()  # only when empty: anything else there stays
        except OSError:
            pass


def _command(name, src, dest, holdout, seed, max_side, mode, overwrite, score, mos_scale=None) -> str:
    args = ["python", "-m", "iqa_lib.prepare", name, str(src), str(dest)]
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
    if score is not None and (name != "koniq" or score not in KONIQ_SCORES):
        raise ValueError(f"score= only chooses KonIQ-10k's column ({sorted(KONIQ_SCORES)}); got {score!r} for {name}")
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
    scores = _read_kit(src, score, mos_scale) if name == "kit" else info.reader(src, score)
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
        prog="python -m iqa_lib.prepare",
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
    try:
        dest = prepare(args.name, args.src, args.dest, holdout=args.holdout, seed=args.seed,
                       max_side=args.max_side, mode=args.mode or "copy", overwrite=args.overwrite,
                       score=args.score, mos_scale=args.mos_scale, workers=args.workers, progress=not args.quiet)
    except (DataError, FileExistsError, NotADirectoryError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
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
