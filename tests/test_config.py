"""Run parameters (iqa_lib.config): merge order, the shipped YAML files, the output layout and
every validation message."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from iqa_lib import config as C
from iqa_lib.config import (
    Config,
    ConfigError,
    list_profiles,
    load_config,
    params_dir,
    profile_resolutions,
    resolve_path,
    run_name,
)
from iqa_lib.infer import model_config

REPO = Path(__file__).resolve().parents[1]
REPO_PARAMS = REPO / "params"
TEAM_RES = [384, 448, 640]
SMALL_RES = [64, 128, 192]  # demo: real input sizes a CPU trains at
CPU_RES = [112, 168, 224]  # cpu: the DINOv2 ViT-S/14's token grids 8 / 12 / 16
FLOAT_KEYS = ["mos_scale", "optim.lr", "optim.weight_decay", "schedule.cycle_mult", "schedule.max_lr",
              "schedule.min_lr", "schedule.gamma", "model.head_dropout", "model.drop_rate", "model.drop_path_rate"]


def get(cfg, dotted):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def all_cases():
    return [(p, r) for p in list_profiles() for r in profile_resolutions(p)]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(C.PARAMS_ENV, raising=False)


@pytest.fixture
def layered(tmp_path):
    """A params folder where every layer sets a different subset of train keys."""
    folder = tmp_path / "params"
    folder.mkdir()
    shutil.copy(REPO_PARAMS / "base.yaml", folder / "base.yaml")
    (folder / "384.yaml").write_text("train:\n  batch_size: 11\n  epochs: 11\n  patience: 11\n  num_workers: 11\n")
    (folder / "lay.yaml").write_text(
        "train:\n  epochs: 22\n  patience: 22\n  num_workers: 22\n"
        "resolutions:\n  384:\n    train:\n      patience: 33\n      num_workers: 33\n  512:\n"
    )
    return folder


# --- merge order -----------------------------------------------------------------------------
def test_merge_order(layered):
    cfg = load_config("lay", 384, 0, {"train.num_workers": 44}, params_folder=layered)
    t = cfg.train
    assert (t.val_batch_size, t.batch_size, t.epochs, t.patience, t.num_workers) == (32, 11, 22, 33, 44)
    # A resolution without its own {res}.yaml or profile overrides gets base + profile top level.
    t = load_config("lay", 512, 0, params_folder=layered).train
    assert (t.batch_size, t.epochs, t.patience, t.num_workers) == (32, 22, 22, 22)
    # res None: the profile's smallest input size.
    assert load_config("lay", params_folder=layered).res == 384


def test_team_profile_is_the_recipe():
    assert (load_config().profile, load_config().res) == ("team", 384)  # the defaults
    for res, batch in zip(TEAM_RES, (32, 16, 16)):
        cfg = load_config("team", res, 0)
        assert (cfg.res, cfg.fold, cfg.profile) == (res, 0, "team")
        assert cfg.model.img_size == cfg.model.load_size == res  # null = res, whole images
        assert cfg.model.crop_grid == 1 and cfg.model.vit_kwargs == {} and cfg.model.embed_dim is None
        assert cfg.model.feature_blocks == [6, 7, 8, 9] and cfg.train.loss == "mse" and cfg.train.ema_decay is None
        assert not cfg.train.freeze_backbone and cfg.optim.backbone_lr_scale == 1.0
        mcfg = model_config(cfg)  # width, patch and normalisation read from vit_base_patch16_384
        assert (mcfg.embed_dim, mcfg.patch_size, mcfg.mean, mcfg.std) == (768, 16, (0.5,) * 3, (0.5,) * 3)
        assert cfg.train.batch_size == batch
        assert cfg.optim.model_dump() == {"lr": 1e-5, "weight_decay": 1e-5, "backbone_lr_scale": 1.0}
        assert cfg.schedule.model_dump() == dict(first_cycle_steps=800, cycle_mult=1.0, max_lr=1e-5, min_lr=1e-10,
                                                 warmup_steps=200, gamma=0.9)
        assert (cfg.seed, cfg.n_folds, cfg.mos_scale, cfg.train.patience, cfg.train.epochs) == (4420, 5, 10.0, 15, 200)
        assert cfg.model.pretrained is True and cfg.model.head_hidden == 96 and cfg.model.head_dropout == 0.5
        assert (cfg.data_dir, cfg.out_dir) == (str(REPO / "data"), str(REPO / "outputs"))


def test_demo_and_cpu_profiles_override_the_recipe():
    assert profile_resolutions("demo") == SMALL_RES and profile_resolutions("cpu") == CPU_RES
    for res, epochs in zip(SMALL_RES, (6, 2, 2)):
        cfg = load_config("demo", res, 4)
        assert cfg.train.batch_size == 8 and cfg.train.epochs == epochs  # the profile's beat base.yaml's
        assert cfg.model.pretrained is False and cfg.train.num_workers == 0
        assert cfg.model.img_size == cfg.model.load_size == res  # the profile's sizes are the real inputs
        assert model_config(cfg).embed_dim == cfg.model.vit_kwargs["embed_dim"] == 64
        assert model_config(cfg).head_dim is None  # the head as wide as the ViT (MANIQA's)
        assert cfg.optim.lr == cfg.schedule.max_lr == 3.0e-4
        assert cfg.out_dir == str(REPO / "outputs" / "demo")
    for res in CPU_RES:
        cpu = load_config("cpu", res, 0)
        assert cpu.model.img_size == res and cpu.model.load_size == 2 * res and cpu.model.crop_grid == 3
        assert cpu.model.pretrained is True and cpu.model.backbone == "vit_small_patch14_dinov2"
        assert cpu.model.weights_file == str((REPO / "../shared/weights/vit_small_patch14_dinov2.safetensors").resolve())
        # Every size fine-tunes the whole ViT at a tenth of the head's rate, in bf16 on CPUs that have it.
        assert not cpu.train.freeze_backbone and cpu.train.freeze_blocks == 0 and cpu.train.cpu_bf16 == "auto"
        assert cpu.optim.backbone_lr_scale == 0.1 and cpu.out_dir == str(REPO / "outputs" / "clive")
        assert cpu.train.epochs * 26 == cpu.schedule.first_cycle_steps  # one cycle over the run (26 steps an epoch)
        # Progressive resizing: 112 px from the pretrained ViT, 168 px from 112 px, 224 px from 168 px.
        assert cpu.train.init_from == {112: None, 168: 112, 224: 168}[res] and cpu.model.num_tab == 0
        assert model_config(cpu).grid == res // 14


def test_overrides_nested_dotted_and_free_form():
    nested = load_config("demo", 128, 1, {"train": {"epochs": 3}, "optim": {"lr": 2.0e-4}})
    dotted = load_config("demo", 128, 1, {"train.epochs": 3, "optim.lr": 2.0e-4})
    assert nested.to_dict() == dotted.to_dict() and nested.train.epochs == 3 and nested.optim.lr == 2.0e-4
    # vit_kwargs is free-form: one of its keys can change, the others stay.
    for ov in ({"model.vit_kwargs": {"depth": 12}}, {"model": {"vit_kwargs": {"depth": 12}}}):
        assert load_config("demo", 128, 1, ov).model.vit_kwargs == {"embed_dim": 64, "depth": 12, "num_heads": 2}
    # The notebook parameters (SHORTCUTS) set their keys; None keeps the profile's value.
    cfg = load_config("demo", 128, 1, epochs=4, lr=2.0e-4, batch_size=None)
    assert cfg.train.epochs == 4 and cfg.optim.lr == cfg.schedule.max_lr == 2.0e-4 and cfg.train.batch_size == 8
    cfg = load_config("demo", 128, 1, loss="plcc+0.5*rank", ema_decay=0.95, freeze_backbone=True)
    assert (cfg.train.loss, cfg.train.ema_decay, cfg.train.freeze_backbone) == ("plcc+0.5*rank", 0.95, True)
    assert load_config("demo", 128, 1, seed=7).seed == 7 and load_config("demo", 128, 1, seed=None).seed == 4420


def test_dotted_key_inside_free_form_vit_kwargs():
    cfg = load_config("demo", 128, 1, {"model.vit_kwargs.depth": 12})
    assert cfg.model.vit_kwargs == {"embed_dim": 64, "depth": 12, "num_heads": 2}


def test_accepted_conversions(tmp_path):
    cfg = load_config("team", 448.0, "2", {"optim.lr": 1, "train.max_steps": "5", "train.epochs": "3",
                                          "model.weights_file": Path("w.pth")})
    assert (cfg.res, cfg.fold) == (448, 2) and type(cfg.res) is int and type(cfg.fold) is int
    assert type(cfg.optim.lr) is float and cfg.optim.lr == 1.0  # int where a float is expected
    assert (cfg.train.max_steps, cfg.train.epochs) == (5, 3) and type(cfg.train.epochs) is int  # '5' -> 5
    assert cfg.model.weights_file == str(REPO / "w.pth")  # a Path, taken from the repository root
    assert load_config("team", "448").res == 448
    # A float written as text with a bare exponent loads as that float.
    cfg = load_config("team", 384, 0, {"optim.lr": "1e-5", "optim.weight_decay": "2.5e-3"})
    assert type(cfg.optim.lr) is float and cfg.optim.lr == 1e-05 and cfg.optim.weight_decay == 2.5e-3
    # ...also from a profile file, where PyYAML reads 1e-4 as the string '1e-4'.
    shutil.copy(REPO_PARAMS / "base.yaml", tmp_path / "base.yaml")
    (tmp_path / "sci.yaml").write_text("optim:\n  lr: 1e-4\nresolutions:\n  384: {}\n")
    assert yaml.safe_load((tmp_path / "sci.yaml").read_text())["optim"]["lr"] == "1e-4"
    lr = load_config("sci", 384, params_folder=tmp_path).optim.lr
    assert type(lr) is float and lr == 1e-4
    # numpy scalars, as a notebook computing them would pass.
    cfg = load_config("team", 640, np.int64(0), {"train.epochs": np.int64(3), "optim.lr": np.float32(0.5)},
                      batch_size=np.int64(4))
    assert type(cfg.fold) is int and type(cfg.train.epochs) is int and type(cfg.optim.lr) is float
    assert (cfg.fold, cfg.train.epochs, cfg.optim.lr, cfg.train.batch_size) == (0, 3, 0.5, 4)
    # null is allowed where base.yaml has null.
    cfg = load_config("team", 384, 0, {"train.max_steps": None, "model.img_size": None})
    assert cfg.train.max_steps is None and cfg.model.img_size == 384


def test_numpy_res_is_accepted():
    cfg = load_config("team", np.int64(640), 0)
    assert cfg.res == 640 and type(cfg.res) is int


def test_results_are_independent_copies():
    ov = {"model": {"vit_kwargs": {"depth": 11}}}
    a = load_config("demo", 64, 0, ov)
    a.model.vit_kwargs["depth"] = 99
    a.model.vit_kwargs["extra"] = 1
    a.train.epochs = 99
    b = load_config("demo", 64, 0)
    assert b.model.vit_kwargs == {"embed_dim": 64, "depth": 10, "num_heads": 2} and b.train.epochs == 6
    assert ov == {"model": {"vit_kwargs": {"depth": 11}}}  # the caller's overrides are left alone
    assert load_config("demo", 64, 0, ov).model.vit_kwargs["depth"] == 11


# --- the shipped YAML files --------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(REPO_PARAMS.glob("*.yaml")), ids=lambda p: p.name)
def test_yaml_numbers_load_as_numbers(path):
    """PyYAML reads 1e-5 as a string: no value in the shipped files may be a number in disguise."""
    def walk(node, where):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):  # feature_blocks: [6, 7, 8, 9]
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")
        elif isinstance(node, str):
            assert not re.fullmatch(r"[+-]?[\d.]+([eE][+-]?\d+)?", node), f"{path.name}{where} is the string {node!r}"
    walk(yaml.safe_load(path.read_text()), "")


@pytest.mark.parametrize("profile,res", all_cases())
def test_every_profile_and_res_loads_floats_and_builds_a_config(profile, res):
    cfg = load_config(profile, res, 0)
    assert isinstance(cfg, Config) and cfg.res == res and cfg.profile == profile
    for key in FLOAT_KEYS:
        assert type(get(cfg, key)) is float, key
    mcfg = model_config(cfg)  # MANIQAConfig + validate; builds no network and downloads nothing
    assert mcfg.img_size == cfg.model.img_size == res and cfg.model.embed_dim in (None, mcfg.embed_dim)
    assert mcfg.vit_kwargs == cfg.model.vit_kwargs and mcfg.backbone == cfg.model.backbone
    assert mcfg.img_size % mcfg.patch_size == 0 and mcfg.grid % mcfg.window_size == 0
    assert cfg.model.load_size >= cfg.model.img_size


def test_every_profile_and_res_is_covered():
    assert {"team", "demo", "cpu"} <= set(list_profiles())
    assert {(p, r) for p, r in all_cases()} >= {("team", r) for r in TEAM_RES} | {("demo", r) for r in SMALL_RES}


def test_base_yaml_comments_every_key_in_block_style():
    lines = [line for line in (REPO_PARAMS / "base.yaml").read_text().splitlines() if line.split("#")[0].strip()]
    assert len(lines) > 40  # every key of the schema has a line
    for line in lines:
        body = line.split("#")[0]
        assert "#" in line, f"no comment: {line!r}"
        assert "{" not in body or body.strip() == "vit_kwargs: {}", f"flow style: {line!r}"
    # ...and base.yaml sets every key of the schema (no default hides in config.py).
    flat = C._flat(yaml.safe_load((REPO_PARAMS / "base.yaml").read_text()), "base.yaml")
    leaves = {k for k, sub in C.KEYS.items() if sub is None} - set(C.RUN_KEYS)
    assert set(flat) == leaves


def test_demo_model_runs_forward_and_backward():
    """The demo profile's models are real MANIQAs that train on a CPU (tiny, random weights)."""
    import torch

    from iqa_lib.model import MANIQA

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only contend with other processes
    try:
        for res in SMALL_RES:
            mcfg = model_config(load_config("demo", res, 0))
            torch.manual_seed(0)
            model = MANIQA(mcfg)
            x = torch.randn(2, 3, mcfg.img_size, mcfg.img_size)
            out = model(x)
            out.sum().backward()
            assert out.shape == (2,) and torch.isfinite(out).all()
            assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    finally:
        torch.set_num_threads(threads)


def test_listing_helpers(layered, monkeypatch):
    assert {"team", "demo", "cpu"} <= set(list_profiles())
    assert "base" not in list_profiles() and "384" not in list_profiles()
    assert profile_resolutions("team") == TEAM_RES and profile_resolutions() == TEAM_RES
    assert profile_resolutions("demo") == SMALL_RES
    assert run_name(448, 2) == "448_fold2"
    assert params_dir() == REPO_PARAMS
    assert list_profiles(layered) == ["lay"]
    assert profile_resolutions("lay", layered) == [384, 512]
    monkeypatch.setenv(C.PARAMS_ENV, str(layered))  # the environment variable picks the folder
    assert list_profiles() == ["lay"] and params_dir() == layered
    assert load_config("lay", 384).train.patience == 33
    monkeypatch.setenv(C.PARAMS_ENV, str(layered / "missing"))
    with pytest.raises(ConfigError, match=rf"no base\.yaml in '.*missing' \(from \${C.PARAMS_ENV}\)"):
        list_profiles()


# --- dataset.json and the output layout ----------------------------------------------------------
def test_dataset_json_sets_mos_scale_and_overrides_win(tmp_path, layered):
    prepared, plain = tmp_path / "prepared", tmp_path / "plain"
    prepared.mkdir()
    plain.mkdir()
    (prepared / "dataset.json").write_text(json.dumps({"source": "CLIVE", "mos_scale": 100}))
    assert load_config("demo", 64, data_dir=str(prepared)).mos_scale == 100.0  # the folder knows its scale
    assert load_config("demo", 64, data_dir=str(plain)).mos_scale == 10.0  # no dataset.json: the profile's
    # An explicit override still wins over dataset.json.
    assert load_config("demo", 64, 0, {"mos_scale": 5.0}, data_dir=str(prepared)).mos_scale == 5.0
    assert load_config("demo", 64, 0, {"mos_scale": 5.0, "data_dir": str(prepared)}).mos_scale == 5.0
    # The dataset.json read is that of the data_dir finally used: a profile's, unless overridden.
    (layered / "lay.yaml").write_text(f"data_dir: {prepared}\nmos_scale: 7.0\nresolutions:\n  384: {{}}\n")
    assert load_config("lay", 384, params_folder=layered).mos_scale == 100.0
    assert load_config("lay", 384, params_folder=layered, data_dir=str(plain)).mos_scale == 7.0
    # A dataset.json without mos_scale changes nothing.
    (plain / "dataset.json").write_text(json.dumps({"source": "mine"}))
    assert load_config("demo", 64, data_dir=str(plain)).mos_scale == 10.0
    # A recorded value is checked like any other, naming the file it came from.
    (plain / "dataset.json").write_text(json.dumps({"mos_scale": 0}))
    with pytest.raises(ConfigError, match=rf"mos_scale = 0\.0 \(from {re.escape(str(plain))}/dataset\.json\): "
                                          r"Input should be greater than 0"):
        load_config("demo", 64, data_dir=str(plain))


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"mos_scale": "ten"}', '{"mos_scale": [10]}'])
def test_broken_dataset_json_names_the_file(tmp_path, text):
    (tmp_path / "dataset.json").write_text(text)
    with pytest.raises(ConfigError, match=rf"'{re.escape(str(tmp_path))}/dataset\.json' is not a readable "
                                          r"dataset\.json .*iqa_lib\.datasets\.prepare"):
        load_config("demo", 64, data_dir=str(tmp_path))


def test_outputs_name_every_file_a_run_writes(tmp_path):
    out = tmp_path / "out"
    cfg = load_config("demo", 64, 0, out_dir=str(out))
    run = out / "runs" / "64_fold0"
    assert cfg.run.dir == run and cfg.run.name == "64_fold0"
    assert cfg.run.checkpoint == run / "64_fold0.ckpt"
    assert cfg.run.last == run / "last.pt"
    assert cfg.run.metrics == run / "metrics.csv"
    assert cfg.run.oof == run / "oof.csv"
    assert cfg.run.manifest == run / "manifest.json"
    assert cfg.run.notebook == run / "03_train.ipynb"
    o = cfg.outputs
    assert (o.root, o.runs) == (out, out / "runs")
    assert o.folds == out / "folds.csv" and o.cache == out / "cache" and o.preds == out / "preds"
    assert o.submission == out / "submission.csv" and o.prediction("448_fold2") == out / "preds" / "448_fold2.csv"
    assert (o.eda, o.notebooks, o.lock) == (out / "eda", out / "notebooks", out / ".run_all.lock")
    assert o.run(128, 3).checkpoint == out / "runs" / "128_fold3" / "128_fold3.ckpt"
    assert load_config("demo", 192, 4, out_dir=str(out)).run.oof == out / "runs" / "192_fold4" / "oof.csv"


def test_relative_paths_are_taken_from_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a notebook's cwd is notebooks/, papermill's the root: neither matters
    cfg = load_config("demo", 64, 0, {"model.weights_file": "weights/vit.pth"}, out_dir="outputs/x", data_dir="data/y")
    assert cfg.out_dir == str(REPO / "outputs" / "x") and cfg.data_dir == str(REPO / "data" / "y")
    assert cfg.model.weights_file == str(REPO / "weights" / "vit.pth")
    assert cfg.run.checkpoint == REPO / "outputs" / "x" / "runs" / "64_fold0" / "64_fold0.ckpt"
    default = load_config("demo", 64, 0)  # the profile's own relative paths too
    assert (default.data_dir, default.out_dir) == (str(REPO / "data" / "demo"), str(REPO / "outputs" / "demo"))
    assert resolve_path("a/../b") == REPO / "b" and resolve_path(tmp_path / "abs") == tmp_path / "abs"
    assert load_config("demo", 64, out_dir=str(tmp_path / "abs")).out_dir == str(tmp_path / "abs")


# --- validation messages -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "res,fold,profile,overrides,message",
    [
        (512, 0, "team", None, r"res=512 is not an input size of profile 'team' \('.*team\.yaml'\): choose one of 384, 448, 640"),
        (448.5, 0, "team", None, r"res must be one of 384, 448, 640 \(profile 'team'\), got 448\.5"),
        (True, 0, "team", None, r"res must be one of 384, 448, 640 \(profile 'team'\), got True"),
        ("big", 0, "team", None, r"res must be one of 384, 448, 640 \(profile 'team'\), got 'big'"),
        (384, "one", "team", None, r"fold = 'one' \(from the fold argument\): Input should be a valid integer"),
        (384, 1.5, "team", None, r"fold = 1\.5 \(from the fold argument\): .*fractional part"),
        (384, False, "team", None, r"fold = False \(from the fold argument\): a number is needed, not true/false"),
        (384, 5, "team", None, r"fold=5 is out of range: n_folds is 5, so use 0\.\.4"),
        (384, -1, "team", None, r"fold=-1 is out of range: n_folds is 5, so use 0\.\.4"),
        (384, 3, "team", {"n_folds": 3}, r"fold=3 is out of range: n_folds is 3, so use 0\.\.2"),
        (384, 0, "dmeo", None, r"unknown profile 'dmeo': choose one of cpu, demo, team \(the files in '.*params'\)"),
        (384, 0, "base", None, r"unknown profile 'base': choose one of cpu, demo, team"),
        (384, 0, "384", None, r"unknown profile '384': choose one of cpu, demo, team"),
        (384, 0, "team", {"train.epoch": 3}, r"unknown parameter 'train\.epoch' \(from overrides\)\. Did you mean 'train\.epochs'\?"),
        (384, 0, "team", {"epochs": 3}, r"unknown parameter 'epochs' \(from overrides\)\. Did you mean 'train\.epochs'\?"),
        (384, 0, "team", {"optim": {"lrr": 1.0}}, r"unknown parameter 'optim\.lrr' \(from overrides\)\. Did you mean 'optim\.lr'\?"),
        (384, 0, "team", {"optim.lr": "fast"}, r"optim\.lr = 'fast' \(from overrides\): Input should be a valid number"),
        (384, 0, "team", {"train.epochs": 2.5}, r"train\.epochs = 2\.5 \(from overrides\): .*fractional part"),
        (384, 0, "team", {"train.epochs": True}, r"train\.epochs = True \(from overrides\): a number is needed, not true/false"),
        (384, 0, "team", {"train.batch_size": True}, r"train\.batch_size = True \(from overrides\): a number is needed, not true/false"),
        (384, 0, "team", {"mos_scale": True}, r"mos_scale = True \(from overrides\): a number is needed, not true/false"),
        (384, 0, "team", {"model.pretrained": 2}, r"model\.pretrained = 2 \(from overrides\): Input should be a valid boolean"),
        (384, 0, "team", {"model.pretrained": "maybe"}, r"model\.pretrained = 'maybe' \(from overrides\): Input should be a valid boolean"),
        (384, 0, "team", {"optim.lr": None}, r"optim\.lr = None \(from overrides\): Input should be a valid number"),
        (384, 0, "team", {"train.max_steps": "five"}, r"train\.max_steps = 'five' \(from overrides\): Input should be a valid integer"),
        (384, 0, "team", {"train.epochs": 0}, r"train\.epochs = 0 \(from overrides\): Input should be greater than 0"),
        (384, 0, "team", {"optim.lr": -1.0}, r"optim\.lr = -1\.0 \(from overrides\): Input should be greater than or equal to 0"),
        (384, 0, "team", {"n_folds": 1}, r"n_folds = 1 \(from overrides\): Input should be greater than or equal to 2"),
        (384, 0, "team", {"model.drop_path_rate": 1.5}, r"model\.drop_path_rate = 1\.5 \(from overrides\): Input should be less than or equal to 1"),
        (384, 0, "team", {"schedule.gamma": 0}, r"schedule\.gamma = 0 \(from overrides\): Input should be greater than 0"),
        (384, 0, "team", {"train.precision": "bf61"}, r"train\.precision = 'bf61' \(from overrides\): Input should be 'bf16', 'fp16' or 'fp32'"),
        (384, 0, "team", {"train.device": "gpu"}, r"train\.device = 'gpu' \(from overrides\): Input should be 'auto', 'cuda' or 'cpu'"),
        (384, 0, "team", {"train.cpu_bf16": "yes"}, r"train\.cpu_bf16 = 'yes' \(from overrides\): Input should be 'auto', True or False"),
        (384, 0, "team", {"model": 3}, r"model \(from overrides\) must be a mapping, got int 3"),
        (384, 0, "team", {"model.vit_kwargs": "deep"}, r"model\.vit_kwargs = 'deep' \(from overrides\): Input should be a valid dictionary"),
        (384, 0, "team", {"schedule.warmup_steps": 800}, r"schedule\.warmup_steps \(800\) must be smaller than schedule\.first_cycle_steps \(800\): shorten the warm-up"),
        (384, 0, "team", {"schedule.warmup_steps": -1}, r"schedule\.warmup_steps = -1 \(from overrides\): Input should be greater than or equal to 0"),
        (384, 0, "team", {"schedule.min_lr": 1.0}, r"schedule\.min_lr \(1\.0\) must not exceed schedule\.max_lr \(1e-05\)"),
        (384, 0, "team", {"model.load_size": 100}, r"model\.load_size \(100\) is smaller than model\.img_size \(384\): .*use load_size >= img_size"),
        (384, 0, "team", ["train.epochs", 3], r"overrides must be a dict such as \{'train\.epochs': 3\}, got list"),
        (448, 0, "team", {"train.init_from": 448, "model.num_tab": 0}, r"train\.init_from = 448 \(from overrides\) must be an input size of profile 'team' smaller than res=448 \(its sizes: 384, 448, 640\), or null"),
        (448, 0, "team", {"train.init_from": 640, "model.num_tab": 0}, r"train\.init_from = 640 .* smaller than res=448"),
        (448, 0, "team", {"train.init_from": 224, "model.num_tab": 0}, r"train\.init_from = 224 .* must be an input size of profile 'team'"),
        (448, 0, "team", {"train.init_from": 384}, r"train\.init_from: the 2 TAB pairs' weights are sized by the token count"),
        (448, 0, "team", {"train.init_from": 384, "model.num_tab": 0, "train.freeze_backbone": True},
         r"train\.init_from gives each fold a backbone of its own, but the feature cache .* set train\.feature_cache: false"),
    ],
)
def test_validation_messages(res, fold, profile, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(profile, res, fold, overrides)


def test_every_invalid_key_is_listed_at_once():
    with pytest.raises(ConfigError) as e:
        load_config("team", 384, 0, {"train.epochs": 0, "optim.lr": "fast"})
    assert str(e.value).startswith("invalid parameters:\n- ")
    assert "train.epochs = 0 (from overrides)" in str(e.value) and "optim.lr = 'fast' (from overrides)" in str(e.value)


def test_bool_is_refused_for_int_keys():
    for kwargs in ({"overrides": {"train.batch_size": True}}, {"batch_size": True}, {"overrides": {"train.epochs": False}}):
        with pytest.raises(ConfigError, match=r"train\.(batch_size|epochs) = (True|False) \(from overrides\): "
                                              r"a number is needed, not true/false"):
            load_config("demo", 64, 0, **kwargs)
    assert load_config("demo", 64, 0, batch_size=4).train.batch_size == 4  # the same key takes an int


def test_unknown_key_suggests_its_section():
    with pytest.raises(ConfigError, match=r"unknown parameter 'epochs' \(from overrides\)\. Did you mean 'train\.epochs'\?"):
        load_config("demo", 64, 0, {"epochs": 3})
    with pytest.raises(ConfigError, match=r"unknown parameter 'batch_size' .*'train\.batch_size' or 'infer\.batch_size'"):
        load_config("demo", 64, 0, {"batch_size": 3})
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) epoch \(known: .*epochs"):  # a misspelt shortcut
        load_config("demo", 64, 0, epoch=3)


@pytest.mark.parametrize("key,value", [("res", 448), ("fold", 1), ("profile", "demo")])
def test_run_keys_given_as_overrides_are_refused(key, value):
    with pytest.raises(ConfigError, match=rf"unknown parameter '{key}' \(from overrides\)\. {key} is an argument of load_config"):
        load_config("team", 384, 0, {key: value})


def test_non_text_path_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data_dir = 3 \(from overrides\)"):
        load_config("team", 384, 0, {"data_dir": 3})


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ValueError):
        load_config("team", 384, 0, {"train.epochs": 0})


def test_bad_model_section_is_reported_with_its_run():
    cfg = load_config("demo", 64, 0, {"model.img_size": 72})
    with pytest.raises(ConfigError, match=r"profile 'demo', res 64.*not a multiple of the patch size 16"):
        model_config(cfg)
    cfg = load_config("demo", 128, 0, {"model.img_size": 80})  # grid 5: not a multiple of the Swin window 4
    with pytest.raises(ConfigError, match=r"profile 'demo', res 128\) do not make a valid MANIQA"):
        model_config(cfg)
    assert model_config(load_config("demo", 64, 0, {"model.head_dim": 32})).head_dim == 32
    with pytest.raises(ConfigError, match=r"res 64\) do not make a valid MANIQA: the head width 36"):
        model_config(load_config("demo", 64, 0, {"model.head_dim": 36}))  # half (18) not divisible by 4 heads


@pytest.mark.parametrize(
    "text,message",
    [
        ("optim:\n  lr: fast\nresolutions:\n  384: {}\n", r"optim\.lr = 'fast' \(from bad\.yaml\): Input should be a valid number"),
        ("train:\n  epochs: 0\nresolutions:\n  384: {}\n", r"train\.epochs = 0 \(from bad\.yaml\): Input should be greater than 0"),
        ("resolutions:\n  384:\n    train: {epochs: 0}\n", r"train\.epochs = 0 \(from bad\.yaml resolutions\.384\)"),
        ("train:\n  epoch: 3\nresolutions:\n  384: {}\n", r"unknown parameter 'train\.epoch' \(from bad\.yaml\)\. Did you mean 'train\.epochs'"),
        ("resolutions:\n  384:\n    train:\n      batch: 3\n", r"unknown parameter 'train\.batch' \(from bad\.yaml resolutions\.384\)"),
        ("train: 3\nresolutions:\n  384: {}\n", r"train \(from bad\.yaml\) must be a mapping, got int 3"),
        ("train:\n  epochs: 3\n", r"'.*bad\.yaml' needs a `resolutions:` mapping"),
        ("resolutions:\n  384: 7\n", r"resolutions\.384 in '.*bad\.yaml' must be a mapping of overrides \(or \{\}\), got 7"),
        ("resolutions:\n  big: {}\n", r"resolution key 'big' in '.*bad\.yaml' must be a whole number"),
        ("- 1\n- 2\n", r"'.*bad\.yaml' must hold a mapping of parameters \(key: value\), got list"),
        ("train: [1,\n", r"'.*bad\.yaml' is not valid YAML"),
    ],
)
def test_bad_profile_files(tmp_path, text, message):
    shutil.copy(REPO_PARAMS / "base.yaml", tmp_path / "base.yaml")
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config("bad", 384, 0, params_folder=tmp_path)


def test_bad_resolution_file_is_named(layered):
    (layered / "384.yaml").write_text("train:\n  batch_size: -2\n")
    with pytest.raises(ConfigError, match=r"train\.batch_size = -2 \(from 384\.yaml\): Input should be greater than 0"):
        load_config("lay", 384, 0, params_folder=layered)
    assert load_config("lay", 512, 0, params_folder=layered).train.batch_size == 32  # only 384 reads it


def test_missing_params_dir(tmp_path):
    with pytest.raises(ConfigError, match=r"no base\.yaml in '.*' \(from params_folder\): point params_folder or "
                                          rf"\${C.PARAMS_ENV} at the kit's params/ folder"):
        load_config("team", 384, 0, params_folder=tmp_path)
    with pytest.raises(ConfigError, match=r"no base\.yaml in"):
        list_profiles(tmp_path / "nowhere")


def test_set_aside_keeps_the_last_completed_run_of_a_forced_retrain(tmp_path):
    run = C.Outputs(tmp_path).run(64, 0)

    def write(status: str, weights: bytes) -> None:
        run.dir.mkdir(parents=True, exist_ok=True)
        run.manifest.write_text(json.dumps({"status": status}))
        run.checkpoint.write_bytes(weights)

    assert run.set_aside() is None  # nothing to keep
    write("completed", b"v1")
    run.lock.write_text("")
    assert run.set_aside() == tmp_path / "replaced" / "64_fold0"
    assert (run.aside / run.checkpoint.name).read_bytes() == b"v1" and not run.checkpoint.exists()
    assert run.lock.exists(), "the lock stays with the run"
    write("failed", b"a retrain that failed")
    run.set_aside()  # forced again: the completed run stays aside, the failed retrain's files go
    assert (run.aside / run.checkpoint.name).read_bytes() == b"v1" and not run.checkpoint.exists()
    for p in run.aside.iterdir():  # moved back by hand, leaving the empty replaced/ folder behind
        p.rename(run.dir / p.name)
    run.set_aside()  # a later force keeps the restored, completed run
    assert (run.aside / run.checkpoint.name).read_bytes() == b"v1" and not run.checkpoint.exists()
