"""A run's parameters, resolved in one place: `load_config(profile, res, fold, overrides, **shortcuts)`.

The layers, later ones winning::

    params/base.yaml                 the team's recipe (SPEC §4), every key commented: the defaults
    params/{res}.yaml                per-resolution values (the slides' batch sizes), if the file exists
    params/{profile}.yaml            a profile's top level (demo.yaml: a small model for a CPU)
    params/{profile}.yaml resolutions[res]
    {data_dir}/dataset.json          mos_scale of a folder that `iqa_lib.datasets.prepare` wrote
    overrides                        notebook parameters, `-p` of the grid runner, tests

The schema below gives each key its type and limits (pydantic); base.yaml gives its value. A key
that base.yaml lacks, a wrong type or an out-of-range value fails here, naming the key, the file
it came from and what to write instead. Relative `data_dir`, `out_dir` and `model.weights_file`
are taken from the repository root, so a notebook run by JupyterLab (cwd `notebooks/`) and by
papermill (cwd the root) reads and writes the same folders.

Every path a run writes is named once, by `Outputs` (`cfg.outputs.run(res, fold).checkpoint`).
This module imports nothing of torch: a parameter typo fails in a notebook's first seconds.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import numbers
import os
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional, get_args

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

PARAMS_ENV = "IQA_PARAMS_DIR"  # another folder of YAML files than the repository's params/
DEFAULT_PROFILE = "team"

# The choice lists, each written once (data, training and inference import them from here).
Precision = Literal["bf16", "fp16", "fp32"]
Device = Literal["auto", "cuda", "cpu"]
Flip = Literal["vertical", "horizontal", "none"]
CheckImages = Literal["none", "open", "decode"]
Logger = Literal["none", "tensorboard", "wandb", "mlflow"]  # train.logger: "none", or one or several of the others
Loss = Literal["mse", "plcc", "nin", "rank"]  # train.loss: one, or a weighted sum (iqa_lib/losses.py)
CpuBf16 = Literal["auto", True, False]  # train.cpu_bf16: auto = where the CPU has bf16 instructions
PRECISIONS, DEVICES, FLIPS, CHECK_MODES, LOGGERS, LOSSES = (
    get_args(t) for t in (Precision, Device, Flip, CheckImages, Logger, Loss))

# Notebook parameter -> the keys it sets (a notebook cannot name `train.epochs`).
SHORTCUTS: dict[str, tuple[str, ...]] = {
    "data_dir": ("data_dir",), "out_dir": ("out_dir",), "n_folds": ("n_folds",),
    "epochs": ("train.epochs",), "batch_size": ("train.batch_size",), "precision": ("train.precision",),
    "max_steps": ("train.max_steps",), "devices": ("train.devices",), "compile": ("train.compile",),
    "num_workers": ("train.num_workers",), "lr": ("optim.lr", "schedule.max_lr"),
    "weights_file": ("model.weights_file",), "pretrained": ("model.pretrained",), "logger": ("train.logger",),
    "loss": ("train.loss",), "ema_decay": ("train.ema_decay",), "freeze_backbone": ("train.freeze_backbone",),
    "seed": ("seed",),
}
PATH_KEYS = ("data_dir", "out_dir", "model.weights_file")


class ConfigError(ValueError):
    """A parameter file, argument or override is invalid; the message says how to fix it."""


# --------------------------------------------------------------------------------------------
# the schema: types and limits (the values are base.yaml's)
# --------------------------------------------------------------------------------------------
def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a number is needed, not true/false")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Count = Annotated[int, BeforeValidator(_not_bool), Field(gt=0)]
Rate = Annotated[float, BeforeValidator(_not_bool), Field(ge=0)]
Probability = Annotated[float, BeforeValidator(_not_bool), Field(ge=0, le=1)]


def logger_names(value: str) -> tuple[str, ...]:
    """'tensorboard, wandb' -> ('tensorboard', 'wandb'); 'none' -> (). Raises ValueError naming the choices."""
    names = [n.strip().lower() for n in value.split(",") if n.strip()] if isinstance(value, str) else None
    trackers = tuple(n for n in LOGGERS if n != "none")
    if not names:
        raise ValueError(f"write none or a comma list of {', '.join(trackers)} (e.g. \"tensorboard,wandb\")")
    for name in names:
        if name not in LOGGERS:
            close = difflib.get_close_matches(name, LOGGERS, n=1, cutoff=0.6)
            raise ValueError(f"unknown logger {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                             + f": choose none or one or several of {', '.join(trackers)}, comma-separated "
                             f"(e.g. \"tensorboard,wandb\")")
    if "none" in names and len(names) > 1:
        raise ValueError(f"none cannot be combined with other loggers: write none, or only the trackers "
                         f"({', '.join(n for n in names if n != 'none')})")
    return () if names == ["none"] else tuple(dict.fromkeys(names))


def _logger_text(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):  # YAML [tensorboard, wandb]
        value = ",".join(value)
    if isinstance(value, str):
        return ",".join(logger_names(value)) or "none"  # checked and normalised: "tensorboard,wandb"
    return value


LoggerList = Annotated[str, BeforeValidator(_logger_text)]


def loss_terms(spec: str) -> list[tuple[float, str]]:
    """'0.5*mse + rank' -> [(0.5, 'mse'), (1.0, 'rank')]. Raises ValueError naming train.loss and the fix."""
    def fail(reason: str) -> ValueError:
        return ValueError(f"train.loss = {spec!r} is not valid: {reason}. Write one of {', '.join(LOSSES)} "
                          f"or a weighted sum of them, e.g. \"mse\" or \"0.5*mse+0.5*rank\"")
    if not isinstance(spec, str):
        raise fail("a string is needed")
    terms = []
    for term in spec.split("+"):
        weight, star, name = term.rpartition("*")
        name = name.strip().lower()
        if not name or (star and not weight.strip()):
            raise fail("there is an empty term or weight (a stray '+' or '*'?)")
        try:
            w = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise fail(f"the weight {weight.strip()!r} of {name!r} is not a number") from None
        if not (math.isfinite(w) and w > 0):
            raise fail(f"the weight of {name!r} must be a positive, finite number, not {weight.strip()}")
        if name not in LOSSES:
            close = difflib.get_close_matches(name, LOSSES, n=1)
            raise fail(f"unknown loss {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        if name in (n for _, n in terms):
            raise fail(f"{name!r} appears twice (add the weights instead)")
        terms.append((w, name))
    return terms


def _loss_text(value: Any) -> Any:
    if isinstance(value, str):
        return "+".join(name if w == 1 else f"{w:g}*{name}" for w, name in loss_terms(value))  # checked, normalised
    return value


LossText = Annotated[str, BeforeValidator(_loss_text)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelParams(Section):
    pretrained: bool
    weights_file: Optional[str]
    img_size: Optional[Count]
    load_size: Optional[Count]
    crop_grid: Count
    backbone: str
    head_hidden: Count
    head_dropout: Probability
    drop_rate: Probability
    drop_path_rate: Probability
    vit_kwargs: dict[str, Any]
    patch_size: Optional[Count]
    embed_dim: Optional[Count]
    head_dim: Optional[Count]
    feature_blocks: Annotated[list[Annotated[Int, Field(ge=0)]], Field(min_length=1)]
    num_tab: Annotated[Int, Field(ge=0)]
    dim_mlp: Count


class OptimParams(Section):
    lr: Rate
    weight_decay: Rate
    backbone_lr_scale: Annotated[float, BeforeValidator(_not_bool), Field(gt=0)]


class ScheduleParams(Section):
    first_cycle_steps: Count
    cycle_mult: Annotated[float, Field(gt=0)]
    max_lr: Rate
    min_lr: Rate
    warmup_steps: Annotated[Int, Field(ge=0)]
    gamma: Annotated[float, BeforeValidator(_not_bool), Field(gt=0)]

    @model_validator(mode="after")
    def _fits(self):
        if self.warmup_steps >= self.first_cycle_steps:
            raise ValueError(f"schedule.warmup_steps ({self.warmup_steps}) must be smaller than "
                             f"schedule.first_cycle_steps ({self.first_cycle_steps}): shorten the warm-up or lengthen the cycle")
        if self.min_lr > self.max_lr:
            raise ValueError(f"schedule.min_lr ({self.min_lr}) must not exceed schedule.max_lr ({self.max_lr})")
        return self


class TrainParams(Section):
    batch_size: Count
    epochs: Count
    max_steps: Optional[Count]
    patience: Count
    precision: Precision
    cpu_bf16: CpuBf16
    compile: bool
    flip: Flip
    num_workers: Annotated[Int, Field(ge=0)]
    cache: bool
    deterministic: bool
    val_batch_size: Count
    val_every: Count
    grad_accum: Count
    device: Device
    devices: Count
    save_every_steps: Optional[Count]
    keep_last: bool
    check_images: CheckImages
    loss: LossText  # "mse" or a weighted sum of LOSSES: "0.5*mse+0.5*rank" (iqa_lib/losses.py)
    ema_decay: Optional[Annotated[float, BeforeValidator(_not_bool), Field(gt=0, lt=1)]]
    freeze_backbone: bool
    freeze_blocks: Annotated[Int, Field(ge=0)]
    feature_cache: bool
    init_from: Optional[Count]  # an input size of the profile, smaller than res (load_config checks)
    logger: LoggerList  # "none" or a comma list of LOGGERS' trackers (iqa_lib.trackers)

    @property
    def loggers(self) -> tuple[str, ...]:
        """The trackers asked for: () for none, else e.g. ('tensorboard', 'wandb')."""
        return logger_names(self.logger)


class InferParams(Section):
    batch_size: Count
    tta: bool


class Config(Section):
    """One run's parameters: `cfg.train.batch_size`; `cfg.to_dict()` for the manifest."""

    res: Int
    fold: Int
    profile: str
    data_dir: str
    out_dir: str
    mos_scale: Annotated[float, BeforeValidator(_not_bool), Field(gt=0)]
    n_folds: Annotated[Int, Field(ge=2)]
    seed: Int
    model: ModelParams
    optim: OptimParams
    schedule: ScheduleParams
    train: TrainParams
    infer: InferParams

    @model_validator(mode="after")
    def _run(self):
        if not 0 <= self.fold < self.n_folds:
            raise ValueError(f"fold={self.fold} is out of range: n_folds is {self.n_folds}, so use 0..{self.n_folds - 1}")
        m = self.model
        if m.img_size is None:
            m.img_size = self.res
        if m.load_size is None:
            m.load_size = m.img_size
        if m.load_size < m.img_size:
            raise ValueError(f"model.load_size ({m.load_size}) is smaller than model.img_size ({m.img_size}): crops are "
                             f"cut from the stored image, so use load_size >= img_size (or null for whole images)")
        room = m.load_size - m.img_size + 1  # distinct offsets of a crop along a side
        if 1 < room < m.crop_grid:
            raise ValueError(f"model.crop_grid ({m.crop_grid}) asks for more crops per side than model.load_size "
                             f"({m.load_size}) has places for crops of model.img_size ({m.img_size}): use crop_grid <= "
                             f"{room}, or load_size >= {m.img_size + m.crop_grid - 1}")
        t = self.train
        if t.init_from is not None and m.num_tab:
            raise ValueError(f"train.init_from: the {m.num_tab} TAB pairs' weights are sized by the token count, which "
                             f"differs between input sizes: set model.num_tab: 0, or train.init_from: null")
        if t.init_from is not None and t.freeze_backbone and t.feature_cache:
            raise ValueError("train.init_from gives each fold a backbone of its own, but the feature cache "
                             "(train.feature_cache) is shared by the folds of a size: set train.feature_cache: false")
        return self

    @property
    def outputs(self) -> "Outputs":
        return Outputs(Path(self.out_dir))

    @property
    def run(self) -> "RunFiles":
        return self.outputs.run(self.res, self.fold)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------------------------
# the output layout: every path a step writes, named once
# --------------------------------------------------------------------------------------------
def run_name(res: int, fold: int) -> str:
    """'448_fold2': the name of one run, its folder, checkpoint and prediction file."""
    return f"{res}_fold{fold}"


def parse_run_name(name: Any) -> tuple[int, int]:
    """'448_fold2' -> (448, 2), else a ValueError saying the form."""
    res, sep, fold = str(name).partition("_fold")
    if not (sep and res.isdigit() and fold.isdigit()):
        raise ValueError(f"{name!r} is not of the form '{{res}}_fold{{k}}' (e.g. '448_fold1')")
    return int(res), int(fold)


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; None when it is missing or unreadable (a run killed mid-write)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def file_digest(path: str | os.PathLike) -> str:
    """A short sha256 of a file's bytes: which checkpoint a run started from (train.init_from)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class RunFiles:
    """The files of one run, `{out_dir}/runs/{res}_fold{k}/`."""

    def __init__(self, runs_dir: Path, name: str):
        self.name = name
        self.dir = Path(runs_dir) / name
        self.checkpoint = self.dir / f"{name}.ckpt"  # the best weights (checkpoint.py)
        self.last = self.dir / "last.pt"  # everything needed to resume
        self.metrics = self.dir / "metrics.csv"  # one row per epoch
        self.oof = self.dir / "oof.csv"  # the best epoch's validation predictions
        self.manifest = self.dir / "manifest.json"  # config, environment, status, best metrics
        self.notebook = self.dir / "03_train.ipynb"  # the executed training notebook
        self.lock = self.dir / ".lock"  # held while a process trains the run (iqa_lib.lock)
        self.aside = Path(runs_dir).parent / "replaced" / name  # a forced retrain's predecessor, until it completes

    def __repr__(self) -> str:
        return f"RunFiles({self.dir})"

    def read_manifest(self) -> dict:
        """manifest.json's content ({} when there is none, or none readable)."""
        m = read_json(self.manifest)
        return m if isinstance(m, dict) else {}

    @property
    def completed(self) -> bool:
        """Marked completed, with its checkpoint in place (`train.completed_result` also loads it)."""
        return self.read_manifest().get("status") == "completed" and self.checkpoint.is_file()

    def set_aside(self, keep: tuple[str, ...] = ()) -> Path | None:
        """Before a forced retrain: move the run's files (but its lock and the names in `keep`) to `aside`,
        where they stay until the new run completes, so a retrain that fails loses nothing. When the run
        here did not complete but `aside` holds a completed one (a forced retrain that failed), that one
        is kept and the files here are deleted. Returns `aside`, or None when there was nothing to keep."""
        keep = {self.lock.name, self.lock.name + ".json", *keep}
        entries = [p for p in self.dir.iterdir() if p.name not in keep] if self.dir.is_dir() else []
        kept = RunFiles(self.aside.parent, self.name)
        if not entries:
            return self.aside if kept.completed else None
        if kept.completed and not self.completed:
            for p in entries:
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            return self.aside
        shutil.rmtree(self.aside, ignore_errors=True)  # an older or partial copy: this run is the one to keep
        self.aside.mkdir(parents=True)
        for p in entries:
            shutil.move(p, self.aside / p.name)  # a rename, or a copy where replaced/ is on another disk
        return self.aside

    def retrained_source(self) -> str | None:
        """The run this one started from (train.init_from), if it has completed again since with
        another checkpoint: this run descends from weights that are gone. Else None."""
        manifest = self.read_manifest()
        name, digest = manifest.get("init_from"), manifest.get("init_from_checkpoint")
        if not (name and digest):
            return None
        source = RunFiles(self.dir.parent, name)
        try:
            return name if source.completed and file_digest(source.checkpoint) != digest else None
        except OSError:  # moved away meanwhile (its own forced retrain): nothing to say yet
            return None


class Outputs:
    """Every path the steps write under `out_dir` (outputs/README.md shows the layout)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.folds = self.root / "folds.csv"  # 02_folds
        self.cache = self.root / "cache"  # pre-resized images (data.ImageStore)
        self.features = self.cache / "features"  # a frozen backbone's outputs (features.FeatureCache)
        self.runs = self.root / "runs"  # 03_train: one RunFiles folder per run
        self.preds = self.root / "preds"  # 04_infer: {res}_fold{k}.csv
        self.submission = self.root / "submission.csv"  # 05_ensemble
        self.submission_runs = self.root / "submission.runs.json"  # the runs the submission combines
        self.submission_prev = self.root / "submission.prev.csv"  # kept when a new one combines fewer runs
        self.submission_prev_runs = self.root / "submission.prev.runs.json"  # the runs that one combines
        self.eda = self.root / "eda"  # 01_eda's figures
        self.tensorboard = self.root / "tensorboard"  # train.logger=tensorboard: one event folder per run name
        self.wandb = self.root / "wandb"  # train.logger=wandb: its offline/online run folders (unless $WANDB_DIR is set)
        self.mlflow = self.root / "mlflow.db"  # train.logger=mlflow: the tracking database (unless $MLFLOW_TRACKING_URI is set)
        self.notebooks = self.root / "notebooks"  # the grid runner's executed 01, 02, 04, 05
        self.lock = self.root / ".run_all.lock"  # held by a running grid runner

    def run(self, res: int, fold: int) -> RunFiles:
        return RunFiles(self.runs, run_name(res, fold))

    def prediction(self, name: str) -> Path:
        return self.preds / f"{name}.csv"

    def __repr__(self) -> str:
        return f"Outputs({self.root})"


# --------------------------------------------------------------------------------------------
# files and profiles
# --------------------------------------------------------------------------------------------
def repo_root() -> Path:
    """The folder holding `params/` and `iqa_lib/`."""
    return Path(__file__).resolve().parents[1]


def resolve_path(p: str | os.PathLike) -> Path:
    """`p` made absolute; a relative path is taken from the repository root, not the cwd."""
    path = Path(p).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else repo_root() / path))


def repo_relative(path: str | os.PathLike) -> str:
    """`path` relative to the repository root when inside it (shorter in messages, and the same on a Ray
    node whose checkout lies elsewhere), else as given."""
    try:
        return str(Path(path).relative_to(repo_root()))
    except ValueError:
        return str(path)


def params_dir(path: str | os.PathLike | None = None) -> Path:
    """The YAML folder: `path`, else $IQA_PARAMS_DIR, else the repository's params/."""
    source = "params_folder" if path is not None else (f"${PARAMS_ENV}" if os.environ.get(PARAMS_ENV) else None)
    folder = Path(path if path is not None else os.environ.get(PARAMS_ENV) or repo_root() / "params")
    if not (folder / "base.yaml").is_file():
        raise ConfigError(f"no base.yaml in '{folder}'" + (f" (from {source})" if source else "")
                          + f": point params_folder or ${PARAMS_ENV} at the kit's params/ folder.")
    return folder


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"'{path}' is not valid YAML: {e}") from e
    if not isinstance(data, dict | None):
        raise ConfigError(f"'{path}' must hold a mapping of parameters (key: value), got {type(data).__name__}.")
    return data or {}


def list_profiles(folder: str | os.PathLike | None = None) -> list[str]:
    """Every params/*.yaml but base.yaml and the {res}.yaml files."""
    folder = params_dir(folder)
    return sorted(p.stem for p in folder.glob("*.yaml") if p.stem != "base" and not p.stem.isdigit())


def _read_profile(profile: str, folder: Path) -> tuple[dict, dict[int, dict], Path]:
    """(top-level values, {res: values}, file) of a profile."""
    name = profile[:-5] if isinstance(profile, str) and profile.endswith(".yaml") else profile
    path = folder / f"{name}.yaml"
    if not isinstance(name, str) or name not in list_profiles(folder):
        raise ConfigError(f"unknown profile {profile!r}: choose one of {', '.join(list_profiles(folder))} "
                          f"(the files in '{folder}').")
    data = read_yaml(path)
    resolutions = data.pop("resolutions", None)
    if not isinstance(resolutions, dict) or not resolutions:
        raise ConfigError(f"'{path}' needs a `resolutions:` mapping of the input sizes it trains at, e.g. "
                          f"`resolutions: {{384: {{}}, 448: {{}}, 640: {{}}}}`.")
    per_res = {}
    for key, value in resolutions.items():
        if isinstance(key, bool) or not str(key).isdigit():
            raise ConfigError(f"resolution key {key!r} in '{path}' must be a whole number (the input size in pixels).")
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"resolutions.{key} in '{path}' must be a mapping of overrides (or {{}}), got {value!r}.")
        per_res[int(key)] = value or {}
    return data, per_res, path


def profile_resolutions(profile: str = DEFAULT_PROFILE, folder: str | os.PathLike | None = None) -> list[int]:
    """The input sizes a profile trains at, ascending (team: [384, 448, 640])."""
    return sorted(_read_profile(profile, params_dir(folder))[1])


def dataset_mos_scale(data_dir: str | os.PathLike) -> float | None:
    """The MOS scale that `iqa_lib.datasets.prepare` recorded in `data_dir/dataset.json`, if any."""
    path = Path(data_dir) / "dataset.json"
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("mos_scale")
        return None if value is None else float(value)
    except (ValueError, TypeError, AttributeError) as e:
        raise ConfigError(f"'{path}' is not a readable dataset.json ({e}): rewrite it with "
                          f"`python -m iqa_lib.datasets.prepare ... --overwrite`, or delete it to use the "
                          f"profile's mos_scale.") from e


# --------------------------------------------------------------------------------------------
# merging the layers
# --------------------------------------------------------------------------------------------
def _schema_keys(model: type[BaseModel] = Config, prefix: str = "") -> dict[str, type[BaseModel] | None]:
    """Every dotted key of the schema -> its section model (None for a leaf)."""
    keys: dict[str, type[BaseModel] | None] = {}
    for name, field in model.model_fields.items():
        sub = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
        keys[prefix + name] = sub
        if sub is not None:
            keys.update(_schema_keys(sub, f"{prefix}{name}."))
    return keys


KEYS = _schema_keys()
RUN_KEYS = ("res", "fold", "profile")  # set by load_config's arguments, never by a file


def _unknown(key: str, source: str) -> ConfigError:
    leaf = key.rsplit(".", 1)[-1]
    # A right name in the wrong section ('epochs' for 'train.epochs') is the likeliest slip.
    close = [k for k in KEYS if k.rsplit(".", 1)[-1] == leaf and k != key]
    close = close or difflib.get_close_matches(key, list(KEYS), n=1, cutoff=0.6)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    if key in RUN_KEYS:
        hint = f" {key} is an argument of load_config, not a parameter."
    return ConfigError(f"unknown parameter {key!r} (from {source}).{hint} The known keys are base.yaml's.")


def _flat(layer: Mapping, source: str, prefix: str = "") -> dict[str, Any]:
    """{"train": {"epochs": 3}, "optim.lr": 1e-4} -> {"train.epochs": 3, "optim.lr": 1e-4}, checked."""
    out = {}
    for key, value in layer.items():
        full = f"{prefix}{key}"
        parent, _, sub = full.rpartition(".")
        if parent == "model.vit_kwargs":  # a dotted key inside the free-form mapping
            out[parent] = {**out.get(parent, {}), sub: copy.deepcopy(value)}
            continue
        if full not in KEYS or full in RUN_KEYS:
            raise _unknown(full, source)
        if KEYS[full] is not None:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{full} (from {source}) must be a mapping, got {type(value).__name__} {value!r}.")
            out.update(_flat(value, source, full + "."))
        else:
            out[full] = copy.deepcopy(value)
    return out


def flatten(params: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"train": {"epochs": 3}} -> {"train.epochs": 3}; the free-form vit_kwargs stays one value."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping) and value and key != "vit_kwargs":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _nest(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _explain(e: ValidationError, sources: Mapping[str, str]) -> ConfigError:
    lines = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if key and key in KEYS and KEYS[key] is None:  # a leaf: name its value and where it came from
            lines.append(f"{key} = {err.get('input')!r} (from {sources.get(key, 'base.yaml')}): {msg}")
        else:  # a rule across keys: the message names them
            lines.append(msg)
    return ConfigError("invalid parameters:\n- " + "\n- ".join(lines))


def load_config(
    profile: str = DEFAULT_PROFILE,
    res: int | None = None,
    fold: int = 0,
    overrides: Mapping[str, Any] | None = None,
    *,
    params_folder: str | os.PathLike | None = None,
    **shortcuts: Any,
) -> Config:
    """The checked parameters of one run of `profile` (`res` None: its first input size).

    `overrides` take dotted or nested keys ({"train.epochs": 3}); `shortcuts` are the notebook
    parameters of SHORTCUTS (epochs=3, lr=1e-4, data_dir="data/demo"); None means "keep the
    profile's value". Raises ConfigError (a ValueError) with the fix in its message.
    """
    folder = params_dir(params_folder)
    top, per_res, profile_path = _read_profile(profile, folder)
    sizes = ", ".join(map(str, sorted(per_res)))
    if res is None:
        res = min(per_res)
    if isinstance(res, bool) or not isinstance(res, (numbers.Integral, str, float)) or not str(res).removesuffix(".0").isdigit():
        raise ConfigError(f"res must be one of {sizes} (profile {profile_path.stem!r}), got {res!r}.")
    res = int(float(res))
    if res not in per_res:
        raise ConfigError(f"res={res} is not an input size of profile {profile_path.stem!r} ('{profile_path}'): "
                          f"choose one of {sizes}.")
    unknown = sorted(set(shortcuts) - set(SHORTCUTS))
    if unknown:
        raise TypeError(f"load_config() got unknown parameter(s) {', '.join(unknown)} (known: {', '.join(SHORTCUTS)})")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ConfigError(f"overrides must be a dict such as {{'train.epochs': 3}}, got {type(overrides).__name__}.")
    late = {**(overrides or {}),
            **{key: value for name, value in shortcuts.items() if value is not None for key in SHORTCUTS[name]}}
    layers = [(read_yaml(folder / "base.yaml"), "base.yaml")]
    if (folder / f"{res}.yaml").is_file():
        layers.append((read_yaml(folder / f"{res}.yaml"), f"{res}.yaml"))
    layers += [(top, profile_path.name), (per_res[res], f"{profile_path.name} resolutions.{res}")]
    layers = [(_flat(values, source), source) for values, source in layers + [(late, "overrides")]]

    flat: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def apply(values: Mapping[str, Any], source: str) -> None:
        for key, value in values.items():
            if key in PATH_KEYS and isinstance(value, (str, os.PathLike)):
                value = str(resolve_path(value))
            if key == "model.vit_kwargs" and isinstance(value, dict):  # free-form: merged key by key
                value = {**flat.get(key, {}), **value}
            flat[key], sources[key] = value, source

    for values, source in layers:
        apply(values, source)
    data_dir = flat["data_dir"]
    recorded = dataset_mos_scale(data_dir) if isinstance(data_dir, str) else None
    # A prepared folder knows its own scale (CLIVE 0-100, KonIQ 1-5); an override has the last word.
    if recorded is not None and "mos_scale" not in layers[-1][0]:
        apply({"mos_scale": recorded}, f"{data_dir}/dataset.json")

    flat.update(res=res, fold=fold, profile=profile_path.stem)
    sources.update(res="the res argument", fold="the fold argument")
    try:
        cfg = Config.model_validate(_nest(flat))
    except ValidationError as e:
        raise _explain(e, sources) from None
    source = cfg.train.init_from
    if source is not None and (source not in per_res or source >= res):
        raise ConfigError(f"train.init_from = {source} (from {sources['train.init_from']}) must be an input size of "
                          f"profile {profile_path.stem!r} smaller than res={res} (its sizes: {sizes}), or null.")
    return cfg
