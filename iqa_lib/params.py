"""Run parameters from the YAML files under ``params/``, merged and checked.

``load_params(res, fold, profile)`` merges, later layers winning::

    base.yaml                       the team's recipe (SPEC §4); also the schema of every key
    {res}.yaml                      per-resolution overrides (batch sizes of the slides)
    {profile}.yaml, top level       e.g. demo.yaml: a small model for a CPU
    {profile}.yaml, resolutions[res]
    overrides                       a nested dict or dotted keys: {"train.epochs": 3}

A profile is any other ``*.yaml`` there; its ``resolutions:`` mapping lists the resolutions it
defines. Every layer is checked against base.yaml: unknown keys (with a suggestion) and wrong
types fail with a message that names the key, where it came from, and what to write instead.
The folder is the repository's ``params/``, or ``$IQA_PARAMS_DIR``, or the ``params_dir`` argument.
"""
from __future__ import annotations

import copy
import difflib
import numbers
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import yaml
from numpy import bool_ as np_bool

if TYPE_CHECKING:  # importing the model pulls in torch and timm: only when needed
    from .model import MANIQAConfig

PARAMS_ENV = "IQA_PARAMS_DIR"
BASE_FILE = "base.yaml"
DEFAULT_PROFILE = "team"

# Keys that are null in base.yaml, and what they may hold instead.
NULLABLE_TYPES: dict[str, tuple[type, ...]] = {
    "model.variant": (int, str),
    "model.weights_file": (str,),
    "model.img_size": (int,),
    "model.load_size": (int,),
    "train.max_steps": (int,),
    "train.save_every_steps": (int,),
}
# String keys with a closed set of values: a typo fails here, not hours into a run.
CHOICES: dict[str, tuple[str, ...]] = {
    "train.precision": ("bf16", "fp16", "fp32"),
    "train.device": ("auto", "cuda", "cpu"),
    "train.check_images": ("none", "open", "decode"),
    "train.flip": ("vertical", "horizontal", "none"),
}
# Keys that must be > 0 (n_folds >= 2 is checked with the fold).
POSITIVE = {
    "mos_scale", "model.img_size", "model.load_size", "model.crop_grid", "model.patch_size", "model.embed_dim", "model.head_hidden",
    "train.batch_size", "train.epochs", "train.max_steps", "train.val_batch_size", "train.grad_accum", "train.devices", "train.save_every_steps",
    "infer.batch_size", "schedule.first_cycle_steps",
}
# The model section's keys that are MANIQAConfig fields (the others choose how to build it).
MODEL_CONFIG_KEYS = (
    "img_size", "backbone", "head_hidden", "head_dropout", "drop_rate", "drop_path_rate", "vit_kwargs", "patch_size",
    "embed_dim",
)
# Set by load_params itself, never by a file or an override.
RUN_KEYS = ("res", "fold", "profile")


class ParamsError(ValueError):
    """A parameter file, argument or override is invalid; the message says how to fix it."""


# --- files ---------------------------------------------------------------------------------
def resolve_params_dir(path: str | os.PathLike | None = None) -> Path:
    """The parameter folder: `path`, else $IQA_PARAMS_DIR, else the repository's params/."""
    if path is not None:
        source = "params_dir"
    elif os.environ.get(PARAMS_ENV):
        path, source = os.environ[PARAMS_ENV], f"${PARAMS_ENV}"
    else:
        path, source = Path(__file__).resolve().parents[1] / "params", "the repository"
    folder = Path(path).expanduser()
    if not (folder / BASE_FILE).is_file():
        raise ParamsError(
            f"no {BASE_FILE} in '{folder}' (from {source}): point params_dir or ${PARAMS_ENV} at the "
            f"kit's params/ folder."
        )
    return folder


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ParamsError(f"'{path}' is not valid YAML: {e}") from e
    if data is None:  # an empty file overrides nothing
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"'{path}' must hold a mapping of parameters (key: value), got {type(data).__name__}.")
    return data


def _is_res_file(path: Path) -> bool:
    return path.stem.isdigit()


def list_profiles(params_dir: str | os.PathLike | None = None) -> list[str]:
    """Names of the profiles: every *.yaml except base.yaml and the {res}.yaml files."""
    folder = resolve_params_dir(params_dir)
    return sorted(p.stem for p in folder.glob("*.yaml") if p.name != BASE_FILE and not _is_res_file(p))


def _load_profile(profile: str, folder: Path) -> tuple[dict, dict[int, dict], Path]:
    """(top-level overrides, {res: overrides}, path) of a profile."""
    if not isinstance(profile, str) or not profile:
        raise ParamsError(f"profile must be a profile name such as '{DEFAULT_PROFILE}', got {profile!r}.")
    name = profile[:-5] if profile.endswith(".yaml") else profile
    path = folder / f"{name}.yaml"
    if name == Path(BASE_FILE).stem or name.isdigit() or not path.is_file():
        files = ", ".join(sorted(p.name for p in folder.glob("*.yaml")))
        raise ParamsError(
            f"unknown profile {profile!r}: choose one of {', '.join(list_profiles(folder))} "
            f"(files in '{folder}': {files})."
        )
    data = _read_yaml(path)
    resolutions = data.pop("resolutions", None)
    if not isinstance(resolutions, dict) or not resolutions:
        raise ParamsError(
            f"'{path}' needs a `resolutions:` mapping of the resolutions it defines, e.g. "
            f"`resolutions: {{384: {{}}, 448: {{}}, 640: {{}}}}`."
        )
    per_res = {}
    for key, value in resolutions.items():
        res = _as_int(key, f"resolution key {key!r} in '{path}'")
        if value is not None and not isinstance(value, dict):
            raise ParamsError(f"resolutions.{key} in '{path}' must be a mapping of overrides (or {{}}), got {value!r}.")
        per_res[res] = value or {}
    return data, per_res, path


def profile_resolutions(profile: str = DEFAULT_PROFILE, params_dir: str | os.PathLike | None = None) -> list[int]:
    """The resolutions a profile defines, ascending (e.g. [384, 448, 640])."""
    return sorted(_load_profile(profile, resolve_params_dir(params_dir))[1])


def run_name(res: int, fold: int) -> str:
    """The name of one run and its checkpoint: '448_fold2'."""
    return f"{res}_fold{fold}"


def run_dir(out_dir: str | os.PathLike, res: int, fold: int) -> Path:
    """`{out_dir}/runs/{res}_fold{k}`, where one training run writes everything."""
    return Path(out_dir) / "runs" / run_name(res, fold)


# --- checks --------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    """True for ints, numpy ints included; bool is not an int here."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np_bool))


def _as_int(value: Any, name: str, hint: str = "") -> int:
    """An int from an int, an integral float (448.0) or a digit string ('448'); bool is refused."""
    if isinstance(value, (bool, np_bool)):
        raise ParamsError(f"{name} must be an integer, got the bool {value!r}.{hint}")
    if _is_int(value):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():  # 448.0 is fine, 448.5 is not
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():  # papermill -r passes text
        return int(value.strip())
    kind = f"the string {value!r}" if isinstance(value, str) else f"{type(value).__name__} {value!r}"
    raise ParamsError(f"{name} must be an integer, got {kind}.{hint}")


_NUMBER_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _number_fix(value: Any, want: str, example: Any) -> str:
    """How to write a number that arrived as something else."""
    if isinstance(value, str) and _NUMBER_TEXT.match(value.strip()):
        if "e" in value.lower() and "." not in value:
            # PyYAML (YAML 1.1) reads 1e-5 as text; 1.0e-5 is a float.
            return "write it as a number; in YAML a float needs a dot and a signed exponent (1.0e-5, not 1e-5)"
        return f"write the number without quotes ({value.strip()})"
    if want == "int" and isinstance(value, numbers.Real):
        return f"write a whole number, e.g. {int(value)}"
    return f"write a number, e.g. {example!r}"


def _coerce(key: str, expected: Any, value: Any, where: str) -> Any:
    """`value` with the type base.yaml gives `key` (int -> float where a float is expected)."""
    if value is None:
        if expected is None:
            return None
        raise ParamsError(f"{where} is null, but it needs a value like base.yaml's {expected!r}.")
    if expected is None:  # null in base.yaml: see NULLABLE_TYPES
        if isinstance(value, os.PathLike):  # a notebook may pass a Path for weights_file
            value = os.fspath(value)
        allowed = NULLABLE_TYPES.get(key)
        if allowed is None:
            return value
        if int in allowed and _is_int(value):
            return int(value)
        if isinstance(value, (bool, np_bool)) or not isinstance(value, allowed):
            names = " or ".join(t.__name__ for t in allowed)
            raise ParamsError(f"{where} must be {names} or null, got {type(value).__name__} {value!r}.")
        return value
    if isinstance(expected, bool):
        if not isinstance(value, (bool, np_bool)):
            raise ParamsError(f"{where} must be true or false, got {type(value).__name__} {value!r}.")
        return bool(value)
    if isinstance(expected, (int, float)):
        want = "float" if isinstance(expected, float) else "int"
        if _is_int(value):
            return float(value) if want == "float" else int(value)
        if want == "float" and isinstance(value, numbers.Real) and not isinstance(value, (bool, np_bool)):
            return float(value)  # numpy floats too
        raise ParamsError(
            f"{where} must be {want} (base.yaml has {expected!r}), got {type(value).__name__} {value!r}: "
            f"{_number_fix(value, want, expected)}."
        )
    if not isinstance(value, type(expected)):
        raise ParamsError(
            f"{where} must be {type(expected).__name__} (base.yaml has {expected!r}), got {type(value).__name__} {value!r}."
        )
    return value


def _check_value(key: str, expected: Any, value: Any, source: str) -> Any:
    """`value` for `key`, type-checked against base.yaml and range-checked, or a ParamsError."""
    where = f"{key} (from {source})"
    value = _coerce(key, expected, value, where)
    if key in POSITIVE and value is not None and value <= 0:
        raise ParamsError(f"{where} must be > 0, got {value!r}.")
    if key in CHOICES and value not in CHOICES[key]:
        raise ParamsError(f"{where} must be one of {', '.join(CHOICES[key])}, got {value!r}.")
    return value


def _dotted_keys(schema: Mapping, prefix: str = "") -> list[str]:
    keys = []
    for k, v in schema.items():
        keys.append(prefix + k)
        if isinstance(v, dict) and v:
            keys += _dotted_keys(v, f"{prefix}{k}.")
    return keys


def _unknown_key(key: str, schema: Mapping, source: str) -> ParamsError:
    known = _dotted_keys(schema)
    leaf = key.rsplit(".", 1)[-1]
    # A right name in the wrong section ('epochs' for 'train.epochs') is the likeliest slip.
    same_leaf = [k for k in known if k.rsplit(".", 1)[-1] == leaf and k != key]
    close = same_leaf or difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    if key in RUN_KEYS:
        hint = f" Pass {key} as an argument of load_params, not as a parameter."
    return ParamsError(f"unknown parameter {key!r} (from {source}).{hint} Known keys are those of base.yaml.")


def _merge(schema: Mapping, target: dict, layer: Mapping, source: str, root: Mapping, prefix: str = "") -> None:
    """Check `layer` against `schema` (a section of `root`, base.yaml) and write it into `target`."""
    for key, value in layer.items():
        if not isinstance(key, str):
            raise ParamsError(f"parameter names must be text, got {key!r} under '{prefix or 'the top level'}' (from {source}).")
        full = prefix + key
        if key not in schema:
            raise _unknown_key(full, root, source)
        expected = schema[key]
        if isinstance(expected, dict):
            if not isinstance(value, dict):
                raise ParamsError(f"{full} (from {source}) must be a mapping, got {type(value).__name__} {value!r}.")
            if not expected:  # free-form (vit_kwargs): any keys, merged one by one
                target[key] = {**target.get(key, {}), **copy.deepcopy(value)}
            else:
                _merge(expected, target[key], value, source, root, f"{full}.")
        else:
            target[key] = _check_value(full, expected, value, source)


def _expand_dotted(overrides: Mapping) -> dict:
    """{"train.epochs": 3, "optim": {"lr": 1e-4}} -> {"train": {"epochs": 3}, "optim": {"lr": 1e-4}}."""
    out: dict = {}
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise ParamsError(f"override names must be text such as 'train.epochs', got {key!r}.")
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ParamsError(f"override {key!r} conflicts with the value given for {p!r}.")
            node = child
        if isinstance(value, Mapping):
            value = _expand_dotted(value)
            if isinstance(node.get(leaf), dict):
                node[leaf] = _deep_update(node[leaf], value)
                continue
        node[leaf] = value
    return out


def _deep_update(a: dict, b: Mapping) -> dict:
    for k, v in b.items():
        a[k] = _deep_update(a[k], v) if isinstance(v, Mapping) and isinstance(a.get(k), dict) else v
    return a


def _check_schedule(sched: Mapping) -> None:
    """The scheduler's own constraints, caught before a run starts."""
    if not 0 <= sched["warmup_steps"] < sched["first_cycle_steps"]:
        raise ParamsError(
            f"schedule.warmup_steps ({sched['warmup_steps']}) must be >= 0 and smaller than "
            f"schedule.first_cycle_steps ({sched['first_cycle_steps']}): shorten the warm-up or lengthen the cycle."
        )
    if not 0 <= sched["min_lr"] <= sched["max_lr"]:
        raise ParamsError(f"schedule.min_lr ({sched['min_lr']}) must be between 0 and schedule.max_lr ({sched['max_lr']}).")


# --- the public entry point ------------------------------------------------------------------
def load_params(
    res: int,
    fold: int,
    profile: str = DEFAULT_PROFILE,
    overrides: Mapping[str, Any] | None = None,
    params_dir: str | os.PathLike | None = None,
) -> dict:
    """The merged, checked parameters of one run (`res`, `fold`) of a profile.

    Args:
        res: one of the profile's resolutions (384, 448, 640 for 'team' and 'demo').
        fold: validation fold, 0..n_folds-1.
        profile: a file name under params/ without .yaml ('team', 'demo').
        overrides: last word on any key, nested ({"train": {"epochs": 3}}) or dotted ({"train.epochs": 3}).
        params_dir: the folder of YAML files (default: $IQA_PARAMS_DIR or the repository's params/).

    Returns:
        A nested dict with base.yaml's keys plus `res`, `fold` and `profile`; `model.img_size` and
        `model.variant` are filled with `res` where null, `model.load_size` with `model.img_size`.

    Raises:
        ParamsError (a ValueError): a bad argument, file, key, type or value; the message says the fix.
    """
    folder = resolve_params_dir(params_dir)
    schema = _read_yaml(folder / BASE_FILE)
    top, per_res, profile_path = _load_profile(profile, folder)
    choices = ", ".join(map(str, sorted(per_res)))
    res = _as_int(res, "res", f" Choose one of {choices} (profile {profile!r}).")
    if res not in per_res:
        raise ParamsError(f"res={res} is not defined by profile {profile!r} ('{profile_path}'): choose one of {choices}.")

    layers = []
    res_path = folder / f"{res}.yaml"
    if res_path.is_file():
        layers.append((_read_yaml(res_path), f"'{res_path}'"))
    layers += [(top, f"'{profile_path}'"), (per_res[res], f"'{profile_path}' resolutions.{res}")]
    if overrides is not None:
        if not isinstance(overrides, Mapping):
            raise ParamsError(f"overrides must be a dict such as {{'train.epochs': 3}}, got {type(overrides).__name__}.")
        layers.append((_expand_dotted(overrides), "overrides"))

    params = copy.deepcopy(schema)
    for layer, source in layers:
        _merge(schema, params, layer, source, schema)

    n_folds = params["n_folds"]
    if n_folds < 2:
        raise ParamsError(f"n_folds must be at least 2, got {n_folds}.")
    fold = _as_int(fold, "fold", f" Use 0..{n_folds - 1} (papermill: `-p fold 0`).")
    if not 0 <= fold < n_folds:
        raise ParamsError(f"fold={fold} is out of range: n_folds is {n_folds}, so use 0..{n_folds - 1}.")

    _check_schedule(params["schedule"])
    model = params["model"]
    if model["img_size"] is None:
        model["img_size"] = res
    if model["variant"] is None:
        model["variant"] = res
    if model["load_size"] is None:
        model["load_size"] = model["img_size"]
    elif model["load_size"] < model["img_size"]:
        raise ParamsError(
            f"model.load_size ({model['load_size']}) is smaller than the model's input model.img_size "
            f"({model['img_size']}): crops are cut from the stored image, so use load_size >= img_size "
            f"(or null to show whole images)."
        )
    return {"res": res, "fold": fold, "profile": profile_path.stem, **params}


def model_config(params: Mapping) -> MANIQAConfig:
    """The checked MANIQAConfig of loaded params: `variant_config(variant, **model fields)`."""
    from .model import variant_config

    model = params["model"]
    fields = {k: copy.deepcopy(model[k]) for k in MODEL_CONFIG_KEYS}
    where = f"profile {params.get('profile')!r}, res {params.get('res')}"
    try:
        cfg = variant_config(model["variant"], **fields)
        cfg.validate()
    except ValueError as e:
        raise ParamsError(f"the model parameters ({where}) do not make a valid MANIQA: {e}") from e
    return cfg
