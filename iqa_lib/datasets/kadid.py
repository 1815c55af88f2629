"""``kadid``: KADID-10k.

Original layout: ``dmos.csv`` (``dist_img``, ``ref_img``, ``dmos``, ``var``) and ``images/``.

``group`` = the reference image, so all 125 distortions of one scene stay together. The
``dmos`` column, despite its name, is a mean degradation-category rating (5 = imperceptible,
1 = very annoying): higher is better, so it is used as MOS, not inverted (dataset.json also
records the correlation of the score with the distortion level in the file name, which is
negative when that holds). Scale 5.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .common import DatasetInfo, Scores, find, image_table, missing, read_csv, require_columns

LEVEL = re.compile(r"_(\d+)$")  # the distortion level at the end of a name: I01_07_05 -> 5


def read(src: Path, score: str | None) -> Scores:
    info = INFO
    csv_path = find(src, ["dmos.csv"])
    if csv_path is None:
        raise missing(info, src, "dmos.csv")
    folder = csv_path.parent / "images"
    if not folder.is_dir():
        folder = find(src, ["images"], "dir")
    if folder is None:
        raise missing(info, src, "the images/ folder")
    df = read_csv(csv_path)
    require_columns(df, ["dist_img", "ref_img", "dmos"], csv_path, info)
    table = image_table(df, "dist_img", "dmos", folder, csv_path, info)
    table["group"] = [Path(r).stem for r in df["ref_img"].astype(str).str.strip()]
    mos = table["mos"].to_numpy()
    details, notes = {"group": "ref_img: the pristine reference image each distorted image was made from"}, []
    # Evidence for the direction: stronger distortion (higher level in I01_07_05) should score lower.
    levels = pd.to_numeric(table["img_name"].str.extract(LEVEL)[0], errors="coerce")
    ok = levels.notna().to_numpy()
    if ok.sum() >= 3 and levels[ok].nunique() > 1:
        rho = float(pd.Series(mos[ok]).corr(levels[ok].reset_index(drop=True), method="spearman"))
        details["spearman_score_vs_distortion_level"] = round(rho, 4)
        if rho > 0:
            notes.append(f"the score RISES with the distortion level (Spearman {rho:.2f}); the original "
                         "dmos.csv falls with it. This file may not be the original: check before training")
    return Scores(table, 5.0, "dmos (a mean degradation-category rating, 1-5, higher is better)",
                  csv_path.parent, details=details, notes=notes)


INFO = DatasetInfo(
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
    reader=read,
)
