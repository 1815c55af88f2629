"""Run the whole grid: every notebook of the kit, each training run once, through papermill.

``python -m iqa_lib.run_all`` (``make reproduce``) reproduces the team's 15 runs;
``python -m iqa_lib.run_all --profile demo`` (``make demo``) does the same on synthetic data
sized for a CPU. The steps, in order::

    01_eda        (unless --skip-eda; its failure does not stop the grid)
    02_folds      once
    03_train      once per (res, fold) of the profile, several at a time (one per GPU)
    04_infer      runs="all" (or the list of runs when the grid is restricted)
    05_ensemble

Each step executes its notebook with papermill in a child process (``python -m papermill
IN OUT -k python3 --cwd REPO_ROOT -y PARAMS``). Outputs go to the output folder::

    {out_dir}/notebooks/0N_name.ipynb  + .log        01, 02, 04, 05
    {out_dir}/runs/{res}_fold{k}/03_train.ipynb + .log

Rerunning the same command continues where it stopped: runs that completed (manifest says
completed and the checkpoint loads) are skipped, interrupted ones are relaunched (training
resumes from last.pt), and the other notebooks rerun only when something they read changed.
``--force`` deletes the selected runs and reruns everything.

Parallelism: one machine with several GPUs runs one training per GPU (``CUDA_VISIBLE_DEVICES``
set per child); without a GPU, one run at a time on the CPU or ``--parallel N``; several
machines with ``--ray ADDRESS`` (optional dependency: ``pip install "iqa-lib[ray]"``), where
every training and the inference become Ray tasks asking for one GPU each, and notebooks and
logs are written to the shared out_dir.

A lock file, ``{out_dir}/.run_all.lock``, keeps two runners off one output folder.

Python: ``run_grid(profile="demo", res=[384], folds=[0]) -> GridResult``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TextIO

import yaml

from .lock import GridLock, LockHeldError
from .params import DEFAULT_PROFILE, ParamsError, load_params, profile_resolutions, run_name

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
EDA, FOLDS, TRAIN, INFER, ENSEMBLE = "01_eda", "02_folds", "03_train", "04_infer", "05_ensemble"
RAY_REQUIREMENT = "ray>=2.9"
RAY_INSTALL_HINT = 'pip install "iqa-lib[ray]"'
# Parameters run_all sets itself; `-p` may not set them.
RESERVED_PARAMS = ("profile", "data_dir", "out_dir", "res", "fold", "runs")

QUEUED, RUNNING, DONE, FAILED, SKIPPED, BLOCKED, INTERRUPTED = (
    "queued", "running", "done", "failed", "skipped", "blocked", "interrupted")
FINISHED = (DONE, FAILED, SKIPPED, BLOCKED, INTERRUPTED)
SUCCEEDED = (DONE, SKIPPED)

# Exit codes of the command line.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class GridError(ValueError):
    """A grid that cannot be run as asked; the message says what to change."""


# ------------------------------------------------------------------------------------------
# parameters and devices
# ------------------------------------------------------------------------------------------
_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_param_value(text: str) -> Any:
    """A ``-p key value`` value as papermill reads it: YAML (3, 0.5, true, null, [1, 2], text),
    plus ``None`` as null and ``1e-5`` as a float (YAML 1.1 would keep both as text)."""
    if not isinstance(text, str):
        return text
    if text.strip() == "None":
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
        return float(value)
    return text if value is None and text.strip() not in ("null", "~") else value


def check_extra_params(extra: Mapping[str, Any] | Sequence[tuple[str, Any]] | None) -> dict:
    """``-p`` pairs for 03_train as a dict; text values are parsed with parse_param_value."""
    if extra is None:
        return {}
    items = extra.items() if isinstance(extra, Mapping) else extra
    out = {}
    for key, value in items:
        if not isinstance(key, str) or not key.isidentifier():
            raise GridError(
                f"notebook parameter {key!r} is not a Python name: papermill assigns it as a variable "
                f"(use names such as epochs, max_steps, batch_size, precision)."
            )
        if key in RESERVED_PARAMS:
            flag = {"res": "--res", "fold": "--folds", "data_dir": "--data-dir", "out_dir": "--out-dir",
                    "profile": "--profile"}.get(key)
            how = f"use {flag}" if flag else "run_all sets it"
            raise GridError(f"-p {key} cannot be passed through: {how}.")
        out[key] = parse_param_value(value) if isinstance(value, str) else value
    return out


def notebook_parameters(path: Path) -> list[str] | None:
    """Names the notebook's `parameters` cell assigns, or None if it has no such cell."""
    import ast

    nb = _read_json(path) or {}
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code" or "parameters" not in cell.get("metadata", {}).get("tags", []):
            continue
        src = cell.get("source", "")
        src = "".join(src) if isinstance(src, list) else src
        try:
            tree = ast.parse(src)
        except SyntaxError:
            return None
        names = []
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            names += [t.id for t in targets if isinstance(t, ast.Name)]
        return names
    return None


def _check_params_declared(extra: Mapping[str, Any], notebook: Path) -> None:
    """Refuse a `-p` name that 03_train does not declare: every run would fail on it."""
    declared = notebook_parameters(notebook)
    if declared is None:
        return
    unknown = [k for k in extra if k not in declared]
    if unknown:
        import difflib

        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, declared, n=1)
            hints.append(f"{k}" + (f" (did you mean {close[0]}?)" if close else ""))
        raise GridError(
            f"{notebook.name} has no parameter {', '.join(hints)}. Its parameters: "
            f"{', '.join(n for n in declared if n not in RESERVED_PARAMS)}."
        )


def _cuda_device_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count()


def parse_gpus(spec: Any = "auto", count: int | None = None) -> list[int]:
    """GPU indices (as this process numbers them) to run on; [] means the CPU.

    ``auto`` (or None): every visible GPU. An integer N: the first N (0: the CPU). A list, or
    text with a comma (``0,2,3``; a single one as ``3,``): those GPUs. ``cpu``/``none``: the CPU.
    `count` is the number of visible GPUs (default: torch.cuda.device_count()).
    """
    def n_visible() -> int:
        return _cuda_device_count() if count is None else count

    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto"):
        return list(range(n_visible()))
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in ("cpu", "none", ""):
            return []
        if "," in text:
            parts = [p.strip() for p in text.split(",") if p.strip()]
            if not all(p.isdigit() for p in parts):
                raise GridError(f"--gpus {spec!r}: a list of GPU indices looks like 0,2,3.")
            spec = [int(p) for p in parts]
        elif text.isdigit():
            spec = int(text)
        else:
            raise GridError(f"--gpus {spec!r}: use auto, a count (2), a list (0,2,3 or 3,) or cpu.")
    if isinstance(spec, bool):
        raise GridError(f"gpus must be 'auto', a count or a list of indices, got {spec!r}.")
    have = n_visible()
    if isinstance(spec, int):
        if spec < 0:
            raise GridError(f"--gpus {spec}: the count must be >= 0.")
        if spec > have:
            raise GridError(f"--gpus {spec}: only {have} CUDA GPU(s) are visible (torch.cuda.device_count()).")
        return list(range(spec))
    ids = [int(i) for i in spec]
    if len(set(ids)) != len(ids):
        raise GridError(f"--gpus {spec!r} names a GPU twice.")
    bad = [i for i in ids if not 0 <= i < have]
    if bad:
        raise GridError(
            f"--gpus {spec!r}: GPU(s) {bad} do not exist; {have} CUDA GPU(s) are visible"
            + (f" (indices 0..{have - 1})." if have else ": use --gpus cpu.")
        )
    return ids


def physical_gpu_ids(indices: Iterable[int], parent_visible: str | None = None) -> list[str]:
    """What to put in a child's CUDA_VISIBLE_DEVICES for these GPU indices of this process.

    If this process itself sees a subset (CUDA_VISIBLE_DEVICES=4,5,6), index 1 is GPU 5.
    """
    indices = list(indices)
    if parent_visible is None:
        return [str(i) for i in indices]
    visible = [v.strip() for v in parent_visible.split(",") if v.strip()]
    out = []
    for i in indices:
        if i >= len(visible):
            raise GridError(f"GPU index {i} is not in CUDA_VISIBLE_DEVICES={parent_visible!r}.")
        out.append(visible[i])
    return out


# ------------------------------------------------------------------------------------------
# scheduling (pure)
# ------------------------------------------------------------------------------------------
def assign_slots(ready: Sequence[tuple[str, int]], free: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    """Which ready steps start now, on which free slots (GPUs, or CPU places).

    `ready` lists (step, slots it needs) in priority order; `free` the slots nobody uses.
    Steps are served in order, each on the first free slots; one that needs more slots than
    are left waits and later, smaller ones may still start. No slot is given twice.
    """
    free = list(free)
    out = []
    for name, need in ready:
        if need < 1:
            raise ValueError(f"step {name} needs {need} slots; every step needs at least 1.")
        if need <= len(free):
            out.append((name, tuple(free[:need])))
            free = free[need:]
    return out


# ------------------------------------------------------------------------------------------
# the plan
# ------------------------------------------------------------------------------------------
@dataclass
class Step:
    """One notebook execution of the grid and its live state."""

    name: str                    # "02_folds" or "384_fold0"
    notebook: str                # notebook stem: "03_train"
    output_rel: str              # output notebook, relative to out_dir
    params: dict                 # papermill parameters
    deps: list[tuple[str, bool]] = field(default_factory=list)  # (step, must have succeeded)
    need: int = 1                # slots (GPUs) it occupies
    remote: bool = False         # a Ray task
    res: int | None = None
    fold: int | None = None
    priority: int = 0            # smaller starts first
    status: str = QUEUED
    note: str = ""
    where: str = ""
    started: float | None = None
    ended: float | None = None
    submitted: float | None = None
    returncode: int | None = None
    best: float | None = None
    best_epoch: int | None = None
    epochs: int | None = None
    output: Path | None = None   # absolute, on this machine
    log: Path | None = None
    run_dir: Path | None = None

    @property
    def is_train(self) -> bool:
        return self.notebook == TRAIN

    def seconds(self, now: float | None = None) -> float | None:
        if self.started is None:
            return None
        return (self.ended if self.ended is not None else (now or time.time())) - self.started


@dataclass
class Plan:
    profile: str
    resolutions: list[int]
    folds: list[int]
    data_dir: Path
    out_dir: Path
    notebooks_dir: Path
    notebooks_param: str | None   # notebooks_dir as sent to Ray workers (None: their own repo)
    out_param: str                # out_dir as sent to notebooks (relative: from the repo root)
    steps: list[Step]
    full_grid: bool
    extra: dict

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)


def _resolve(path: str | os.PathLike, root: Path = REPO_ROOT) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def _as_int_list(values, what: str) -> list[int]:
    if values is None:
        return []
    if isinstance(values, (int, str)):
        values = [values]
    out = []
    for v in values:
        try:
            out.append(int(v))
        except (TypeError, ValueError):
            raise GridError(f"{what} must be integers, got {v!r}.") from None
    return out


def plan_grid(
    profile: str = DEFAULT_PROFILE,
    res: Sequence[int] | None = None,
    folds: Sequence[int] | None = None,
    data_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    extra_params: Mapping[str, Any] | None = None,
    skip_eda: bool = False,
    notebooks_dir: str | os.PathLike | None = None,
    remote: bool = False,
) -> Plan:
    """The steps of a grid, checked (profile, resolutions, folds, notebooks), nothing run."""
    all_res = profile_resolutions(profile)
    base = load_params(all_res[0], 0, profile)
    n_folds = int(base["n_folds"])
    chosen_res = _as_int_list(res, "--res") or all_res
    bad = [r for r in chosen_res if r not in all_res]
    if bad:
        raise GridError(f"--res {bad}: profile {profile!r} defines {', '.join(map(str, all_res))}.")
    chosen_folds = _as_int_list(folds, "--folds") or list(range(n_folds))
    bad = [k for k in chosen_folds if not 0 <= k < n_folds]
    if bad:
        raise GridError(f"--folds {bad}: profile {profile!r} has n_folds={n_folds}, so folds are 0..{n_folds - 1}.")
    chosen_res = sorted(dict.fromkeys(chosen_res))
    chosen_folds = sorted(dict.fromkeys(chosen_folds))
    extra = check_extra_params(extra_params)
    need = 1
    if "devices" in extra:
        try:
            need = int(extra["devices"])
        except (TypeError, ValueError):
            raise GridError(f"-p devices must be an integer, got {extra['devices']!r}.") from None
        if need < 1:
            raise GridError(f"-p devices must be >= 1, got {need}.")
    data_given = str(data_dir) if data_dir is not None else str(base["data_dir"])
    out_given = str(out_dir) if out_dir is not None else str(base["out_dir"])
    data_abs, out_abs = _resolve(data_given), _resolve(out_given)
    # Ray workers resolve a relative path against their own checkout; locally it is made absolute.
    data_param = data_given if remote and not Path(data_given).expanduser().is_absolute() else str(data_abs)
    out_param = out_given if remote and not Path(out_given).expanduser().is_absolute() else str(out_abs)
    nb_dir = _resolve(notebooks_dir) if notebooks_dir is not None else NOTEBOOKS_DIR
    wanted = ([] if skip_eda else [EDA]) + [FOLDS, TRAIN, INFER, ENSEMBLE]
    missing = [f"{n}.ipynb" for n in wanted if not (nb_dir / f"{n}.ipynb").is_file()]
    if missing:
        raise GridError(f"notebook(s) {', '.join(missing)} not found in {nb_dir}"
                        + ("" if notebooks_dir is None else " (notebooks_dir)") + ".")

    _check_params_declared(extra, nb_dir / f"{TRAIN}.ipynb")
    common = {"profile": profile, "data_dir": data_param, "out_dir": out_param}
    steps: list[Step] = []

    def notebook_step(stem: str, deps, **kw) -> Step:
        return Step(stem, stem, f"notebooks/{stem}.ipynb", dict(common, **kw.pop("params", {})), deps=deps, **kw)

    if not skip_eda:
        steps.append(notebook_step(EDA, []))
    steps.append(notebook_step(FOLDS, [] if skip_eda else [(EDA, False)]))
    train_names = []
    n_res = len(chosen_res)
    for ri, r in enumerate(chosen_res):
        for k in chosen_folds:
            name = run_name(r, k)
            train_names.append(name)
            # The largest resolution takes longest: starting it first shortens the grid.
            steps.append(Step(
                name, TRAIN, f"runs/{name}/{TRAIN}.ipynb", dict(common, res=r, fold=k, **extra),
                deps=[(FOLDS, True)], need=need, remote=remote, res=r, fold=k,
                priority=(n_res - ri) * 1000 + k, run_dir=out_abs / "runs" / name,
            ))
    full = chosen_res == all_res and chosen_folds == list(range(n_folds))
    # 04_infer takes "all" or a comma list of runs: a restricted grid infers only its own runs.
    runs_param = "all" if full else ",".join(train_names)
    steps.append(notebook_step(INFER, [(n, True) for n in train_names], remote=remote, params={"runs": runs_param}))
    steps.append(notebook_step(ENSEMBLE, [(INFER, True)], params={"runs": runs_param}))
    for s in steps:
        s.output = out_abs / s.output_rel
        s.log = s.output.with_suffix(".log")
    nb_param = None if notebooks_dir is None else str(nb_dir)
    return Plan(profile, chosen_res, chosen_folds, data_abs, out_abs, nb_dir, nb_param, out_param, steps, full, extra)


# ------------------------------------------------------------------------------------------
# building and running one papermill command (also on Ray workers)
# ------------------------------------------------------------------------------------------
def _yaml_flow(obj: Any) -> str:
    return yaml.safe_dump(obj, default_flow_style=True, width=10**9, sort_keys=False).strip()


def step_spec(step: Step, plan: Plan, kernel: str) -> dict:
    """Everything a process (here or on a Ray worker) needs to run the step: plain data."""
    return {"name": step.name, "notebook": step.notebook, "notebooks_dir": plan.notebooks_param,
            "out_dir": plan.out_param, "output_rel": step.output_rel, "params": step.params, "kernel": kernel}


def build_command(spec: Mapping, root: Path | None = None) -> tuple[list[str], Path, Path]:
    """(papermill command, output notebook, log) of a step spec, with paths of this machine."""
    root = REPO_ROOT if root is None else root
    nb_dir = _resolve(spec["notebooks_dir"], root) if spec.get("notebooks_dir") else root / "notebooks"
    output = _resolve(spec["out_dir"], root) / spec["output_rel"]
    cmd = [
        sys.executable, "-m", "papermill", str(nb_dir / f"{spec['notebook']}.ipynb"), str(output),
        "-k", spec.get("kernel", "python3"), "--cwd", str(root), "--log-output", "--no-progress-bar",
        "-y", _yaml_flow(spec["params"]),
    ]
    return cmd, output, output.with_suffix(".log")


def child_env(cuda_visible: str | None, threads: int | None = None, base: Mapping[str, str] | None = None) -> dict:
    """The environment of a step's process: its GPUs (None: leave as is), thread count, PATH."""
    env = dict(os.environ if base is None else base)
    if cuda_visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_visible
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, str(threads))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TQDM_MININTERVAL", "10")  # progress bars: one line per 10 s in logs, not hundreds
    # The kernel named python3 should be this interpreter's: put its folder first on PATH.
    bindir = str(Path(sys.executable).parent)
    if env.get("PATH", "").split(os.pathsep)[0] != bindir:
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def _log_header(log, cmd: list[str], env: Mapping[str, str], where: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    log.write(
        f"===== run_all: {stamp} on {socket.gethostname()} ({where}), "
        f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '<unset>')!s}\n"
        f"===== {shlex.join(cmd)}\n"
    )
    log.flush()


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM when this process dies (Linux), so a
    runner killed with SIGKILL leaves no papermill behind to race with the next runner."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, before the fork
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the call: do not run orphaned
            os._exit(1)

    return preexec


def _stop_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGINT (papermill saves the notebook), then SIGTERM, then SIGKILL, to the child's group."""
    for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue


def _ray_task(spec: dict) -> dict:
    """Runs on a Ray worker: the step's papermill command, logged to the shared out_dir."""
    cmd, output, log_path = build_command(spec)
    output.parent.mkdir(parents=True, exist_ok=True)
    env = child_env(None)  # Ray has set CUDA_VISIBLE_DEVICES to the GPUs it gave this task
    t0 = time.time()
    with open(log_path, "a", encoding="utf-8") as log:
        _log_header(log, cmd, env, "ray task")
        proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent())
        try:
            rc = proc.wait()
        except BaseException:  # cancelled: do not leave papermill running on the worker
            _stop_process_group(proc)
            raise
    return {"returncode": rc, "host": socket.gethostname(), "gpus": env.get("CUDA_VISIBLE_DEVICES", ""),
            "seconds": time.time() - t0}


# ------------------------------------------------------------------------------------------
# executors
# ------------------------------------------------------------------------------------------
class LocalExecutor:
    """Child processes on this machine, one per slot (a GPU, or a CPU place)."""

    def __init__(self, slots: Sequence[str], gpu: bool, threads: int | None = None):
        self.slots, self.gpu, self.threads = list(slots), gpu, threads
        self.free = list(slots)
        self.procs: dict[str, tuple[subprocess.Popen, tuple[str, ...], Any]] = {}

    def describe(self, slots: Sequence[str]) -> str:
        return ("gpu " + ",".join(slots)) if self.gpu else "cpu"

    def launch(self, step: Step, spec: dict, slots: tuple[str, ...]) -> None:
        cmd, output, log_path = build_command(spec)
        output.parent.mkdir(parents=True, exist_ok=True)
        env = child_env(",".join(slots) if self.gpu else "", self.threads)
        log = open(log_path, "a", encoding="utf-8")
        try:
            _log_header(log, cmd, env, self.describe(slots))
            # Its own session: a Ctrl-C reaches the runner only, which stops each child in
            # order; and it gets SIGTERM if the runner is killed outright.
            proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent())
        except BaseException:
            log.close()
            raise
        for s in slots:
            self.free.remove(s)
        self.procs[step.name] = (proc, slots, log)
        step.where = self.describe(slots)

    def poll(self) -> list[tuple[str, int, str]]:
        """(step, exit code, note) of the children that ended since the last call."""
        out = []
        for name, (proc, slots, log) in list(self.procs.items()):
            rc = proc.poll()
            if rc is None:
                continue
            log.close()
            self.free.extend(slots)
            self.free.sort(key=self.slots.index)
            del self.procs[name]
            out.append((name, rc, ""))
        return out

    def stop_all(self) -> list[str]:
        names = list(self.procs)
        threads = [threading.Thread(target=_stop_process_group, args=(p,)) for p, _, _ in self.procs.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for p, _, log in self.procs.values():
            log.close()
        self.procs.clear()
        self.free = list(self.slots)
        return names

    def close(self) -> None:
        self.stop_all()


def import_ray():
    """The ray module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ImportError(
            f"--ray needs the optional dependency Ray, which is not installed: {RAY_INSTALL_HINT} "
            f"(or pip install \"{RAY_REQUIREMENT}\"), on this machine and on every Ray node."
        ) from e
    return ray


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a host:port nobody listens on (ray.init would retry for minutes)."""
    target = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return  # 'local', 'auto' and other forms: Ray's own checks
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise GridError(
            f"nothing answers at Ray address {address!r} ({e.strerror or e}). Start the head with "
            f"`ray start --head` there, or use --ray local for a Ray on this machine."
        ) from None


class RayExecutor:
    """Steps as Ray tasks, each asking for `gpus` GPUs per slot it needs; Ray does the placing."""

    def __init__(self, address: str, gpus: float = 1.0, echo: Callable[[str], None] = print):
        self.ray = import_ray()
        self.gpus = float(gpus)
        self.owned = False
        if self.ray.is_initialized():
            echo("run_all: using the Ray runtime this process already started.")
        else:
            _check_reachable(address)
            echo(f"run_all: {'starting a local Ray' if address in ('local', '') else f'connecting to Ray at {address}'} ...")
            try:
                if address in ("local", ""):
                    self.ray.init(address="local", include_dashboard=False)
                else:
                    self.ray.init(address=address)
            except Exception as e:  # no cluster there, version mismatch, ...
                raise GridError(
                    f"could not start or reach Ray at {address!r}: {type(e).__name__}: {str(e).strip()[:300]}. "
                    f"Use --ray local (a Ray on this machine), --ray auto (the cluster `ray start` made here) "
                    f"or the head's address, e.g. --ray 10.0.0.1:6379."
                ) from e
            self.owned = True
        have = float(self.ray.cluster_resources().get("GPU", 0))
        if self.gpus > have:
            echo(f"run_all: WARNING the Ray cluster has {have:g} GPU(s) now; tasks asking for {self.gpus:g} wait "
                 f"until nodes with GPUs join (for CPU-only Ray use --ray-gpus 0).")
        self.remote = self.ray.remote(_ray_task)
        self.tasks: dict[str, Any] = {}
        self.refs: dict[Any, str] = {}

    def launch(self, step: Step, spec: dict) -> None:
        ref = self.remote.options(num_gpus=self.gpus * step.need, num_cpus=1, max_retries=0,
                                  name=f"iqa:{step.name}").remote(spec)
        self.tasks[step.name] = ref
        self.refs[ref] = step.name
        step.where = "ray"

    def poll(self) -> list[tuple[str, int, str]]:
        if not self.tasks:
            return []
        ready, _ = self.ray.wait(list(self.tasks.values()), num_returns=len(self.tasks), timeout=0)
        out = []
        for ref in ready:
            name = self.refs.pop(ref)
            del self.tasks[name]
            try:
                info = self.ray.get(ref)
            except Exception as e:  # the task itself died (worker lost, node down, cancelled)
                out.append((name, -1, f"Ray task error: {type(e).__name__}: {str(e).splitlines()[0][:200]}"))
                continue
            where = f"{info['host']}" + (f" gpu {info['gpus']}" if info.get("gpus") else "")
            out.append((name, int(info["returncode"]), f"on {where}"))
        return out

    def stop_all(self) -> list[str]:
        names = list(self.tasks)
        for ref in self.tasks.values():
            try:
                self.ray.cancel(ref)  # KeyboardInterrupt in the task: it stops its papermill
            except Exception:
                pass
        deadline = time.time() + 15
        while self.tasks and time.time() < deadline:
            ready, _ = self.ray.wait(list(self.tasks.values()), num_returns=len(self.tasks), timeout=1)
            for ref in ready:
                self.tasks.pop(self.refs.pop(ref), None)
        self.tasks.clear()
        self.refs.clear()
        return names

    def close(self) -> None:
        self.stop_all()
        if self.owned:
            self.ray.shutdown()


# ------------------------------------------------------------------------------------------
# what is already done
# ------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _normal(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def notebook_completed(output: Path, params: Mapping | None = None) -> bool:
    """True if papermill finished `output` without an error (and with these parameters)."""
    nb = _read_json(output)
    if nb is None:
        return False
    meta = nb.get("metadata", {}).get("papermill", {})
    if not meta.get("end_time") or meta.get("exception"):
        return False
    return params is None or _normal(meta.get("parameters")) == _normal(dict(params))


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def training_completed(run_dir: Path) -> bool:
    """`iqa_lib.train.completed_result(run_dir) is not None`: manifest completed, checkpoint loads."""
    manifest = _read_json(run_dir / "manifest.json") or {}
    if manifest.get("status") != "completed" or not (run_dir / f"{run_dir.name}.ckpt").is_file():
        return False  # what completed_result says too, without importing torch and timm (seconds)
    from .train import completed_result

    return completed_result(run_dir) is not None


def read_progress(step: Step) -> None:
    """Best validation PLCC+SRCC so far (manifest, else metrics.csv) and epochs run."""
    if step.run_dir is None:
        return
    manifest = _read_json(step.run_dir / "manifest.json") or {}
    best = manifest.get("best") or {}
    if manifest.get("status") == "completed" and isinstance(best.get("plcc_srcc"), (int, float)):
        step.best, step.best_epoch = float(best["plcc_srcc"]), manifest.get("best_epoch")
        step.epochs = manifest.get("epochs_run", step.epochs)
        return
    try:
        with open(step.run_dir / "metrics.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return
    scored = []
    for row in rows:
        try:
            scored.append((float(row["plcc_srcc"]), int(float(row["epoch"]))))
        except (KeyError, TypeError, ValueError):
            continue
    if scored:
        step.best, step.best_epoch = max(scored, key=lambda t: (t[0], -t[1]))
        step.epochs = max(e for _, e in scored) + 1


def _source_notebook(plan: Plan, step: Step) -> Path:
    return plan.notebooks_dir / f"{step.notebook}.ipynb"


def up_to_date_reason(plan: Plan, step: Step, ran_now: set[str]) -> str | None:
    """Why a non-training step need not run again, or None if it must."""
    if step.name in ran_now or not notebook_completed(step.output, step.params):
        return None
    out_time, src_time = _mtime(step.output), _mtime(_source_notebook(plan, step))
    if out_time is None or (src_time is not None and src_time > out_time):
        return None
    if step.notebook == FOLDS and not (plan.out_dir / "folds.csv").is_file():
        return None
    if step.notebook == INFER:
        runs = [plan.step(n) for n, _ in step.deps]
        if any(r.name in ran_now for r in runs):
            return None
        for r in runs:
            ckpt = _mtime(r.run_dir / f"{r.name}.ckpt")
            if ckpt is None or ckpt > out_time:
                return None
    if step.notebook == ENSEMBLE:
        infer = plan.step(INFER)
        if INFER in ran_now or (_mtime(infer.output) or 0) > out_time:
            return None
    return "up to date"


# ------------------------------------------------------------------------------------------
# the live table
# ------------------------------------------------------------------------------------------
def fmt_seconds(s: float | None) -> str:
    if s is None:
        return ""
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


NOTE_WIDTH = 80  # the table's notes are cut here; the summary at the end has them whole


def render_table(steps: Sequence[Step], now: float | None = None, title: str = "") -> str:
    """The grid as a plain-text table (terminal and CI logs alike)."""
    now = time.time() if now is None else now
    head = ("step", "status", "where", "best PLCC+SRCC", "epochs", "elapsed", "notes")
    rows = []
    for s in steps:
        best = "" if s.best is None else f"{s.best:.4f}" + ("" if s.best_epoch is None else f" @ep{s.best_epoch}")
        note = s.note if len(s.note) <= NOTE_WIDTH else s.note[: NOTE_WIDTH - 3] + "..."
        rows.append((s.name, s.status, s.where, best, "" if s.epochs is None else str(s.epochs),
                     fmt_seconds(s.seconds(now)), note))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    counts = {}
    for s in steps:
        counts[s.status] = counts.get(s.status, 0) + 1
    order = (DONE, SKIPPED, RUNNING, QUEUED, FAILED, BLOCKED, INTERRUPTED)
    summary = ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k))
    top = f"[{time.strftime('%H:%M:%S', time.localtime(now))}] {title}{' | ' if title else ''}{summary}"
    return "\n".join([top, line(head), line(["-" * w for w in widths]), *map(line, rows)])


def _table_key(steps: Sequence[Step]) -> tuple:
    return tuple((s.status, s.where, s.best, s.best_epoch, s.epochs, s.note) for s in steps)


# ------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepResult:
    name: str
    status: str
    output: Path
    log: Path
    returncode: int | None
    seconds: float | None
    best_plcc_srcc: float | None
    note: str
    run_dir: Path | None = None


@dataclass
class GridResult:
    """What a grid did; `ok` is False if any step failed, was blocked or interrupted."""

    out_dir: Path
    steps: list[StepResult]
    seconds: float
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted

    @property
    def failed(self) -> list[StepResult]:
        return [s for s in self.steps if s.status in (FAILED, BLOCKED, INTERRUPTED)]

    def __getitem__(self, name: str) -> StepResult:
        return next(s for s in self.steps if s.name == name)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for s in self.steps:
            counts[s.status] = counts.get(s.status, 0) + 1
        text = ", ".join(f"{v} {k}" for k, v in counts.items())
        verdict = "INTERRUPTED" if self.interrupted else ("OK" if self.ok else "FAILED")
        lines = [f"run_all: {verdict} after {fmt_seconds(self.seconds)} ({text}); outputs in {self.out_dir}"]
        for s in self.steps:
            if s.status == FAILED:
                lines.append(f"  FAILED {s.name}" + (f" (exit {s.returncode})" if s.returncode is not None else "")
                             + (f": {s.note}" if s.note else ""))
                lines.append(f"    notebook: {s.output}")
                lines.append(f"    log:      {s.log}")
            elif s.status in (BLOCKED, INTERRUPTED):
                lines.append(f"  {s.status.upper()} {s.name}: {s.note}")
        if self.interrupted:
            lines.append("Rerun the same command to continue: finished runs are skipped, interrupted ones resume.")
        elif not self.ok:
            lines.append("Fix the cause and rerun the same command: finished runs are skipped, interrupted ones resume.")
        return "\n".join(lines)


def _last_error_line(log: Path, max_bytes: int = 65536) -> str:
    """The last line of a log that names an exception, for the summary."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - max_bytes))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    pattern = re.compile(r"^\s*([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*)$")
    for line in reversed(text.splitlines()):
        m = pattern.match(line)
        if m and "PapermillExecutionError" not in line:
            return m.group(1).strip()[:300]
    return ""


# ------------------------------------------------------------------------------------------
# the grid
# ------------------------------------------------------------------------------------------
@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a job scheduler stopping us) behaves like Ctrl-C: children stopped, lock freed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _ensure_data(plan: Plan, echo: Callable[[str], None]) -> None:
    if plan.data_dir.is_dir():
        return
    if plan.profile == "demo":
        from .demo_data import make_demo_data

        echo(f"run_all: {plan.data_dir} does not exist: generating the synthetic demo data there ...")
        t0 = time.time()
        make_demo_data(plan.data_dir)
        echo(f"run_all: demo data written in {time.time() - t0:.0f} s.")
        return
    raise GridError(
        f"data_dir {plan.data_dir} does not exist: unpack the challenge data there (train.csv, test.csv, "
        f"train/, test/) or pass --data-dir."
    )


def _command_line(profile, res, folds, data_dir, out_dir, gpus, parallel, ray, force, skip_eda, extra) -> str:
    parts = ["python -m iqa_lib.run_all", "--profile", str(profile)]
    if res:
        parts += ["--res", *map(str, res)]
    if folds:
        parts += ["--folds", *map(str, folds)]
    for flag, val in (("--data-dir", data_dir), ("--out-dir", out_dir)):
        if val is not None:
            parts += [flag, str(val)]
    if ray:
        parts += ["--ray", str(ray)]
    else:
        parts += ["--gpus", str(gpus)] + (["--parallel", str(parallel)] if parallel != 1 else [])
    parts += (["--force"] if force else []) + (["--skip-eda"] if skip_eda else [])
    for k, v in (extra or {}).items():
        parts += ["-p", k, str(v)]
    return " ".join(parts)


def run_grid(
    profile: str = DEFAULT_PROFILE,
    res: Sequence[int] | None = None,
    folds: Sequence[int] | None = None,
    data_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    gpus: Any = "auto",
    parallel: int = 1,
    ray: str | None = None,
    force: bool = False,
    skip_eda: bool = False,
    extra_params: Mapping[str, Any] | None = None,
    notebooks_dir: str | os.PathLike | None = None,
    *,
    ray_gpus: float = 1.0,
    kernel: str = "python3",
    dry_run: bool = False,
    stream: TextIO | None = None,
    poll_s: float = 1.0,
    heartbeat_s: float = 600.0,
) -> GridResult:
    """Run the grid's notebooks (see the module docstring) and return what happened.

    Args:
        profile: parameter profile ('team': the 15 runs of the solution; 'demo': CPU-sized).
        res, folds: restrict the training runs (default: every resolution of the profile, every fold).
        data_dir, out_dir: default to the profile's; relative paths are from the repository root.
        gpus: 'auto' (every visible GPU; the CPU if none), a count, a list of indices, or 'cpu'.
            One training per GPU at a time.
        parallel: trainings at once on the CPU (no GPU); ignored with GPUs.
        ray: a Ray address ('auto', 'host:6379', 'ray://host:10001') or 'local': trainings and
            the inference become Ray tasks with `ray_gpus` GPUs each; needs `pip install "iqa-lib[ray]"`.
        force: delete the selected runs' folders and train them afresh; rerun every notebook.
        skip_eda: leave out 01_eda.
        extra_params: more 03_train parameters ({'epochs': 1, 'max_steps': 20}); text values
            are parsed as on papermill's command line.
        notebooks_dir: where 0N_*.ipynb are (default: the repository's notebooks/).
        ray_gpus: GPUs per Ray task (0 for CPU-only clusters and tests).
        kernel: the Jupyter kernel papermill starts.
        dry_run: print the plan and the commands; run nothing (no lock, no data generation).
        stream: where the table and messages go (default sys.stdout).
        poll_s: seconds between checks of the running steps.
        heartbeat_s: reprint the table at least this often while steps run.

    Raises:
        GridError / ParamsError (ValueError): a bad argument; LockHeldError: another runner
        works on out_dir; ImportError: ray asked for but not installed; KeyboardInterrupt after
        stopping the children and releasing the lock.
    """
    out = stream if stream is not None else sys.stdout

    def echo(msg: str) -> None:
        print(msg, file=out, flush=True)

    if ray is not None:
        import_ray()  # fail before anything else if it is missing
    try:
        parallel = int(parallel)
    except (TypeError, ValueError):
        raise GridError(f"parallel must be an integer >= 1, got {parallel!r}.") from None
    if parallel < 1:
        raise GridError(f"parallel must be >= 1, got {parallel}.")
    plan = plan_grid(profile, res, folds, data_dir, out_dir, extra_params, skip_eda, notebooks_dir, remote=ray is not None)
    need = max(s.need for s in plan.steps)

    gpu_ids: list[int] = []
    if ray is None:
        gpu_ids = parse_gpus(gpus)
        if gpu_ids:
            slots = physical_gpu_ids(gpu_ids, os.environ.get("CUDA_VISIBLE_DEVICES"))
            if need > len(slots):
                raise GridError(f"-p devices {need} needs {need} GPUs per run, but only {len(slots)} are in use (--gpus).")
            if parallel != 1:
                echo("run_all: --parallel applies to CPU runs only; with GPUs, one training runs per GPU.")
            mode = f"{len(slots)} GPU(s) [{', '.join(slots)}], one training per GPU"
        else:
            slots = [f"cpu{i}" for i in range(max(parallel, need))]
            mode = f"CPU, {parallel} run(s) at a time"
    else:
        slots = ["cpu0"]  # 01, 02 and 05 run here; trainings and inference go to Ray
        mode = f"Ray at {ray!r}, {ray_gpus:g} GPU(s) per task"

    title = f"run_all {plan.profile} -> {plan.out_dir}"
    kernel = str(kernel)
    if dry_run:
        echo(f"{title} (dry run; {mode})")
        for s in plan.steps:
            cmd, _, log = build_command(step_spec(s, plan, kernel))
            echo(f"  {s.name}: {shlex.join(cmd)}\n      log: {log}")
        return GridResult(plan.out_dir, [_result(s) for s in plan.steps], 0.0)

    command = _command_line(profile, res, folds, data_dir, out_dir, gpus, parallel, ray, force, skip_eda, plan.extra)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    with GridLock(plan.out_dir, command=command, echo=echo), _sigterm_as_interrupt():
        _ensure_data(plan, echo)
        echo(f"{title}: {len([s for s in plan.steps if s.is_train])} training run(s) on {mode}")
        threads = None
        if not gpu_ids and ray is None and parallel > 1:
            threads = max(1, (os.cpu_count() or 1) // parallel)
        local = LocalExecutor(slots, gpu=bool(gpu_ids), threads=threads)
        remote = RayExecutor(ray, ray_gpus, echo) if ray is not None else None
        return _execute(plan, local, remote, force, kernel, echo, title, poll_s, heartbeat_s)


def _result(s: Step) -> StepResult:
    return StepResult(s.name, s.status, s.output, s.log, s.returncode, s.seconds(), s.best, s.note, s.run_dir)


def _execute(plan: Plan, local: LocalExecutor, remote: RayExecutor | None, force: bool, kernel: str,
             echo: Callable[[str], None], title: str, poll_s: float, heartbeat_s: float) -> GridResult:
    t0 = time.time()
    steps = {s.name: s for s in plan.steps}
    ran_now: set[str] = set()
    interrupted = False

    # Trainings: what is done already, what resumes; --force clears the selected runs.
    for s in plan.steps:
        if not s.is_train:
            continue
        if force and s.run_dir.exists():
            shutil.rmtree(s.run_dir)
            echo(f"run_all: --force: removed {s.run_dir}")
        elif training_completed(s.run_dir):
            s.status, s.note = SKIPPED, "completed earlier"
        elif (s.run_dir / "last.pt").is_file():
            s.note = "resumes from last.pt"
        read_progress(s)

    def finish(s: Step, rc: int, note: str) -> None:
        s.ended, s.returncode = time.time(), rc
        ran_now.add(s.name)
        if rc == 0 and s.is_train and not training_completed(s.run_dir):
            s.status = FAILED
            manifest = _read_json(s.run_dir / "manifest.json") or {}
            s.note = (f"the notebook ended but the run is not completed (manifest status: "
                      f"{manifest.get('status', 'missing')})")
        elif rc == 0:
            s.status, s.note = DONE, note
        else:
            s.status = FAILED
            err = _last_error_line(s.log)
            s.note = "; ".join(x for x in (note, err) if x)
            echo(f"run_all: {s.name} FAILED (exit {rc}){': ' + err if err else ''}\n"
                 f"    notebook: {s.output}\n    log:      {s.log}")
        if s.is_train:
            read_progress(s)

    def launch_ready(now: float) -> bool:
        """Mark blocked steps, skip up-to-date ones, start what can start; True if any started."""
        for s in plan.steps:
            if s.status != QUEUED:
                continue
            bad = [d for d, hard in s.deps if hard and steps[d].status in (FAILED, BLOCKED, INTERRUPTED)]
            if bad:
                s.status = BLOCKED
                s.note = f"needs {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}"
        ready = []
        for s in sorted(plan.steps, key=lambda x: x.priority):
            if s.status != QUEUED or s.submitted is not None:
                continue
            if all(steps[d].status in (SUCCEEDED if hard else FINISHED) for d, hard in s.deps):
                why = None if (s.is_train or force) else up_to_date_reason(plan, s, ran_now)
                if why:
                    s.status, s.note = SKIPPED, why
                else:
                    ready.append(s)
        started = False
        for s in ready:
            if s.remote and remote is not None:
                remote.launch(s, step_spec(s, plan, kernel))
                s.submitted, s.note, started = now, "submitted to Ray", True
        local_ready = [(s.name, s.need) for s in ready if not (s.remote and remote is not None)]
        for name, slots in assign_slots(local_ready, local.free):
            s = steps[name]
            local.launch(s, step_spec(s, plan, kernel), slots)
            s.status, s.started, s.submitted, started = RUNNING, time.time(), now, True
            s.note = s.note if s.note == "resumes from last.pt" else ""
        return started

    # The table is reprinted when a status changes; progress alone (a new best epoch) at most
    # every `progress_every` seconds; and at least every `heartbeat_s` while steps run.
    progress_every = max(30.0, poll_s)
    last_status, last_progress, last_print = None, None, 0.0
    try:
        while True:
            finished = local.poll() + (remote.poll() if remote is not None else [])
            for name, rc, note in finished:
                s = steps[name]
                if s.started is None:
                    s.started = s.submitted
                finish(s, rc, note)
            # Several steps may finish, skip and start in one round: loop until nothing moves.
            while launch_ready(time.time()):
                pass
            # Ray tasks start when Ray finds them a place: their log appears then.
            for s in plan.steps:
                if s.status == QUEUED and s.submitted is not None:
                    mt = _mtime(s.log)
                    if mt is not None and mt >= s.submitted - 1:
                        s.status, s.started, s.note = RUNNING, min(mt, time.time()), ""
            for s in plan.steps:
                if s.status == RUNNING and s.is_train:
                    read_progress(s)
            if all(s.status in FINISHED for s in plan.steps):
                break
            status_key = tuple((s.status, s.where, s.note) for s in plan.steps)
            progress_key = _table_key(plan.steps)
            now = time.time()
            if (status_key != last_status or now - last_print >= heartbeat_s
                    or (progress_key != last_progress and now - last_print >= progress_every)):
                echo(render_table(plan.steps, now=now, title=title))
                last_status, last_progress, last_print = status_key, progress_key, now
            time.sleep(poll_s)
    except KeyboardInterrupt:
        interrupted = True
        echo("run_all: interrupted: stopping the running steps (rerun the same command to resume) ...")
        stopped = local.stop_all() + (remote.stop_all() if remote is not None else [])
        for name in stopped:
            s = steps[name]
            s.status, s.ended, s.note = INTERRUPTED, time.time(), "stopped by Ctrl-C / SIGTERM"
        for s in plan.steps:
            if s.status == QUEUED:
                s.note = "not started (interrupted)"
        raise
    finally:
        try:
            local.close()
            if remote is not None:
                remote.close()
        finally:
            echo(render_table(plan.steps, title=title))
            result = GridResult(plan.out_dir, [_result(s) for s in plan.steps], time.time() - t0, interrupted)
            echo(result.summary())
    return result


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------
EPILOG = """\
examples:
  python -m iqa_lib.run_all                          # the team's 15 runs, one per visible GPU
  python -m iqa_lib.run_all --profile demo           # the synthetic demo on a CPU (make demo)
  python -m iqa_lib.run_all --res 384 --folds 0 1 -p epochs 3 -p precision fp32
  python -m iqa_lib.run_all --gpus 0,2,3             # only these GPUs
  python -m iqa_lib.run_all --ray auto               # an existing Ray cluster (shared out_dir)

Rerun the same command after a failure or Ctrl-C: completed runs are skipped (whatever -p
says: use --force to retrain them), interrupted ones resume from last.pt. Outputs:
{out_dir}/notebooks/0N_*.ipynb and {out_dir}/runs/{res}_fold{k}/03_train.ipynb, each with a
.log beside it. {out_dir}/.run_all.lock keeps a second runner off the same out_dir.
exit status: 0 all steps succeeded, 1 a step failed, 2 bad arguments, 3 another runner
holds the lock on out_dir, 130 interrupted.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m iqa_lib.run_all",
        description="Run the kit's notebooks for a whole grid through papermill:\n"
                    "01_eda, 02_folds, 03_train for every (resolution, fold), 04_infer, 05_ensemble.\n"
                    "A live table shows each step: queued, running, done, failed, skipped, blocked.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--profile", default=DEFAULT_PROFILE,
                   help="parameter profile under params/ (default: %(default)s; 'demo' for a CPU)")
    p.add_argument("--res", type=int, nargs="+", metavar="RES", help="only these resolutions (e.g. 384 448)")
    p.add_argument("--folds", type=int, nargs="+", metavar="K", help="only these folds (e.g. 0 1)")
    p.add_argument("--data-dir", help="data folder (default: the profile's; relative to the repository root)")
    p.add_argument("--out-dir", help="output folder (default: the profile's; relative to the repository root)")
    p.add_argument("--gpus", default="auto",
                   help="auto (every visible GPU, else the CPU), a count N, a list 0,2,3 (one GPU: '3,'), "
                        "or cpu; one training per GPU at a time (default: auto)")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="without GPUs: N trainings at once on the CPU (default: 1)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run trainings and inference as Ray tasks: 'local', 'auto' or an address such as "
                        f"host:6379 (needs {RAY_INSTALL_HINT}; out_dir and data_dir on a shared filesystem)")
    p.add_argument("--ray-gpus", type=float, default=1.0, metavar="G",
                   help="GPUs each Ray task asks for (default: 1; 0 for CPU-only clusters)")
    p.add_argument("--force", action="store_true",
                   help="delete the selected runs' folders and retrain them; rerun every notebook")
    p.add_argument("--skip-eda", action="store_true", help="leave out 01_eda")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("KEY", "VALUE"), default=[],
                   help="a 03_train parameter, e.g. -p epochs 1 -p max_steps 20 -p precision fp32 "
                        "(values read as YAML: 3, 0.5, 1e-5, true, null, text); repeatable")
    p.add_argument("--notebooks-dir", help="folder of the 0N_*.ipynb notebooks (default: notebooks/)")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel papermill starts (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="print the steps and their commands; run nothing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run_grid(
            profile=args.profile, res=args.res, folds=args.folds, data_dir=args.data_dir, out_dir=args.out_dir,
            gpus=args.gpus, parallel=args.parallel, ray=args.ray, force=args.force, skip_eda=args.skip_eda,
            extra_params=dict(args.param) if args.param else None, notebooks_dir=args.notebooks_dir,
            ray_gpus=args.ray_gpus, kernel=args.kernel, dry_run=args.dry_run,
        )
    except LockHeldError as e:
        print(f"run_all: {e}", file=sys.stderr)
        return EXIT_LOCKED
    except (GridError, ParamsError, ImportError) as e:
        print(f"run_all: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("run_all: interrupted; rerun the same command to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if result.ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
