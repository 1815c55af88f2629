"""Tests for iqa_lib.datasets.prepare: tiny fabricated copies of each data set, laid out like the originals."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
from PIL import Image

from iqa_lib.data import DataError, load_table
from iqa_lib.folds import make_folds
from iqa_lib.datasets.prepare import main, prepare

CLIVE_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "clive_dev"


def _image(path: Path, size=(24, 18), seed=0, fmt=None, exif_orientation=None) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    im.save(path, format=fmt, **kwargs)


def _cell(names):
    """A MATLAB cell array of strings as scipy writes one: an object array, one string per cell."""
    arr = np.empty((len(names), 1), dtype=object)
    for i, n in enumerate(names):
        arr[i, 0] = n
    return arr


# ------------------------------------------------------------------------------------------
# fabricated originals
# ------------------------------------------------------------------------------------------
CLIVE_RATED = ["3.bmp", "5.bmp", "1000.JPG", "1001.JPG", "1002.JPG"]
CLIVE_MOS = [63.5, 41.25, 72.0, 18.75, 55.5]


def make_clive(root: Path) -> Path:
    """ChallengeDB_release with 7 practice images (t1..t7, first in the list) and 5 rated ones."""
    rel = root / "ChallengeDB_release"
    training = [f"t{i}.bmp" for i in range(1, 8)]
    for i, name in enumerate(training):
        _image(rel / "Images" / "trainingImages" / name, seed=100 + i, fmt="BMP")
    for i, name in enumerate(CLIVE_RATED):
        _image(rel / "Images" / name, seed=i, fmt="BMP" if name.endswith(".bmp") else "JPEG")
    (rel / "Data").mkdir()
    scipy.io.savemat(rel / "Data" / "AllImages_release.mat", {"AllImages_release": _cell(training + CLIVE_RATED)})
    mos = np.array([[50.0 + i for i in range(7)] + CLIVE_MOS])  # 1 x 12, as in the release
    scipy.io.savemat(rel / "Data" / "AllMOS_release.mat", {"AllMOS_release": mos})
    (rel / "README.txt").write_text("Copyright (c) 2015 The University of Texas at Austin (fabricated)\n")
    return root


def make_koniq(root: Path, folder="1024x768", n=10, score_cols=("MOS", "MOS_zscore")) -> Path:
    rng = np.random.default_rng(1)
    names = [f"{1000000 + 37 * i}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        _image(root / folder / name, size=(32, 24), seed=i, fmt="JPEG")
    mos = np.round(rng.uniform(1.2, 4.3, n), 4)
    df = pd.DataFrame({"image_name": names, **{f"c{k}": rng.integers(0, 40, n) for k in range(1, 6)},
                       "c_total": 100, "SD": 0.5})
    if "MOS" in score_cols:
        df["MOS"] = mos
    if "MOS_zscore" in score_cols:
        df["MOS_zscore"] = np.round((mos - 1) / 4 * 100, 3)
    sub = root / "koniq10k_scores_and_distributions"
    sub.mkdir(parents=True, exist_ok=True)
    df.to_csv(sub / "koniq10k_scores_and_distributions.csv", index=False)
    return root


KADID_SIZES = {"I01": 4, "I02": 3, "I03": 2, "I04": 2, "I05": 1}  # distortions per reference


def make_kadid(root: Path) -> Path:
    rows = []
    for r, (ref, k) in enumerate(KADID_SIZES.items()):
        _image(root / "images" / f"{ref}.png", size=(40, 30), seed=50 + r, fmt="PNG")
        for level in range(1, k + 1):
            name = f"{ref}_01_{level:02d}.png"
            _image(root / "images" / name, size=(40, 30), seed=10 * r + level, fmt="PNG")
            rows.append((name, f"{ref}.png", round(4.9 - 0.8 * level + 0.05 * r, 3), 0.4))
    pd.DataFrame(rows, columns=["dist_img", "ref_img", "dmos", "var"]).to_csv(root / "dmos.csv", index=False)
    return root


SPAQ_SIZES = [(640, 480), (480, 640), (600, 400), (300, 200), (640, 480), (520, 390)]


def make_spaq(root: Path, sheet="csv") -> Path:
    names = [f"{i:05d}.jpg" for i in range(1, len(SPAQ_SIZES) + 1)]
    for i, (name, size) in enumerate(zip(names, SPAQ_SIZES)):
        _image(root / "TestImage" / name, size=size, seed=i, fmt="JPEG",
               exif_orientation=6 if i == 4 else None)  # 00005: stored sideways, shown upright
    df = pd.DataFrame({"Image name": names, "MOS": [12.5, 88.0, 45.0, 67.25, 30.0, 75.5],
                       "Brightness": 50.0, "Colorfulness": 50.0, "Contrast": 50.0,
                       "Noisiness": 50.0, "Sharpness": 50.0})
    (root / "Annotations").mkdir(parents=True)
    path = root / "Annotations" / "MOS and Image attribute scores"
    if sheet == "csv":
        df.to_csv(path.with_suffix(".csv"), index=False)
    else:
        df.to_excel(path.with_suffix(".xlsx"), index=False)
    return root


def _meta(dest: Path) -> dict:
    return json.loads((dest / "dataset.json").read_text())


# ------------------------------------------------------------------------------------------
# CLIVE
# ------------------------------------------------------------------------------------------
def test_clive_drops_practice_images_and_loads(tmp_path):
    src = make_clive(tmp_path / "src")
    dest = prepare("clive", src, tmp_path / "out", progress=False)
    table = load_table(dest, mos_scale=100, progress=False)
    assert table["img_name"].tolist() == ["clive_3", "clive_5", "clive_1000", "clive_1001", "clive_1002"]
    assert table["img_path"].tolist() == ["./train/clive_3.bmp", "./train/clive_5.bmp", "./train/clive_1000.jpg",
                                          "./train/clive_1001.jpg", "./train/clive_1002.jpg"]
    assert table["mos"].tolist() == CLIVE_MOS
    assert (table["comments"] == "").all()
    assert list(pd.read_csv(dest / "train.csv").columns) == ["img_name", "img_path", "mos", "comments"]
    # Copies are byte-identical; nothing else is written.
    orig = src / "ChallengeDB_release" / "Images" / "1000.JPG"
    assert (dest / "train" / "clive_1000.jpg").read_bytes() == orig.read_bytes()
    assert not (dest / "test.csv").exists() and not (dest / "test").exists()

    meta = _meta(dest)
    assert meta["dataset"] == "clive" and meta["mos_scale"] == 100
    assert meta["mos_direction"] == "higher is better" and meta["inverted"] is False
    assert meta["counts"] == {"source_images": 12, "dropped": 7, "images": 5, "train": 5, "test": 0}
    assert [d["name"] for d in meta["details"]["dropped"]] == [f"t{i}.bmp" for i in range(1, 8)]
    assert meta["details"]["dropped"][0]["mos"] == 50.0  # their scores are in the file; recorded, not used
    assert "Ghadiyaram" in meta["citation"] and "University of Texas" in meta["licence"]
    assert meta["command"].startswith("python -m iqa_lib.datasets.prepare clive ")
    assert meta["source_docs"] == ["README.txt"] and (dest / "README.txt").is_file()


def test_clive_missing_mat_names_file_and_layout(tmp_path):
    src = make_clive(tmp_path / "src")
    (src / "ChallengeDB_release" / "Data" / "AllMOS_release.mat").unlink()
    with pytest.raises(DataError) as err:
        prepare("clive", src, tmp_path / "out", progress=False)
    msg = str(err.value)
    assert "AllMOS_release.mat" in msg and "not found" in msg
    assert "Images/trainingImages/t1.bmp" in msg  # the expected layout is shown
    assert not (tmp_path / "out").exists()  # nothing written when the source is incomplete


def test_clive_wrong_variable_and_missing_image(tmp_path):
    src = make_clive(tmp_path / "src")
    data = src / "ChallengeDB_release" / "Data"
    scipy.io.savemat(data / "AllMOS_release.mat", {"mos": np.zeros((1, 12))})
    with pytest.raises(DataError, match=r"no variable 'AllMOS_release' \(variables: \['mos'\]\)"):
        prepare("clive", src, tmp_path / "out", progress=False)
    make_clive(tmp_path / "src2")
    (tmp_path / "src2" / "ChallengeDB_release" / "Images" / "1001.JPG").unlink()
    with pytest.raises(DataError, match=r"1001\.JPG"):
        prepare("clive", tmp_path / "src2", tmp_path / "out", progress=False)


# ------------------------------------------------------------------------------------------
# KonIQ-10k
# ------------------------------------------------------------------------------------------
def test_koniq_mos_and_holdout(tmp_path):
    src = make_koniq(tmp_path / "src")
    dest = prepare("koniq", src, tmp_path / "out", holdout=0.2, seed=3, progress=False)
    meta = _meta(dest)
    assert meta["mos_scale"] == 5 and meta["score_column"].startswith("MOS ")
    train = load_table(dest, mos_scale=5, progress=False)
    test = load_table(dest, "test.csv", labelled=False, mos_scale=5, progress=False)
    assert (len(train), len(test)) == (8, 2)
    assert not set(train["img_name"]) & set(test["img_name"])
    assert list(pd.read_csv(dest / "test.csv").columns) == ["img_name", "img_path"]
    assert test["img_path"].str.startswith("./test/").all()
    labels = pd.read_csv(dest / "test_labels.csv", dtype={"img_name": str})
    source = pd.read_csv(src / "koniq10k_scores_and_distributions" / "koniq10k_scores_and_distributions.csv")
    truth = dict(zip(source["image_name"].str[:-4], source["MOS"]))
    assert labels["img_name"].tolist() == test["img_name"].tolist()
    assert labels["mos"].tolist() == [truth[n] for n in labels["img_name"]]
    sub = pd.read_csv(dest / "sample_submission.csv", dtype={"img_name": str})
    assert list(sub.columns) == ["img_name", "mos", "comments"] and sub["img_name"].tolist() == labels["img_name"].tolist()
    assert meta["counts"]["train"] == 8 and meta["counts"]["test"] == 2 and meta["holdout"] == 0.2

    # Same seed, same split; another seed, another split.
    again = prepare("koniq", src, tmp_path / "out2", holdout=0.2, seed=3, progress=False)
    assert pd.read_csv(again / "test.csv")["img_name"].tolist() == pd.read_csv(dest / "test.csv")["img_name"].tolist()
    splits = {tuple(sorted(pd.read_csv(prepare("koniq", src, tmp_path / f"s{s}", holdout=0.2, seed=s,
                                               progress=False) / "test.csv")["img_name"])) for s in range(4)}
    assert len(splits) > 1


def test_koniq_half_size_zscore_and_missing_column(tmp_path):
    src = make_koniq(tmp_path / "src", folder="512x384", score_cols=("MOS_zscore",))
    dest = prepare("koniq", src, tmp_path / "out", progress=False)
    meta = _meta(dest)
    assert meta["mos_scale"] == 100 and meta["score_column"].startswith("MOS_zscore")
    assert meta["details"]["image_folder"] == "512x384" and meta["notes"]
    assert len(load_table(dest, mos_scale=100, progress=False)) == 10

    csv = src / "koniq10k_scores_and_distributions" / "koniq10k_scores_and_distributions.csv"
    pd.read_csv(csv).rename(columns={"image_name": "name"}).to_csv(csv, index=False)
    with pytest.raises(DataError) as err:
        prepare("koniq", src, tmp_path / "out2", progress=False)
    assert "no column 'image_name'" in str(err.value) and "1024x768/" in str(err.value)


# ------------------------------------------------------------------------------------------
# KADID-10k
# ------------------------------------------------------------------------------------------
def test_kadid_groups_and_group_aware_holdout(tmp_path):
    src = make_kadid(tmp_path / "src")
    dest = prepare("kadid", src, tmp_path / "out", progress=False)
    table = load_table(dest, mos_scale=5, progress=False)
    assert len(table) == 12 and list(pd.read_csv(dest / "train.csv").columns) == [
        "img_name", "img_path", "mos", "comments", "group"]
    assert table.set_index("img_name").loc["I01_01_03", "group"] == "I01"
    assert table["img_path"].str.endswith(".png").all()
    meta = _meta(dest)
    assert meta["mos_scale"] == 5 and meta["inverted"] is False and meta["group_column"] == "group"
    assert "higher is better" in meta["direction_note"]
    assert meta["details"]["spearman_score_vs_distortion_level"] < 0  # stronger distortion, lower score
    folds = make_folds(table, n_folds=2, group_col="group")
    assert folds.groupby("group")["fold"].nunique().max() == 1

    for seed in range(4):
        out = prepare("kadid", src, tmp_path / f"h{seed}", holdout=0.2, seed=seed, progress=False)
        train = pd.read_csv(out / "train.csv")
        labels = pd.read_csv(out / "test_labels.csv")
        assert not set(train["group"]) & set(labels["group"])  # no scene on both sides
        assert set(train["img_name"]) | set(labels["img_name"]) == set(table["img_name"])
        assert 1 <= len(labels) <= 4  # whole groups, as near 0.2 * 12 as they allow
        assert _meta(out)["counts"]["test_groups"] == labels["group"].nunique()
        load_table(out, "test.csv", labelled=False, mos_scale=5, progress=False)


def test_kadid_shrink_keeps_png_and_link_mode(tmp_path):
    src = make_kadid(tmp_path / "src")
    dest = prepare("kadid", src, tmp_path / "small", max_side=20, progress=False)
    with Image.open(dest / "train" / "I01_01_01.png") as im:
        assert (im.format, im.size) == ("PNG", (20, 15))
    assert _meta(dest)["images_written"] == {"shrunk": 12}

    linked = prepare("kadid", src, tmp_path / "linked", mode="link", progress=False)
    a, b = linked / "train" / "I02_01_01.png", src / "images" / "I02_01_01.png"
    assert os.stat(a).st_ino == os.stat(b).st_ino
    meta = _meta(linked)
    assert meta["mode"] == "link" and meta["images_written"] == {"linked": 12} and "--link" in meta["command"]


# ------------------------------------------------------------------------------------------
# SPAQ
# ------------------------------------------------------------------------------------------
def test_spaq_csv_export_shrinks_to_512(tmp_path):
    src = make_spaq(tmp_path / "src")
    dest = prepare("spaq", src, tmp_path / "out", progress=False)
    table = load_table(dest, mos_scale=100, progress=False)
    assert table["img_name"].tolist() == [f"{i:05d}" for i in range(1, 7)]
    sizes = {}
    for name in table["img_name"]:
        with Image.open(dest / "train" / f"{name}.jpg") as im:
            assert im.format == "JPEG"
            sizes[name] = im.size
    assert sizes == {"00001": (512, 384), "00002": (384, 512), "00003": (512, 341), "00004": (300, 200),
                     "00005": (384, 512),  # EXIF orientation 6 applied: stored 640x480, upright 480x640
                     "00006": (512, 384)}
    assert (dest / "train" / "00004.jpg").read_bytes() == (src / "TestImage" / "00004.jpg").read_bytes()
    meta = _meta(dest)
    assert meta["max_side"] == 512 and meta["images_written"] == {"shrunk": 5, "copied": 1}
    assert meta["mos_scale"] == 100

    full = prepare("spaq", src, tmp_path / "full", max_side=0, progress=False)
    with Image.open(full / "train" / "00001.jpg") as im:
        assert im.size == (640, 480)


def test_spaq_xlsx(tmp_path):
    pytest.importorskip("openpyxl")
    src = make_spaq(tmp_path / "src", sheet="xlsx")
    dest = prepare("spaq", src, tmp_path / "out", max_side=64, progress=False)
    table = load_table(dest, mos_scale=100, progress=False)
    assert table["img_name"].tolist() == [f"{i:05d}" for i in range(1, 7)]
    assert table["mos"].tolist() == [12.5, 88.0, 45.0, 67.25, 30.0, 75.5]  # the sheet's, row by row


def test_spaq_xlsx_without_openpyxl(tmp_path, monkeypatch):
    from iqa_lib.datasets import spaq

    src = make_spaq(tmp_path / "src")
    csv = src / "Annotations" / "MOS and Image attribute scores.csv"
    csv.rename(csv.with_suffix(".xlsx"))  # only its presence matters here
    monkeypatch.setattr(spaq, "_openpyxl_available", lambda: False)
    with pytest.raises(DataError) as err:
        prepare("spaq", src, tmp_path / "out", progress=False)
    assert "pip install openpyxl" in str(err.value) and "MOS and Image attribute scores.csv" in str(err.value)


def test_spaq_missing_column(tmp_path):
    src = make_spaq(tmp_path / "src")
    csv = src / "Annotations" / "MOS and Image attribute scores.csv"
    pd.read_csv(csv).drop(columns="MOS").to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"no column 'MOS'"):
        prepare("spaq", src, tmp_path / "out", progress=False)


# ------------------------------------------------------------------------------------------
# DEST handling, arguments, command line
# ------------------------------------------------------------------------------------------
def test_non_empty_dest_needs_overwrite(tmp_path):
    src = make_kadid(tmp_path / "src")
    dest = prepare("kadid", src, tmp_path / "out", holdout=0.3, progress=False)
    (dest / "my_notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty.*--overwrite"):
        prepare("kadid", src, dest, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty.*--overwrite"):
        prepare("koniq", make_koniq(tmp_path / "ksrc"), other, progress=False)

    prepare("kadid", src, dest, overwrite=True, progress=False)  # now without a holdout
    assert not (dest / "test.csv").exists() and not (dest / "test_labels.csv").exists()
    assert not (dest / "test").exists()
    assert (dest / "my_notes.txt").read_text() == "keep me"
    assert len(list((dest / "train").iterdir())) == 12


def test_bad_arguments(tmp_path):
    src = make_kadid(tmp_path / "src")
    with pytest.raises(ValueError, match="unknown data set 'tid'"):
        prepare("tid", src, tmp_path / "o")
    with pytest.raises(ValueError, match="holdout"):
        prepare("kadid", src, tmp_path / "o", holdout=1.5)
    with pytest.raises(ValueError, match="mode"):
        prepare("kadid", src, tmp_path / "o", mode="symlink")
    with pytest.raises(ValueError, match="max_side"):
        prepare("kadid", src, tmp_path / "o", max_side=-1)
    with pytest.raises(ValueError, match="score="):
        prepare("kadid", src, tmp_path / "o", score="MOS")
    with pytest.raises(DataError, match="dmos.csv"):
        prepare("kadid", tmp_path / "src" / "images", tmp_path / "o")
    with pytest.raises(DataError, match="not a folder"):
        prepare("kadid", tmp_path / "nowhere", tmp_path / "o")


def test_cli(tmp_path, capsys):
    src = make_koniq(tmp_path / "src")
    dest = tmp_path / "out"
    assert main(["koniq", str(src), str(dest), "--holdout", "0.3", "--seed", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "7 train + 3 test" in out and "mos_scale 5" in out
    meta = _meta(dest)
    assert "--holdout 0.3 --seed 1" in meta["command"] and meta["seed"] == 1
    assert main(["koniq", str(src), str(dest), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["koniq", str(src), str(dest), "--quiet", "--overwrite", "--link"]) == 0
    assert _meta(dest)["mode"] == "link"


@pytest.mark.skipif(not (CLIVE_DEV / "train.csv").exists(), reason="CLIVE dev data not present")
def test_clive_dev_is_in_the_kits_layout():
    table = load_table(CLIVE_DEV, mos_scale=100, progress=False)
    assert len(table) == table["img_name"].nunique() == 627
    # The names the clive converter gives (clive_<original stem>), so predictions line up.
    assert table["img_name"].str.fullmatch(r"clive_\d+").all()
    assert (table["img_path"] == "./train/" + table["img_name"] + ".jpg").all()
    assert table["mos"].between(0, 100).all()


def test_kit_layout_is_resplit_with_a_holdout(tmp_path):
    # An earlier conversion (with dataset.json and groups) re-split into train + held-out test.
    first = prepare("kadid", make_kadid(tmp_path / "src"), tmp_path / "kadid", progress=False)
    (first / "LICENSE.txt").write_text("kadid licence\n")
    out = prepare("kit", first, tmp_path / "split", holdout=0.25, seed=1, progress=False)
    meta = _meta(out)
    assert meta["dataset"] == "kit" and meta["mos_scale"] == 5 and meta["group_column"] == "group"
    train, labels = pd.read_csv(out / "train.csv"), pd.read_csv(out / "test_labels.csv")
    assert len(train) + len(labels) == 12 and len(labels) > 0
    assert not set(train["group"]) & set(labels["group"])
    original = pd.read_csv(first / "train.csv").set_index("img_name")["mos"]
    assert np.allclose(labels.set_index("img_name")["mos"], original.loc[labels["img_name"]])
    assert (out / "LICENSE.txt").read_text() == "kadid licence\n"  # the source's licence travels
    assert "--mos-scale" not in meta["command"]


def test_kit_layout_without_dataset_json_needs_the_scale(tmp_path):
    src = tmp_path / "plain"
    (src / "train").mkdir(parents=True)
    for i in range(6):
        _image(src / "train" / f"a{i}.png", seed=i, fmt="PNG")
    pd.DataFrame({"img_name": [f"a{i}" for i in range(6)], "img_path": [f"./train/a{i}.png" for i in range(6)],
                  "mos": [10.0, 55, 20, 90, 40, 70]}).to_csv(src / "train.csv", index=False)
    with pytest.raises(DataError, match=r"(?s)MOS scale unknown.*pass --mos-scale"):
        prepare("kit", src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # nothing written on failure
    with pytest.raises(ValueError, match="for the 'kit' source only"):
        prepare("clive", src, tmp_path / "out", mos_scale=100, progress=False)
    assert main(["kit", str(src), str(tmp_path / "out"), "--holdout", "0.5", "--mos-scale", "100", "--quiet"]) == 0
    meta = _meta(tmp_path / "out")
    assert meta["mos_scale"] == 100 and meta["counts"] == {"source_images": 6, "dropped": 0, "images": 6,
                                                          "train": 3, "test": 3}
    assert "--mos-scale 100" in meta["command"]
    load_table(tmp_path / "out", "test.csv", labelled=False, mos_scale=100, progress=False)


@pytest.mark.skipif(not (CLIVE_DEV / "train.csv").exists(), reason="CLIVE dev data not present")
def test_clive_dev_resplits_into_train_and_holdout(tmp_path):
    out = prepare("kit", CLIVE_DEV, tmp_path / "clive", holdout=0.2, mode="link", mos_scale=100, progress=False)
    assert _meta(out)["counts"]["train"] == 502 and _meta(out)["counts"]["test"] == 125
    assert (out / "LICENSE-LIVE.txt").is_file()
