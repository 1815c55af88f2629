"""What the five notebooks share: their parameters, paths, and the small tables they show.

Parameters. Every notebook follows one convention, so papermill and JupyterLab both work::

    # first code cell: imports, then a snapshot of the namespace
    from typing import Optional
    from iqa_lib.notebook import check_parameters, run_params
    _before = set(globals())

    # next cell, tagged `parameters`: every parameter annotated, with a comment
    res: int = 448                   # the resolution of the run
    epochs: Optional[int] = None     # None = the profile's value

    # (papermill inserts its `injected-parameters` cell here)

    # next cell
    P = check_parameters(globals(), _before)

Annotated assignments are recorded in the module's `__annotations__`; papermill's injected
cell assigns plain names. So `check_parameters` knows which names the notebook declares,
which ones papermill added (a typo: papermill itself only warns), and what type each value
must have. `papermill --help-notebook NOTEBOOK` lists the same annotations and comments.

Paths. A relative path is taken from the repository root (the folder holding `params/` and
`iqa_lib/`), not from the working directory: JupyterLab runs a notebook in `notebooks/`,
papermill usually runs from the root, and both must find `data/` and `outputs/`.
"""
from __future__ import annotations

import difflib
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .params import ParamsError, load_params, profile_resolutions, run_dir, run_name

# Notebook parameter -> the dotted keys of params/*.yaml it overrides (None = keep the profile's).
OVERRIDE_KEYS: dict[str, tuple[str, ...]] = {
    "data_dir": ("data_dir",),
    "out_dir": ("out_dir",),
    "n_folds": ("n_folds",),
    "epochs": ("train.epochs",),
    "batch_size": ("train.batch_size",),
    "precision": ("train.precision",),
    "max_steps": ("train.max_steps",),
    "devices": ("train.devices",),
    "compile": ("train.compile",),
    "num_workers": ("train.num_workers",),
    "lr": ("optim.lr", "schedule.max_lr"),
    "weights_file": ("model.weights_file",),
    "pretrained": ("model.pretrained",),
}
PATH_OPTIONS = ("data_dir", "out_dir", "weights_file")
DEMO_PROFILE = "demo"

# Good values to show in error messages, by parameter name; otherwise by type.
_EXAMPLES: dict[str, Any] = {
    "res": 448, "fold": 0, "profile": "demo", "epochs": 3, "batch_size": 16, "max_steps": 100,
    "devices": 1, "num_workers": 4, "n_folds": 5, "lr": 0.0001, "precision": "fp32",
    "method": "iqr", "runs": "448_fold1", "data_dir": "data/demo", "out_dir": "outputs/demo",
    "weights_file": "weights/vit_base_patch16_384.npz",
}
_TYPE_EXAMPLES: dict[type, Any] = {int: 1, float: 0.5, bool: True, str: "text"}
# Names IPython itself adds to the namespace (`_`-prefixed ones are skipped anyway).
_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython"}


class ParameterError(ParamsError):
    """A notebook parameter is unknown, of the wrong type, or points at nothing."""


# --------------------------------------------------------------------------------------------
# paths
# --------------------------------------------------------------------------------------------
def repo_root() -> Path:
    """The folder holding `params/` and `iqa_lib/` (the repository root)."""
    from . import __file__ as package_file

    return Path(package_file).resolve().parents[1]


def resolve_path(p: str | os.PathLike) -> Path:
    """`p` as an absolute path; a relative one is taken from the repository root, not the cwd."""
    path = Path(p).expanduser()
    if not path.is_absolute():
        path = repo_root() / path
    return Path(os.path.normpath(path))


# --------------------------------------------------------------------------------------------
# checking the parameters cell
# --------------------------------------------------------------------------------------------
def check_parameters(
    namespace: Mapping[str, Any],
    before: Iterable[str],
    *,
    choices: Mapping[str, Sequence[Any]] | None = None,
) -> dict[str, Any]:
    """Check the notebook's parameters; return them as {name: value} in declaration order.

    Args:
        namespace: the notebook's `globals()`.
        before: the names that existed before the parameters cell (`set(globals())` taken
            right after the imports).
        choices: allowed values of some parameters, e.g. {"method": ("iqr", "mean")}.

    Raises:
        ParameterError: a name papermill injected that the notebook does not declare (with a
            close match and the list of valid names), or values whose type does not match
            their annotation or are not among their choices (each with a correct `-p` flag).
    """
    annotations = dict(namespace.get("__annotations__", {}))
    if not annotations:
        raise ParameterError(
            "no parameters found: the cell tagged `parameters` must declare each one with a type "
            "annotation, e.g. `fold: int = 0  # validation fold`."
        )
    before = set(before)
    unknown = [
        name for name in namespace
        if name not in before and name not in annotations
        and not name.startswith("_") and name not in _IPYTHON_NAMES
    ]
    if unknown:
        raise ParameterError(_unknown_message(unknown, list(annotations)))

    problems = []
    values = {}
    for name, annotation in annotations.items():
        if name not in namespace:  # declared without a value (`x: int`): nothing to check
            continue
        value = namespace[name]
        allowed, optional = _annotation_types(annotation)
        if allowed is not None and not (value is None and optional) and not any(_is_a(value, t) for t in allowed):
            problems.append(_type_message(name, value, allowed, optional))
            continue
        options = (choices or {}).get(name)
        if options is not None and value is not None and value not in options:
            listed = ", ".join(repr(o) for o in options)
            problems.append(
                f"parameter {name}={value!r} is not one of {listed}: e.g. `-p {name} {options[0]}`."
            )
            continue
        if allowed == (float,) and isinstance(value, int):
            value = float(value)
        values[name] = value
    if problems:
        lead = "invalid notebook parameter" + ("s" if len(problems) > 1 else "")
        raise ParameterError(lead + ":\n- " + "\n- ".join(problems))
    return values


def _unknown_message(unknown: list[str], known: list[str]) -> str:
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        parts.append(f"unknown parameter {name!r} (injected with papermill -p/-r/-y).{hint}")
    return (
        " ".join(parts)
        + f" This notebook's parameters are: {', '.join(known)}."
        + " `papermill --help-notebook NOTEBOOK` lists them with their meaning."
    )


def _annotation_types(annotation: Any) -> tuple[tuple[type, ...] | None, bool]:
    """(the types a value may have, whether None is allowed); (None, True) = not checked."""
    if annotation is None or annotation is type(None):
        return (type(None),), True
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(annotation)
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        if all(isinstance(a, type) for a in rest):
            return tuple(rest), optional
        return None, True
    if isinstance(annotation, type):
        return (annotation,), False
    return None, True  # Any, strings, generics: not checked


def _is_a(value: Any, t: type) -> bool:
    """isinstance with the parameter rules: bool is not an int; an int is a fine float."""
    if t is bool:
        return isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, t)


def _example(name: str, allowed: tuple[type, ...]) -> Any:
    example = _EXAMPLES.get(name)
    if example is not None and any(_is_a(example, t) for t in allowed):
        return example
    return _TYPE_EXAMPLES.get(allowed[0], "...")


def _type_message(name: str, value: Any, allowed: tuple[type, ...], optional: bool) -> str:
    want = " or ".join(t.__name__ for t in allowed) + (" or None" if optional else "")
    got = f"the {type(value).__name__} {value!r}"
    example = _example(name, allowed)
    flag = f"-p {name} {example}"
    text = f"parameter {name} must be {want}, got {got}"
    if allowed == (int,) and isinstance(value, float):
        text += " (a whole number is needed)"
    if str in allowed and isinstance(value, (int, float, bool)):
        # papermill -p turns 2023 into a number; -r keeps it as text.
        text += f". papermill -p reads numbers as numbers: pass text with -r, e.g. `-r {name} {value}`"
        return text + "."
    text += f". Example: `{flag}`"
    if optional:
        text += f" (or `-p {name} None` for the profile's value)"
    return text + "."


# --------------------------------------------------------------------------------------------
# from notebook parameters to a run's parameters
# --------------------------------------------------------------------------------------------
def overrides_from(options: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted load_params overrides from notebook parameters; None values are left out."""
    unknown = sorted(set(options) - set(OVERRIDE_KEYS))
    if unknown:
        raise TypeError(f"not an override parameter: {', '.join(unknown)} (known: {', '.join(OVERRIDE_KEYS)})")
    out = {}
    for name, value in options.items():
        if value is None:
            continue
        if name in PATH_OPTIONS:
            value = str(resolve_path(value))
        for key in OVERRIDE_KEYS[name]:
            out[key] = value
    return out


def run_params(
    profile: str,
    res: int | None = None,
    fold: int | None = None,
    *,
    require_data: bool = True,
    **options: Any,
) -> dict:
    """The merged, checked parameters of a run, from notebook parameters.

    Args:
        profile: a profile under params/ ('team', 'demo').
        res, fold: the run; None = the profile's first resolution and fold 0 (for notebooks
            that only need the profile-wide values: data_dir, out_dir, mos_scale, n_folds).
        require_data: check that data_dir exists (a clear error instead of a deep one later).
        options: notebook parameters of OVERRIDE_KEYS (epochs=3, lr=1e-4, data_dir=...);
            None means "the profile's value".

    Returns:
        load_params' dict, with data_dir, out_dir and model.weights_file made absolute
        (relative paths are taken from the repository root).
    """
    if res is None:
        res = profile_resolutions(profile)[0] if isinstance(profile, str) else 0
    params = load_params(res, 0 if fold is None else fold, profile, overrides_from(options))
    params["data_dir"] = str(resolve_path(params["data_dir"]))
    params["out_dir"] = str(resolve_path(params["out_dir"]))
    if params["model"].get("weights_file"):
        params["model"]["weights_file"] = str(resolve_path(params["model"]["weights_file"]))
    if require_data:
        check_data_dir(params, from_parameter=options.get("data_dir") is not None)
    recorded = recorded_mos_scale(params["data_dir"])
    if recorded is not None and recorded != params["mos_scale"]:
        # A folder made by iqa_lib.prepare knows its own scale: CLIVE 0-100, KonIQ 1-5 ...
        if params["data_dir"] not in _SCALE_NOTED:  # once per folder, not per run
            _SCALE_NOTED.add(params["data_dir"])
            print(f"mos_scale {recorded:g} from {Path(params['data_dir']) / 'dataset.json'} "
                  f"(profile {params['profile']!r} says {params['mos_scale']:g})")
        params["mos_scale"] = recorded
    return params


_SCALE_NOTED: set[str] = set()


def recorded_mos_scale(data_dir: str | os.PathLike) -> float | None:
    """The MOS scale that `iqa_lib.prepare` recorded in data_dir/dataset.json, if any."""
    path = Path(data_dir) / "dataset.json"
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("mos_scale")
        return None if value is None else float(value)
    except (ValueError, TypeError, AttributeError) as e:
        raise ParameterError(f"'{path}' is not a readable dataset.json ({e}): rewrite it with "
                             f"`python -m iqa_lib.prepare ... --overwrite`, or delete it to use the profile's mos_scale.") from e


def check_data_dir(params: Mapping, *, from_parameter: bool = False) -> Path:
    """The data folder, or a ParameterError naming data_dir and how to get the data."""
    data_dir = Path(params["data_dir"])
    if data_dir.is_dir():
        return data_dir
    profile = params.get("profile")
    source = "the data_dir parameter" if from_parameter else f"profile {profile!r} (params/{profile}.yaml)"
    what = "is a file, not a folder" if data_dir.exists() else "does not exist"
    msg = (
        f"data_dir '{data_dir}' {what} (from {source}; relative paths are taken from the repository "
        f"root {repo_root()}). "
    )
    if profile == DEMO_PROFILE:
        target = _display_path(data_dir)
        msg += (
            f"The demo data has not been made yet: run `python -m iqa_lib.demo_data {target}` "
            f"from the repository root (or `make demo`), then rerun this notebook."
        )
    else:
        msg += (
            "Point data_dir at the folder holding train.csv, test.csv, train/ and test/ "
            "(e.g. `-p data_dir data`), convert a public data set into it with "
            f"`python -m iqa_lib.prepare NAME SRC {_display_path(data_dir)} --holdout 0.2` (see README), "
            "or try the kit on synthetic data with `-p profile demo` after `python -m iqa_lib.demo_data data/demo`."
        )
    raise ParameterError(msg)


def _display_path(path: Path) -> str:
    """`path` relative to the repository root when inside it (shorter commands)."""
    try:
        return str(path.relative_to(repo_root()))
    except ValueError:
        return str(path)


def flatten(params: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"train": {"epochs": 3}} -> {"train.epochs": 3}."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_table(params: Mapping, reference: Mapping | None = None, ref_name: str = "team recipe") -> pd.DataFrame:
    """Every effective parameter as a row (dotted key -> value); with `reference`, its value
    there and whether they differ (the profile's and the notebook's changes stand out)."""
    flat = flatten(params)
    table = pd.DataFrame({"value": [_show(v) for v in flat.values()]}, index=pd.Index(list(flat), name="key"))
    if reference is not None:
        ref = flatten(reference)
        table[ref_name] = [_show(ref.get(k)) for k in flat]
        table["changed"] = ["*" if flat[k] != ref.get(k) else "" for k in flat]
    return table


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


# --------------------------------------------------------------------------------------------
# data and folds
# --------------------------------------------------------------------------------------------
def image_sizes(paths: Sequence[str], max_images: int | None = None, seed: int = 0) -> pd.DataFrame:
    """(path, width, height, aspect) from the image headers (no decoding); with
    `max_images`, a random sample of that many paths (real data has ~68,000)."""
    from PIL import Image

    paths = list(paths)
    if max_images is not None and len(paths) > max_images:
        rng = np.random.default_rng(seed)
        paths = [paths[i] for i in sorted(rng.choice(len(paths), max_images, replace=False))]
    rows = []
    for p in paths:
        with Image.open(p) as im:
            w, h = im.size
        rows.append((p, w, h))
    df = pd.DataFrame(rows, columns=["path", "width", "height"])
    df["aspect"] = df["width"] / df["height"]
    return df


def data_summary(train: pd.DataFrame, test: pd.DataFrame | None = None) -> pd.DataFrame:
    """Counts and MOS statistics of load_table's train (and test) tables."""
    images = train.drop_duplicates("img_name")
    rows = {
        "train rows (caption rows)": len(train),
        "train images": len(images),
        "rows per image (mean)": round(len(train) / max(len(images), 1), 3),
        "MOS min": images["mos"].min(),
        "MOS max": images["mos"].max(),
        "MOS mean": round(images["mos"].mean(), 4),
        "MOS sd": round(images["mos"].std(), 4),
    }
    if test is not None:
        rows["test rows"] = len(test)
        rows["test images"] = test["img_name"].nunique()
        rows["test images also in train"] = int(test["img_name"].isin(images["img_name"]).sum())
    return pd.DataFrame({"value": list(rows.values())}, index=pd.Index(list(rows), name="what"))


# --------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------
def checkpoint_path(out_dir: str | os.PathLike, res: int, fold: int) -> Path:
    return run_dir(out_dir, res, fold) / f"{run_name(res, fold)}.ckpt"


def train_command(res: int, fold: int, profile: str) -> str:
    """The papermill command that trains one run."""
    name = run_name(res, fold)
    extra = f" -p profile {profile}" if profile != "team" else ""
    return (f"papermill notebooks/03_train.ipynb outputs/runs/{name}/03_train.ipynb "
            f"-p res {res} -p fold {fold}{extra} -k python3")


def parse_runs(runs: str, resolutions: Sequence[int], n_folds: int) -> list[tuple[int, int]] | None:
    """'all' -> None; '448_fold1,640_fold0' -> [(448, 1), (640, 0)], each checked."""
    text = runs.strip()
    if text.lower() == "all":
        return None
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        res_s, sep, fold_s = item.partition("_fold")
        if not sep or not res_s.isdigit() or not fold_s.isdigit():
            raise ParameterError(
                f"runs: {item!r} is not a run name: write 'all' or names like '448_fold1' separated by "
                f"commas (`-p runs 448_fold1,640_fold0`)."
            )
        res, fold = int(res_s), int(fold_s)
        if res not in resolutions or not 0 <= fold < n_folds:
            raise ParameterError(
                f"runs: {item!r} is not a run of this profile: resolutions {', '.join(map(str, resolutions))}, "
                f"folds 0..{n_folds - 1}."
            )
        out.append((res, fold))
    if not out:
        raise ParameterError("runs is empty: write 'all' or names like '448_fold1,640_fold0'.")
    return out


def find_checkpoints(
    out_dir: str | os.PathLike, profile: str, resolutions: Sequence[int], n_folds: int, runs: str = "all",
) -> list[tuple[int, int, Path]]:
    """(res, fold, checkpoint) of the selected runs whose checkpoint exists.

    Raises:
        ParameterError: none exists ('all'), or a named run has no checkpoint; the message
            names the training notebook and its command.
    """
    wanted = parse_runs(runs, resolutions, n_folds)
    grid = wanted or [(r, k) for r in resolutions for k in range(n_folds)]
    found = [(r, k, checkpoint_path(out_dir, r, k)) for r, k in grid]
    missing = [(r, k) for r, k, p in found if not p.is_file()]
    present = [f for f in found if f[2].is_file()]
    if wanted is not None and missing:
        names = ", ".join(run_name(r, k) for r, k in missing)
        raise ParameterError(
            f"no checkpoint for {names} under {Path(out_dir) / 'runs'}: train it first with "
            f"notebooks/03_train.ipynb, e.g. `{train_command(*missing[0], profile)}`."
        )
    if not present:
        raise ParameterError(
            f"no trained checkpoint under {Path(out_dir) / 'runs'} (looked for {{res}}_fold{{k}}/{{res}}_fold{{k}}.ckpt "
            f"for resolutions {', '.join(map(str, resolutions))} and folds 0..{n_folds - 1}). Train runs with "
            f"notebooks/03_train.ipynb first, e.g. `{train_command(resolutions[0], 0, profile)}`."
        )
    return present


def manifest_summary(run_dir_: str | os.PathLike) -> pd.DataFrame:
    """The headline facts of a run's manifest.json, one row each."""
    path = Path(run_dir_) / "manifest.json"
    if not path.is_file():
        return pd.DataFrame({"value": ["missing"]}, index=pd.Index(["status"], name="what"))
    m = json.loads(path.read_text())
    env = m.get("environment", {})
    rows = {
        "run": m.get("run"),
        "status": m.get("status"),
        "stop reason": m.get("stop_reason"),
        "error": m.get("error"),
        "best epoch": m.get("best_epoch"),
        **{f"best {k}": _round(v) for k, v in (m.get("best") or {}).items()},
        "epochs run": m.get("epochs_run"),
        "optimiser steps": m.get("steps"),
        "train / val images": f"{m.get('n_train')} / {m.get('n_val')}",
        "started": m.get("started"),
        "ended": m.get("ended"),
        "device": env.get("device"),
        "git commit": (env.get("git") or {}).get("commit"),
    }
    rows = {k: v for k, v in rows.items() if v is not None}
    return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=pd.Index(list(rows), name="what"))


def _round(v: Any, digits: int = 4) -> Any:
    return round(v, digits) if isinstance(v, float) and math.isfinite(v) else v


def prediction_summary(preds: Mapping[str, pd.DataFrame], seconds: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per run of test predictions: images and the spread of the predicted MOS."""
    rows = []
    for name, df in preds.items():
        mos = df["mos"]
        rows.append({"run": name, "images": len(df), "mean": mos.mean(), "sd": mos.std(), "min": mos.min(),
                     "max": mos.max(), **({"seconds": (seconds or {}).get(name)} if seconds else {})})
    return pd.DataFrame(rows).set_index("run").round(4)


# --------------------------------------------------------------------------------------------
# out-of-fold scores
# --------------------------------------------------------------------------------------------
def read_oof(out_dir: str | os.PathLike, name: str) -> pd.DataFrame | None:
    """A run's oof.csv (img_name, mos, pred), or None if the run has none."""
    path = Path(out_dir) / "runs" / name / "oof.csv"
    return pd.read_csv(path, dtype={"img_name": str}) if path.is_file() else None


def _scores(pred: Any, truth: Any) -> dict[str, float]:
    from .metrics import all_metrics

    return {k: round(v, 4) for k, v in all_metrics(np.asarray(pred, float), np.asarray(truth, float)).items()}


def oof_scores(out_dir: str | os.PathLike, run_names: Sequence[str]) -> pd.DataFrame:
    """Out-of-fold PLCC / SRCC / challenge score of each run, each resolution (its folds'
    oof.csv together) and the ensemble across resolutions (mean and IQR-filtered mean of the
    resolutions' predictions, on the images every resolution predicted)."""
    from .ensemble import iqr_mean, plain_mean

    rows, by_res = [], {}
    for name in run_names:
        oof = read_oof(out_dir, name)
        if oof is None:
            continue
        rows.append({"level": "run", "name": name, "runs": 1, "images": len(oof), **_scores(oof["pred"], oof["mos"])})
        by_res.setdefault(name.split("_fold")[0], []).append(oof)
    per_res = {}
    for res, parts in sorted(by_res.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else kv[0]):
        oof = pd.concat(parts).drop_duplicates("img_name", keep="last")
        per_res[res] = oof.set_index("img_name")
        rows.append({"level": "resolution", "name": res, "runs": len(parts), "images": len(oof),
                     **_scores(oof["pred"], oof["mos"])})
    if per_res:
        table = pd.concat({res: df["pred"] for res, df in per_res.items()}, axis=1, join="inner")
        if len(table):
            mos = next(iter(per_res.values()))["mos"].reindex(table.index)
            for label, fn in (("mean", plain_mean), ("iqr", iqr_mean)):
                rows.append({"level": "ensemble", "name": f"{label} over {len(per_res)} resolution(s)",
                             "runs": sum(len(p) for p in by_res.values()), "images": len(table),
                             **_scores(fn(table), mos)})
    return pd.DataFrame(rows)


def label_scores(columns: Mapping[str, pd.Series], labels: pd.DataFrame) -> pd.DataFrame:
    """Scores of test predictions ({name: Series indexed by img_name}) against true MOS
    (`labels`: img_name, mos), e.g. the demo data's test_labels.csv."""
    truth = labels.drop_duplicates("img_name").set_index("img_name")["mos"]
    rows = []
    for name, pred in columns.items():
        both = pd.concat({"pred": pred, "mos": truth}, axis=1, join="inner").dropna()
        rows.append({"name": name, "images": len(both), **_scores(both["pred"], both["mos"])})
    return pd.DataFrame(rows).set_index("name")


# --------------------------------------------------------------------------------------------
# helpers of single notebooks
# --------------------------------------------------------------------------------------------
def load_train_test(params: Mapping, check_images: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """load_table on train.csv and test.csv of params' data_dir.

    Raises:
        DataError: the problems of both files in one message (each with its fix).
    """
    from .data import DataError, load_table

    mode = check_images or params["train"].get("check_images", "open")
    tables, problems = [], []
    for name, labelled in (("train.csv", True), ("test.csv", False)):
        try:
            tables.append(load_table(params["data_dir"], name, labelled=labelled,
                                     mos_scale=float(params["mos_scale"]), check_images=mode, progress=False))
        except DataError as e:
            problems += e.problems
    if problems:
        raise DataError(problems, f"data problems in {params['data_dir']}")
    return tables[0], tables[1]


def steps_taken(metrics: pd.DataFrame) -> tuple[int, int]:
    """(optimiser steps the run took, steps per epoch) from its metrics.csv."""
    if not len(metrics):
        return 0, 0
    per_epoch = int(metrics["step"].iloc[0])
    if len(metrics) > 1:
        per_epoch = int(metrics["step"].diff().iloc[1:].max())
    return int(metrics["step"].iloc[-1]), per_epoch


def prediction_files(out_dir: str | os.PathLike, profile: str, runs: str = "all") -> list[Path]:
    """`{out_dir}/preds/*.csv` (runs="all") or the named runs' files, or a ParameterError saying how to make them."""
    folder = Path(out_dir) / "preds"
    extra = f" -p profile {profile}" if profile != "team" else ""
    how = (f"predict the test set first with notebooks/04_infer.ipynb, e.g. "
           f"`papermill notebooks/04_infer.ipynb outputs/04_infer.ipynb{extra} -k python3`.")
    if runs.strip() != "all":
        files = [folder / f"{name.strip()}.csv" for name in runs.split(",") if name.strip()]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ParameterError(f"runs={runs!r}: no predictions {', '.join(missing)} in {folder}: {how}")
        return files
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise ParameterError(f"no prediction files in {folder}: {how}")
    return files
