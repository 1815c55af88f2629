"""Faults during a run: kills at the worst moments, a full disk. Nothing is lost or torn."""
import errno
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from iqa_lib.checkpoint import CheckpointError, atomic_write_bytes, safe_torch_load
from iqa_lib.infer import load_model
from iqa_lib.train import fit
from conftest import make_exposure_data, metrics_of, tiny_params

# Runs one training in a child process that SIGKILLs itself at the N-th call of a function:
# `replace` = the rename that publishes a checkpoint, `write` = half-way through writing one,
# `validate` = during a validation pass.
KILL_SCRIPT = r"""
import json, os, signal, sys
import iqa_lib.checkpoint as C, iqa_lib.train as T
from iqa_lib.config import load_config
where, n = sys.argv[2], int(sys.argv[3])
calls = {"n": 0}
def die_on_nth(real):
    def wrapped(*a, **k):
        if where != "validate" and "/runs/" not in str(a[-1]):  # count the run's own files only
            return real(*a, **k)
        calls["n"] += 1
        if calls["n"] == n:
            if where == "write":  # leave a torn temp file, as a kill mid-write would
                open(os.path.join(os.path.dirname(a[0]), ".torn.ckpt.x.tmp"), "wb").write(b"PK\x03\x04half")
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    return wrapped
if where in ("replace", "write"):
    C.os.replace = die_on_nth(C.os.replace)
else:
    T.predict_indices = die_on_nth(T.predict_indices)
T.fit(load_config("demo", 64, 0, json.loads(sys.argv[1])), progress=False)
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_exposure_data(tmp_path_factory.mktemp("faults"), n_train=60, n_test=6)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    return fit(tiny_params(data, out, **{"train.save_every_steps": 2}), progress=False)


@pytest.mark.parametrize("where,n", [("replace", 4), ("write", 6), ("validate", 2)])
def test_killed_run_resumes_to_the_same_result(data, reference, tmp_path, where, n):
    ov = {"data_dir": str(data), "out_dir": str(tmp_path), "train.epochs": 3, "train.patience": 10,
          "train.num_workers": 0, "train.batch_size": 8, "train.deterministic": True, "train.save_every_steps": 2}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, json.dumps(ov), where, str(n)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]  # it really was killed
    run = tmp_path / "runs" / "64_fold0"
    # Whatever sits under a final name is whole (temp files carry temp names only).
    for f in [*run.glob("*.pt"), *run.glob("*.ckpt")]:  # last.pt and the best checkpoint
        safe_torch_load(f)
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"

    resumed = fit(tiny_params(data, tmp_path, **{"train.save_every_steps": 2}), progress=False)
    assert resumed.status == "completed"
    pd.testing.assert_frame_equal(metrics_of(reference.run_dir), metrics_of(run), check_exact=True)
    load_model(resumed.checkpoint)
    assert not list(run.glob(".*.tmp"))  # the torn temp file was cleaned up


def test_full_disk_while_saving_keeps_the_previous_files(data, tmp_path, monkeypatch):
    params = tiny_params(data, tmp_path, **{"train.epochs": 1})
    first = fit(params, progress=False)
    run = first.run_dir
    before = {f.name: f.read_bytes() for f in run.iterdir() if f.suffix in (".ckpt", ".pt", ".csv")}

    import iqa_lib.checkpoint as C

    def full(fd, *a, **k):
        os.close(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C.os, "fdopen", full)
    with pytest.raises(OSError, match=r"could not write .*manifest\.json' \(No space left on device\); nothing was written"):
        fit(tiny_params(data, tmp_path, **{"train.epochs": 3}), progress=False, force=True)
    monkeypatch.undo()
    aside = params.run.aside  # the forced retrain set the run's files aside until it completes
    after = {f.name: f.read_bytes() for f in aside.iterdir() if f.name in before}
    assert after == before
    assert not list(run.glob(".*.tmp"))
    load_model(aside / first.checkpoint.name)


def test_a_full_disk_while_overwriting_a_file_keeps_its_previous_version(tmp_path, monkeypatch):
    import iqa_lib.checkpoint as C

    path = tmp_path / "last.pt"
    atomic_write_bytes(path, b"the previous version")

    def full(fd, *a, **k):
        os.close(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C.os, "fdopen", full)
    with pytest.raises(OSError, match=r"could not write .*last\.pt' \(No space left on device\); .*previous version is intact"):
        atomic_write_bytes(path, b"the new version")
    assert path.read_bytes() == b"the previous version" and not list(tmp_path.glob(".*.tmp"))


def test_unwritable_folder_is_a_clear_error(tmp_path, monkeypatch):
    import iqa_lib.checkpoint as C

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(C.tempfile, "mkstemp", denied)
    with pytest.raises(OSError, match=r"could not write '.*x.bin' \(Permission denied\); nothing was written. .*writable"):
        atomic_write_bytes(tmp_path / "x.bin", b"1")


def test_truncated_checkpoint_is_refused_clearly(data, reference, tmp_path):
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(reference.checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable PyTorch file.*truncated"):
        load_model(cut)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_model(empty)
