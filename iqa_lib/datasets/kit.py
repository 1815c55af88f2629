"""``kit``: a folder already in the kit's layout (``train.csv``, ``train/``).

Such as the shared ``clive_dev`` subset or an earlier conversion: re-split with ``--holdout``
(its ``test.csv``, if any, is left out: its images have no MOS). The MOS scale comes from its
``dataset.json`` when there is one, else from ``--mos-scale``. A ``group`` column is kept.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..data import DataError, Problem, load_table
from .common import DatasetInfo, Scores, find, missing


def read(src: Path, score: str | None, mos_scale: float | None = None) -> Scores:
    info = INFO
    csv = find(src, ["train.csv"])
    if csv is None:
        raise missing(info, src, "train.csv")
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


INFO = DatasetInfo(
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
    reader=read,
)
