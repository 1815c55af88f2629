"""No silent wrong results: data changed after runs exist, one run trained twice at once, and the
messages that must say the way out (issue: reliability). Cases 1 and 2 go through the interfaces
users use: the grid runner and papermill."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import make_exposure_data
from iqa_lib.checkpoint import CheckpointError
from iqa_lib.config import Outputs, load_config, repo_root
from iqa_lib.lock import LockHeldError, hold
from iqa_lib.train import StaleRunError, fit

ROOT = repo_root()


def _edit_one_mos(data: Path) -> str:
    """Change the MOS of one image in train.csv (all its caption rows), as a user fixing a label."""
    train = pd.read_csv(data / "train.csv", dtype={"img_name": str})
    name = train["img_name"].iloc[0]
    train.loc[train["img_name"] == name, "mos"] = round(float(train.loc[train["img_name"] == name, "mos"].iloc[0]) * 0.5, 4)
    train.to_csv(data / "train.csv", index=False)
    return name


def _tiny(data, out, **extra):
    return load_config("demo", 64, 0, {"train.epochs": 1, "train.num_workers": 0, **extra},
                       data_dir=str(data), out_dir=str(out))


# --------------------------------------------------------------------------------------------
# 1. data changed after runs exist
# --------------------------------------------------------------------------------------------
def test_fit_refuses_a_completed_run_trained_on_another_split(tmp_path):
    data = make_exposure_data(tmp_path / "data", n_train=30, n_test=2)
    out = tmp_path / "out"
    first = fit(_tiny(data, out), progress=False)
    manifest = json.loads((first.run_dir / "manifest.json").read_text())
    assert len(manifest["split"]) == 16
    _edit_one_mos(data)
    with pytest.raises(ValueError, match="folds.csv does not match"):  # the old folds.csv is refused
        fit(_tiny(data, out), progress=False)
    (out / "folds.csv").unlink()  # what that message says to do
    with pytest.raises(StaleRunError, match=r"64_fold0.*Retrain them .*force=True.*or restore the data"):
        fit(_tiny(data, out), progress=False)  # not "already completed"
    assert fit(_tiny(data, out), progress=False, force=True).status == "completed"
    assert json.loads((first.run_dir / "manifest.json").read_text())["split"] != manifest["split"]


def test_fit_refuses_to_resume_a_run_started_on_another_split(tmp_path):
    data = make_exposure_data(tmp_path / "data", n_train=30, n_test=2)
    out = tmp_path / "out"
    result = fit(_tiny(data, out, **{"train.epochs": 2}), progress=False)
    manifest = result.run_dir / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"completed"', '"interrupted"'))  # as if killed
    _edit_one_mos(data)
    (out / "folds.csv").unlink()
    with pytest.raises(StaleRunError, match=r"another split.*: 64_fold0\..*fit\(cfg, force=True\)"):
        fit(_tiny(data, out, **{"train.epochs": 2}), progress=False)


def _grid(data, out, *extra):
    cmd = [sys.executable, "-m", "iqa_lib.run_all", "--profile", "demo", "--data-dir", str(data), "--out-dir",
           str(out), "--res", "64", "--folds", "0", "1", "--skip-eda", "-p", "epochs", "1", "-p", "num_workers", "0",
           *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_grid_refuses_runs_trained_on_old_data_and_05_refuses_to_mix_them(tmp_path):
    from iqa_lib.datasets.demo import make_demo_data

    data = make_demo_data(tmp_path / "data", n_train=40, n_test=6)
    out = tmp_path / "out"
    first = _grid(data, out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    folds_before = (out / "folds.csv").read_text()
    again = _grid(data, out)  # nothing changed: everything skipped
    assert again.returncode == 0 and "completed earlier" in again.stdout

    _edit_one_mos(data)
    changed = _grid(data, out)
    text = changed.stdout + changed.stderr
    assert changed.returncode != 0, text[-3000:]
    assert (out / "folds.csv").read_text() != folds_before  # 02_folds was not "up to date"
    assert "64_fold0, 64_fold1" in text and "--force" in text and "restore the data" in text
    assert "completed earlier" not in text  # never reused silently

    # 05_ensemble on the predictions of the old runs refuses too, naming them.
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(ROOT / "notebooks" / "05_ensemble.ipynb"), str(tmp_path / "05.ipynb"),
                            parameters={"profile": "demo", "data_dir": str(data), "out_dir": str(out)},
                            kernel_name="python3", cwd=str(ROOT), progress_bar=False)
    assert "64_fold0" in e.value.evalue and "another split" in e.value.evalue


# --------------------------------------------------------------------------------------------
# 2. the same run trained twice at once
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_papermill_of_the_same_run_stops_naming_the_first(tmp_path):
    import papermill as pm

    data = make_exposure_data(tmp_path / "data", n_train=60, n_test=2)
    out = tmp_path / "out"
    params = ["-p", "profile", "demo", "-p", "res", "64", "-p", "fold", "0", "-p", "data_dir", str(data),
              "-p", "out_dir", str(out), "-p", "epochs", "200", "-p", "num_workers", "0"]
    first = subprocess.Popen([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "03_train.ipynb"),
                              str(tmp_path / "first.ipynb"), "-k", "python3", *params],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run = Outputs(out).run(64, 0)
    try:
        holder = run.lock.with_name(run.lock.name + ".json")
        deadline = time.time() + 180
        while not (run.metrics.is_file() and holder.is_file()) and time.time() < deadline:
            assert first.poll() is None, "the first run ended early"
            time.sleep(0.5)
        assert run.metrics.is_file(), "the first run never got going"
        with pytest.raises(pm.PapermillExecutionError) as e:
            pm.execute_notebook(str(ROOT / "notebooks" / "03_train.ipynb"), str(tmp_path / "second.ipynb"),
                                parameters=dict(zip(params[1::3], params[2::3])) | {"res": 64, "fold": 0, "epochs": 200,
                                                                                    "num_workers": 0},
                                kernel_name="python3", cwd=str(ROOT), progress_bar=False)
        message = e.value.evalue
        assert e.value.ename == "LockHeldError"
        assert "run 64_fold0" in message and "pid " in message and "since" in message
        assert "papermill" in message  # who started it: the first papermill command
        assert first.poll() is None  # the first one trains on, undisturbed
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # papermill and its kernel: nothing cleans up
        first.wait()
    deadline = time.time() + 30  # the kernel, in a session of its own, outlives papermill by its parent poll
    while True:
        messages = []
        try:
            with hold(run.lock, "run 64_fold0", echo=messages.append):  # a dead holder's lock is taken over
                assert messages and "taking over" in messages[0]
            break
        except LockHeldError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def test_fit_takes_over_the_lock_of_a_killed_run_and_refuses_a_live_one(tmp_path):
    data = make_exposure_data(tmp_path / "data", n_train=30, n_test=2)
    cfg = _tiny(data, tmp_path / "out")
    script = ("import sys, time\nfrom pathlib import Path\nfrom iqa_lib.lock import hold\n"
              "with hold(Path(sys.argv[1]), 'x', command='the other trainer'):\n"
              "    print('locked', flush=True)\n    time.sleep(120)\n")
    other = subprocess.Popen([sys.executable, "-c", script, str(cfg.run.lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeldError, match=rf"run 64_fold0 .* pid {other.pid} .*the other trainer"):
            fit(cfg, progress=False)
        assert not cfg.run.checkpoint.exists()  # nothing written beside the live one
    finally:
        other.kill()
        other.wait()
    assert fit(cfg, progress=False).status == "completed"


# --------------------------------------------------------------------------------------------
# messages that must name the way out
# --------------------------------------------------------------------------------------------
def test_a_truncated_last_pt_says_how_to_go_on(tmp_path):
    data = make_exposure_data(tmp_path / "data", n_train=30, n_test=2)
    cfg = _tiny(data, tmp_path / "out", **{"train.epochs": 2})
    fit(cfg, progress=False)
    manifest = cfg.run.manifest
    manifest.write_text(manifest.read_text().replace('"completed"', '"interrupted"'))
    raw = cfg.run.last.read_bytes()
    cfg.run.last.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError) as e:
        fit(cfg, progress=False)
    text = str(e.value)
    assert str(cfg.run.last) in text and "delete" in text and "64_fold0.ckpt" in text and "force=True" in text
    inner = text.split("(", 1)[1].split(")")[0]  # torch's own words, cut at a sentence or a word, never mid-word
    assert inner.endswith((".", "...")) or " " not in inner[-3:], inner
    assert cfg.run.checkpoint.is_file()  # the best checkpoint is untouched


def test_05_keeps_a_fuller_submission_and_names_runs_without_predictions(tmp_path, capsys):
    from iqa_lib.ensemble import save_submission
    from iqa_lib.notebook import prediction_files

    out = Outputs(tmp_path / "out")
    cfg = load_config("demo", out_dir=str(out.root))
    names = ["a", "b"]
    for r in (64, 128):
        out.run(r, 0).dir.mkdir(parents=True)
        out.run(r, 0).checkpoint.write_bytes(b"x")
    out.preds.mkdir(parents=True)
    pd.DataFrame({"img_name": names, "mos": [1.0, 2.0]}).to_csv(out.prediction("64_fold0"), index=False)
    files = prediction_files(cfg, [64, 128, 192])
    assert [f.stem for f in files] == ["64_fold0"]
    warning = capsys.readouterr().out
    assert "128_fold0" in warning and "04_infer" in warning
    save_submission(out, names, [1.0, 2.0], runs=["64_fold0", "128_fold0"])
    full = out.submission.read_text()
    save_submission(out, names, [5.0, 5.0], runs=["64_fold0"])  # fewer runs: the fuller one is kept
    assert out.submission_prev.read_text() == full
    assert "kept the previous submission (2 runs)" in capsys.readouterr().out
    save_submission(out, names, [3.0, 3.0], runs=["64_fold0", "128_fold0"])  # as many: no copy
    assert out.submission_prev.read_text() == full


def test_an_out_dir_that_cannot_be_written_is_named(tmp_path):
    data = make_exposure_data(tmp_path / "data", n_train=20, n_test=2)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match=r"out_dir '.*a_file/out' is not writable .*pass -p out_dir"):
        fit(_tiny(data, blocker / "out"), progress=False)
    from iqa_lib.data import ImageStore

    img = tmp_path / "x.jpg"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    with pytest.raises(OSError, match=r"image cache folder .* is not writable.*train.cache: false"):
        ImageStore.open([img], 8, cache_dir=blocker / "cache", progress=False)


BIG = """
import sys
from iqa_lib.data import DataError, load_table
try:
    load_table(sys.argv[1], "train.csv", check_images="decode", progress=False)
    print("loaded")
except DataError as e:
    print(e)
"""


@pytest.mark.parametrize("limit, expect", [("1000", "IQA_MAX_IMAGE_PIXELS"), ("0", "loaded")])
def test_a_very_large_image_is_allowed_by_an_environment_variable(tmp_path, limit, expect):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    Image.fromarray(np.full((60, 60, 3), 128, np.uint8)).save(data / "train" / "a.png")  # 3,600 px > 2 x 1,000
    (data / "train.csv").write_text("img_name,img_path,mos\na,./train/a.png,5\n")
    env = {**os.environ, "IQA_MAX_IMAGE_PIXELS": limit}
    out = subprocess.run([sys.executable, "-c", BIG, str(data)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert expect in out.stdout, out.stdout + out.stderr


@pytest.mark.slow
def test_01_eda_shows_the_good_rows_and_lists_the_problems(tmp_path):
    import nbformat
    import papermill as pm

    from iqa_lib.datasets.demo import make_demo_data

    data = make_demo_data(tmp_path / "data", n_train=30, n_test=5)
    train = pd.read_csv(data / "train.csv", dtype={"img_name": str})
    train.loc[0, "mos"] = 42.0  # out of the 0-10 scale
    train.to_csv(data / "train.csv", index=False)
    broken = data / train.loc[len(train) - 1, "img_path"]
    broken.write_bytes(b"not an image")
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(ROOT / "notebooks" / "01_eda.ipynb"), str(tmp_path / "01.ipynb"),
                            parameters={"profile": "demo", "data_dir": str(data), "out_dir": str(tmp_path / "out")},
                            kernel_name="python3", cwd=str(ROOT), progress_bar=False)
    assert e.value.ename == "DataError" and "mos out of range" in e.value.evalue
    nb = nbformat.read(tmp_path / "01.ipynb", as_version=4)
    pictures = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert pictures >= 5  # every figure, drawn from the good rows
    shown = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.output_type == "stream")
    assert "unreadable image" in shown and "mos out of range" in shown and "without a problem" in shown


def test_a_code_carrying_weights_file_is_named(tmp_path):
    from iqa_lib.model import MANIQA, MANIQAConfig, PretrainedWeightsError

    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "weights.pth"
    torch.save({"pos_embed": Payload()}, evil)
    cfg = MANIQAConfig(img_size=64, embed_dim=64, head_hidden=32, vit_kwargs=dict(embed_dim=64, depth=10, num_heads=2))
    with pytest.raises(PretrainedWeightsError, match=rf"weights_file '{evil}' contains Python objects that would run code"):
        MANIQA(cfg, pretrained=True, weights_file=evil)
    assert not marker.exists()


def test_05_keeps_the_fullest_previous_submission(tmp_path, capsys):
    from iqa_lib.ensemble import save_submission

    out, names = Outputs(tmp_path / "out"), ["a", "b"]
    save_submission(out, names, [1.0, 1.0], runs=["r1", "r2", "r3"])
    fullest = out.submission.read_text()
    save_submission(out, names, [2.0, 2.0], runs=["r1", "r2"])  # fewer runs: the 3-run one is kept aside
    assert out.submission_prev.read_text() == fullest
    save_submission(out, names, [3.0, 3.0], runs=["r1"])  # fewer again: the 3-run one stays aside
    assert out.submission_prev.read_text() == fullest
    assert "(3 runs) stays the previous submission: this one combines 1, the one it replaces 2" in capsys.readouterr().out
    assert pd.read_csv(out.submission)["mos"].tolist() == [3.0, 3.0]


def test_stray_files_among_the_predictions_are_left_out_and_named(tmp_path, capsys):
    from iqa_lib.notebook import prediction_files

    out = Outputs(tmp_path / "out")
    cfg = load_config("demo", out_dir=str(out.root))
    out.preds.mkdir(parents=True)
    for stem in ("64_fold0", "64_fold0 (copy)", "notes"):
        pd.DataFrame({"img_name": ["a"], "mos": [1.0]}).to_csv(out.preds / f"{stem}.csv", index=False)
    assert [f.stem for f in prediction_files(cfg, [64, 128, 192])] == ["64_fold0"]
    assert "2 file(s) in" in capsys.readouterr().out
    # runs is read as parse_runs reads it (any case, spaces): "ALL" is every run, not a TypeError
    assert [f.stem for f in prediction_files(cfg, [64, 128, 192], runs=" ALL ")] == ["64_fold0"]


def test_a_checkpoint_of_another_kit_version_and_a_bad_batch_size_are_named(tmp_path):
    from iqa_lib.checkpoint import KIT_FORMAT, atomic_torch_save
    from iqa_lib.infer import load_model, predict

    ckpt = tmp_path / "other.ckpt"
    atomic_torch_save({"format": KIT_FORMAT, "model": {}, "model_config": {"depth_of_field": 3}}, ckpt)
    with pytest.raises(CheckpointError, match=r"other\.ckpt': its model_config is not one this version of iqa_lib "
                                              r"builds .*depth_of_field.*score it with the version that wrote it"):
        load_model(ckpt)
    with pytest.raises(ValueError, match=r"batch_size must be a whole number of at least 1 \(04_infer: -p batch_size"):
        predict(ckpt, tmp_path, batch_size=0)


def test_an_empty_or_garbled_folds_csv_or_prediction_file_is_named(tmp_path):
    from iqa_lib.ensemble import load_predictions
    from iqa_lib.train import load_folds

    data = make_exposure_data(tmp_path / "data", n_train=10, n_test=2)
    cfg = _tiny(data, tmp_path / "out")
    cfg.outputs.root.mkdir(parents=True)
    for text in ("", "img_name,fold,mos\na,0,high\n"):
        cfg.outputs.folds.write_text(text)
        with pytest.raises(ValueError) as e:
            load_folds(cfg)
        assert f"{cfg.outputs.folds} is not a readable split" in str(e.value) and "rerun notebooks/02_folds" in str(e.value)
    empty = tmp_path / "64_fold0.csv"
    empty.write_text("")
    with pytest.raises(ValueError) as e:
        load_predictions([empty])
    assert f"{empty}: not a readable CSV" in str(e.value)
