"""`python -m iqa_lib.score`: score image files and folders with a checkpoint or a trained ensemble.

The checkpoints are untrained tiny MANIQAs (the demo profile's narrow ViT) saved in the kit's
format, their score head shifted so that every run gives distinct, image-dependent scores.
"""
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from iqa_lib import data as D
from iqa_lib import score as S
from iqa_lib.checkpoint import KIT_FORMAT, atomic_torch_save
from iqa_lib.ensemble import iqr_mean, plain_mean
from iqa_lib.infer import load_model, predict, predict_indices
from iqa_lib.model import MANIQA, MANIQAConfig

TINY = dict(img_size=64, embed_dim=64, head_hidden=32, vit_kwargs=dict(embed_dim=64, depth=10, num_heads=2))
GOOD = ["a1.jpg", "a2.png", "a10.JPG", "b.bmp", "c.webp"]  # natural order: a1, a2, a10, b, c
BAD = {"notes.jpg": "not an image", "truncated.jpg": "truncated", "empty.png": "empty"}


def make_checkpoint(path: Path, seed: int, bias: float, view: dict | None, mos_scale: float = 10.0) -> Path:
    """A kit checkpoint (as train.save_best writes) of a random tiny MANIQA scoring about `bias`."""
    torch.manual_seed(seed)
    mcfg = MANIQAConfig(**TINY)
    model = MANIQA(mcfg, pretrained=False)
    with torch.no_grad():  # a live, image-dependent score instead of a near-zero ReLU output
        model.fc_score[3].bias.fill_(bias)
    ckpt = {"format": KIT_FORMAT, "model": model.state_dict(), "model_config": mcfg.to_dict(), "variant": "64",
            "fold": 0, "mos_scale": mos_scale, "epoch": 1, "metrics": {}, "flip": "vertical"}
    if view is not None:
        ckpt["input"] = view
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """whole: whole images at 64 px; crops: stored at 96 px, 2x2 grid of 64 crops; old: no `input`
    key (whole images at the model's 64 px); outlier: scores far above the others (clipped at 10);
    clive: a 0-100 MOS scale."""
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "whole": make_checkpoint(root / "whole.ckpt", 1, 0.30, {"load_size": 64, "crop_grid": 1}),
        "crops": make_checkpoint(root / "crops.ckpt", 2, 0.34, {"load_size": 96, "crop_grid": 2}),
        "old": make_checkpoint(root / "old.ckpt", 3, 0.38, None),
        "outlier": make_checkpoint(root / "outlier.ckpt", 4, 0.95, {"load_size": 64, "crop_grid": 1}),
        "clive": make_checkpoint(root / "clive.ckpt", 5, 0.30, {"load_size": 64, "crop_grid": 1}, mos_scale=100.0),
    }


def make_images(folder: Path, bad: bool = True) -> Path:
    """GOOD images of several sizes and formats; with `bad`, BAD files and a readme.txt too."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k, name in enumerate(GOOD):
        h, w = 60 + 17 * k, 90 - 9 * k
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        img = 128 + 100 * np.sin(xx * (3 + 4 * k) + yy * (2 + k))[..., None] * rng.uniform(0.3, 1, 3)
        img = np.clip(img * (0.3 + 0.15 * k) + rng.normal(0, 3 + 8 * k, img.shape), 0, 255).astype(np.uint8)
        fmt = {".jpg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP"}[Path(name).suffix.lower()]
        Image.fromarray(img).save(folder / name, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    if bad:
        (folder / "notes.jpg").write_text("this is not an image\n")
        noise = np.random.default_rng(1).integers(0, 255, (200, 200, 3), dtype=np.uint8)
        Image.fromarray(noise).save(folder / "full.tmp.jpg", format="JPEG")
        blob = (folder / "full.tmp.jpg").read_bytes()
        (folder / "full.tmp.jpg").unlink()
        (folder / "truncated.jpg").write_bytes(blob[: len(blob) // 2])
        (folder / "empty.png").write_bytes(b"")
        (folder / "readme.txt").write_text("not searched: no image extension\n")
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Shared, read-only: tests that need other files make their own folder."""
    return make_images(tmp_path_factory.mktemp("photos"))


def expected_scores(ckpt: Path, paths: list[Path], batch_size: int = 32, tta: bool = False) -> np.ndarray:
    """The kit's own prediction path for these files: ImageStore -> IQADataset -> predict_indices."""
    model, c = load_model(ckpt)
    view = c.get("input") or {"load_size": model.cfg.img_size, "crop_grid": 1}
    store = D.ImageStore.open([str(p) for p in paths], int(view["load_size"]), progress=False)
    p = predict_indices(model, D.IQADataset(store), np.arange(len(paths)), torch.device("cpu"), None,
                        batch_size=batch_size, tta=tta, crop=model.cfg.img_size, crop_grid=int(view["crop_grid"]))
    scale = float(c["mos_scale"])
    return np.clip(p * scale, 0, scale)


@pytest.fixture(scope="module")
def singles(photos, ckpts):
    """Each checkpoint's scores of the good images of `photos`, scored alone."""
    return {k: S.score_images([photos], [ckpts[k]], device="cpu").scores["mos"].to_numpy()
            for k in ("whole", "crops", "old", "outlier")}


# --------------------------------------------------------------------------------------------
# one checkpoint, a folder with bad files
# --------------------------------------------------------------------------------------------
def test_folder_with_one_checkpoint_scores_good_files_and_lists_bad_ones(photos, ckpts, tmp_path, capsys):
    out = tmp_path / "out.csv"
    rc = S.main([str(photos), "--checkpoint", str(ckpts["whole"]), "--csv", str(out), "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    table = pd.read_csv(out)
    assert list(table.columns) == ["path", "mos", "runs"]
    assert table["path"].tolist() == [str(photos / n) for n in GOOD]  # stable, natural order
    want = expected_scores(ckpts["whole"], [photos / n for n in GOOD])
    np.testing.assert_allclose(table["mos"].to_numpy(), want, rtol=0, atol=1e-6)
    assert np.ptp(want) > 0.05  # image-dependent scores: a mixed-up order would show
    assert (table["runs"] == 1).all()
    reasons = {"notes.jpg": "cannot identify image file", "truncated.jpg": "truncated", "empty.png": "empty file (0 bytes)"}
    assert set(reasons) == set(BAD)
    for name, reason in reasons.items():  # each bad file reported by name with its own reason
        line = next(ln for ln in cap.err.splitlines() if ln.startswith(f"skipped {photos / name}:"))
        assert reason in line, line
    assert "readme.txt" not in cap.err + cap.out  # no image extension: not searched
    for name in GOOD:  # the printed table
        assert str(photos / name) in cap.out
    assert f"wrote {out}" in cap.err


@pytest.mark.parametrize("which,tta", [("whole", False), ("crops", False), ("old", False), ("crops", True),
                                      ("outlier", False)])
def test_each_checkpoint_is_applied_as_infer_predict_applies_it(photos, ckpts, which, tta):
    """Own input view (whole, crop grid, or none recorded), own MOS scale, clipping (the outlier
    predicts above 10), flip TTA."""
    pd.DataFrame({"img_name": [Path(n).stem for n in GOOD], "img_path": GOOD}).to_csv(photos / "test.csv", index=False)
    want = predict(ckpts[which], photos, device="cpu", tta=tta, progress=False)["mos"].to_numpy()
    got = S.score_images([photos / n for n in GOOD], ckpts[which], device="cpu", tta=tta).scores
    np.testing.assert_allclose(got["mos"].to_numpy(), want, rtol=0, atol=1e-6)
    if which == "outlier":  # the clip is reached, so both paths really clip
        assert want.max() == 10.0 and got["mos"].max() == 10.0


def test_load_model_gives_checkpoints_without_the_records_their_old_meaning(ckpts):
    """Written before checkpoints recorded how the run saw images and ran on a CPU: whole images at
    the model's side, fp32. Recorded values are kept as they are."""
    _, old = load_model(ckpts["old"])
    assert old["input"] == {"load_size": 64, "crop_grid": 1} and old["cpu_bf16"] is False
    _, crops = load_model(ckpts["crops"])
    assert crops["input"] == {"load_size": 96, "crop_grid": 2}


# --------------------------------------------------------------------------------------------
# ensembles
# --------------------------------------------------------------------------------------------
def test_ensemble_of_two_input_sizes_is_the_iqr_mean_and_decodes_once_per_size(photos, ckpts, singles, monkeypatch):
    names = ["whole", "crops", "old"]  # input sizes 64, 96, 64
    runs = [ckpts[k] for k in names]
    alone = np.stack([singles[k] for k in names], axis=1)
    assert not np.allclose(alone[:, 0], alone[:, 1])  # the runs really differ

    calls = Counter()
    real = D.load_resized
    monkeypatch.setattr(D, "load_resized", lambda path, size, **kw: (calls.update([(Path(path).name, size)]),
                                                                    real(path, size, **kw))[1])
    result = S.score_images([photos], runs, device="cpu")
    np.testing.assert_allclose(result.scores["mos"].to_numpy(), iqr_mean(alone), rtol=0, atol=1e-6)
    assert (result.scores["runs"] == 3).all()
    # every good image decoded once at 64 and once at 96; a bad one once, never retried
    assert calls == Counter({**{(n, s): 1 for n in GOOD for s in (64, 96)}, **{(n, 64): 1 for n in BAD}})
    assert sorted(Path(s.path).name for s in result.skipped) == sorted(BAD)


def test_outputs_folder_ensemble_drops_an_outlier_run_as_the_submission_does(photos, ckpts, singles, tmp_path,
                                                                              capsys):
    out = tmp_path / "outputs"
    names = {"whole": "64_fold0", "crops": "64_fold1", "old": "64_fold2", "outlier": "64_fold3"}
    for key, name in names.items():
        (out / "runs" / name).mkdir(parents=True)
        (out / "runs" / name / f"{name}.ckpt").write_bytes(ckpts[key].read_bytes())
    alone = np.stack([singles[k] for k in names], axis=1)
    assert not np.allclose(iqr_mean(alone), plain_mean(alone))  # the outlier is dropped somewhere

    csv = tmp_path / "s.csv"
    rc = S.main([str(photos), "--outputs", str(out), "--csv", str(csv), "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    table = pd.read_csv(csv)
    np.testing.assert_allclose(table["mos"].to_numpy(), iqr_mean(alone), rtol=0, atol=1e-6)
    assert (table["runs"] == 4).all()
    assert cap.out.splitlines()[0].split() == ["path", "mos", "runs"]  # an ensemble shows its runs
    assert "4 checkpoints (IQR mean)" in cap.err


def test_profile_takes_only_its_runs_and_outputs_takes_every_run(ckpts, tmp_path, photos, capsys, monkeypatch):
    out = tmp_path / "outputs"
    for key, name in {"whole": "64_fold0", "crops": "192_fold4", "old": "mine"}.items():
        (out / "runs" / name).mkdir(parents=True)
        (out / "runs" / name / f"{name}.ckpt").write_bytes(ckpts[key].read_bytes())
    (out / "runs" / "64_fold1").mkdir()  # a run that has not finished: no checkpoint

    found, missing = S.find_checkpoints(out, "demo")  # demo: 64 / 128 / 192 px x 5 folds
    assert [p.parent.name for p in found] == ["64_fold0", "192_fold4"]
    assert len(missing) == 13 and out / "runs/64_fold1/64_fold1.ckpt" in missing
    found, missing = S.find_checkpoints(out)
    assert [p.name for p in found] == ["64_fold0.ckpt", "192_fold4.ckpt", "mine.ckpt"] and missing == []
    # a relative out_dir absent from the current folder is taken from the repository root, as load_config does
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setattr(S, "resolve_path", lambda p: tmp_path / p)
    assert S.find_checkpoints("outputs", "demo")[0] == [out / "runs/64_fold0/64_fold0.ckpt",
                                                         out / "runs/192_fold4/192_fold4.ckpt"]

    rc = S.main([str(photos / GOOD[0]), "--profile", "demo", "--outputs", str(out), "--csv",
                 str(tmp_path / "p.csv"), "--device", "cpu", "-q"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "13 of 15 runs have no checkpoint yet" in cap.err
    assert pd.read_csv(tmp_path / "p.csv")["runs"].tolist() == [2]


def test_checkpoints_on_different_mos_scales_are_refused(photos, ckpts, tmp_path, capsys):
    with pytest.raises(ValueError, match="MOS scale"):
        S.score_images([photos], [ckpts["whole"], ckpts["clive"]], device="cpu")
    rc = S.main([str(photos), "--checkpoint", str(ckpts["whole"]), "--checkpoint", str(ckpts["clive"]),
                 "--csv", str(tmp_path / "x.csv"), "--device", "cpu"])
    assert rc == 2 and "MOS scale" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


# --------------------------------------------------------------------------------------------
# finding files
# --------------------------------------------------------------------------------------------
def test_folders_are_searched_in_a_stable_order_recursive_on_request(tmp_path):
    top = make_images(tmp_path / "top", bad=False)
    make_images(top / "sub", bad=False)
    (top / ".hidden.jpg").write_bytes((top / "a1.jpg").read_bytes())
    files, skipped = S.find_images([top])
    assert files == [str(top / n) for n in GOOD] and skipped == []
    files, _ = S.find_images([top], recursive=True)
    assert files == [str(top / n) for n in GOOD] + [str(top / "sub" / n) for n in GOOD]
    # explicit files first, in argument order; a file reached twice is scored once; missing reported
    files, skipped = S.find_images([top / "b.bmp", tmp_path / "nope.jpg", top])
    assert files[0] == str(top / "b.bmp") and len(files) == len(GOOD) and files.count(str(top / "b.bmp")) == 1
    assert skipped == [S.Skipped(str(tmp_path / "nope.jpg"), "not found")]
    (tmp_path / "empty_dir").mkdir()
    _, skipped = S.find_images([tmp_path / "empty_dir"])
    assert len(skipped) == 1 and "no image files" in skipped[0].reason


def test_image_above_pillows_limit_is_skipped_with_the_fix(photos, ckpts, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # every test image is > 2x this: an error
    result = S.score_images([photos / GOOD[0], photos / GOOD[1]], ckpts["whole"], device="cpu")
    assert result.scores.empty
    assert [Path(s.path).name for s in result.skipped] == GOOD[:2]
    assert all("size limit" in s.reason and "MAX_IMAGE_PIXELS" in s.reason for s in result.skipped)


# --------------------------------------------------------------------------------------------
# failures: clear messages, nothing lost
# --------------------------------------------------------------------------------------------
def test_no_checkpoint_found_names_where_it_looked_and_how_to_train(photos, tmp_path, capsys):
    empty = tmp_path / "nothing_trained"
    rc = S.main([str(photos), "--outputs", str(empty), "--csv", str(tmp_path / "s.csv")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "no checkpoint found" in err and str(empty / "runs") in err and "python -m iqa_lib.run_all" in err

    rc = S.main([str(photos), "--profile", "demo", "--outputs", str(empty), "--csv", str(tmp_path / "s.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "{res}_fold{k}" in err and "--profile demo" in err

    rc = S.main([str(photos), "--checkpoint", str(tmp_path / "gone.ckpt"), "--csv", str(tmp_path / "s.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "gone.ckpt" in err and "not found" in err
    assert not (tmp_path / "s.csv").exists()


def test_nothing_scorable_exits_non_zero_and_writes_no_csv(tmp_path, ckpts, capsys):
    folder = make_images(tmp_path / "junk")
    for name in GOOD:
        (folder / name).unlink()
    csv = tmp_path / "s.csv"
    rc = S.main([str(folder), str(tmp_path / "missing.png"), "--checkpoint", str(ckpts["whole"]),
                 "--csv", str(csv), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "no image could be scored" in err
    for name in [*BAD, "missing.png"]:
        assert f"skipped {Path(folder if name != 'missing.png' else tmp_path) / name}:" in err
    assert not csv.exists()


def test_existing_csv_is_kept_unless_overwrite(photos, ckpts, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [str(photos / GOOD[0]), "--checkpoint", str(ckpts["whole"]), "--device", "cpu", "-q"]
    assert S.main(args) == 0  # default: scores.csv in the current folder
    assert pd.read_csv(tmp_path / "scores.csv")["path"].tolist() == [str(photos / GOOD[0])]

    mine = tmp_path / "scores.csv"
    mine.write_text("my own notes\n")
    capsys.readouterr()
    with monkeypatch.context() as m:  # refused before any model is loaded or image decoded
        m.setattr(S, "load_model", lambda *a, **k: pytest.fail("scored although the CSV exists"))
        assert S.main(args) == 2
    err = capsys.readouterr().err
    assert "exists and was left as it is" in err and "--overwrite" in err
    assert mine.read_text() == "my own notes\n"

    assert S.main(args + ["--overwrite"]) == 0
    assert pd.read_csv(mine).columns.tolist() == ["path", "mos", "runs"]
