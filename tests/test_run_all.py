"""The grid runner: skip and relaunch, one training per GPU, --parallel, failures, Ray, the lock.

The grids run stub notebooks written here (papermill and a real kernel, no training), so they
take seconds and do not depend on the real notebooks. A stub records each call (step, run,
CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS, ...) in {out_dir}/calls.jsonl; a file FAIL_{name} in
out_dir makes that step raise. How many notebooks ran at once, and on which GPUs, is counted
around run_notebook in the runner (a child's lifetime), not from timings inside the kernels.
"""
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import nbformat
import pytest

from iqa_lib import run_all as R
from iqa_lib.config import Outputs
from iqa_lib.lock import LockHeldError, hold

COMMON = 'profile = "team"\ndata_dir = None\nout_dir = None\n'
STUB_PARAMS = {
    "01_eda": COMMON + "max_images = 5000\n",
    "02_folds": COMMON + "n_folds = None\n",
    "03_train": "res = 448\nfold = 0\n" + COMMON + "epochs = None\nmax_steps = None\n",
    "04_infer": COMMON + 'runs = "all"\n',
    "05_ensemble": COMMON + 'method = "iqr"\nruns = "all"\n',
}
STUB_BODY = '''
import json, os
from pathlib import Path
from iqa_lib.config import Outputs, run_name
STEP = "@STEP@"
outputs = Outputs(Path(out_dir))
name = run_name(res, fold) if STEP == "03_train" else STEP
call = {"step": STEP, "name": name, "cwd": os.getcwd(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "omp": os.environ.get("OMP_NUM_THREADS"), "epochs": globals().get("epochs"),
        "runs": globals().get("runs")}
with open(outputs.root / "calls.jsonl", "a") as f:
    f.write(json.dumps(call) + "\\n")
if (outputs.root / f"FAIL_{name}").exists():
    raise RuntimeError(f"stub failure for {name}")
if STEP == "02_folds":  # the real split of the fixture's train.csv (the runner checks folds.csv against it)
    from iqa_lib.config import load_config
    from iqa_lib.data import load_table
    from iqa_lib.folds import folds_for_table, write_folds
    cfg = load_config(profile, data_dir=data_dir, out_dir=out_dir)
    table = load_table(cfg.data_dir, check_images="none", mos_scale=cfg.mos_scale, progress=False)
    write_folds(folds_for_table(table, n_folds=cfg.n_folds), cfg.out_dir)
if STEP == "03_train":
    run = outputs.run(res, fold)
    run.dir.mkdir(parents=True, exist_ok=True)
    run.metrics.write_text("epoch,plcc_srcc\\n0,1.1\\n1,1.5\\n")
    run.checkpoint.write_bytes(b"weights")
    run.manifest.write_text(json.dumps({"status": "completed"}))
'''


@pytest.fixture(scope="module")
def stubs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stub_notebooks")
    for step, params in STUB_PARAMS.items():
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell(params)
        cell.metadata["tags"] = ["parameters"]
        nb.cells = [cell, nbformat.v4.new_code_cell(STUB_BODY.replace("@STEP@", step))]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, folder / f"{step}.ipynb")
    return folder


@pytest.fixture
def grid(tmp_path, stubs, monkeypatch) -> dict:
    """run_grid arguments: demo profile, res 64, folds 0 and 1, stub notebooks, no 01_eda."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    rows = ["img_name,img_path,mos"]
    for i in range(10):
        (data / "train" / f"i{i}.png").write_bytes(b"")  # the runner reads the CSV only
        rows.append(f"i{i},./train/i{i}.png,{i / 2}")
    (data / "train.csv").write_text("\n".join(rows) + "\n")
    return dict(profile="demo", res=[64], folds=[0, 1], data_dir=str(data), out_dir=str(tmp_path / "out"),
                skip_eda=True, notebooks_dir=str(stubs))


def cli(g: dict, *more: str) -> list[str]:
    args = ["--profile", g["profile"], "--res", *map(str, g["res"]), "--folds", *map(str, g["folds"]),
            "--data-dir", g["data_dir"], "--out-dir", g["out_dir"], "--notebooks-dir", g["notebooks_dir"]]
    return args + (["--skip-eda"] if g["skip_eda"] else []) + list(more)


def calls(g: dict) -> list[dict]:
    path = Path(g["out_dir"]) / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.fixture
def at_once(monkeypatch) -> list[Counter]:
    """Snapshots of {CUDA_VISIBLE_DEVICES: notebooks running with it}, one per notebook start."""
    live, snapshots, lock = Counter(), [], threading.Lock()
    real = R.run_notebook

    def counted(notebook, output, params, gpus=None, threads=None):
        with lock:
            live[gpus] += 1
            snapshots.append(+live)
        try:
            return real(notebook, output, params, gpus, threads)
        finally:
            with lock:
                live[gpus] -= 1

    monkeypatch.setattr(R, "run_notebook", counted)
    return snapshots


def test_skip_completed_relaunch_interrupted_one_training_per_gpu(grid, monkeypatch, at_once):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,6")  # two fake GPUs: only the children's env sees them
    out = Outputs(Path(grid["out_dir"]))
    done, interrupted, no_checkpoint = out.run(64, 0), out.run(64, 1), out.run(64, 2)
    for run in (done, interrupted, no_checkpoint):
        run.dir.mkdir(parents=True)
        run.metrics.write_text("epoch,plcc_srcc\n0,0.25\n")
    done.manifest.write_text(json.dumps({"status": "completed"}))
    done.checkpoint.write_bytes(b"weights")
    interrupted.manifest.write_text(json.dumps({"status": "running"}))
    interrupted.last.write_bytes(b"resume state")
    no_checkpoint.manifest.write_text(json.dumps({"status": "completed"}))  # its checkpoint is gone: train again
    g = {**grid, "folds": [0, 1, 2, 3], "extra_params": {"epochs": "1"}}
    stream = io.StringIO()
    result = R.run_grid(**g, stream=stream)
    text = stream.getvalue()
    assert result.ok, text
    assert {s.name: s.status for s in result.steps} == {
        "02_folds": "done", "64_fold0": "skipped", "64_fold1": "done", "64_fold2": "done", "64_fold3": "done",
        "04_infer": "done", "05_ensemble": "done"}
    assert "completed earlier" in text and "resumes from last.pt" in text and "run_all: OK" in text
    assert result["64_fold0"].best == 0.25 and result["64_fold1"].best == 1.5
    trained = [c for c in calls(g) if c["step"] == "03_train"]
    assert sorted(c["name"] for c in trained) == ["64_fold1", "64_fold2", "64_fold3"]
    assert all(c["epochs"] == 1 for c in trained), "-p values reach 03_train, typed"
    assert all(c["cwd"] == str(R.repo_root()) for c in calls(g)), "notebooks run from the repository root"
    assert {c["gpus"] for c in trained} == {"5", "6"}, "one GPU each, from CUDA_VISIBLE_DEVICES"
    assert max(max(snap.values()) for snap in at_once) == 1, "a GPU had two notebooks at once"
    assert max(sum(snap.values()) for snap in at_once) == 2, "two GPUs: two trainings at once"
    infer = next(c for c in calls(g) if c["step"] == "04_infer")
    assert infer["runs"] == "64_fold0,64_fold1,64_fold2,64_fold3"
    assert out.run(64, 2).notebook.is_file() and "papermill" in out.run(64, 2).notebook.with_suffix(".log").read_text()
    assert (out.notebooks / "05_ensemble.ipynb").is_file()

    # everything is done: a rerun runs no notebook at all
    n = len(calls(g))
    again = R.run_grid(**g, stream=io.StringIO())
    assert again.ok and {s.status for s in again.steps} == {"skipped"} and len(calls(g)) == n

    # --force retrains the selected run from scratch, its files set aside (fit deletes them once the new run
    # completes; the stub does not); inference and ensemble follow the new checkpoint
    (done.dir / "old_file").touch()
    forced = R.run_grid(**{**g, "folds": [0]}, force=True, stream=io.StringIO())
    assert forced.ok and not (done.dir / "old_file").exists() and (done.aside / "old_file").exists()
    assert done.aside == out.root / "replaced" / "64_fold0" and (done.aside / "64_fold0.ckpt").is_file()
    assert [c["name"] for c in calls(g)[n:]] == ["64_fold0", "04_infer", "05_ensemble"]

    # a run started from another one (train.init_from) that has been retrained since: kept, and the table says so
    from iqa_lib.config import file_digest

    older = out.root / "older.ckpt"
    older.write_bytes(b"the weights 64_fold1 started from")
    manifest = json.loads(interrupted.manifest.read_text())
    interrupted.manifest.write_text(json.dumps({**manifest, "init_from": "64_fold0",
                                                "init_from_checkpoint": file_digest(older)}))
    n, stream = len(calls(g)), io.StringIO()
    kept = R.run_grid(**g, stream=stream)
    assert kept.ok and kept["64_fold1"].status == "skipped"
    assert not [c for c in calls(g)[n:] if c["step"] == "03_train"], "nothing retrained unasked"
    assert kept["64_fold1"].note == "completed earlier from an older 64_fold0 (--force retrains it)"
    assert kept["64_fold1"].note in stream.getvalue() and kept["64_fold2"].note == "completed earlier"


def test_failures_exit_nonzero_naming_run_notebook_log_and_parallel_cpu(grid, capsys, at_once):
    out = Outputs(Path(grid["out_dir"]))
    out.root.mkdir()
    (out.root / "FAIL_01_eda").touch()  # 01_eda failing does not stop the grid
    (out.root / "FAIL_64_fold1").touch()
    code = R.main(cli({**grid, "skip_eda": False}, "--gpus", "cpu", "--parallel", "2"))
    text = capsys.readouterr().out
    assert code == R.EXIT_FAILED, text
    summary = text[text.index("run_all: FAILED"):]
    run = out.run(64, 1)
    for needle in ("FAILED 64_fold1", str(run.notebook), str(run.notebook.with_suffix(".log")),
                   "RuntimeError: stub failure for 64_fold1", "FAILED 01_eda", "BLOCKED 04_infer"):
        assert needle in summary, needle
    assert "64_fold0" not in summary
    ran = calls(grid)
    assert [c["name"] for c in ran][:2] == ["01_eda", "02_folds"] and len(ran) == 4
    trained = [c for c in ran if c["step"] == "03_train"]
    assert max(snap[""] for snap in at_once) == 2, "--parallel 2: both trainings at once"
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    assert all(c["gpus"] == "" and c["omp"] == threads for c in trained), "CPU runs: no GPU, threads split"
    alone = [c for c in ran if c["step"] != "03_train"]
    assert alone and all(c["omp"] is None for c in alone), "01 and 02 run alone: every thread"


def test_a_run_with_init_from_starts_after_its_source_and_is_blocked_when_it_fails(grid, tmp_path, monkeypatch):
    import shutil
    import yaml

    params = tmp_path / "params"  # the demo profile, its 128 px runs starting from the 64 px runs of their fold
    shutil.copytree(R.repo_root() / "params", params)
    chain = yaml.safe_load((params / "demo.yaml").read_text())
    chain["resolutions"][128]["train"]["init_from"] = 64
    chain["model"]["num_tab"] = 0  # the TABs are sized by the token count
    (params / "chain.yaml").write_text(yaml.safe_dump(chain))
    monkeypatch.setenv("IQA_PARAMS_DIR", str(params))
    events, real = [], R.run_notebook

    def recorded(notebook, output, p, gpus=None, threads=None):
        name = R.run_name(p["res"], p["fold"]) if "res" in p else Path(notebook).stem
        events.append(("start", name))
        if name == "64_fold0":
            time.sleep(2)  # the slower source: 128_fold0 must wait for it, not for 64_fold1
        try:
            return real(notebook, output, p, gpus, threads)
        finally:
            events.append(("end", name))

    monkeypatch.setattr(R, "run_notebook", recorded)
    g = {**grid, "profile": "chain", "res": [64, 128], "folds": [0, 1]}
    (Path(g["out_dir"])).mkdir()
    (Path(g["out_dir"]) / "FAIL_64_fold1").touch()
    stream = io.StringIO()
    result = R.run_grid(**g, parallel=2, stream=stream)
    text = stream.getvalue()
    assert not result.ok, text
    assert {s.name: s.status for s in result.steps} == {
        "02_folds": "done", "64_fold0": "done", "64_fold1": "failed", "128_fold0": "done", "128_fold1": "blocked",
        "04_infer": "blocked", "05_ensemble": "blocked"}
    assert "BLOCKED 128_fold1: needs 64_fold1 (train.init_from)" in text
    assert events.index(("end", "64_fold0")) < events.index(("start", "128_fold0"))
    assert ("start", "128_fold1") not in events
    assert {c["name"] for c in calls(g) if c["step"] == "03_train"} == {"64_fold0", "64_fold1", "128_fold0"}

    # the 128 px size alone: its source is not part of this grid and has not completed, so nothing starts
    n = len(calls(g))
    alone = R.run_grid(**{**g, "res": [128], "folds": [1]}, stream=io.StringIO())
    assert alone["128_fold1"].status == "blocked" and alone["128_fold1"].note == "needs 64_fold1 (train.init_from)"
    assert [c["name"] for c in calls(g)[n:]] == []

    # --force over the chain while its source still fails: a run that never starts keeps its files in place
    blocked = Outputs(Path(g["out_dir"])).run(128, 1)
    blocked.dir.mkdir(parents=True, exist_ok=True)
    blocked.checkpoint.write_bytes(b"an earlier run")
    forced = R.run_grid(**{**g, "folds": [1]}, force=True, stream=io.StringIO())
    assert forced["64_fold1"].status == "failed" and forced["128_fold1"].status == "blocked"
    assert blocked.checkpoint.read_bytes() == b"an earlier run" and not blocked.aside.exists()


def test_ray_local_runs_trainings_and_inference_as_tasks(grid):
    ray = pytest.importorskip("ray")
    g = {**grid, "folds": [0]}
    stream = io.StringIO()
    result = R.run_grid(**g, ray="local", stream=stream)
    assert result.ok, stream.getvalue()
    assert not ray.is_initialized(), "the Ray the runner started is shut down"
    assert [s.status for s in result.steps] == ["done"] * 4
    host = socket.gethostname()
    for name in ("64_fold0", "04_infer"):  # ray_task reports the node it ran on
        assert result[name].where.startswith(host), (name, result[name].where)
    assert result["05_ensemble"].where == "here" and result["02_folds"].where == "here"
    assert [c["name"] for c in calls(g)] == ["02_folds", "64_fold0", "04_infer", "05_ensemble"]


def test_ray_missing_names_the_install_command(grid, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    assert R.main(cli(grid, "--ray", "auto")) == R.EXIT_USAGE
    assert 'pip install "iqa-lib[ray]"' in capsys.readouterr().err


HOLDER = """
import sys, time
from pathlib import Path
from iqa_lib.config import Outputs
from iqa_lib.lock import LockHeldError, hold
from iqa_lib.lock import hold
with hold(Outputs(Path(sys.argv[1])).lock, "the grid", command="the first runner --its-args"):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_second_runner_refused_and_a_dead_runners_lock_taken_over(grid, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, grid["out_dir"]], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert R.main(cli(grid)) == R.EXIT_LOCKED
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and socket.gethostname() in err and "the first runner --its-args" in err
        assert "since" in err and calls(grid) == []
    finally:
        holder.kill()  # SIGKILL: no clean-up; the OS frees its lock
        holder.wait()
    lock = Outputs(Path(grid["out_dir"])).lock
    messages = []
    with hold(lock, "the grid", command="the second runner", echo=messages.append):
        assert len(messages) == 1 and f"pid {holder.pid}" in messages[0] and "taking over" in messages[0]
        with pytest.raises(LockHeldError, match="the second runner"):
            with hold(lock, "the grid", command="a third runner"):
                pass
    with hold(lock, "the grid", command="after a clean release", echo=messages.append):
        assert len(messages) == 1, "a released lock is no stale lock"


@pytest.mark.parametrize("args, message", [
    (["--res", "512"], "res=512 is not an input size of profile 'demo'"),
    (["--folds", "7"], "fold=7 is out of range"),
    (["-p", "epoch", "1"], "has no parameter epoch (did you mean epochs?)"),
    (["-p", "fold", "1"], "use --folds"),
    (["-p", "epochs", "many"], "train.epochs"),
    (["--gpus", "9"], "visible: 5,6"),
    (["--parallel", "0"], "--parallel must be at least 1"),
])
def test_bad_arguments_are_refused_with_a_clear_message(grid, monkeypatch, capsys, args, message):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,6")
    assert R.main(cli(grid, *args)) == R.EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not Path(grid["out_dir"]).exists(), "nothing ran, not even the lock"


def test_an_out_dir_that_cannot_be_written_is_refused_before_anything_runs(grid, capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = blocker / "out"  # under a file: no folder can be made there, even as root
    assert R.main(cli({**grid, "out_dir": str(out)})) == R.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"run_all: error: out_dir '{out}' is not writable" in err and "pass --out-dir a folder you can write to" in err
    assert "Traceback" not in err


def test_fewer_images_than_folds_fails_02_folds_with_its_message_and_blocks_the_rest(grid):
    train = Path(grid["data_dir"]) / "train.csv"
    train.write_text("\n".join(train.read_text().splitlines()[:4]) + "\n")  # 3 images, 5 folds
    result = R.run_grid(**grid, stream=io.StringIO())
    assert not result.ok
    assert result["02_folds"].status == "failed"
    assert "n_folds=5 exceeds the number of unique images (3): lower n_folds" in result["02_folds"].note
    assert {result[n].status for n in ("64_fold0", "64_fold1", "04_infer", "05_ensemble")} == {"blocked"}


def test_the_end_of_a_grid_scores_the_submission_or_names_a_label_file_it_cannot_use(tmp_path):
    from iqa_lib.config import load_config

    cfg = load_config("demo", data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "out"))
    (tmp_path / "data").mkdir()
    (tmp_path / "out").mkdir()
    cfg.outputs.submission.write_text("img_name,mos,comments\na,1.0,\nb,2.0,\nc,4.0,\n")
    labels = tmp_path / "data" / "test_labels.csv"
    labels.write_text("img_name,mos\na,1.5\nb,2.5\nc,3.5\n")
    assert f"scored on {labels} (3 images): PLCC 0.982, SRCC 1.000" in R.where_to_look(cfg)
    labels.write_text("img_name,MOS\na,1.5\nb,2.5\nc,3.5\n")
    text = R.where_to_look(cfg)
    assert f"not scored on {labels}: it needs img_name and mos columns" in text and "plots:" in text
