"""What the readers (clive.py, koniq.py, kadid.py, kit.py, spaq.py) share: the result a reader
returns (:class:`Scores`), the record of a data set (:class:`DatasetInfo`), and finding and
reading the original files, with errors that name the file and show the layout expected.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..data import DataError, Problem

SEARCH_DEPTH = 2  # how many folder levels below SRC are searched for the original files


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


def find(src: Path, relpaths: Sequence[str], kind: str = "file") -> Path | None:
    """The first `relpath` that exists (as a file or folder) under `src` or a folder up to
    SEARCH_DEPTH levels below it; each relpath is tried everywhere before the next one."""
    test = Path.is_file if kind == "file" else Path.is_dir
    folders = _subdirs(src, SEARCH_DEPTH)
    for rel in relpaths:
        for d in folders:
            if test(d / rel):
                return d / rel
    return None


def missing(info: DatasetInfo, src: Path, what: str) -> DataError:
    return DataError([Problem("original file missing", str(src), f"{what} not found in SRC or the folders below it",
                              f"pass SRC = the unpacked {info.title} download, laid out as:\n{info.layout}")],
                     f"cannot read {info.name} from {src}")


def _image_index(folder: Path) -> dict[str, Path]:
    """Files of `folder` by lower-case name, to forgive a case difference (``.JPG`` vs ``.jpg``)."""
    try:
        return {e.name.lower(): Path(e.path) for e in os.scandir(folder) if e.is_file()}
    except OSError:
        return {}


def resolve_images(names: Sequence[str], folder: Path, info: DatasetInfo, what: str) -> list[Path]:
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


# --------------------------------------------------------------------------------------------
# reading score files
# --------------------------------------------------------------------------------------------
def require_columns(df: pd.DataFrame, needed: Sequence[str], path: Path, info: DatasetInfo) -> None:
    absent = [c for c in needed if c not in df.columns]
    if absent:
        raise DataError([Problem("missing column", str(path),
                                 f"no column {c!r} (columns: {list(df.columns)})",
                                 f"this does not look like the original {path.name}; expected layout:\n{info.layout}")
                         for c in absent], f"cannot read {info.name} scores")


def read_csv(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, encoding="utf-8-sig")
    df.columns = [str(c).strip() for c in df.columns]
    return df


def scores_column(df: pd.DataFrame, col: str, path: Path, info: DatasetInfo) -> np.ndarray:
    """`col` as float64; a DataError naming the rows that are not numbers."""
    values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise DataError([Problem("score not a number", f"{path.name} row {i + 2}", f"{col}={df[col].iloc[i]!r}",
                                 f"every row needs a numeric {col}; restore {path.name} from the {info.title} download")
                         for i in bad], f"cannot read {info.name} scores")
    return values


def image_table(df: pd.DataFrame, name_col: str, score_col: str, folder: Path, path: Path,
                info: DatasetInfo) -> pd.DataFrame:
    """The reader's table for score file `path` (read as `df`): one row per row, with img_name
    (the stem of `name_col`), source (that file in `folder`) and mos (`score_col`)."""
    names = df[name_col].astype(str).str.strip().tolist()
    paths = resolve_images(names, folder, info, path.name)
    return pd.DataFrame({"img_name": [Path(n).stem for n in names], "source": [str(p) for p in paths],
                         "mos": scores_column(df, score_col, path, info)})
