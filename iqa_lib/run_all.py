"""Run the whole grid with one command: ``python -m iqa_lib.run_all [--profile demo] ...``.

Each step executes a notebook with papermill in a child process, its log beside the output::

    01_eda        unless --skip-eda; its failure does not stop the grid
    02_folds
    03_train      once per (res, fold), largest resolution first, one per GPU (with train.init_from:
                  smallest first, each run after the run it starts from)
    04_infer      the selected runs ("all" for the whole grid)
    05_ensemble

Rerun the same command to continue: a run whose manifest says completed and whose checkpoint
exists is skipped; any other run is launched again (training resumes itself from last.pt).
01, 02, 04 and 05 are skipped when their executed notebook finished, with the same parameters,
after everything it reads last changed (04 after the checkpoints). ``--force`` retrains the
selected runs afresh; each run's files wait in ``replaced/{res}_fold{k}/`` until its new run completes.

Trainings run one per GPU (``--gpus 0,2``; default: every visible GPU), else one at a time on
the CPU, or ``--parallel N`` with the CPU threads split between them. ``--ray ADDRESS`` (or
``local``) makes each training and the inference a Ray task asking for a GPU (none on a
CPU-only cluster); out_dir and data_dir must then be on a disk every node shares.

A second runner on the same out_dir is refused at once, naming the one that holds it.
"""
from __future__ import annotations

import argparse
import csv
import difflib
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .lock import LockHeldError, hold
from .trackers import require as require_trackers
from .config import (DEFAULT_PROFILE, SHORTCUTS, ConfigError, RunFiles, load_config, parse_run_name,
                     profile_resolutions, read_json, repo_relative, repo_root, resolve_path, run_name)

EDA, FOLDS, TRAIN, INFER, ENSEMBLE = "01_eda", "02_folds", "03_train", "04_infer", "05_ensemble"
SET_BY_RUNNER = {"res": "--res", "fold": "--folds", "profile": "--profile",
                 "data_dir": "--data-dir", "out_dir": "--out-dir"}
RAY_HINT = 'pip install "iqa-lib[ray]"'
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


@dataclass
class Step:
    """One notebook execution of the grid and what became of it."""

    name: str                     # "02_folds" or "192_fold0"
    notebook: Path                # the source notebook
    output: Path                  # the executed notebook
    params: dict                  # papermill parameters
    run: RunFiles | None = None   # a training's files
    status: str = "queued"        # queued, running, done, failed, skipped, blocked, stopped
    where: str = ""
    note: str = ""
    best: float | None = None     # best validation PLCC+SRCC so far
    started: float | None = None
    ended: float | None = None
    after: str | None = None      # the run this training starts from (train.init_from)
    settled: threading.Event = field(default_factory=threading.Event, repr=False)  # done, skipped or failed

    @property
    def log(self) -> Path:
        return self.output.with_suffix(".log")

    def seconds(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended or time.time()) - self.started


@dataclass
class GridResult:
    steps: list[Step]

    @property
    def failed(self) -> list[Step]:
        return [s for s in self.steps if s.status in ("failed", "blocked", "stopped")]

    @property
    def ok(self) -> bool:
        return not self.failed

    def __getitem__(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def summary(self) -> str:
        stopped = any(s.status == "stopped" for s in self.steps)
        lines = [f"run_all: {'OK' if self.ok else 'INTERRUPTED' if stopped else 'FAILED'}"]
        for s in self.failed:
            if s.status == "failed":
                lines += [f"  FAILED {s.name}: {s.note}", f"    notebook: {s.output}", f"    log:      {s.log}"]
            else:
                lines.append(f"  {s.status.upper()} {s.name}: {s.note}")
        if not self.ok:
            lines.append(f"{'' if stopped else 'Fix the cause and '}rerun the same command: completed runs are skipped.")
        return "\n".join(lines)


def parse_value(text):
    """A `-p NAME VALUE` value as papermill's own -p reads it: True, False, None, a number, else text."""
    if not isinstance(text, str):
        return text
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def check_train_params(extra: dict, notebook: Path) -> None:
    """Refuse a -p name that the runner sets itself or that 03_train does not declare."""
    import papermill

    declared = [n for n in papermill.inspect_notebook(str(notebook)) if n not in SET_BY_RUNNER]
    for name in extra:
        if name in SET_BY_RUNNER:
            raise ConfigError(f"-p {name}: the runner sets {name} itself; use {SET_BY_RUNNER[name]}.")
        if name not in declared:
            close = difflib.get_close_matches(name, declared, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"-p {name}: {notebook.name} has no parameter {name}{hint}. "
                              f"Its parameters: {', '.join(declared)}.")


def plan_grid(profile=DEFAULT_PROFILE, res=None, folds=None, data_dir=None, out_dir=None,
              extra_params=None, skip_eda=False, notebooks_dir=None):
    """(the profile's configuration, the grid's steps), every argument checked; nothing runs."""
    folder = resolve_path(notebooks_dir) if notebooks_dir else repo_root() / "notebooks"
    sources = {stem: folder / f"{stem}.ipynb" for stem in (EDA, FOLDS, TRAIN, INFER, ENSEMBLE)}
    missing = [p.name for stem, p in sources.items() if not p.is_file() and not (skip_eda and stem == EDA)]
    if missing:
        raise ConfigError(f"notebook(s) {', '.join(missing)} not found in {folder}.")
    extra = {name: parse_value(value) for name, value in dict(extra_params or {}).items()}
    check_train_params(extra, sources[TRAIN])
    shortcuts = {name: value for name, value in extra.items() if name in SHORTCUTS}

    base = load_config(profile, data_dir=data_dir, out_dir=out_dir, **shortcuts)
    require_trackers(base)  # a missing tracker package stops the grid once, not in each of 15 notebooks
    # load_config refuses a resolution or fold the profile lacks, and bad -p values, naming them.
    configs = [load_config(profile, r, k, data_dir=data_dir, out_dir=out_dir, **shortcuts)
               for r in (res or profile_resolutions(profile)) for k in (folds or range(base.n_folds))]
    after = {(c.res, c.fold): c.train.init_from for c in configs}
    chained = any(v is not None for v in after.values())  # then a run's source comes before it
    runs = sorted(after, key=lambda rk: (rk[0] if chained else -rk[0], rk[1]))
    whole = len(runs) == len(profile_resolutions(profile)) * base.n_folds
    runs_param = "all" if whole else ",".join(run_name(r, k) for r, k in runs)
    outputs = base.outputs
    common = {"profile": base.profile, "data_dir": repo_relative(base.data_dir),
              "out_dir": repo_relative(base.out_dir)}

    def notebook_step(stem: str, **params) -> Step:
        return Step(stem, sources[stem], outputs.notebooks / f"{stem}.ipynb", {**common, **params})

    steps = [] if skip_eda else [notebook_step(EDA)]
    steps.append(notebook_step(FOLDS))
    for r, k in runs:
        files = outputs.run(r, k)
        params = {**common, "res": r, "fold": k, **extra}
        source = run_name(after[r, k], k) if after[r, k] is not None else None
        steps.append(Step(run_name(r, k), sources[TRAIN], files.notebook, params, run=files, after=source))
    steps += [notebook_step(INFER, runs=runs_param), notebook_step(ENSEMBLE, runs=runs_param)]
    return base, steps


def gpu_slots(gpus, devices: int = 1) -> list[str]:
    """The CUDA_VISIBLE_DEVICES of each concurrent training ([] = the CPU): `devices` GPU ids each."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        known = [g.strip() for g in visible.split(",") if g.strip()]
    else:
        try:
            import torch
            known = [str(i) for i in range(torch.cuda.device_count())]
        except ImportError:
            known = []
    if gpus is None or gpus == "auto":
        ids = known
    elif isinstance(gpus, str) and gpus.strip().lower() in ("cpu", "none", ""):
        ids = []
    else:
        ids = [g.strip() for g in gpus.split(",") if g.strip()] if isinstance(gpus, str) else [str(g) for g in gpus]
        if len(set(ids)) < len(ids) or not set(ids) <= set(known):
            raise ConfigError(f"--gpus {gpus}: give distinct ids of visible GPUs, e.g. --gpus 0,2 "
                              f"(visible: {','.join(known) or 'none'}), or --gpus cpu.")
    if ids and len(ids) < devices:
        raise ConfigError(f"-p devices {devices} needs {devices} GPUs per run, but only {len(ids)} are in use.")
    return [",".join(ids[i:i + devices]) for i in range(0, len(ids) - devices + 1, devices)]


def _die_with_parent():
    """A preexec_fn: the child gets SIGTERM when its parent dies (Linux), so a killed runner
    leaves no training behind to race with the next runner."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_notebook(notebook: Path, output: Path, params: dict, gpus: str | None = None,
                 threads: int | None = None) -> int:
    """Execute `notebook` into `output` with papermill in a child process; returns its exit code.

    The child's output goes to the log beside `output`; `gpus` becomes its CUDA_VISIBLE_DEVICES
    (None: left as is) and `threads` its OMP/MKL threads. The child shares this process group, so
    a Ctrl-C in the terminal stops it too, and it gets SIGTERM if this process dies.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")  # kernel python3 = this Python
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    if threads:
        env.setdefault("OMP_NUM_THREADS", str(threads))
        env.setdefault("MKL_NUM_THREADS", str(threads))
    cmd = [sys.executable, "-m", "papermill", str(notebook), str(output), "-k", "python3", "--cwd", str(repo_root()),
           "--log-output", "--no-progress-bar", "-y", yaml.safe_dump(params, default_flow_style=True, width=10**6)]
    with open(output.with_suffix(".log"), "a", encoding="utf-8") as log:
        log.write(f"===== {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()}, "
                  f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '<unset>')}\n===== {shlex.join(cmd)}\n")
        log.flush()
        return subprocess.run(cmd, cwd=repo_root(), env=env, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent()).returncode


def ray_task(notebook: str, output: str, params: dict) -> tuple[int, str]:
    """A Ray task: run_notebook on the node Ray chose, with the GPU Ray gave it; (exit code, where)."""
    rc = run_notebook(resolve_path(notebook), resolve_path(output), params)
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    return rc, socket.gethostname() + (f" gpu {gpus}" if gpus else "")


def best_score(run: RunFiles) -> float | None:
    """The best validation PLCC+SRCC in the run's metrics.csv so far."""
    try:
        with open(run.metrics, newline="", encoding="utf-8") as f:
            scores = [float(row["plcc_srcc"]) for row in csv.DictReader(f) if row.get("plcc_srcc")]
    except (OSError, KeyError, ValueError):
        return None
    return max(scores, default=None)


def up_to_date(step: Step, inputs: list[Path]) -> bool:
    """Whether the executed notebook finished without error, with these parameters, after the
    source notebook and every input last changed (an input missing: not up to date)."""
    meta = (read_json(step.output) or {}).get("metadata", {}).get("papermill", {})
    if not meta.get("end_time") or meta.get("exception") or meta.get("parameters") != step.params:
        return False
    made = step.output.stat().st_mtime
    return all(p.is_file() and p.stat().st_mtime <= made for p in [step.notebook, *inputs])


def folds_current(cfg) -> bool:
    """Whether folds.csv is the split of train.csv as it is now (a file time says nothing of that)."""
    from .data import load_table  # torch comes with them: only once a grid runs
    from .folds import current_split, folds_for_table, split_fingerprint

    try:
        table = load_table(cfg.data_dir, "train.csv", mos_scale=cfg.mos_scale, check_images="none", progress=False)
        folds = folds_for_table(table, n_folds=cfg.n_folds)
    except ValueError:  # bad data (a DataError), or fewer images or groups than folds: 02_folds runs and says so
        return False
    return split_fingerprint(folds) == current_split(cfg.outputs)


def last_error_line(log: Path) -> str:
    """The last line of a log that names an exception."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()[-2000:]
    except OSError:
        return ""
    pattern = re.compile(r"^\s*([A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*)$")
    for line in reversed(lines):
        match = pattern.match(line)
        if match and "PapermillExecutionError" not in line:
            return match.group(1).strip()[:300]
    return ""


def render_table(steps: list[Step], title: str) -> str:
    """The grid as plain text: one row per step."""
    def hms(s):
        return "" if s is None else f"{int(s) // 3600}:{int(s) // 60 % 60:02d}:{int(s) % 60:02d}"

    head = ("step", "status", "where", "best PLCC+SRCC", "time", "note")
    rows = [head] + [(s.name, s.status, s.where, "" if s.best is None else f"{s.best:.4f}", hms(s.seconds()),
                      s.note[:80]) for s in steps]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    counts = ", ".join(f"{n} {status}" for status, n in Counter(s.status for s in steps).items())
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([f"[{time.strftime('%H:%M:%S')}] {title}: {counts}", *lines])


def run_grid(profile=DEFAULT_PROFILE, res=None, folds=None, data_dir=None, out_dir=None, gpus="auto",
             parallel=1, ray=None, force=False, skip_eda=False, extra_params=None, notebooks_dir=None,
             stream=None, poll_s=1.0) -> GridResult:
    """Run the grid (see the module docstring) and return each step's status; `.ok` if none failed.

    Raises ConfigError (a bad argument), LockHeldError (another runner on out_dir), ImportError
    (--ray without Ray), KeyboardInterrupt (after stopping the notebooks).
    """
    def echo(message: str) -> None:
        print(message, file=stream or sys.stdout, flush=True)

    ray_module = None
    if ray:
        try:
            import ray as ray_module
        except ImportError as e:
            raise ImportError(f"--ray needs Ray, which is not installed: {RAY_HINT}, here and on every node.") from e
    parallel = int(parallel)
    if parallel < 1:
        raise ConfigError(f"--parallel must be at least 1, got {parallel}.")
    cfg, steps = plan_grid(profile, res, folds, data_dir, out_dir, extra_params, skip_eda, notebooks_dir)
    slots = [] if ray else gpu_slots(gpus, cfg.train.devices)
    threads = None
    if not ray and not slots:
        slots = [""] * parallel  # CUDA_VISIBLE_DEVICES="": the CPU, its threads split between the runs
        threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else None
    title = f"run_all {cfg.profile} -> {cfg.out_dir}"
    command = f"{Path(sys.executable).name} {shlex.join(sys.argv)}"
    from .checkpoint import check_writable  # torch comes with it: after the argument checks

    try:
        check_writable(cfg.out_dir, "out_dir", "pass --out-dir a folder you can write to")
    except OSError as e:
        raise ConfigError(e.strerror) from None

    with hold(cfg.outputs.lock, f"the grid in {cfg.out_dir}", command=command, echo=echo):
        data = Path(cfg.data_dir)
        if not data.is_dir() and cfg.profile == "demo":
            from .datasets.demo import make_demo_data

            echo(f"run_all: writing the synthetic demo data to {data} ...")
            make_demo_data(data)
        elif not data.is_dir():
            raise ConfigError(f"data_dir {data} does not exist: unpack the data there or pass --data-dir.")
        started_ray = ray_module is not None and not ray_module.is_initialized()
        if started_ray:
            ray_module.init(address=ray)  # "local" starts a Ray on this machine
        try:
            _execute(steps, cfg, slots, threads, ray_module, force, echo, title, poll_s)
        finally:
            if started_ray:
                ray_module.shutdown()
    return GridResult(steps)


def _execute(steps, cfg, slots, threads, ray, force, echo, title, poll_s) -> None:
    by_name = {s.name: s for s in steps}
    trains = [s for s in steps if s.run is not None]
    shown = [None]

    def show() -> None:
        """Print the table if a status, place, note or best score changed since the last one."""
        key = [(s.status, s.where, s.note, s.best) for s in steps]
        if key != shown[0]:
            echo(render_table(steps, title))
            shown[0] = key

    def finish(step: Step, rc: int | None) -> None:
        if rc is None:  # blocked: it never ran
            return
        step.ended = time.time()
        if step.run is not None:
            step.best = best_score(step.run)
        if rc == 0 and step.run is not None and not step.run.completed:
            step.status, step.note = "failed", "the notebook ended but the manifest does not say completed"
        elif rc == 0:
            step.status, step.note = "done", ""
        else:
            step.status, step.note = "failed", last_error_line(step.log) or step.note or f"exit code {rc}"

    def launch(step: Step) -> int | None:
        """Run a step and return its exit code: on Ray (trainings, inference) or on a slot here; None when
        the run it starts from (train.init_from) failed."""
        try:
            source = by_name.get(step.after)
            if source is not None:  # queued earlier, so running or over: no slot is held while waiting
                source.settled.wait()
            if stopping.is_set():
                step.status, step.note = "stopped", "interrupted"
                return None
            stale = source is not None and source.status == "failed"  # e.g. trained on another split
            if step.after and (stale or not cfg.outputs.run(*parse_run_name(step.after)).completed):
                step.status, step.note = "blocked", f"needs {step.after} (train.init_from)"
                return None
            if force and step.run is not None:  # only as it starts: a grid stopped before it leaves it in place
                try:  # its files wait in replaced/ until the new run completes (fit deletes them then)
                    with hold(step.run.lock, f"run {step.name}"):
                        step.run.set_aside()
                except LockHeldError as e:
                    step.status, step.note = "failed", f"not retrained: {e}"
                    return None
            return run_step(step)
        finally:
            step.settled.set()

    def run_step(step: Step) -> int:
        if ray is not None and (step.run is not None or step.name == INFER):
            task = ray.remote(ray_task).options(num_gpus=ray_gpus, num_cpus=1, max_retries=0, name=f"iqa:{step.name}")
            ref = task.remote(repo_relative(step.notebook), repo_relative(step.output), step.params)
            step.status, step.where, step.started = "running", "ray", time.time()  # Ray may queue it first
            try:
                rc, step.where = ray.get(ref)
            except Exception as e:  # a worker or node lost
                rc, step.note = -1, f"Ray task: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            return rc
        slot = slot_queue.get()
        try:
            step.status, step.started = "running", time.time()
            step.where = "here" if slot is None else f"gpu {slot}" if slot else "cpu"
            # --parallel N splits the threads between trainings only: 01, 02, 04 and 05 run alone
            return run_notebook(step.notebook, step.output, step.params, gpus=slot,
                                threads=threads if step.run is not None else None)
        finally:
            slot_queue.put(slot)

    def run_here(step: Step, inputs: list[Path], current: bool = True) -> None:
        if current and up_to_date(step, inputs):
            step.status, step.note = "skipped", "up to date"
            return
        step.status, step.started = "running", time.time()
        show()
        finish(step, launch(step))
        show()

    def block(names: list[str], reason: str) -> None:
        for name in names:
            if by_name[name].status == "queued":  # the first reason stands
                by_name[name].status, by_name[name].note = "blocked", reason

    ray_gpus = (cfg.train.devices if ray.cluster_resources().get("GPU", 0) else 0) if ray is not None else 0
    slot_queue, stopping = queue.Queue(), threading.Event()
    for slot in slots or [None]:  # Ray: None, a placeholder for the notebooks run here
        slot_queue.put(slot)
    try:
        if EDA in by_name:
            tables = [Path(cfg.data_dir) / name for name in ("train.csv", "test.csv")]
            run_here(by_name[EDA], [t for t in tables if t.is_file()])
        run_here(by_name[FOLDS], [cfg.outputs.folds], current=folds_current(cfg))
        if by_name[FOLDS].status == "failed":
            block([s.name for s in steps if s.status == "queued"], f"needs {FOLDS}")
        from .folds import stale_message, stale_runs

        # Only once the split is today's: a run trained on another one is never skipped as done,
        # resumed, or retrained unasked.
        stale = [] if force else stale_runs(cfg.outputs, [s.name for s in trains])
        if stale:
            echo(f"run_all: {stale_message(stale, cfg.outputs)}")
        for step in trains:
            if step.status != "queued":
                continue
            if force:
                step.note = "retrained: its files move to replaced/ as it starts"
            elif step.name in stale:
                step.status, step.note = "failed", "trained on another split: --force retrains it, or restore the data"
            elif step.run.completed:
                source = step.run.retrained_source()
                step.status, step.note = "skipped", (f"completed earlier from an older {source} (--force retrains it)"
                                                     if source else "completed earlier")
            elif step.run.last.is_file():
                step.note = "resumes from last.pt"
            step.best = best_score(step.run)
        todo = [s for s in trains if s.status == "queued"]
        for step in trains:
            if step.status != "queued":
                step.settled.set()
        workers = len(todo) if ray is not None else len(slots)
        pool = ThreadPoolExecutor(max_workers=max(1, workers))
        try:
            futures = {pool.submit(launch, step): step for step in todo}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=poll_s, return_when=FIRST_COMPLETED)
                for future in done:
                    finish(futures[future], future.result())
                for step in todo:
                    if step.status == "running":
                        step.best = best_score(step.run)
                show()
        except BaseException:
            stopping.set()  # Ctrl-C: the trainings waiting for their source start nothing either
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # after Ctrl-C: start nothing more
        failed = [s.name for s in trains if s.status in ("failed", "blocked")]
        if failed:
            block([INFER, ENSEMBLE], f"needs {', '.join(failed[:3])}{' ...' if len(failed) > 3 else ''}")
        if by_name[INFER].status == "queued":
            run_here(by_name[INFER], [s.run.checkpoint for s in trains])
        if by_name[INFER].status == "failed":
            block([ENSEMBLE], f"needs {INFER}")
        if by_name[ENSEMBLE].status == "queued":
            run_here(by_name[ENSEMBLE], [by_name[INFER].output])
    except KeyboardInterrupt:
        echo("run_all: interrupted. Rerun the same command to resume.")
        for step in steps:
            if step.status in ("queued", "running"):
                step.status, step.note = "stopped", "interrupted"
        raise
    finally:
        show()
        echo(GridResult(steps).summary())
    if by_name[ENSEMBLE].status in ("done", "skipped"):
        echo(where_to_look(cfg))


def where_to_look(cfg) -> str:
    """The end of a grid: the submission, its score when the data has test labels, the plots."""
    out = cfg.outputs
    lines = [f"submission: {out.submission}"]
    labels = Path(cfg.data_dir) / "test_labels.csv"
    if labels.is_file() and out.submission.is_file():
        import pandas as pd

        from .metrics import plcc, srcc

        try:  # a grid that ended well ends well: a label file it cannot use is named, not raised
            both = pd.read_csv(out.submission, dtype={"img_name": str}).merge(
                pd.read_csv(labels, dtype={"img_name": str}).drop_duplicates("img_name"), on="img_name",
                suffixes=("", "_true"))
            lines.append(f"scored on {labels} ({len(both)} images): PLCC {plcc(both['mos'], both['mos_true']):.3f}, "
                         f"SRCC {srcc(both['mos'], both['mos_true']):.3f}")
        except (KeyError, ValueError, TypeError) as e:
            lines.append(f"not scored on {labels}: it needs img_name and mos columns matching the submission "
                         f"({type(e).__name__}: {e})")
    lines.append(f"plots: the executed notebooks in {out.notebooks} (01_eda, 02_folds, 04_infer, 05_ensemble) "
                 f"and {out.runs}/*/03_train.ipynb (learning curves); open them in JupyterLab")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m iqa_lib.run_all", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run 01_eda, 02_folds, 03_train for every (resolution, fold), 04_infer and 05_ensemble "
                    "through papermill.",
        epilog="Rerun the same command after a failure or Ctrl-C: completed runs are skipped, the others "
               "resume from last.pt.\nexit status: 0 all done, 1 a step failed, 2 bad arguments, "
               "3 another runner holds out_dir, 130 interrupted.")
    p.add_argument("--profile", default=DEFAULT_PROFILE, help="params/PROFILE.yaml (default: %(default)s; demo for a CPU)")
    p.add_argument("--res", type=int, nargs="+", help="only these resolutions")
    p.add_argument("--folds", type=int, nargs="+", help="only these folds")
    p.add_argument("--data-dir", help="data folder (default: the profile's)")
    p.add_argument("--out-dir", help="output folder (default: the profile's)")
    p.add_argument("--gpus", default="auto", help="GPU ids, e.g. 0,2 (default: every visible GPU), or cpu")
    p.add_argument("--parallel", type=int, default=1, help="without GPUs: trainings at once on the CPU")
    p.add_argument("--ray", metavar="ADDRESS", help=f"a Ray cluster ('auto', host:6379) or 'local' ({RAY_HINT})")
    p.add_argument("--force", action="store_true", help="retrain the selected runs from scratch (their files wait in OUT_DIR/replaced/ until the new runs complete)")
    p.add_argument("--skip-eda", action="store_true", help="leave out 01_eda")
    p.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a 03_train parameter, e.g. -p epochs 3 -p precision fp32 (repeatable)")
    p.add_argument("--notebooks-dir", help="folder of the 0N_*.ipynb notebooks (default: notebooks/)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run_grid(profile=args.profile, res=args.res, folds=args.folds, data_dir=args.data_dir,
                          out_dir=args.out_dir, gpus=args.gpus, parallel=args.parallel, ray=args.ray,
                          force=args.force, skip_eda=args.skip_eda, extra_params=dict(args.param),
                          notebooks_dir=args.notebooks_dir)
    except LockHeldError as e:
        print(f"run_all: {e}", file=sys.stderr)
        return EXIT_LOCKED
    except (ConfigError, ImportError) as e:
        print(f"run_all: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK if result.ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
