"""The grid runner: scheduling, the lock, skip/resume logic, failures, Ctrl-C and Ray.

Grids here run small stub notebooks written by the tests (papermill and a real kernel, but
no training), so they do not depend on the real notebooks or on training speed.
"""
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch

from iqa_lib import run_all as R
from iqa_lib.lock import GridLock, LockHeldError, lock_path, read_lock

REPO = Path(__file__).resolve().parents[1]

# --- stub notebooks ---------------------------------------------------------------------------
COMMON_PARAMS = 'profile = "team"\ndata_dir = None\nout_dir = None\n'
STUB_PARAMS = {
    "01_eda": COMMON_PARAMS,
    "02_folds": COMMON_PARAMS,
    "03_train": COMMON_PARAMS + "res = 448\nfold = 0\nckpt_template = None\nepochs = None\n",
    "04_infer": COMMON_PARAMS + 'runs = "all"\n',
    "05_ensemble": COMMON_PARAMS,
}
STUB_BODY = '''
import json, os, shutil, time
from pathlib import Path
STEP = {step!r}
out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
name = f"{{res}}_fold{{fold}}" if STEP == "03_train" else STEP
record = {{"step": STEP, "name": name, "cwd": os.getcwd(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
          "pid": os.getpid(), "epochs": globals().get("epochs"), "runs": globals().get("runs")}}
with open(out / "calls.jsonl", "a") as f:
    f.write(json.dumps(record) + "\\n")
if (out / f"SLEEP_{{name}}").exists():
    (out / f"PID_{{name}}").write_text(str(os.getpid()))
    time.sleep(120)
if (out / f"FAIL_{{name}}").exists():
    raise RuntimeError(f"stub failure for {{name}}")
if STEP == "02_folds":
    (out / "folds.csv").write_text("img_name,fold\\n")
if STEP == "03_train":
    run_dir = out / "runs" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.csv").write_text("epoch,plcc_srcc\\n0,1.1\\n1,1.5\\n")
    shutil.copy(ckpt_template, run_dir / f"{{name}}.ckpt")
    manifest = {{"status": "completed", "best_epoch": 1, "epochs_run": 2, "best": {{"plcc_srcc": 1.5}}}}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
'''


def write_stub(folder: Path, step: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(STUB_PARAMS[step])
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(STUB_BODY.format(step=step))]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / f"{step}.ipynb")


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stub_notebooks")
    for step in STUB_PARAMS:
        write_stub(folder, step)
    template = folder / "template.ckpt"
    torch.save({"format": "stub", "model": {"w": torch.zeros(1)}}, template)
    return folder, template


@pytest.fixture
def grid(tmp_path, stubs):
    """run_grid keyword arguments for a 384 x folds 0, 1 grid of stub notebooks on 2 CPU places."""
    notebooks, template = stubs
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("img_name,img_path,mos,comments\n")
    out = tmp_path / "out"
    return dict(profile="demo", res=[384], folds=[0, 1], data_dir=str(data), out_dir=str(out), gpus="cpu",
                parallel=2, skip_eda=True, notebooks_dir=str(notebooks), extra_params={"ckpt_template": str(template)},
                poll_s=0.1)


def calls(out_dir) -> list[dict]:
    path = Path(out_dir) / "calls.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cli_args(g: dict) -> list[str]:
    return ["--profile", g["profile"], "--res", *map(str, g["res"]), "--folds", *map(str, g["folds"]),
            "--data-dir", g["data_dir"], "--out-dir", g["out_dir"], "--gpus", "cpu", "--parallel", "2",
            "--skip-eda", "--notebooks-dir", g["notebooks_dir"], "-p", "ckpt_template", g["extra_params"]["ckpt_template"]]


def make_run(out_dir: Path, name: str, template: Path, status="completed", ckpt=True, corrupt=False, last=False):
    run_dir = Path(out_dir) / "runs" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    best = {"best_epoch": 3, "best": {"plcc_srcc": 1.234}} if status == "completed" else {}
    (run_dir / "manifest.json").write_text(json.dumps({"status": status, **best}))
    if ckpt:
        if corrupt:
            (run_dir / f"{name}.ckpt").write_bytes(b"not a checkpoint")
        else:
            (run_dir / f"{name}.ckpt").write_bytes(template.read_bytes())
    if last:
        (run_dir / "last.pt").write_bytes(b"resume state")
    return run_dir


# --- scheduling (pure) ------------------------------------------------------------------------
def test_assign_slots_three_fake_gpus_never_share_and_finish_everything():
    rng = random.Random(0)
    gpus = ["0", "1", "2"]
    pending = [f"{r}_fold{k}" for r in (640, 448, 384) for k in range(5)]
    duration = {name: rng.randint(1, 9) for name in pending}
    running: dict[str, tuple[tuple[str, ...], int]] = {}
    done, t, max_live = [], 0, 0
    while pending or running:
        for name, (slots, end) in list(running.items()):
            if end <= t:
                done.append(name)
                del running[name]
        busy = {g for slots, _ in running.values() for g in slots}
        free = [g for g in gpus if g not in busy]
        for name, slots in R.assign_slots([(n, 1) for n in pending], free):
            assert len(slots) == 1 and slots[0] in free
            assert not busy & set(slots), "a GPU was given to two live runs"
            busy |= set(slots)
            running[name] = (slots, t + duration[name])
            pending.remove(name)
        live = [g for slots, _ in running.values() for g in slots]
        assert len(live) == len(set(live)) <= len(gpus)
        max_live = max(max_live, len(running))
        t += 1
        assert t < 1000
    assert sorted(done) == sorted(duration) and max_live == 3


def test_assign_slots_multi_gpu_runs_and_backfill():
    # a 2-GPU run waits for two free GPUs; a smaller one behind it may use the one left
    assert R.assign_slots([("a", 2), ("b", 2), ("c", 1)], ["0", "1", "2"]) == [("a", ("0", "1")), ("c", ("2",))]
    assert R.assign_slots([("a", 1)], []) == []
    with pytest.raises(ValueError):
        R.assign_slots([("a", 0)], ["0"])


def test_parse_gpus_and_physical_ids():
    assert R.parse_gpus("auto", count=3) == [0, 1, 2]
    assert R.parse_gpus("auto", count=0) == []
    assert R.parse_gpus("2", count=3) == [0, 1]
    assert R.parse_gpus("0", count=3) == [] == R.parse_gpus("cpu", count=3)
    assert R.parse_gpus("0,2", count=3) == [0, 2]
    assert R.parse_gpus("2,", count=3) == [2]
    assert R.parse_gpus([1], count=2) == [1]
    for bad in ("4", "0,5", "x", "0,0", "-1"):
        with pytest.raises(R.GridError):
            R.parse_gpus(bad, count=3)
    assert R.physical_gpu_ids([0, 2]) == ["0", "2"]
    assert R.physical_gpu_ids([0, 2], parent_visible="4,5,6") == ["4", "6"]
    with pytest.raises(R.GridError):
        R.physical_gpu_ids([3], parent_visible="4,5")


def test_param_values_parse_like_papermill():
    assert R.parse_param_value("3") == 3
    assert R.parse_param_value("1e-5") == 1e-5
    assert R.parse_param_value("true") is True and R.parse_param_value("None") is None
    assert R.parse_param_value("fp32") == "fp32" and R.parse_param_value("") == ""
    assert R.check_extra_params([("epochs", "1"), ("max_steps", "null")]) == {"epochs": 1, "max_steps": None}
    with pytest.raises(R.GridError, match="--res"):
        R.check_extra_params({"res": 384})
    with pytest.raises(R.GridError, match="Python name"):
        R.check_extra_params({"train.epochs": 1})


def test_plan_and_dry_run(grid, stubs):
    out = io.StringIO()
    result = R.run_grid(**{**grid, "folds": [1], "skip_eda": False}, dry_run=True, stream=out)
    names = [s.name for s in result.steps]
    assert names == ["01_eda", "02_folds", "384_fold1", "04_infer", "05_ensemble"]
    text = out.getvalue()
    assert "papermill" in text and "runs/384_fold1/03_train.ipynb" in text and "runs: 384_fold1" in text
    assert not Path(grid["out_dir"]).exists(), "a dry run writes nothing"
    plan = R.plan_grid("demo", notebooks_dir=stubs[0])
    assert len([s for s in plan.steps if s.is_train]) == 15
    assert plan.step("04_infer").params["runs"] == "all"
    train = [s for s in plan.steps if s.is_train]
    assert min(train, key=lambda s: s.priority).res == 640, "the slowest resolution starts first"
    with pytest.raises(R.GridError, match="defines"):
        R.plan_grid("demo", res=[512], notebooks_dir=stubs[0])
    with pytest.raises(R.GridError, match="n_folds"):
        R.plan_grid("demo", folds=[5], notebooks_dir=stubs[0])
    with pytest.raises(R.GridError, match="not found"):
        R.plan_grid("demo", notebooks_dir=grid["data_dir"])
    with pytest.raises(R.GridError, match="did you mean epochs"):  # 03_train would refuse it in every run
        R.plan_grid("demo", extra_params={"epoch": 1}, notebooks_dir=stubs[0])


def test_render_table_is_plain_text():
    a = R.Step("384_fold0", "03_train", "x", {}, status=R.RUNNING, where="gpu 1", best=1.23456, best_epoch=4,
               epochs=5, started=100.0)
    b = R.Step("04_infer", "04_infer", "y", {}, status=R.QUEUED)
    text = R.render_table([a, b], now=165.0, title="t")
    assert "1 running, 1 queued" in text
    row = next(line for line in text.splitlines() if "384_fold0" in line)
    assert "running" in row and "gpu 1" in row and "1.2346 @ep4" in row and "0:01:05" in row
    assert "\x1b" not in text and "\r" not in text


# --- the lock --------------------------------------------------------------------------------
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(out_dir: Path, **info) -> Path:
    path = lock_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = {"pid": os.getpid(), "host": socket.gethostname(), "started": "2024-01-01 00:00:00",
            "started_unix": time.time(), "command": "python -m iqa_lib.run_all (other)", "token": "other"}
    path.write_text(json.dumps({**base, **info}))
    return path


def test_lock_refuses_a_second_runner(tmp_path):
    with GridLock(tmp_path, command="first runner") as first:
        info = read_lock(lock_path(tmp_path))
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname() and info["started"]
        with pytest.raises(LockHeldError) as err:
            GridLock(tmp_path).acquire()
        msg = str(err.value)
        assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg and "first runner" in msg
        assert "since" in msg and f"rm '{lock_path(tmp_path)}'" in msg
        assert first.held
    assert not lock_path(tmp_path).exists(), "released on exit"


def test_lock_released_on_error_and_keeps_someone_elses(tmp_path):
    with pytest.raises(RuntimeError):
        with GridLock(tmp_path):
            raise RuntimeError("boom")
    assert not lock_path(tmp_path).exists()
    lock = GridLock(tmp_path).acquire()
    write_lock(tmp_path)  # replaced behind our back: release must not delete it
    lock.release()
    assert read_lock(lock_path(tmp_path))["token"] == "other"


def test_lock_of_a_dead_pid_is_taken_over(tmp_path):
    pid = dead_pid()
    write_lock(tmp_path, pid=pid)
    messages = []
    with GridLock(tmp_path, echo=messages.append):
        assert read_lock(lock_path(tmp_path))["pid"] == os.getpid()
    assert len(messages) == 1 and "stale" in messages[0] and f"pid {pid}" in messages[0]
    assert not lock_path(tmp_path).exists()
    assert not list(tmp_path.glob(".run_all.lock*")), "no leftovers"


def test_lock_stale_cases(tmp_path):
    # a live pid that started after the lock was written: the pid was reused
    write_lock(tmp_path, started_unix=1.0)
    with GridLock(tmp_path, echo=lambda m: None):
        pass
    # another host: never taken over, and the message says how to remove it
    write_lock(tmp_path, host="some-other-node", pid=dead_pid())
    with pytest.raises(LockHeldError, match="another host"):
        GridLock(tmp_path).acquire()
    # unreadable: refused while fresh, taken over once old
    lock_path(tmp_path).write_text("")
    with pytest.raises(LockHeldError, match="cannot be read"):
        GridLock(tmp_path).acquire()
    old = time.time() - 3600
    os.utime(lock_path(tmp_path), (old, old))
    with GridLock(tmp_path, echo=lambda m: None):
        pass


def test_run_grid_refuses_a_locked_out_dir(grid, capsys):
    write_lock(Path(grid["out_dir"]))  # our own, live pid
    with pytest.raises(LockHeldError):
        R.run_grid(**grid, stream=io.StringIO())
    assert R.main(cli_args(grid)) == R.EXIT_LOCKED
    assert "another grid runner" in capsys.readouterr().err
    assert calls(grid["out_dir"]) == []


# --- grids of stub notebooks -----------------------------------------------------------------
@pytest.mark.slow
def test_completed_runs_are_skipped_and_incomplete_ones_launched(grid, stubs, monkeypatch):
    _, template = stubs
    # three fake GPUs, of which this process sees physical 5, 6 and 7
    monkeypatch.setattr(R, "_cuda_device_count", lambda: 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,6,7")
    out = Path(grid["out_dir"])
    make_run(out, "384_fold0", template)                                   # completed: skipped
    make_run(out, "384_fold1", template, status="running", ckpt=False, last=True)  # interrupted
    make_run(out, "384_fold2", template, corrupt=True)                       # says completed, ckpt broken
    stream = io.StringIO()
    kwargs = {**grid, "folds": [0, 1, 2], "gpus": "auto", "extra_params": {**grid["extra_params"], "epochs": "1"}}
    result = R.run_grid(**kwargs, stream=stream)
    assert result.ok, stream.getvalue()
    status = {s.name: s.status for s in result.steps}
    assert status == {"02_folds": "done", "384_fold0": "skipped", "384_fold1": "done", "384_fold2": "done",
                      "04_infer": "done", "05_ensemble": "done"}
    assert result["384_fold0"].best_plcc_srcc == pytest.approx(1.234)
    assert result["384_fold1"].best_plcc_srcc == pytest.approx(1.5)
    ran = calls(out)
    trained = [c for c in ran if c["step"] == "03_train"]
    assert sorted(c["name"] for c in trained) == ["384_fold1", "384_fold2"]
    assert all(c["epochs"] == 1 for c in trained), "-p values reach 03_train, parsed"
    assert all(c["cwd"] == str(REPO) for c in ran), "notebooks run from the repository root"
    assert sorted(c["gpus"] for c in trained) == ["5", "6"], "one GPU each, mapped through CUDA_VISIBLE_DEVICES"
    infer = next(c for c in ran if c["step"] == "04_infer")
    assert infer["runs"] == "384_fold0,384_fold1,384_fold2"
    for name in ("384_fold1", "384_fold2"):
        assert (out / "runs" / name / "03_train.ipynb").is_file()
        assert "papermill" in (out / "runs" / name / "03_train.log").read_text()
    assert (out / "notebooks" / "02_folds.ipynb").is_file() and (out / "notebooks" / "05_ensemble.log").is_file()
    text = stream.getvalue()
    assert "resumes from last.pt" in text and "run_all: OK" in text
    assert not lock_path(out).exists()

    # everything is done now: a rerun runs nothing at all
    n = len(calls(out))
    again = R.run_grid(**kwargs, stream=io.StringIO())
    assert again.ok and {s.status for s in again.steps} == {"skipped"} and len(calls(out)) == n

    # --force retrains the selected runs and reruns the notebooks
    forced = R.run_grid(**{**grid, "folds": [0]}, force=True, stream=io.StringIO())
    assert forced.ok and forced["384_fold0"].status == "done" and forced["02_folds"].status == "done"
    assert [c["name"] for c in calls(out)[n:] if c["step"] == "03_train"] == ["384_fold0"]


@pytest.mark.slow
def test_failed_run_exits_nonzero_then_a_rerun_finishes_only_what_is_missing(grid):
    out = Path(grid["out_dir"])
    out.mkdir(parents=True)
    (out / "FAIL_384_fold1").touch()
    proc = subprocess.run([sys.executable, "-m", "iqa_lib.run_all", *cli_args(grid)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    text = proc.stdout + proc.stderr
    assert proc.returncode == R.EXIT_FAILED, text
    notebook = out / "runs" / "384_fold1" / "03_train.ipynb"
    assert "FAILED 384_fold1" in text and str(notebook) in text and str(notebook.with_suffix(".log")) in text
    assert "stub failure for 384_fold1" in text, "the summary quotes the error"
    assert "BLOCKED 04_infer" in text
    assert not lock_path(out).exists(), "the lock is released after a failure"
    first = calls(out)
    assert {c["name"] for c in first} == {"02_folds", "384_fold0", "384_fold1"}
    assert all(c["gpus"] == "" for c in first), "CPU runs see no GPU"

    (out / "FAIL_384_fold1").unlink()
    result = R.run_grid(**grid, stream=io.StringIO())
    assert result.ok
    second = [c["name"] for c in calls(out)[len(first):]]
    assert sorted(second) == ["04_infer", "05_ensemble", "384_fold1"]
    assert result["02_folds"].status == "skipped" and result["384_fold0"].status == "skipped"


def start_runner_with_a_sleeping_run(grid) -> tuple[subprocess.Popen, int]:
    """The CLI on a one-run grid whose training stub sleeps; returns it and the stub kernel's pid."""
    out = Path(grid["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "SLEEP_384_fold0").touch()
    proc = subprocess.Popen([sys.executable, "-m", "iqa_lib.run_all", *cli_args({**grid, "folds": [0]})],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            start_new_session=True)
    pid_file = out / "PID_384_fold0"
    deadline = time.time() + 60
    while not pid_file.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    if not pid_file.exists():
        proc.kill()
        pytest.fail(f"the stub did not start: {proc.communicate()[0]}")
    return proc, int(pid_file.read_text())


def wait_dead(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    return False


def test_ctrl_c_stops_the_children_and_frees_the_lock(grid):
    proc, kernel_pid = start_runner_with_a_sleeping_run(grid)
    proc.send_signal(signal.SIGINT)
    text = proc.communicate(timeout=60)[0]
    assert proc.returncode == R.EXIT_INTERRUPTED, text
    assert "INTERRUPTED 384_fold0" in text and "Rerun the same command" in text
    assert not lock_path(grid["out_dir"]).exists()
    assert wait_dead(kernel_pid), "the notebook kernel outlived the interrupted runner"


def test_a_killed_runner_leaves_no_orphans_and_its_lock_is_taken_over(grid):
    proc, kernel_pid = start_runner_with_a_sleeping_run(grid)
    proc.kill()  # SIGKILL: no cleanup at all in the runner
    proc.communicate(timeout=30)
    out = Path(grid["out_dir"])
    assert lock_path(out).exists()
    assert wait_dead(kernel_pid), "the run's process outlived its killed runner"
    messages = []
    with GridLock(out, echo=messages.append):  # what the next runner does first
        pass
    assert "taking over the stale lock" in messages[0] and f"pid {proc.pid}" in messages[0]


def test_ray_is_optional(grid, monkeypatch, capsys):
    code = "import sys; sys.modules['ray'] = None; import iqa_lib.run_all"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r'pip install "iqa-lib\[ray\]"'):
        R.run_grid(**grid, ray="local", stream=io.StringIO())
    assert R.main(cli_args(grid) + ["--ray", "local"]) == R.EXIT_USAGE
    assert 'pip install "iqa-lib[ray]"' in capsys.readouterr().err


@pytest.mark.slow
def test_ray_local_runs_the_grid(grid):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        stream = io.StringIO()
        result = R.run_grid(**grid, ray="local", ray_gpus=0, stream=stream)
    finally:
        ray.shutdown()
    assert result.ok, stream.getvalue()
    assert [s.status for s in result.steps] == ["done"] * 5
    out = Path(grid["out_dir"])
    for name in ("384_fold0", "384_fold1"):
        assert (out / "runs" / name / "03_train.ipynb").is_file()
        assert "ray task" in (out / "runs" / name / "03_train.log").read_text()
        assert result[name].note.startswith("on "), result[name].note
    assert result["04_infer"].note.startswith("on ")
    assert sorted(c["name"] for c in calls(out)) == ["02_folds", "04_infer", "05_ensemble", "384_fold0", "384_fold1"]
