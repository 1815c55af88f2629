"""Any timm ViT as the backbone, its own normalisation, a frozen backbone with a feature cache,
EMA of the weights, a slower backbone learning rate (issue: pretrained backbones)."""
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import save_file

import iqa_lib.features as F
from iqa_lib import data as D
from iqa_lib.checkpoint import safe_torch_load
from iqa_lib.config import ConfigError, load_config
from iqa_lib.infer import load_model, model_config, predict, predict_indices
from iqa_lib.model import MANIQA, MANIQAConfig, describe_backbone
from iqa_lib.train import fit, param_groups, seed_everything

from conftest import checkpoint_vs_oof, metrics_of, tiny_params

SHARED_VIT = Path(__file__).resolve().parents[2] / "shared" / "weights" / "vit_small_patch14_dinov2.safetensors"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# A DINOv2-shaped ViT (patch 14, layer scale, ImageNet mean/std) small enough for a test.
SMALL14 = dict(embed_dim=32, depth=4, num_heads=2)


def small14_config(img_size=56, **kw) -> MANIQAConfig:
    return MANIQAConfig(backbone="vit_small_patch14_dinov2", img_size=img_size, patch_size=14, embed_dim=32,
                        feature_blocks=(0, 1, 2, 3), vit_kwargs=SMALL14, head_hidden=16, mean=IMAGENET[0],
                        std=IMAGENET[1], **kw)


@pytest.fixture(scope="module")
def small14_file(tmp_path_factory):
    """Weights a test wrote, at 70 px (5 x 5 patches): loading at 56 px must resample the position embedding."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=70, **SMALL14)
    path = tmp_path_factory.mktemp("weights") / "vit_small14.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return path, vit


# -- any timm ViT --------------------------------------------------------------------------------
def test_the_backbone_is_read_from_timm():
    d = describe_backbone("vit_small_patch14_dinov2", 224)
    assert (d["patch_size"], d["embed_dim"], d["depth"]) == (14, 384, 12)
    assert (d["mean"], d["std"]) == IMAGENET
    team = describe_backbone("vit_base_patch16_384", 448)
    assert (team["patch_size"], team["embed_dim"], team["mean"], team["std"]) == (16, 768, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="could not be built by timm"):
        describe_backbone("vit_no_such_model", 224)


def test_run_parameters_take_patch_width_and_normalisation_from_the_backbone(tmp_path):
    ov = {"model.backbone": "vit_small_patch14_dinov2", "model.vit_kwargs": SMALL14, "model.feature_blocks": [0, 1, 2, 3]}
    mcfg = model_config(load_config("demo", 64, 0, {**ov, "model.img_size": 56}))
    assert (mcfg.patch_size, mcfg.embed_dim, mcfg.grid, mcfg.mean, mcfg.std) == (14, 32, 4, *IMAGENET)
    team = model_config(load_config("team", 448, 0))
    assert (team.patch_size, team.embed_dim, team.mean, team.std) == (16, 768, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ConfigError, match="the Swin window size 4 does not divide"):  # 70 px: a 5 x 5 grid
        model_config(load_config("demo", 64, 0, {**ov, "model.img_size": 70}))
    with pytest.raises(ConfigError, match="model.embed_dim is 64 but backbone 'vit_small_patch14_dinov2' has 32"):
        model_config(load_config("demo", 64, 0, {**ov, "model.img_size": 56, "model.embed_dim": 64}))
    with pytest.raises(ConfigError, match="deeper than the 4 blocks"):
        model_config(load_config("demo", 64, 0, {**ov, "model.img_size": 56, "model.feature_blocks": [2, 4]}))


def test_a_patch14_weights_file_loads_with_its_position_embedding_resampled(small14_file):
    path, source = small14_file
    model = MANIQA(small14_config(56), pretrained=True, weights_file=path)
    got, want = model.vit.state_dict(), source.state_dict()
    assert torch.equal(got["blocks.2.attn.qkv.weight"], want["blocks.2.attn.qkv.weight"])
    assert torch.equal(got["blocks.1.ls1.gamma"], want["blocks.1.ls1.gamma"])  # DINOv2's layer scale
    n_pos = got["pos_embed"].shape[1]
    assert n_pos == 1 + 4 * 4 and want["pos_embed"].shape[1] == 1 + 5 * 5  # resampled 5x5 -> 4x4
    x = torch.randn(2, 3, 56, 56)
    assert torch.isfinite(model.eval()(x)).all()


def test_inputs_are_normalised_with_the_backbones_mean_and_std():
    img = torch.full((1, 4, 4, 3), 255, dtype=torch.uint8)
    team = D.to_model_input(img)  # the team's default: (1 - 0.5) / 0.5
    assert torch.equal(team, torch.ones(1, 3, 4, 4))
    dino = D.to_model_input(img, mean=IMAGENET[0], std=IMAGENET[1])
    expected = (1 - torch.tensor(IMAGENET[0])) / torch.tensor(IMAGENET[1])
    assert torch.allclose(dino[0, :, 0, 0], expected)


@pytest.mark.skipif(not SHARED_VIT.is_file(), reason="../shared/weights is not here")
def test_the_shared_dinov2_file_loads_and_scores():
    cfg = MANIQAConfig(backbone="vit_small_patch14_dinov2", img_size=112, patch_size=14, embed_dim=384,
                       mean=IMAGENET[0], std=IMAGENET[1])
    model = MANIQA(cfg, pretrained=True, weights_file=SHARED_VIT).eval()
    with torch.no_grad():
        feats = model.features(torch.randn(2, 3, 112, 112))
    assert feats.shape == (2, 4 * 384, 64) and torch.isfinite(feats).all() and feats.std() > 0.1


# -- frozen backbone and the feature cache --------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        p = root / f"im{i}.png"
        from PIL import Image

        Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 60, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return D.ImageStore.open(paths, 56)


def test_the_head_on_cached_features_scores_as_the_full_model(store, small14_file, tmp_path):
    torch.manual_seed(1)
    model = MANIQA(small14_config(56), pretrained=True, weights_file=small14_file[0]).freeze_backbone()
    killed = tmp_path / f".{F._key(model, store.paths, F.views('horizontal'), None)}.999999.tmp.npy"
    killed.write_bytes(b"partial")  # what a build killed mid-way leaves: cleared by the next one
    cache = F.FeatureCache.build(model, store, F.views("horizontal"), tmp_path, device=torch.device("cpu"),
                                 batch_size=4, progress=False)
    assert not killed.exists()
    assert cache.array.shape == (6, 2, 4 * 32, 16) and cache.array.dtype == np.float16
    full = predict_indices(model, D.IQADataset(store), np.arange(6), torch.device("cpu"), None)
    cached = cache.predict(model, np.arange(6), torch.device("cpu"))
    assert np.allclose(cached, full, rtol=0, atol=2e-3), np.abs(cached - full).max()
    assert not np.allclose(full, full[0])  # the images score differently: the check is not vacuous
    # the second view is the features of the mirrored image
    x = D.to_model_input(np.stack([store[i] for i in range(6)]), mean=IMAGENET[0], std=IMAGENET[1])
    with torch.no_grad():
        mirrored = model.features(x.flip(-1)).numpy()
    assert np.allclose(cache.array[:, 1], mirrored, atol=2e-2 * np.abs(mirrored).max())
    # a second open reuses the file; other weights get a file of their own
    again = F.FeatureCache.build(model, store, F.views("horizontal"), tmp_path, device=torch.device("cpu"),
                                 progress=False)
    assert again.path == cache.path and len(list(tmp_path.glob("*.npy"))) == 1
    other = MANIQA(small14_config(56), pretrained=False).freeze_backbone()
    F.FeatureCache.build(other, store, F.views("none"), tmp_path, device=torch.device("cpu"), progress=False)
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_the_cache_refuses_a_disk_too_small_with_the_figure(store, monkeypatch, tmp_path):
    model = MANIQA(small14_config(56), pretrained=False).freeze_backbone()
    monkeypatch.setattr(F.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(F.FeatureCacheError, match=r"needs 0\.0 GB \(6 images x 2 views x 128 channels x 16 tokens"):
        F.FeatureCache.build(model, store, F.views("vertical"), tmp_path, device=torch.device("cpu"), progress=False)
    assert not list(tmp_path.glob("*.npy"))


def assert_checkpoint_predicts_its_oof(cfg, data_dir):
    """`predict` with the run's checkpoint on its validation images gives oof.csv's scores."""
    both = checkpoint_vs_oof(cfg, data_dir)
    assert np.allclose(both["pred"], both["mos_y"], atol=0.02), (both["pred"] - both["mos_y"]).abs().max()


def test_a_frozen_run_trains_only_the_head_and_its_checkpoint_predicts_as_validated(exposure_data, tmp_path):
    cfg = tiny_params(exposure_data, tmp_path, **{"train.freeze_backbone": True, "train.epochs": 2})
    result = fit(cfg, progress=False)
    assert result.status == "completed"
    saved = safe_torch_load(cfg.run.checkpoint)["model"]
    seed_everything(cfg.seed)  # as the trainer does before building the model: the same random ViT
    init = MANIQA(model_config(cfg), pretrained=False).state_dict()
    vit_keys = [k for k in init if k.startswith("vit.")]
    assert vit_keys and all(torch.equal(saved[k], init[k]) for k in vit_keys)  # the backbone never moved
    assert not torch.equal(saved["conv1.weight"], init["conv1.weight"])  # the head did
    assert len(list(cfg.outputs.cache.glob("features/*.npy"))) == 1
    # The checkpoint is a normal MANIQA checkpoint: its predictions on the validation images are the
    # ones validation computed from the cached features (oof.csv), to fp16 rounding.
    assert_checkpoint_predicts_its_oof(cfg, exposure_data)


def test_freeze_blocks_fine_tunes_only_the_vit_blocks_after_them(exposure_data, tmp_path):
    cfg = tiny_params(exposure_data, tmp_path, **{"train.freeze_blocks": 7, "train.epochs": 1})
    assert fit(cfg, progress=False).status == "completed"
    saved = safe_torch_load(cfg.run.checkpoint)["model"]
    seed_everything(cfg.seed)  # as the trainer does before building the model: the same random ViT
    init = MANIQA(model_config(cfg), pretrained=False).state_dict()
    block = lambda k: int(k.split(".")[2]) if k.startswith("vit.blocks.") else None
    fixed = [k for k in init if k.startswith(("vit.patch_embed.", "vit.pos_embed", "vit.cls_token"))
             or (block(k) is not None and block(k) < 7)]
    tuned = [k for k in init if block(k) in (7, 8, 9)]  # the blocks after 7 that feed the head (6-9)
    assert len(fixed) > 10 and all(torch.equal(saved[k], init[k]) for k in fixed)
    assert tuned and all(not torch.equal(saved[k], init[k]) for k in tuned if k.endswith(".weight"))
    assert not torch.equal(saved["conv1.weight"], init["conv1.weight"])
    with pytest.raises(ConfigError, match="train.freeze_blocks"):
        tiny_params(exposure_data, tmp_path, **{"train.freeze_blocks": -1})


def test_freezing_keeps_the_backbone_and_trains_the_head(exposure_data, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_params(exposure_data, tmp_path, **{"train.freeze_backbone": True, "train.feature_cache": False,
                                                   "train.epochs": 1})
    model = MANIQA(model_config(cfg), pretrained=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.freeze_backbone()
    opt = torch.optim.Adam(param_groups(model, 1.0)[0]["params"], lr=1e-2)
    model.train()
    assert not model.vit.training  # frozen: eval mode even inside a training model
    model(torch.randn(4, 3, 64, 64)).sum().backward()
    opt.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("vit."))
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])


def test_the_cache_of_crops_scores_as_the_crop_grid_at_inference(store, small14_file, tmp_path):
    torch.manual_seed(1)
    model = MANIQA(small14_config(56), pretrained=True, weights_file=small14_file[0]).freeze_backbone()
    large = D.ImageStore.open(store.paths, 112)  # stored at 112: a 2 x 2 grid of 56 px crops covers it
    names = F.views("horizontal", crop_grid=2)
    # Features computed under bf16 autocast are another cache than fp32 ones.
    assert F._key(model, store.paths, names, None) != F._key(model, store.paths, names, torch.bfloat16)
    assert names == ("crop0", "crop0+horizontal", "crop1", "crop1+horizontal", "crop2", "crop2+horizontal",
                     "crop3", "crop3+horizontal")
    cache = F.FeatureCache.build(model, large, names, tmp_path, device=torch.device("cpu"), progress=False)
    assert cache.array.shape == (6, 8, 4 * 32, 16) and cache.places == 4
    full = predict_indices(model, D.IQADataset(large), np.arange(6), torch.device("cpu"), None, crop=56, crop_grid=2)
    cached = cache.predict(model, np.arange(6), torch.device("cpu"))
    assert np.allclose(cached, full, rtol=0, atol=2e-3), np.abs(cached - full).max()
    whole = predict_indices(model, D.IQADataset(store), np.arange(6), torch.device("cpu"), None)
    assert not np.allclose(cached, whole, atol=2e-3)  # the crops are not the resized image
    # view 2p + 1 is crop p mirrored: the bottom-right crop's
    x = D.to_model_input(np.stack([large[i] for i in range(6)]), mean=IMAGENET[0], std=IMAGENET[1])
    with torch.no_grad():
        mirrored = model.features(x[..., 56:, 56:].flip(-1)).numpy()
    assert np.allclose(cache.array[:, 7], mirrored, atol=2e-2 * np.abs(mirrored).max())
    # training draws every crop and both flips, reproducibly from the generator
    gen = torch.Generator().manual_seed(0)
    seen = {tuple(cache.train_batch([0], gen, torch.device("cpu")).flatten()[:4].tolist()) for _ in range(200)}
    assert len(seen) == 8
    assert torch.equal(cache.train_batch(np.arange(6), torch.Generator().manual_seed(3), torch.device("cpu")),
                       cache.train_batch(np.arange(6), torch.Generator().manual_seed(3), torch.device("cpu")))


def test_a_cached_run_on_crops_validates_as_its_checkpoint_predicts(exposure_data, tmp_path):
    cfg = tiny_params(exposure_data, tmp_path, **{"train.freeze_backbone": True, "model.load_size": 128,
                                                   "model.crop_grid": 2, "train.epochs": 1, "train.flip": "none"})
    assert fit(cfg, progress=False).status == "completed"
    assert np.load(next(cfg.outputs.cache.glob("features/*.npy")), mmap_mode="r").shape[1] == 4  # 2 x 2 crops
    assert_checkpoint_predicts_its_oof(cfg, exposure_data)


def test_inference_on_cached_features_of_a_frozen_backbone_is_shared_by_its_folds(exposure_data, tmp_path):
    cfg = tiny_params(exposure_data, tmp_path, **{"train.freeze_backbone": True, "model.load_size": 128,
                                                   "model.crop_grid": 2, "train.epochs": 1, "train.flip": "none"})
    fit(cfg, progress=False)
    # another fold of the same size: the same frozen backbone, another head
    other = tmp_path / "other.ckpt"
    ckpt = safe_torch_load(cfg.run.checkpoint)
    ckpt["model"]["fc_score.0.bias"] += 0.5
    torch.save(ckpt, other)
    feats = tmp_path / "test_features"
    kw = dict(device="cpu", precision="fp32", progress=False)
    scores = []
    for path in (cfg.run.checkpoint, other):
        full = predict(path, exposure_data, "test.csv", **kw)
        cached = predict(path, exposure_data, "test.csv", features_dir=feats, **kw)
        assert list(cached.img_name) == list(full.img_name)
        assert np.allclose(cached.mos, full.mos, atol=2e-3 * cfg.mos_scale), (cached.mos - full.mos).abs().max()
        scores.append(cached.mos.to_numpy())
    assert not np.allclose(*scores)  # one file of features, each run its own head
    files = list(feats.glob("*.npy"))
    assert len(files) == 1 and np.load(files[0], mmap_mode="r").shape[:2] == (len(full), 4)  # 4 crops, no flips
    with_tta = predict(other, exposure_data, "test.csv", features_dir=feats, tta=True, **kw)  # flips: the full path
    assert len(list(feats.glob("*.npy"))) == 1 and not np.allclose(with_tta.mos, cached.mos, atol=1e-6)


def test_resume_of_a_cached_ema_run_matches_the_uninterrupted_one(exposure_data, tmp_path, monkeypatch):
    ov = {"train.freeze_backbone": True, "train.ema_decay": 0.9, "train.loss": "0.5*mse+rank", "train.epochs": 3,
          "train.save_every_steps": 2}
    reference = fit(tiny_params(exposure_data, tmp_path / "ref", **ov), progress=False)
    calls, real = [0], F.FeatureCache.train_batch

    def interrupted(self, *a, **k):
        calls[0] += 1
        if calls[0] == 14:  # epoch 1 (10 batches per epoch), after the state saved at step 12
            raise KeyboardInterrupt
        return real(self, *a, **k)

    cfg = tiny_params(exposure_data, tmp_path / "cut", **ov)
    monkeypatch.setattr(F.FeatureCache, "train_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, progress=False)
    monkeypatch.setattr(F.FeatureCache, "train_batch", real)
    state = safe_torch_load(cfg.run.last)
    assert state["step"] == 12 and state["ema"] is not None
    resumed = fit(cfg, progress=False)
    pd.testing.assert_frame_equal(metrics_of(reference.run_dir), metrics_of(resumed.run_dir), check_exact=True)


def test_ema_weights_are_what_is_validated_and_saved(exposure_data, tmp_path):
    cfg = tiny_params(exposure_data, tmp_path, **{"train.ema_decay": 0.5, "train.epochs": 1})
    fit(cfg, progress=False)
    best = safe_torch_load(cfg.run.checkpoint)["model"]
    state = safe_torch_load(cfg.run.last)
    raw, ema = state["model"], state["ema"]
    assert torch.equal(best["conv1.weight"], ema["module.conv1.weight"])
    assert not torch.equal(best["conv1.weight"], raw["conv1.weight"])
    load_model(cfg.run.checkpoint)  # a normal checkpoint
    both = checkpoint_vs_oof(cfg, exposure_data)  # validation (oof.csv) scored the EMA weights it saved, in fp32
    np.testing.assert_allclose(both["pred"], both["mos_y"], rtol=0, atol=1e-4)


def test_the_backbone_learning_rate_is_scaled(exposure_data, tmp_path):
    from iqa_lib.schedule import CosineAnnealingWarmupRestarts

    cfg = tiny_params(exposure_data, tmp_path)
    model = MANIQA(model_config(cfg), pretrained=False)
    assert len(param_groups(model, 1.0)) == 1  # the team's: one group
    groups = param_groups(model, 0.1)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.vit.parameters()}
    opt = torch.optim.Adam(groups, lr=1e-3)
    sched = CosineAnnealingWarmupRestarts(opt, first_cycle_steps=10, max_lr=1e-3, min_lr=0.0, warmup_steps=2)
    for _ in range(3):
        opt.step()
        sched.step()
    head_lr, vit_lr = (g["lr"] for g in opt.param_groups)
    assert head_lr > 0 and vit_lr == pytest.approx(0.1 * head_lr)
    # and fit passes optim.backbone_lr_scale to its optimiser
    run = tiny_params(exposure_data, tmp_path / "fit", **{"optim.backbone_lr_scale": 0.1, "train.epochs": 1})
    fit(run, progress=False)
    head, vit = safe_torch_load(run.run.last)["optimizer"]["param_groups"]
    assert head["lr"] > 0 and vit["lr"] == pytest.approx(0.1 * head["lr"]) and vit["lr_scale"] == 0.1


def test_the_cpu_profile_without_its_weights_file_stops_saying_what_to_pass(exposure_data, tmp_path):
    from iqa_lib.model import PretrainedWeightsError

    cfg = load_config("cpu", 112, 0, data_dir=str(exposure_data), out_dir=str(tmp_path),
                      weights_file=str(tmp_path / "absent.safetensors"))
    with pytest.raises(PretrainedWeightsError, match=r"absent.safetensors' does not exist.*timm/vit_small_patch14_dinov2"):
        fit(cfg, progress=False)
    assert not list(tmp_path.glob("runs/*/*.ckpt"))  # nothing trained from random weights
