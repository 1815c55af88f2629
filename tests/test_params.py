"""Run parameters: merge order, the shipped YAML files, and every validation message."""
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from iqa_lib import params as P
from iqa_lib.params import (
    ParamsError,
    list_profiles,
    load_params,
    model_config,
    profile_resolutions,
    run_name,
)

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params"
RESOLUTIONS = [384, 448, 640]
FLOAT_KEYS = ["mos_scale", "optim.lr", "optim.weight_decay", "schedule.cycle_mult", "schedule.max_lr",
              "schedule.min_lr", "schedule.gamma", "model.head_dropout"]


def get(params, dotted):
    for part in dotted.split("."):
        params = params[part]
    return params


def all_cases():
    return [(p, r) for p in list_profiles() for r in profile_resolutions(p)]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(P.PARAMS_ENV, raising=False)


@pytest.fixture
def layered(tmp_path):
    """A params folder where every layer sets a different subset of train keys."""
    shutil.copy(REPO_PARAMS / "base.yaml", tmp_path / "base.yaml")
    (tmp_path / "384.yaml").write_text("train:\n  batch_size: 11\n  epochs: 11\n  patience: 11\n  num_workers: 11\n")
    (tmp_path / "lay.yaml").write_text(
        "train:\n  epochs: 22\n  patience: 22\n  num_workers: 22\n"
        "resolutions:\n  384:\n    train:\n      patience: 33\n      num_workers: 33\n  512:\n"
    )
    return tmp_path


# --- merge order -----------------------------------------------------------------------------
def test_merge_order(layered):
    p = load_params(384, 0, "lay", {"train.num_workers": 44}, params_dir=layered)
    t = p["train"]
    assert (t["val_batch_size"], t["batch_size"], t["epochs"], t["patience"], t["num_workers"]) == (32, 11, 22, 33, 44)
    # A resolution without its own {res}.yaml or profile overrides gets base + profile top level.
    t = load_params(512, 0, "lay", params_dir=layered)["train"]
    assert (t["batch_size"], t["epochs"], t["patience"]) == (32, 22, 22)


def test_team_profile_is_the_recipe():
    for res, batch in zip(RESOLUTIONS, (32, 16, 16)):
        p = load_params(res, 0)
        assert (p["res"], p["fold"], p["profile"]) == (res, 0, "team")
        assert p["model"]["img_size"] == p["model"]["variant"] == res  # null = res
        assert p["train"]["batch_size"] == batch
        assert p["optim"] == {"lr": 1e-5, "weight_decay": 1e-5}
        assert p["schedule"] == dict(first_cycle_steps=800, cycle_mult=1.0, max_lr=1e-5, min_lr=1e-10, warmup_steps=200, gamma=0.9)
        assert (p["seed"], p["n_folds"], p["mos_scale"], p["train"]["patience"], p["train"]["epochs"]) == (4420, 5, 10.0, 15, 200)
        assert p["model"]["pretrained"] is True and p["model"]["head_hidden"] == 96 and p["model"]["head_dropout"] == 0.5


def test_demo_profile_overrides_the_resolution_files():
    sizes = []
    for res in RESOLUTIONS:
        p = load_params(res, 4, "demo")
        assert p["train"]["batch_size"] == 8  # the profile's top level beats {res}.yaml
        assert p["model"]["pretrained"] is False and p["train"]["num_workers"] == 0
        assert p["model"]["variant"] == res
        sizes.append(p["model"]["img_size"])
    assert sizes == sorted(set(sizes))  # distinct, in the real ones' order


def test_overrides_nested_dotted_and_free_form():
    nested = load_params(448, 1, "demo", {"train": {"epochs": 3}, "optim": {"lr": 2.0e-4}})
    dotted = load_params(448, 1, "demo", {"train.epochs": 3, "optim.lr": 2.0e-4})
    assert nested == dotted and nested["train"]["epochs"] == 3
    # vit_kwargs is free-form: one of its keys can change, the others stay.
    p = load_params(448, 1, "demo", {"model.vit_kwargs.depth": 12})
    assert p["model"]["vit_kwargs"] == {"embed_dim": 64, "depth": 12, "num_heads": 2}


def test_accepted_conversions():
    p = load_params(448.0, "2", overrides={"optim.lr": 1, "train.max_steps": 5, "model.weights_file": Path("w.pth")})
    assert (p["res"], p["fold"]) == (448, 2)
    assert isinstance(p["optim"]["lr"], float) and p["optim"]["lr"] == 1.0  # int where a float is expected
    assert p["model"]["weights_file"] == "w.pth"
    p = load_params(np.int64(640), np.int64(0), overrides={"train.epochs": np.int64(3), "optim.lr": np.float32(0.5)})
    assert type(p["res"]) is int and type(p["train"]["epochs"]) is int and type(p["optim"]["lr"]) is float
    # null is allowed where base.yaml has null.
    p = load_params(384, 0, overrides={"train.max_steps": None, "model.img_size": None})
    assert p["train"]["max_steps"] is None and p["model"]["img_size"] == 384


def test_results_are_independent_copies():
    a = load_params(384, 0, "demo")
    a["model"]["vit_kwargs"]["depth"] = 99
    a["train"]["epochs"] = 99
    b = load_params(384, 0, "demo")
    assert b["model"]["vit_kwargs"]["depth"] == 10 and b["train"]["epochs"] != 99


# --- the shipped YAML files --------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(REPO_PARAMS.glob("*.yaml")), ids=lambda p: p.name)
def test_yaml_numbers_load_as_numbers(path):
    """PyYAML reads 1e-5 as a string: no value in the files may be a number in disguise."""
    def walk(node, where):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{where}.{k}")
        elif isinstance(node, str):
            assert not re.fullmatch(r"[+-]?[\d.]+([eE][+-]?\d+)?", node), f"{path.name}{where} is the string {node!r}"
    walk(yaml.safe_load(path.read_text()), "")


@pytest.mark.parametrize("profile,res", all_cases())
def test_every_profile_and_res_loads_floats_and_builds_a_config(profile, res):
    p = load_params(res, 0, profile)
    for key in FLOAT_KEYS:
        assert type(get(p, key)) is float, key
    cfg = model_config(p)  # variant_config + validate; builds no network and downloads nothing
    assert cfg.img_size == p["model"]["img_size"] and cfg.embed_dim == p["model"]["embed_dim"]
    assert cfg.img_size % cfg.patch_size == 0 and cfg.grid % cfg.window_size == 0


def test_base_yaml_comments_every_key_in_block_style():
    for line in (REPO_PARAMS / "base.yaml").read_text().splitlines():
        body = line.split("#")[0]
        if body.strip():
            assert "#" in line, f"no comment: {line!r}"
            assert "{" not in body or body.strip() == "vit_kwargs: {}", f"flow style: {line!r}"


def test_demo_model_runs_forward_and_backward():
    """The demo profile's models are real MANIQAs that train on a CPU (tiny, random weights)."""
    import torch

    from iqa_lib.model import MANIQA

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only contend with other processes
    try:
        for res in RESOLUTIONS:
            cfg = model_config(load_params(res, 0, "demo"))
            torch.manual_seed(0)
            model = MANIQA(cfg)
            out = model(torch.randn(2, 3, cfg.img_size, cfg.img_size))
            out.sum().backward()
            assert out.shape == (2,)
    finally:
        torch.set_num_threads(threads)


def test_listing_helpers(layered, monkeypatch):
    assert {"team", "demo"} <= set(list_profiles())
    assert "base" not in list_profiles() and "384" not in list_profiles()
    assert profile_resolutions("team") == profile_resolutions("demo") == RESOLUTIONS
    assert run_name(448, 2) == "448_fold2"
    assert list_profiles(layered) == ["lay"]
    assert profile_resolutions("lay", layered) == [384, 512]
    monkeypatch.setenv(P.PARAMS_ENV, str(layered))  # the environment variable picks the folder
    assert list_profiles() == ["lay"]
    monkeypatch.setenv(P.PARAMS_ENV, str(layered / "missing"))
    with pytest.raises(ParamsError, match=P.PARAMS_ENV):
        list_profiles()


# --- validation messages -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "res,fold,profile,overrides,message",
    [
        (512, 0, "team", None, r"res=512 is not defined by profile 'team'.*choose one of 384, 448, 640"),
        (448.5, 0, "team", None, r"res must be an integer, got float 448\.5\. Choose one of 384, 448, 640"),
        (True, 0, "team", None, r"res must be an integer, got the bool True"),
        ("big", 0, "team", None, r"res must be an integer, got the string 'big'"),
        (384, "one", "team", None, r"fold must be an integer, got the string 'one'\. Use 0\.\.4"),
        (384, 1.5, "team", None, r"fold must be an integer, got float 1\.5"),
        (384, False, "team", None, r"fold must be an integer, got the bool False"),
        (384, 5, "team", None, r"fold=5 is out of range: n_folds is 5, so use 0\.\.4"),
        (384, -1, "team", None, r"fold=-1 is out of range"),
        (384, 3, "team", {"n_folds": 3}, r"fold=3 is out of range: n_folds is 3, so use 0\.\.2"),
        (384, 0, "dmeo", None, r"unknown profile 'dmeo': choose one of .*demo.*team.*files in .*base\.yaml"),
        (384, 0, "base", None, r"unknown profile 'base'"),
        (384, 0, "team", {"train.epoch": 3}, r"unknown parameter 'train\.epoch' \(from overrides\)\. Did you mean 'train\.epochs'\?"),
        (384, 0, "team", {"epochs": 3}, r"unknown parameter 'epochs'.*Did you mean 'train\.epochs'\?"),
        (384, 0, "team", {"optim": {"lrr": 1.0}}, r"unknown parameter 'optim\.lrr'.*'optim\.lr'"),
        (384, 0, "team", {"fold": 1}, r"unknown parameter 'fold'.*Pass fold as an argument of load_params"),
        (384, 0, "team", {"train.epochs": "3"}, r"train\.epochs \(from overrides\) must be int.*got str '3': write the number without quotes"),
        (384, 0, "team", {"optim.lr": "1e-5"}, r"optim\.lr \(from overrides\) must be float.*got str '1e-5'.*1\.0e-5, not 1e-5"),
        (384, 0, "team", {"optim.lr": "fast"}, r"optim\.lr \(from overrides\) must be float.*got str 'fast'"),
        (384, 0, "team", {"train.epochs": 2.5}, r"train\.epochs.*must be int.*got float 2\.5: write a whole number"),
        (384, 0, "team", {"train.epochs": True}, r"train\.epochs.*must be int.*got bool True"),
        (384, 0, "team", {"model.pretrained": 1}, r"model\.pretrained \(from overrides\) must be true or false, got int 1"),
        (384, 0, "team", {"optim.lr": None}, r"optim\.lr \(from overrides\) is null"),
        (384, 0, "team", {"train.max_steps": "5"}, r"train\.max_steps \(from overrides\) must be int or null, got str '5'"),
        (384, 0, "team", {"train.epochs": 0}, r"train\.epochs \(from overrides\) must be > 0, got 0"),
        (384, 0, "team", {"train.precision": "bf61"}, r"train\.precision \(from overrides\) must be one of bf16, fp16, fp32, got 'bf61'"),
        (384, 0, "team", {"train.device": "gpu"}, r"train\.device \(from overrides\) must be one of auto, cuda, cpu, got 'gpu'"),
        (384, 0, "team", {"data_dir": 3}, r"data_dir \(from overrides\) must be str.*got int 3"),
        (384, 0, "team", {"model": 3}, r"model \(from overrides\) must be a mapping, got int 3"),
        (384, 0, "team", {"model.vit_kwargs": "deep"}, r"model\.vit_kwargs \(from overrides\) must be a mapping"),
        (384, 0, "team", {"schedule.warmup_steps": 800}, r"schedule\.warmup_steps \(800\) must be >= 0 and smaller than schedule\.first_cycle_steps \(800\)"),
        (384, 0, "team", {"schedule.min_lr": 1.0}, r"schedule\.min_lr \(1\.0\) must be between 0 and schedule\.max_lr"),
        (384, 0, "team", ["train.epochs", 3], r"overrides must be a dict"),
    ],
)
def test_validation_messages(res, fold, profile, overrides, message):
    with pytest.raises(ParamsError, match=message):
        load_params(res, fold, profile, overrides)


def test_params_error_is_a_value_error():
    assert issubclass(ParamsError, ValueError)


def test_bad_model_section_is_reported_with_its_run():
    p = load_params(384, 0, "demo", {"model.img_size": 72})
    with pytest.raises(ParamsError, match=r"profile 'demo', res 384.*not a multiple of the patch size 16"):
        model_config(p)


@pytest.mark.parametrize(
    "text,message",
    [
        ("optim:\n  lr: 1e-4\nresolutions:\n  384: {}\n", r"optim\.lr \(from '.*bad\.yaml'\) must be float.*got str '1e-4'.*1\.0e-5"),
        ("train:\n  epoch: 3\nresolutions:\n  384: {}\n", r"unknown parameter 'train\.epoch' \(from '.*bad\.yaml'\)\. Did you mean 'train\.epochs'"),
        ("resolutions:\n  384:\n    train:\n      batch: 3\n", r"unknown parameter 'train\.batch' \(from '.*bad\.yaml' resolutions\.384\)"),
        ("train:\n  epochs: 3\n", r"bad\.yaml' needs a `resolutions:` mapping"),
        ("resolutions:\n  384: 7\n", r"resolutions\.384 in '.*bad\.yaml' must be a mapping"),
        ("resolutions:\n  big: {}\n", r"resolution key 'big'.*must be an integer"),
        ("- 1\n- 2\n", r"bad\.yaml' must hold a mapping"),
        ("train: [1,\n", r"bad\.yaml' is not valid YAML"),
    ],
)
def test_bad_profile_files(tmp_path, text, message):
    shutil.copy(REPO_PARAMS / "base.yaml", tmp_path / "base.yaml")
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ParamsError, match=message):
        load_params(384, 0, "bad", params_dir=tmp_path)


def test_missing_params_dir(tmp_path):
    with pytest.raises(ParamsError, match=r"no base\.yaml in .*params_dir"):
        load_params(384, 0, params_dir=tmp_path)
