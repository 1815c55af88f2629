"""``clive``: the LIVE In the Wild Image Quality Challenge Database (``ChallengeDB_release``).

Original layout: ``Data/AllImages_release.mat`` (cell array ``AllImages_release``, 1169 file
names), ``Data/AllMOS_release.mat`` (``AllMOS_release``, 1169 MOS on 0-100, same order),
``Images/<name>`` (``.bmp`` and ``.JPG``), ``Images/trainingImages/t1.bmp`` ... ``t7.bmp``.

The 7 images the raters practised on (``t1`` ... ``t7``: the first 7 entries) have MOS in the
file but are not part of the benchmark: dropped, and listed in dataset.json. Images are named
``clive_<stem>`` (as in the shared ``clive_dev`` subset). Scale 0-100.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import DataError, Problem
from .common import DatasetInfo, Scores, find, missing, resolve_images

TRAINING = re.compile(r"^t\d+\.[a-z]+$", re.IGNORECASE)
N_TRAINING = 7


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


def read(src: Path, score: str | None) -> Scores:
    info = INFO
    names_mat = find(src, ["Data/AllImages_release.mat"])
    if names_mat is None:
        raise missing(info, src, "Data/AllImages_release.mat")
    root = names_mat.parent.parent
    mos_mat = root / "Data" / "AllMOS_release.mat"
    if not mos_mat.is_file():
        raise missing(info, src, f"{mos_mat.relative_to(root.parent)} (next to AllImages_release.mat)")
    images_dir = root / "Images"
    if not images_dir.is_dir():
        raise missing(info, src, f"the Images/ folder next to {names_mat.parent.name}/")

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
                if TRAINING.match(b) or "trainingimages" in n.lower()]
    notes = []
    if not training and len(names) == 1169:
        training = list(range(N_TRAINING))
        notes.append("no t<k> names found; dropped the first 7 entries, the practice images of the release")
    dropped = [{"name": names[i], "mos": float(mos[i])} for i in training]
    keep = [i for i in range(len(names)) if i not in set(training)]
    if len(training) != N_TRAINING:
        notes.append(f"{len(training)} practice image(s) dropped; the original release has {N_TRAINING}")

    rel = [names[i].replace("\\", "/") for i in keep]
    paths = resolve_images(rel, images_dir, info, names_mat.name)
    table = pd.DataFrame({"img_name": [f"clive_{Path(r).stem}" for r in rel],
                          "source": [str(p) for p in paths], "mos": mos[keep]})
    return Scores(table, 100.0, "AllMOS_release (MOS, 0-100)", root,
                  details={"dropped": dropped, "dropped_reason": "practice images shown to raters before the "
                           "study (Images/trainingImages/t1..t7), not part of the benchmark"},
                  notes=notes)


INFO = DatasetInfo(
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
    reader=read,
)
