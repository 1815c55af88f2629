"""The data layer: read the competition CSVs, decode images once, feed the model (SPEC §1, §4, §6).

From disk to the model::

    load_table(data_dir)           CSV rows + absolute `path`, every problem reported at once
    ImageStore.open(paths, size)   RGB uint8 (S, S, 3) per image; with `cache_dir` decoded
                                   once into a memory-mapped file that every fold reuses
    IQADataset(store, targets)     (image uint8, target float32, index): no float maths in workers
    make_loader(dataset, ...)      a seeded DataLoader
    to_model_input(images, ...)    on the device: flip (train), /255, (x - mean) / std, NCHW

Workers only copy bytes; the float conversion, normalisation and the random flip run on the
device in `to_model_input`, where they cost almost nothing and use a generator the training
loop can save and restore.

Choices that affect pixel values (all match the team's OpenCV reader, `cv2.imread`):

* EXIF orientation is applied. `cv2.imread` rotates by the EXIF tag unless it is given
  `IMREAD_IGNORE_ORIENTATION` (OpenCV >= 3.1), and the team used its defaults.
* Alpha is dropped, not composited: `cv2.imread` in colour mode discards the alpha channel,
  so the colour under a transparent pixel is what the team's model saw.
* 16-bit images keep their high byte (v >> 8), as OpenCV's 8-bit conversion does; 32-bit
  integer images ("I") are read as 16-bit data; float images ("F") are taken to be in
  [0, 1] when their maximum is at most 1, else in [0, 255].
* The resize is bicubic to S x S, aspect ratio not kept. Pillow's bicubic (backend "pil")
  antialiases when it shrinks; OpenCV's `INTER_CUBIC` (backend "cv2", the team's exact
  resize) does not, so the two differ on downscaled images.
* With backend "pil", JPEGs at least 4x the target size on both sides are decoded at 1/2,
  1/4 or 1/8 scale by libjpeg (Pillow's `draft`), never below 2x the target: a 12000x9000
  photo costs a few MB instead of 324 MB. Backend "cv2" always decodes at full size:
  without antialiasing the result would differ from the team's.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import math
import numbers
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
from filelock import FileLock
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from .checkpoint import atomic_write_text, check_writable
from .config import CHECK_MODES, FLIPS, read_json

MAX_LISTED = 20  # problems listed per kind in a DataError; the rest are counted
PIXELS_ENV = "IQA_MAX_IMAGE_PIXELS"  # Pillow's decompression-bomb limit: a pixel count, or 0 for none
BACKENDS = ("pil", "cv2")
CACHE_FORMAT = 1  # bump when the cache's bytes or index change meaning


def _pixel_limit_from_env() -> None:
    """Raise (or lift) Pillow's image-size limit from $IQA_MAX_IMAGE_PIXELS: it reaches a notebook's
    kernel, the grid runner's children and the loader's workers alike, where no code of yours runs."""
    value = os.environ.get(PIXELS_ENV, "").strip()
    if not value:
        return
    if not value.isdigit():
        raise ValueError(f"${PIXELS_ENV}={value!r}: write a whole number of pixels, or 0 for no limit.")
    Image.MAX_IMAGE_PIXELS = int(value) or None


_pixel_limit_from_env()


def _check_int(name: str, value: Any, low: int, hint: str = "") -> None:
    """A ValueError naming the parameter unless `value` is an int >= `low` (bool is not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}{hint}, got {value!r}")


# --- errors ----------------------------------------------------------------------------------

class Problem(NamedTuple):
    """One thing wrong with the data: what kind, where (file + line, or image path), what, how to fix."""

    kind: str
    where: str
    what: str
    fix: str


class DataError(ValueError):
    """Bad data, with every problem found listed: grouped by kind, each kind with its fix and at
    most MAX_LISTED of its problems. `.problems` holds the `Problem` tuples for code to inspect."""

    def __init__(self, problems: Sequence[Problem], title: str = "data problems"):
        self.problems = [Problem(*p) for p in problems]
        self.title = title
        by_kind: dict[str, list[Problem]] = {}
        for p in self.problems:
            by_kind.setdefault(p.kind, []).append(p)
        n = len(self.problems)
        lines = [f"{title}: {n} problem{'s' if n != 1 else ''}"]
        for kind, items in by_kind.items():
            lines.append(f"* {kind} ({len(items)}) -- fix: {items[0].fix}")
            lines += [f"    {p.where}: {p.what}" for p in items[:MAX_LISTED]]
            if len(items) > MAX_LISTED:
                lines.append(f"    ... and {len(items) - MAX_LISTED} more")
        super().__init__("\n".join(lines))

    def __reduce__(self):
        # Rebuild from the problems, not the message, when crossing a process boundary.
        return DataError, (self.problems, self.title)


# --- the table -------------------------------------------------------------------------------

def load_table(
    data_dir: str | os.PathLike,
    csv_name: str = "train.csv",
    *,
    labelled: bool = True,
    mos_scale: float = 10.0,
    check_images: str = "open",
    progress: bool = True,
    errors: str = "raise",
) -> pd.DataFrame:
    """Read `data_dir/csv_name` (competition layout) and check it and its images.

    Args:
        data_dir: the folder holding train.csv / test.csv and the train/ and test/ folders;
            `img_path` values (e.g. `./train/abc.jpg`) are relative to it.
        csv_name: the CSV inside `data_dir`.
        labelled: require and check a `mos` column (train.csv); False for test.csv.
        mos_scale: the top of the MOS scale (10 for the challenge, 100 for CLIVE); a MOS
            outside [0, mos_scale] is an error.
        check_images: "none"; "open" (header parse + Pillow's verify: catches missing,
            empty, non-image and bad-header files, fast); "decode" (full decode: also
            catches truncated files, slow).
        progress: show a progress bar while checking images.
        errors: "raise" (every problem in one DataError) or "drop": leave out the rows that
            have a problem and list the problems in `table.attrs["problems"]` (01_eda shows the
            good rows); a problem with the header still raises.

    Returns:
        Every data row (caption rows included) as strings, `mos` as float64 when
        `labelled`, plus `path`: the absolute, resolved image path.

    Raises:
        DataError: listing every problem found, each with its CSV line or image path.
        ValueError: an invalid argument.
    """
    if check_images not in CHECK_MODES:
        raise ValueError(f"check_images must be one of {CHECK_MODES}, got {check_images!r}")
    if errors not in ("raise", "drop"):
        raise ValueError(f"errors must be 'raise' or 'drop', got {errors!r}")
    if isinstance(mos_scale, bool) or not isinstance(mos_scale, numbers.Real) or not 0 < mos_scale < math.inf:
        raise ValueError(f"mos_scale must be a positive number (10 for the challenge, 100 for CLIVE), "
                         f"got {mos_scale!r}")
    root = Path(os.path.abspath(Path(data_dir).expanduser()))
    csv_path = _require_csv(root, csv_name)
    header, rows, lines, too_wide = _read_csv(csv_path)
    line_1 = f"{csv_path.name} line 1"
    problems = _header_problems(line_1, header, ["img_name", "img_path"] + (["mos"] if labelled else []))
    problems += too_wide
    if not rows and not too_wide:
        problems.append(Problem("no data rows", str(csv_path), "the file has a header but no data rows",
                                "add one row per image (train.csv: img_name,img_path,mos,comments)"))
    if not rows:
        raise DataError(problems, f"{csv_path}")

    # A duplicated column name is reported above (on line 1, so the table is refused): keep the first.
    df = pd.DataFrame(rows, columns=header)
    df = df.loc[:, ~df.columns.duplicated()]
    where = [f"{csv_path.name} line {n}" for n in lines]
    for col, example in (("img_name", "abc"), ("img_path", "./train/abc.jpg")):
        if col in df:
            df[col] = df[col].str.strip()
            problems += [Problem(f"empty {col}", where[i], f"{col} is empty",
                                 f"give every row an {col} (e.g. {example})")
                         for i in np.flatnonzero(df[col] == "")]
    if "img_path" in df:
        df["path"], found = _resolve_paths(root, df["img_path"], where)
        problems += found
    if labelled and "mos" in df:
        df["mos"], found = _parse_mos(df["mos"], where, mos_scale)
        problems += found
    # Rows of one image must agree; on the resolved path, as ./train/a.jpg and train/a.jpg are one file.
    compared = [col for col in (["path", "mos"] if labelled else ["path"]) if col in df and "img_name" in df]
    for col in compared:
        problems += _conflicts(df, col, lines, csv_path.name)
    if "path" in df and check_images != "none":
        problems += _check_images(df["path"], check_images, progress)

    if problems and (errors == "raise" or any(p.where == line_1 for p in problems)):
        raise DataError(problems, f"{csv_path} (data_dir={root})")
    if problems:  # errors="drop": keep the rows that no problem names (by CSV line or image path),
        bad = {p.where for p in problems}  # and no row of an image whose rows disagree
        clash = set()
        for col in compared:
            values = df[df["img_name"] != ""].groupby("img_name")[col].nunique()
            clash |= set(values.index[values > 1])
        keep = ~pd.Series(where).isin(bad).to_numpy() & ~df["path"].isin(bad) & ~df["img_name"].isin(clash)
        df = df[keep].reset_index(drop=True)
        df.attrs["problems"] = problems
    return df


def _require_csv(root: Path, csv_name: str) -> Path:
    """The CSV path, or a DataError saying which folder or file was expected."""
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "folder not found"
        raise DataError([Problem("data folder missing", str(root), what,
                                 "pass data_dir= the folder that holds train.csv / test.csv and the "
                                 "train/ and test/ image folders (img_path values are relative to it)")])
    csv_path = root / csv_name
    if not csv_path.is_file():
        found = sorted(p.name for p in root.glob("*.csv"))
        hint = f"CSV files there: {', '.join(found)}" if found else "there is no CSV file there"
        raise DataError([Problem("CSV missing", str(csv_path), f"file not found ({hint})",
                                 "pass csv_name= one of the CSVs above, or data_dir= the folder that holds it")])
    return csv_path


def _read_csv(csv_path: Path) -> tuple[list[str], list[list[str]], list[int], list[Problem]]:
    """The header, the data rows, each row's first line number (header = 1) and the rows refused.

    Read with the csv module rather than pandas, so that every row keeps its true line number,
    also after quoted captions spanning several lines. Blank lines are skipped and short rows
    padded (as pandas does); a row with more fields than the header is ambiguous (an unquoted
    comma, usually in a caption): it is reported and left out.
    """
    rows, lines, too_wide = [], [], []
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if not any(header):
                raise DataError([Problem("CSV empty", str(csv_path), "the file is empty or has no header line",
                                         "the first line must name the columns, e.g. img_name,img_path,mos,comments")])
            last = reader.line_num  # a row may span several lines: it starts after the last one read
            for row in reader:
                line, last = last + 1, reader.line_num
                if not any(field.strip() for field in row):
                    continue
                if len(row) > len(header):
                    too_wide.append(Problem("too many fields", f"{csv_path.name} line {line}",
                                            f"{len(row)} fields, the header has {len(header)}",
                                            'quote fields that contain commas ("a, b")'))
                    continue
                rows.append(row + [""] * (len(header) - len(row)))
                lines.append(line)
    except UnicodeDecodeError as e:
        raise DataError([Problem("CSV not UTF-8", str(csv_path), str(e), "save the CSV as UTF-8 text")]) from None
    except csv.Error as e:
        raise DataError([Problem("CSV unreadable", f"{csv_path} line {reader.line_num}", str(e),
                                 "fix that line (stray NUL bytes or an unclosed quote)")]) from None
    return header, rows, lines, too_wide


def _header_problems(where: str, header: list[str], required: list[str]) -> list[Problem]:
    """Missing required columns (with a close match suggested) and duplicate names."""
    out = []
    for col in required:
        if col not in header:
            guess = _closest(col, header)
            hint = f"; did you mean {guess!r}?" if guess else ""
            fix = "rename the column in the header line to the expected name"
            if col == "mos":
                fix += " (an unlabelled CSV such as test.csv needs labelled=False)"
            out.append(Problem("missing column", where, f"no column {col!r} (columns: {header}){hint}", fix))
    for col in sorted({h for h in header if header.count(h) > 1}):
        out.append(Problem("duplicate column", where, f"column {col!r} appears {header.count(col)} times",
                           "give every column a distinct name"))
    return out


def _closest(name: str, candidates: list[str]) -> str | None:
    """A header entry that is probably `name` misspelled: same letters in another case,
    `name` inside a longer name (`mos_score`), or a close spelling (`img_nmae`)."""
    low = {c.lower(): c for c in candidates}
    if name in low:
        return low[name]
    contains = [c for c in candidates if name in c.lower() or (c and c.lower() in name)]
    if contains:
        return contains[0]
    close = difflib.get_close_matches(name, list(low), n=1, cutoff=0.6)
    return low[close[0]] if close else None


def _resolve_paths(root: Path, img_paths: Iterable[str], where: list[str]) -> tuple[list[str], list[Problem]]:
    """Absolute resolved path per row ("" when unusable); report paths leaving `root` and missing files.

    Containment is checked on the normalised path, before symlinks are followed, so a
    `train/` folder that is a symlink to another disk is fine while `../x.jpg` is not.
    """
    root_s = str(root)
    resolved: dict[str, str] = {}  # normalised -> realpath, each file checked once
    out, problems = [], []
    for rel, w in zip(img_paths, where):
        if not rel:
            out.append("")
            continue
        full = os.path.normpath(os.path.join(root_s, rel))
        if full != root_s and not full.startswith(root_s.rstrip(os.sep) + os.sep):
            problems.append(Problem("img_path outside data_dir", w, f"{rel!r} resolves to {full}",
                                    "img_path must be relative to data_dir, e.g. ./train/abc.jpg"))
            out.append("")
            continue
        if full not in resolved:
            resolved[full] = os.path.realpath(full)
            if not os.path.isfile(resolved[full]):
                problems.append(Problem("image file missing", w, f"{rel!r} -> {full} not found",
                                        "copy the image there, or fix/remove its rows in the CSV "
                                        "(if every image is missing, data_dir is probably the wrong folder)"))
        out.append(resolved[full])
    return out, problems


def _parse_mos(values: Iterable[str], where: list[str], mos_scale: float) -> tuple[np.ndarray, list[Problem]]:
    """MOS as float64 (NaN where invalid) and a problem per invalid value."""
    mos = np.full(len(where), np.nan)
    problems, outside = [], []
    for i, (v, w) in enumerate(zip(values, where)):
        try:
            x = float(v)
        except ValueError:
            kind = "missing mos" if v.strip() == "" else "mos not a number"
            problems.append(Problem(kind, w, f"mos={v!r}", "every row of train.csv needs a numeric mos"))
            continue
        if not math.isfinite(x):
            problems.append(Problem("mos not finite", w, f"mos={v!r}", "every row of train.csv needs a finite mos"))
        elif not 0.0 <= x <= mos_scale:
            outside.append((w, x))
        else:
            mos[i] = x
    if outside:
        # Many values above the scale usually mean another scale (CLIVE: 0-100), not bad rows.
        top = max(x for _, x in outside)
        guess = next((s for s in (1, 5, 10, 100) if s >= top and s > mos_scale), None)
        where_set = ("in the profile's YAML, or in a dataset.json beside train.csv as `iqa_lib.datasets.prepare "
                     "--mos-scale` writes; load_table(..., mos_scale=) in Python")
        if top <= mos_scale:
            hint = "a MOS cannot be negative"
        elif guess:
            hint = f"if this data set's scale is 0-{guess}, set mos_scale: {guess} ({where_set})"
        else:
            hint = f"set mos_scale: at least {top:g} if that is this data set's scale ({where_set})"
        fix = (f"scores must lie in [0, mos_scale] (the top of the data set's scale) and mos_scale={mos_scale:g} "
               f"is in force: {hint}; or fix the values")
        problems += [Problem("mos out of range", w, f"mos={x:g} is outside [0, {mos_scale:g}]", fix)
                     for w, x in outside]
    return mos, problems


def _conflicts(df: pd.DataFrame, col: str, lines: list[int], csv_name: str) -> list[Problem]:
    """A problem per image whose rows disagree on `col` ("path" or "mos"): caption rows must
    repeat the same value. Empty values are not compared."""
    label = "img_path" if col == "path" else col
    sub = pd.DataFrame({"name": df["img_name"], "value": df[col], "line": lines})
    sub = sub[(sub["name"] != "") & sub["value"].notna() & (sub["value"].astype(str) != "")]
    counts = sub.groupby("name", sort=False)["value"].nunique()
    problems = []
    for name in counts.index[counts > 1]:
        rows = sub[sub["name"] == name].head(6)
        shown = ", ".join(f"{v} (line {n})" for v, n in zip(rows["value"], rows["line"]))
        problems.append(Problem(f"conflicting {label}", f"{csv_name} line {rows['line'].iloc[0]}",
                                f"img_name {name!r} has different {label} values on its rows: {shown}",
                                f"every row of one image must have the same {label}: fix the CSV"))
    return problems


def _check_images(paths: pd.Series, mode: str, progress: bool) -> list[Problem]:
    """Open (or fully decode) every distinct existing image, in threads: Pillow releases the
    GIL while reading and decoding, so this scales with cores for large data sets."""
    def check(path: str) -> Problem | None:
        try:
            with Image.open(path) as im:
                if mode == "open":
                    im.verify()
                else:
                    im.load()
        except Exception as e:  # Pillow raises many types for broken files
            return _image_problem(path, e)
        return None

    todo = [p for p in dict.fromkeys(paths) if p and os.path.isfile(p)]
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        results = list(tqdm(pool.map(check, todo), total=len(todo), desc=f"checking images ({mode})",
                            disable=not progress or len(todo) < 500, unit="img"))
    return [r for r in results if r is not None]


def _image_problem(path: str, e: Exception) -> Problem:
    """The problem with an image that Pillow could not open or decode, and how to fix it."""
    if isinstance(e, Image.DecompressionBombError):
        return Problem("image above Pillow's size limit", path, str(e),
                       f"if the file is trusted, raise the limit with the environment variable {PIXELS_ENV} "
                       f"(a pixel count, or 0 for none), e.g. `{PIXELS_ENV}=400000000 papermill ...` or "
                       f"`{PIXELS_ENV}=0 python -m iqa_lib.run_all ...`; in Python, set "
                       "PIL.Image.MAX_IMAGE_PIXELS before loading")
    if isinstance(e, FileNotFoundError):
        return Problem("image file missing", path, "not found",
                       "check the path (load_table reports all missing files at once)")
    empty = os.path.isfile(path) and os.path.getsize(path) == 0
    return Problem("unreadable image", path, "empty file (0 bytes)" if empty else f"{type(e).__name__}: {e}",
                   "replace the file with a valid image (re-download or re-export it), or remove its rows")


# --- one image -------------------------------------------------------------------------------

def read_rgb(path: str | os.PathLike, *, min_size: int | None = None) -> Image.Image:
    """Decode an image file as 8-bit RGB, EXIF orientation applied (see the module notes).

    `min_size` is the side the caller will resize to: a JPEG at least 4x larger on both sides
    is then decoded at reduced scale (1/2, 1/4 or 1/8, never below 2 * min_size), much faster
    and smaller. None decodes at full size. Raises DataError when the file is missing,
    unreadable, or above Pillow's decompression-bomb limit (the message says how to allow it).
    """
    path = str(path)
    try:
        with Image.open(path) as im:
            if min_size and im.format == "JPEG":
                im.draft(im.mode, (2 * min_size, 2 * min_size))
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            return _to_rgb(im)
    except MemoryError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError... for broken data
        raise DataError([_image_problem(path, e)]) from None


def _to_rgb(im: Image.Image) -> Image.Image:
    """A new RGB image (it outlives the file) from any Pillow mode; alpha and palette
    transparency are dropped."""
    if im.mode.startswith("I;16") or im.mode == "I":
        # Pillow would clip 16-bit values to 255 (white); keep the high byte like OpenCV.
        gray = (np.clip(np.asarray(im).astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))
    if im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        peak = 1.0 if a.max(initial=0.0) <= 1.0 else 255.0
        gray = np.clip(np.rint(a * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # avoids Pillow's palette-transparency warning; alpha dropped below
    return im.copy() if im.mode == "RGB" else im.convert("RGB")


def load_resized(path: str | os.PathLike, size: int, *, backend: str = "pil") -> np.ndarray:
    """The whole image resized to (size, size, 3) uint8 RGB, bicubic, aspect ratio not kept.

    backend "pil": Pillow bicubic (antialiased when shrinking), huge JPEGs decoded at reduced
    scale. "cv2": OpenCV INTER_CUBIC, the team's exact resize (no antialiasing), full-size decode.
    """
    _check_int("size", size, 1, " (the model's input side, e.g. 384)")
    cv2 = _opencv(backend)
    im = read_rgb(path, min_size=size if cv2 is None else None)
    if cv2 is None:
        return np.array(im.resize((size, size), Image.Resampling.BICUBIC))
    return cv2.resize(np.asarray(im), (size, size), interpolation=cv2.INTER_CUBIC)


def _opencv(backend: str):
    """Check `backend`; the cv2 module for "cv2" (saying what to install when it is missing), else None."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "pil":
        return None
    try:
        import cv2
    except ImportError:
        raise ImportError("backend='cv2' needs OpenCV: pip install opencv-python-headless "
                          "(or use backend='pil')") from None
    return cv2


# --- many images: decode once ----------------------------------------------------------------

class ImageStore:
    """Images resized to (size, size, 3) uint8, by index, in the order of `paths`.

    Made by `ImageStore.open`. Without a cache every access decodes and resizes; with one,
    access is a copy out of a memory-mapped file. The memmap is opened lazily in each
    process, so a store pickles cheaply into DataLoader workers (fork or spawn).
    """

    def __init__(self, paths: Sequence[str], size: int, *, backend: str = "pil",
                 images_file: Path | None = None, rows: np.ndarray | None = None):
        self.paths = list(paths)
        self.size = int(size)
        self.backend = backend
        self.images_file = images_file  # None: decode on every access
        self._rows = rows  # memmap row of each path
        self._mm: np.memmap | None = None
        self._mm_pid = -1
        # Worker processes made by spawn do not inherit a raised Pillow limit: carry it along.
        self._max_pixels = Image.MAX_IMAGE_PIXELS
        self._owner_pid = os.getpid()

    @classmethod
    def open(
        cls,
        paths: Iterable[str | os.PathLike],
        size: int,
        cache_dir: str | os.PathLike | None = None,
        num_workers: int = 0,
        progress: bool = True,
        backend: str = "pil",
    ) -> "ImageStore":
        """A store over `paths` at `size`; with `cache_dir`, build or reuse its cache.

        The cache is the folder `cache_dir/{key}_{size}/`, where `key` hashes the sorted set of
        absolute paths (and the backend): the same images in any order, e.g. sorted by fold,
        share one cache. It holds `images.u8` (raw uint8, N x S x S x 3, rows in sorted path
        order: 54,662 images take 24 GB at 384, 33 GB at 448, 67 GB at 640), `index.json`
        (the paths and their [size, mtime_ns]), written last.

        On reuse only the files whose size or mtime changed are decoded again. Adding or
        removing images changes the key, so a new cache is built; delete old folders to
        reclaim disk. `num_workers` threads decode the build (0: one). Concurrent
        opens of one cache (DDP ranks) wait for each other on a lock file.
        """
        _check_int("size", size, 1, " (the model's input side, e.g. 384)")
        _opencv(backend)
        _check_int("num_workers", num_workers, 0)
        paths = [os.path.abspath(os.fspath(p)) for p in paths]
        if not paths:
            raise ValueError("paths is empty: pass the image paths (e.g. load_table(...)['path'])")
        if cache_dir is None:
            return cls(paths, size, backend=backend)
        unique = sorted(set(paths))
        folder = Path(cache_dir).expanduser().resolve() / f"{_cache_key(unique, backend)}_{size}"
        _build_cache(folder, unique, size, backend, num_workers, progress)
        row_of = {p: r for r, p in enumerate(unique)}
        rows = np.array([row_of[p] for p in paths], dtype=np.int64)
        return cls(paths, size, backend=backend, images_file=folder / "images.u8", rows=rows)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        """Image `i` (negative counts from the end) as a fresh, writable (size, size, 3) uint8 array."""
        if self.images_file is None:
            return load_resized(self.paths[i], self.size, backend=self.backend)
        return np.array(self._memmap()[self._rows[i]])

    @property
    def cache_path(self) -> Path | None:
        """The cache folder, or None when images are decoded on every access."""
        return None if self.images_file is None else self.images_file.parent

    def _memmap(self) -> np.memmap:
        # A mapping is per process: reopen after fork/spawn instead of sharing the parent's.
        if self._mm is None or self._mm_pid != os.getpid():
            mm = np.memmap(self.images_file, dtype=np.uint8, mode="r")
            self._mm = mm.reshape(-1, self.size, self.size, 3)
            self._mm_pid = os.getpid()
        return self._mm

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_mm": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if os.getpid() != self._owner_pid:  # e.g. a spawned DataLoader worker
            Image.MAX_IMAGE_PIXELS = self._max_pixels


def _cache_key(sorted_paths: list[str], backend: str) -> str:
    """Short hash of the image set and of everything that changes the cached bytes."""
    h = hashlib.sha256(f"iqa_lib.data cache {CACHE_FORMAT} {backend}\n".encode())
    for p in sorted_paths:
        h.update(p.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()[:16]


def _fingerprint(path: str) -> list[int] | None:
    """[size, mtime_ns] of a file, None if it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _build_cache(folder: Path, paths: list[str], size: int, backend: str, num_workers: int, progress: bool) -> None:
    """Make `folder` a complete cache of `paths` (sorted, unique), decoding only what is needed.

    Crash safety: `index.json` is removed before any row is written and written last (atomically),
    after the rows are synced; without it the whole cache is rebuilt. Rows that failed to decode
    get a null fingerprint, so the next open retries just those.
    """
    check_writable(folder, "the image cache folder", "make out_dir writable, pass another out_dir (-p out_dir ...), "
                   "or set train.cache: false to decode the images every epoch instead")
    images_file, index_file = folder / "images.u8", folder / "index.json"
    shape = (len(paths), size, size, 3)
    meta = {"format": CACHE_FORMAT, "size": size, "backend": backend}
    with FileLock(folder / "lock"):  # DDP ranks opening one cache wait for the first to build it
        index = _read_index(folder, paths, shape, meta)
        if index is None:
            # A fresh file, renamed into place when done: a process still reading an old
            # cache keeps its (unlinked) file instead of seeing it truncated under it.
            index_file.unlink(missing_ok=True)
            for stale in folder.glob(".images.*.tmp"):  # left by killed builds (we hold the lock)
                stale.unlink(missing_ok=True)
            free = shutil.disk_usage(folder).free
            if math.prod(shape) > free:  # say so now, not when the disk fills up halfway through
                raise DataError([Problem("cache does not fit", str(folder),
                                         f"needs {math.prod(shape) / 1e9:.2f} GB, {free / 1e9:.2f} GB free",
                                         "free disk space (old cache folders can be deleted), pass another out_dir "
                                         "(-p out_dir ...), or set train.cache: false to decode the images every "
                                         "epoch instead (in Python: ImageStore.open(..., cache_dir=None))")])
            target = folder / f".images.{os.getpid()}.tmp"
            with open(target, "wb") as f:
                f.truncate(math.prod(shape))  # a sparse file of the full size
            fingerprints: list = [None] * len(paths)
            todo = list(range(len(paths)))
        else:
            fingerprints = index["fingerprints"]
            todo = [j for j, p in enumerate(paths) if fingerprints[j] is None or _fingerprint(p) != fingerprints[j]]
            if not todo:
                return
            index_file.unlink(missing_ok=True)
            target = images_file  # same size: rows are rewritten in place
        desc = f"{'caching' if index is None else 'refreshing'} {len(todo)} images at {size}px"
        try:
            results = _decode_rows(target, [(j, paths[j]) for j in todo], size, backend, num_workers, progress, desc)
        except BaseException:
            if target != images_file:
                target.unlink(missing_ok=True)
            raise
        for j, fingerprint, _ in results:
            fingerprints[j] = fingerprint
        with open(target, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(target, images_file)
        atomic_write_text(index_file, json.dumps({**meta, "paths": paths, "fingerprints": fingerprints}))
    problems = [problem for _, _, problem in results if problem is not None]
    if problems:
        raise DataError(problems, f"cache {folder}: images that could not be decoded")


def _read_index(folder: Path, paths: list[str], shape: tuple, meta: dict) -> dict | None:
    """The index of a complete cache built for exactly these paths and settings, else None."""
    images_file = folder / "images.u8"
    index = read_json(folder / "index.json")
    if not isinstance(index, dict) or not images_file.is_file():
        return None
    if any(index.get(k) != v for k, v in meta.items()) or index.get("paths") != paths:
        return None
    if len(index.get("fingerprints", [])) != len(paths) or images_file.stat().st_size != math.prod(shape):
        return None
    return index


def _decode_rows(target: Path, jobs: list[tuple[int, str]], size: int, backend: str, num_workers: int,
                 progress: bool, desc: str) -> list[tuple[int, list | None, Problem | None]]:
    """Decode `jobs` (row, path) into their rows of the cache file `target`, in `num_workers` threads
    (Pillow releases the GIL while it decodes and resizes); each job's (row, fingerprint, problem)."""
    rows = np.memmap(target, dtype=np.uint8, mode="r+").reshape(-1, size, size, 3)

    def decode(job: tuple[int, str]) -> tuple[int, list | None, Problem | None]:
        row, path = job
        fingerprint = _fingerprint(path)  # before decoding: a file rewritten meanwhile looks stale next time
        try:
            rows[row] = load_resized(path, size, backend=backend)
        except DataError as e:  # missing, unreadable or too large: reported, and retried next open
            return row, None, e.problems[0]
        return row, fingerprint, None

    pool = ThreadPoolExecutor(max(1, num_workers))
    try:
        return list(tqdm(pool.map(decode, jobs), total=len(jobs), desc=desc, disable=not progress, unit="img"))
    finally:
        pool.shutdown(cancel_futures=True)  # Ctrl-C: the queued images are dropped, not decoded first
        rows.flush()


# --- torch: dataset, loader, model input -----------------------------------------------------

class IQADataset(torch.utils.data.Dataset):
    """(image uint8 (S, S, 3), target float32 (NaN when unlabelled), index) per item.

    Targets are returned as given (e.g. raw MOS); scaling, normalising and flipping
    happen later, on the device, in `to_model_input` and the training loop.
    """

    def __init__(self, store: ImageStore, targets: Sequence[float] | np.ndarray | None = None):
        self.store = store
        if targets is None:
            self.targets = np.full(len(store), np.nan, dtype=np.float32)
        else:
            self.targets = np.asarray(targets, dtype=np.float32).reshape(-1)
            if len(self.targets) != len(store):
                raise ValueError(f"targets has {len(self.targets)} values but the store has {len(store)} images")

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return torch.from_numpy(self.store[i]), torch.tensor(self.targets[i]), int(i)


def collate(batch: list[tuple[torch.Tensor, torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack IQADataset items into (images uint8 (B, S, S, 3), targets float32 (B,), indices int64 (B,)).

    Stacks with numpy: torch's parallel cat can be 30x slower on a busy 2-core machine
    (OpenMP threads waiting on each other), and this runs in the main process when num_workers=0.
    """
    images = torch.from_numpy(np.stack([item[0].numpy() for item in batch]))
    targets = torch.tensor([float(item[1]) for item in batch], dtype=torch.float32)
    indices = torch.tensor([int(item[2]) for item in batch], dtype=torch.int64)
    return images, targets, indices


def make_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int | None,
    *,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 4420,
    sampler: Any = None,
) -> torch.utils.data.DataLoader:
    """A seeded DataLoader: same seed, same order, and the same seeds in the workers (torch seeds
    each worker's `random`, numpy and torch from the loader's generator).

    Batches are `collate`d: (images uint8 (B, S, S, 3), targets float32 (B,), indices (B,)).
    `batch_size=None` means `sampler` yields whole batches (lists of indices) and is used
    as the DataLoader's batch sampler. Workers live as long as this loader (the trainer makes
    one per epoch, so they start once per epoch); memory is pinned when CUDA is available.
    torch checks `batch_size` and `num_workers` (its messages name them).
    """
    if sampler is not None and shuffle:
        raise ValueError("pass shuffle=False together with sampler=: the sampler decides the order")
    if batch_size is None and sampler is None:
        raise ValueError("batch_size=None needs sampler= yielding lists of indices (one per batch)")
    batching = (dict(batch_sampler=sampler) if batch_size is None
                else dict(batch_size=batch_size, shuffle=shuffle, sampler=sampler))
    return torch.utils.data.DataLoader(
        dataset,
        **batching,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
    )


def to_model_input(
    images_u8: torch.Tensor | np.ndarray,
    *,
    train: bool = False,
    flip: str = "vertical",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float32 on `device`: x / 255, then (x - mean) / std per
    channel (the model's `cfg.mean` / `cfg.std`: its backbone's; 0.5 / 0.5 gives [-1, 1]).

    With `train=True` each image is flipped independently with probability 0.5 along
    `flip`: "vertical" (rows; the team's default, SPEC §4: their "horizontal" flip ran
    np.fliplr on C x H x W), "horizontal" (columns) or "none". The coin flips come from
    `generator` (made on its own device, then moved) or torch's global RNG.
    """
    if flip not in FLIPS:
        raise ValueError(f"flip must be one of {FLIPS}, got {flip!r}")
    x = torch.as_tensor(images_u8)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images_u8 must be uint8 (B, S, S, 3), got {x.dtype} {tuple(x.shape)}")
    if device is not None:
        x = x.to(device, non_blocking=True)
    if train and flip != "none" and len(x):
        gen_device = generator.device if generator is not None else x.device
        coin = torch.rand(len(x), generator=generator, device=gen_device) < 0.5
        dim = 1 if flip == "vertical" else 2  # rows / columns of (B, H, W, 3)
        x = torch.where(coin.to(x.device).view(-1, 1, 1, 1), x.flip(dim), x)
    # Reorder while still uint8 (4x fewer bytes to move than after the float conversion).
    x = x.permute(0, 3, 1, 2).contiguous()
    x = x.float().div_(255.0)
    mean_t = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean_t).div_(std_t)
