"""``spaq``: SPAQ (Smartphone Photography Attribute and Quality).

Original layout: ``Annotations/MOS and Image attribute scores.xlsx`` (``Image name``, ``MOS``
on 0-100, attribute scores) or a CSV export of it, and ``TestImage/``.

The photos are about 4000x3000, so they are shrunk by default to 512 pixels on the longer side
(see ``max_side`` in :func:`iqa_lib.datasets.prepare.prepare`). Reading the .xlsx needs
``openpyxl``. Scale 100.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from ..data import DataError, Problem
from .common import DatasetInfo, Scores, find, image_table, missing, read_csv, require_columns

STEM = "MOS and Image attribute scores"  # the score sheet's name, without .xlsx / .csv


def _openpyxl_available() -> bool:
    return importlib.util.find_spec("openpyxl") is not None


def read(src: Path, score: str | None) -> Scores:
    info = INFO
    annotations = find(src, ["Annotations"], "dir")
    if annotations is None:
        raise missing(info, src, "the Annotations/ folder")
    root = annotations.parent
    sheet = next((p for p in (annotations / f"{STEM}.csv", annotations / f"{STEM}.xlsx") if p.is_file()), None)
    if sheet is None:  # a CSV export under another name
        sheet = next((p for p in sorted(annotations.glob("*.csv"))
                      if {"Image name", "MOS"} <= set(read_csv(p).columns)), None)
    if sheet is None:
        raise missing(info, src, f"Annotations/{STEM}.xlsx (or a CSV export of it)")
    if sheet.suffix == ".xlsx":
        if not _openpyxl_available():
            raise DataError([Problem("openpyxl missing", str(sheet), "reading .xlsx needs the openpyxl package",
                                     f"pip install openpyxl, or save the sheet as CSV (same columns) next to it: "
                                     f"{annotations / (STEM + '.csv')}")], "cannot read spaq")
        df = pd.read_excel(sheet, engine="openpyxl")
        df.columns = [str(c).strip() for c in df.columns]
    else:
        df = read_csv(sheet)
    require_columns(df, ["Image name", "MOS"], sheet, info)
    folder = root / "TestImage" if (root / "TestImage").is_dir() else find(src, ["TestImage"], "dir")
    if folder is None:
        raise missing(info, src, "the TestImage/ folder")
    table = image_table(df, "Image name", "MOS", folder, sheet, info)
    return Scores(table, 100.0, "MOS (0-100)", root, details={"score_sheet": sheet.name})


INFO = DatasetInfo(
    name="spaq",
    title="SPAQ (Smartphone Photography Attribute and Quality)",
    layout=("  SRC/\n"
            f"    Annotations/{STEM}.xlsx   Image name, MOS (0-100), Brightness, ...\n"
            f"        (or {STEM}.csv, the same sheet saved as CSV)\n"
            "    TestImage/00001.jpg ... 11125.jpg"),
    citation=("Y. Fang, H. Zhu, Y. Zeng, K. Ma and Z. Wang, \"Perceptual Quality Assessment of "
              "Smartphone Photography,\" IEEE/CVF Conference on Computer Vision and Pattern "
              "Recognition (CVPR), 2020."),
    licence="See the terms published with the SPAQ download (not checked by this tool).",
    url="https://github.com/h4nwei/SPAQ",
    direction="MOS from 0-100 ratings (higher is better); used as is",
    default_max_side=512,
    reader=read,
)
