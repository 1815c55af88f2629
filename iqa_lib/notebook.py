"""What the five notebooks share besides plots: their parameter check and the tables they show.

Every notebook follows one convention, so papermill and JupyterLab both work::

    # first code cell: imports, then a snapshot of the namespace
    from iqa_lib.notebook import check_parameters
    _before = set(globals())

    # next cell, tagged `parameters`: every parameter annotated, with a comment
    res: int = 448                   # the input size of the run
    epochs: Optional[int] = None     # None = the profile's value

    # (papermill inserts its `injected-parameters` cell here)

    P = check_parameters(globals(), _before)
    cfg = run_config(**P)            # iqa_lib.config.load_config + a check that data_dir exists

Annotated assignments land in the module's `__annotations__`; papermill's injected cell assigns
plain names. So `check_parameters` knows which names the notebook declares, which ones papermill
added (a typo: papermill itself only warns), and the type each value must have (checked by
pydantic in strict mode). `papermill --help-notebook NOTEBOOK` lists the same annotations.
"""
from __future__ import annotations

import difflib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from pydantic import TypeAdapter, ValidationError

from .config import (SHORTCUTS, Config, ConfigError, flatten, load_config, parse_run_name, read_json, repo_relative,
                     repo_root, run_name)

# Good values to show in error messages, by parameter name; otherwise by type.
_EXAMPLES: dict[str, Any] = {"res": 448, "fold": 0, "profile": "demo", "epochs": 3, "batch_size": 16, "lr": 0.0001,
                             "precision": "fp32", "method": "iqr", "runs": "448_fold1", "data_dir": "data/demo"}
_TYPE_EXAMPLES: dict[type, Any] = {int: 1, float: 0.5, bool: True, str: "text"}
_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython"}


class ParameterError(ConfigError):
    """A notebook parameter is unknown, of the wrong type, or points at nothing."""


# --------------------------------------------------------------------------------------------
# the parameters cell
# --------------------------------------------------------------------------------------------
def check_parameters(namespace: Mapping[str, Any], before: Iterable[str], *,
                     choices: Mapping[str, Sequence[Any]] | None = None) -> dict[str, Any]:
    """The notebook's parameters as {name: value}, in declaration order, each checked.

    Raises ParameterError for a name papermill injected that the notebook does not declare
    (with the close match), and for every value of the wrong type or outside its `choices`
    (each with a `-p` flag that works).
    """
    annotations = dict(namespace.get("__annotations__", {}))
    if not annotations:
        raise ParameterError("no parameters found: the cell tagged `parameters` must declare each one with a type "
                             "annotation, e.g. `fold: int = 0  # validation fold`.")
    before = set(before)
    unknown = [n for n in namespace if n not in before and n not in annotations
               and not n.startswith("_") and n not in _IPYTHON_NAMES]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(annotations), n=1, cutoff=0.6)
            hints.append(f"unknown parameter {name!r} (injected with papermill -p/-r/-y)."
                         + (f" Did you mean {close[0]!r}?" if close else ""))
        raise ParameterError(" ".join(hints) + f" This notebook's parameters are: {', '.join(annotations)}. "
                             "`papermill --help-notebook NOTEBOOK` lists them with their meaning.")
    problems, values = [], {}
    for name, annotation in annotations.items():
        if name not in namespace:
            continue
        value = namespace[name]
        try:
            value = TypeAdapter(annotation).validate_python(value, strict=True)
        except ValidationError:
            problems.append(_type_message(name, value, annotation))
            continue
        options = (choices or {}).get(name)
        if options is not None and value is not None and value not in options:
            problems.append(f"parameter {name}={value!r} is not one of {', '.join(map(repr, options))}: "
                            f"e.g. `-p {name} {options[0]}`.")
            continue
        values[name] = value
    if problems:
        raise ParameterError("invalid notebook parameter" + ("s" if len(problems) > 1 else "") + ":\n- "
                             + "\n- ".join(problems))
    return values


def _type_message(name: str, value: Any, annotation: Any) -> str:
    args = [a for a in getattr(annotation, "__args__", (annotation,)) if a is not type(None)]
    optional = len(args) < len(getattr(annotation, "__args__", (annotation,)))
    want = " or ".join(getattr(a, "__name__", str(a)) for a in args) + (" or None" if optional else "")
    text = f"parameter {name} must be {want}, got the {type(value).__name__} {value!r}"
    if int in args and isinstance(value, float):
        text += " (a whole number is needed)"
    if str in args and isinstance(value, (int, float, bool)):  # papermill -p turns 2023 into a number
        return text + f". papermill -p reads numbers as numbers: pass text with -r, e.g. `-r {name} {value}`."
    example = _EXAMPLES.get(name)
    if example is None or not isinstance(example, tuple(args)):
        example = _TYPE_EXAMPLES.get(args[0], "...")
    return text + f". Example: `-p {name} {example}`" + (f" (or `-p {name} None` for the profile's value)" if optional else "") + "."


def run_config(profile: str, res: int | None = None, fold: int = 0, **parameters: Any) -> Config:
    """`load_config` from notebook parameters (those of config.SHORTCUTS; None keeps the profile's
    value), then a check that `data_dir` exists, whose error says how to get the data."""
    cfg = load_config(profile, res, fold, **{k: v for k, v in parameters.items() if k in SHORTCUTS})
    data_dir = Path(cfg.data_dir)
    if not data_dir.is_dir():
        source = "the data_dir parameter" if parameters.get("data_dir") else f"profile {cfg.profile!r}"
        msg = (f"data_dir '{data_dir}' {'is a file, not a folder' if data_dir.exists() else 'does not exist'} "
               f"(from {source}; relative paths are taken from the repository root {repo_root()}). ")
        where = repo_relative(data_dir)
        if cfg.profile == "demo":
            msg += (f"The demo data has not been made yet: run `python -m iqa_lib.datasets.demo {where}` "
                    f"from the repository root (or `make demo`), then rerun this notebook.")
        else:
            msg += ("Point data_dir at the folder holding train.csv, test.csv, train/ and test/ (e.g. `-p data_dir data`), "
                    f"convert a public data set into it with `python -m iqa_lib.datasets.prepare NAME SRC {where} "
                    "--holdout 0.2` (see README), or try the kit on synthetic data with `-p profile demo` after "
                    "`python -m iqa_lib.datasets.demo data/demo`.")
        raise ParameterError(msg)
    return cfg


# --------------------------------------------------------------------------------------------
# which runs
# --------------------------------------------------------------------------------------------
def train_command(cfg: Config, res: int, fold: int) -> str:
    """The papermill command that trains one run, writing its notebook into the run's folder."""
    notebook = cfg.outputs.run(res, fold).notebook
    extra = f" -p profile {cfg.profile}" if cfg.profile != "team" else ""
    return f"papermill notebooks/03_train.ipynb {repo_relative(notebook)} -p res {res} -p fold {fold}{extra} -k python3"


def parse_runs(runs: str, resolutions: Sequence[int], n_folds: int) -> list[tuple[int, int]] | None:
    """'all' -> None; '448_fold1,640_fold0' -> [(448, 1), (640, 0)], each checked."""
    if runs.strip().lower() == "all":
        return None
    out = []
    for item in filter(None, (s.strip() for s in runs.split(","))):
        try:
            res, fold = parse_run_name(item)
        except ValueError:
            raise ParameterError(f"runs: {item!r} is not a run name: write 'all' or names like '448_fold1' separated "
                                 f"by commas (`-p runs 448_fold1,640_fold0`).") from None
        if res not in resolutions or not 0 <= fold < n_folds:
            raise ParameterError(f"runs: {item!r} is not a run of this profile: input sizes "
                                 f"{', '.join(map(str, resolutions))}, folds 0..{n_folds - 1}.")
        out.append((res, fold))
    if not out:
        raise ParameterError("runs is empty: write 'all' or names like '448_fold1,640_fold0'.")
    return out


def find_checkpoints(cfg: Config, resolutions: Sequence[int], runs: str = "all") -> list[tuple[int, int, Path]]:
    """(res, fold, checkpoint) of the selected runs whose checkpoint exists, or a ParameterError
    naming the training command when none does ('all') or a named run has none."""
    wanted = parse_runs(runs, resolutions, cfg.n_folds)
    grid = wanted or [(r, k) for r in resolutions for k in range(cfg.n_folds)]
    found = [(r, k, cfg.outputs.run(r, k).checkpoint) for r, k in grid]
    missing = [(r, k) for r, k, p in found if not p.is_file()]
    present = [f for f in found if f[2].is_file()]
    if wanted is not None and missing:
        raise ParameterError(f"no checkpoint for {', '.join(run_name(*m) for m in missing)} under {cfg.outputs.runs}: "
                             f"train it first, e.g. `{train_command(cfg, *missing[0])}`.")
    if not present:
        raise ParameterError(f"no trained checkpoint under {cfg.outputs.runs} (input sizes "
                             f"{', '.join(map(str, resolutions))}, folds 0..{cfg.n_folds - 1}). Train runs with "
                             f"notebooks/03_train.ipynb first, e.g. `{train_command(cfg, resolutions[0], 0)}`.")
    return present


def prediction_files(cfg: Config, resolutions: Sequence[int], runs: str = "all") -> list[Path]:
    """The runs' test predictions (04_infer's files) to combine, checked: each run's split is
    today's (else a ParameterError names the runs and what to do), and with runs="all" every
    trained run has its predictions (a warning names those without, and how to make them)."""
    out = cfg.outputs
    extra = f" -p profile {cfg.profile}" if cfg.profile != "team" else ""
    how = (f"predict the test set with notebooks/04_infer.ipynb, e.g. `papermill notebooks/04_infer.ipynb "
           f"{repo_relative(out.notebooks / '04_infer.ipynb')}{extra} -k python3`")
    wanted = parse_runs(runs, resolutions, cfg.n_folds)
    if wanted is not None:
        files = [out.prediction(run_name(*rf)) for rf in wanted]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ParameterError(f"runs={runs!r}: no predictions {', '.join(missing)} in {out.preds}: {how}.")
    else:
        files, others = [], []
        for f in sorted(out.preds.glob("*.csv")):
            try:
                parse_run_name(f.stem)
                files.append(f)
            except ValueError:
                others.append(f.name)
        if others:
            print(f"WARNING: {len(others)} file(s) in {out.preds} are not named {{res}}_fold{{k}}.csv and are left out "
                  f"of the ensemble: {', '.join(others[:5])}{' ...' if len(others) > 5 else ''}.")
        if not files:
            raise ParameterError(f"no prediction files in {out.preds}: {how}.")
        trained = [run_name(r, k) for r in resolutions for k in range(cfg.n_folds) if out.run(r, k).checkpoint.is_file()]
        unpredicted = [n for n in trained if not out.prediction(n).is_file()]
        if unpredicted:
            print(f"WARNING: {len(unpredicted)} trained run(s) have no test predictions and are left out of the "
                  f"ensemble: {', '.join(unpredicted)}. To include them, {how} (runs=all predicts every "
                  f"trained run).")
    from .folds import stale_message, stale_runs  # torch comes with it: after the parameter checks

    stale = stale_runs(out, [f.stem for f in files])
    if stale:
        raise ParameterError(stale_message(stale, out))
    return files


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------
def config_table(cfg: Config, reference: Config | None = None, ref_name: str = "team recipe") -> pd.DataFrame:
    """Every effective parameter as a row; with `reference`, its value there and whether they differ."""
    flat = flatten(cfg.to_dict())
    show = lambda v: json.dumps(v) if isinstance(v, (dict, list)) else str(v)  # noqa: E731
    table = pd.DataFrame({"value": [show(v) for v in flat.values()]}, index=pd.Index(list(flat), name="key"))
    if reference is not None:
        ref = flatten(reference.to_dict())
        table[ref_name] = [show(ref.get(k)) for k in flat]
        table["changed"] = ["*" if flat[k] != ref.get(k) else "" for k in flat]
    return table


def image_sizes(paths: Sequence[str], max_images: int | None = None, seed: int = 0) -> pd.DataFrame:
    """(path, width, height, aspect) from the image headers (no decoding); with `max_images`,
    a random sample of that many paths."""
    from PIL import Image

    paths = list(paths)
    if max_images is not None and len(paths) > max_images:
        pick = np.random.default_rng(seed).choice(len(paths), max_images, replace=False)
        paths = [paths[i] for i in sorted(pick)]
    rows = []
    for p in paths:
        with Image.open(p) as im:
            rows.append((p, *im.size))
    df = pd.DataFrame(rows, columns=["path", "width", "height"])
    df["aspect"] = df["width"] / df["height"]
    return df


def data_summary(train: pd.DataFrame, test: pd.DataFrame | None = None) -> pd.DataFrame:
    """Counts and MOS statistics of load_table's train (and test) tables."""
    images = train.drop_duplicates("img_name")
    rows = {"train rows (caption rows)": len(train), "train images": len(images),
            "rows per image (mean)": round(len(train) / max(len(images), 1), 3),
            "MOS min": images["mos"].min(), "MOS max": images["mos"].max(),
            "MOS mean": round(images["mos"].mean(), 4), "MOS sd": round(images["mos"].std(), 4)}
    if test is not None:
        rows.update({"test rows": len(test), "test images": test["img_name"].nunique(),
                     "test images also in train": int(test["img_name"].isin(images["img_name"]).sum())})
    return pd.DataFrame({"value": list(rows.values())}, index=pd.Index(list(rows), name="what"))


def load_train_test(cfg: Config, errors: str = "raise") -> tuple[pd.DataFrame, pd.DataFrame]:
    """load_table on train.csv and test.csv; the problems of both in one DataError. With
    errors="drop", the good rows of each, their problems in `.attrs["problems"]`."""
    from .data import DataError, load_table

    tables, problems = [], []
    for name, labelled in (("train.csv", True), ("test.csv", False)):
        try:
            tables.append(load_table(cfg.data_dir, name, labelled=labelled, mos_scale=cfg.mos_scale,
                                     check_images=cfg.train.check_images, progress=False, errors=errors))
        except DataError as e:
            problems += e.problems
    if problems:
        raise DataError(problems, f"data problems in {cfg.data_dir}")
    return tables[0], tables[1]


def manifest_summary(manifest_path: str | os.PathLike) -> pd.DataFrame:
    """The headline facts of a run's manifest.json, one row each."""
    m = read_json(manifest_path)
    if not isinstance(m, dict):  # none yet, or half-written
        return pd.DataFrame({"value": ["missing"]}, index=pd.Index(["status"], name="what"))
    env = m.get("environment", {})
    rnd = lambda v: round(v, 4) if isinstance(v, float) and math.isfinite(v) else v  # noqa: E731
    rows = {"run": m.get("run"), "status": m.get("status"), "stop reason": m.get("stop_reason"), "error": m.get("error"),
            "best epoch": m.get("best_epoch"), **{f"best {k}": rnd(v) for k, v in (m.get("best") or {}).items()},
            "epochs run": m.get("epochs_run"), "optimiser steps": m.get("steps"),
            "train / val images": f"{m.get('n_train')} / {m.get('n_val')}", "started": m.get("started"),
            "ended": m.get("ended"), "device": env.get("device"), "git commit": (env.get("git") or {}).get("commit")}
    rows = {k: v for k, v in rows.items() if v is not None}
    return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=pd.Index(list(rows), name="what"))


def steps_taken(metrics: pd.DataFrame) -> tuple[int, int]:
    """(optimiser steps the run took, steps per epoch) from its metrics.csv."""
    if not len(metrics):
        return 0, 0
    per_epoch = int(metrics["step"].diff().iloc[1:].max()) if len(metrics) > 1 else int(metrics["step"].iloc[0])
    return int(metrics["step"].iloc[-1]), per_epoch


def prediction_summary(preds: Mapping[str, pd.DataFrame], seconds: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per run of test predictions: images and the spread of the predicted MOS."""
    rows = [{"run": name, "images": len(df), "mean": df["mos"].mean(), "sd": df["mos"].std(), "min": df["mos"].min(),
             "max": df["mos"].max(), **({"seconds": seconds.get(name)} if seconds else {})} for name, df in preds.items()]
    return pd.DataFrame(rows).set_index("run").round(4)

