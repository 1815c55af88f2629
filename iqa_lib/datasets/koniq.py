"""``koniq``: KonIQ-10k.

Original layout: ``koniq10k_scores_and_distributions.csv`` (``image_name``, ``MOS`` on 1-5,
``SD``, ``c1``..``c5``, ``MOS_zscore`` on 0-100) and ``1024x768/`` (else ``512x384/``).

``MOS`` (scale 5) by default; ``score="MOS_zscore"`` uses that column (scale 100).
"""
from __future__ import annotations

from pathlib import Path

from .common import DatasetInfo, Scores, find, image_table, missing, read_csv, require_columns

SCORES_CSV = "koniq10k_scores_and_distributions.csv"
FOLDERS = ("1024x768", "512x384")
SCORES = {"MOS": 5.0, "MOS_zscore": 100.0}  # the score columns to choose from, and their scales


def read(src: Path, score: str | None) -> Scores:
    info = INFO
    csv_path = find(src, [SCORES_CSV])
    if csv_path is None:
        raise missing(info, src, SCORES_CSV)
    df = read_csv(csv_path)
    if score is None:
        score = "MOS" if "MOS" in df.columns or "MOS_zscore" not in df.columns else "MOS_zscore"
    require_columns(df, ["image_name", score], csv_path, info)
    folder = None
    for name in FOLDERS:  # the full-size release first
        folder = find(csv_path.parent, [name], "dir") or find(src, [name], "dir")
        if folder is not None:
            break
    if folder is None:
        raise missing(info, src, "an image folder named 1024x768/ or 512x384/")
    table = image_table(df, "image_name", score, folder, csv_path, info)
    scale = SCORES[score]
    what = "MOS, 1-5" if score == "MOS" else "MOS_zscore: z-scored MOS rescaled to 0-100"
    notes = [] if folder.name == "1024x768" else ["1024x768/ not found: used the half-size 512x384/ images"]
    return Scores(table, scale, f"{score} ({what})", csv_path.parent,
                  details={"image_folder": folder.name}, notes=notes)


INFO = DatasetInfo(
    name="koniq",
    title="KonIQ-10k",
    layout=("  SRC/\n"
            f"    {SCORES_CSV}   image_name, c1..c5, c_total, MOS (1-5), SD, MOS_zscore\n"
            "    1024x768/<image_name>   (or the half-size 512x384/)"),
    citation=("V. Hosu, H. Lin, T. Sziranyi and D. Saupe, \"KonIQ-10k: An Ecologically Valid Database "
              "for Deep Learning of Blind Image Quality Assessment,\" IEEE Transactions on Image "
              "Processing, 29:4041-4056, 2020."),
    licence=("Images are from YFCC100M (Flickr) under their Creative Commons licences; see the terms "
             "published with the KonIQ-10k download (not checked by this tool)."),
    url="http://database.mmsp-kn.de/koniq-10k-database.html",
    direction="MOS: mean of 5-point absolute category ratings (5 = excellent), higher is better; used as is",
    default_max_side=None,
    reader=read,
)
