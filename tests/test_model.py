"""MANIQA: parameter counts, official names, fast == reference, bf16/compile, weight loading."""
import os
import subprocess
import sys
import warnings

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from iqa_lib.model import (
    MANIQA,
    VARIANTS,
    PretrainedWeightsError,
    build_maniqa,
    count_parameters,
    variant_config,
)

# SPEC §3 table: the team counts every module, the unused ones too.
SPEC_PARAMS = {"official": 135_747_530, "384": 132_410_762, "448": 135_967_562, "640": 159_948_170}
# A narrow ViT with the real token grid of each variant: cheap on a CPU, same head shapes.
TINY_VIT = dict(embed_dim=32, depth=12, num_heads=2)


def tiny(res, **kw):
    return MANIQA(variant_config(res, embed_dim=32, head_hidden=16, vit_kwargs=TINY_VIT, **kw))


def randomise_head(model, seed=0):
    """Default init leaves the score near 0; spread the head's weights so differences show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in (model.fc_score, model.fc_weight):
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def official_keys(n_vit_blocks=12):
    """The official MANIQA state-dict names, spelled out from SPEC §3 (not from our model)."""
    keys = {"vit.cls_token", "vit.pos_embed", "vit.patch_embed.proj.weight", "vit.patch_embed.proj.bias"}
    keys |= {f"vit.{m}.{p}" for m in ("norm", "head") for p in ("weight", "bias")}
    for b in range(n_vit_blocks):
        for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"vit.blocks.{b}.{m}.weight", f"vit.blocks.{b}.{m}.bias"}
    wb = ("weight", "bias")
    for t in (1, 2):
        keys |= {f"tablock{t}.{i}.c_{x}.{p}" for i in (0, 1) for x in "qkv" for p in wb}
        keys |= {f"conv{t}.{p}" for p in wb}
        s = f"swintransformer{t}"
        keys |= {f"{s}.downsample.{p}" for p in wb}
        for layer in (0, 1):
            keys |= {f"{s}.layers.{layer}.conv.{p}" for p in wb}
            for blk in (0, 1):
                pre = f"{s}.layers.{layer}.blocks.{blk}"
                keys |= {f"{pre}.attn.relative_position_bias_table", f"{pre}.attn.relative_position_index"}
                for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
                    keys |= {f"{pre}.{m}.{p}" for p in wb}
            keys.add(f"{s}.layers.{layer}.blocks.1.attn_mask")
    keys |= {f"fc_{h}.{i}.{p}" for h in ("score", "weight") for i in (0, 3) for p in wb}
    return keys


@pytest.fixture(scope="module")
def real_models():
    """The four full-size variants, built once (random weights: counts and names only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {r: MANIQA(variant_config(r)) for r in VARIANTS}


@pytest.mark.parametrize("res", list(SPEC_PARAMS))
def test_parameter_counts_match_spec(real_models, res):
    assert count_parameters(real_models[res]) == SPEC_PARAMS[res]


@pytest.mark.parametrize("res", list(SPEC_PARAMS))
def test_state_dict_has_exactly_the_official_names(real_models, res):
    sd = real_models[res].state_dict()
    assert set(sd) == official_keys()
    # ... so an official-style checkpoint loads strictly.
    real_models[res].load_state_dict({k: v.clone() for k, v in sd.items()}, strict=True)


def test_checkpoint_of_another_variant_does_not_load(real_models):
    with pytest.raises(RuntimeError, match="size mismatch"):
        real_models["640"].load_state_dict(real_models["448"].state_dict(), strict=True)


@pytest.mark.parametrize("res", list(SPEC_PARAMS))
@pytest.mark.parametrize("batch", [1, 3])
def test_fast_path_equals_reference_small(res, batch):
    torch.manual_seed(batch)
    model = randomise_head(tiny(res)).eval()
    x = torch.randn(batch, 3, model.cfg.img_size, model.cfg.img_size)
    with torch.no_grad():
        fast, ref = model(x), model.forward_reference(x)
    assert fast.shape == ref.shape == (batch,)
    assert (fast - ref).abs().max().item() < 1e-5
    # The comparison is not vacuous: the scores depend on the image (another input, other scores).
    with torch.no_grad():
        other = model.forward_reference(torch.randn_like(x))
    assert (other - ref).abs().max().item() > 1e-4


def test_fast_path_equals_reference_real_384(real_models):
    model = randomise_head(real_models["384"]).eval()
    x = torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast, ref = model(x), model.forward_reference(x)
    assert (fast - ref).abs().max().item() < 1e-5


def test_reference_path_leaves_no_hooks_and_keeps_fused_flags():
    model = tiny("384").eval()
    flags = [b.attn.fused_attn for b in model.vit.blocks]
    with torch.no_grad():
        model.forward_reference(torch.randn(1, 3, 384, 384))
    assert all(len(b._forward_hooks) == 0 for b in model.vit.blocks)
    assert [b.attn.fused_attn for b in model.vit.blocks] == flags


def test_fast_path_skips_the_unused_vit_blocks():
    model = tiny("384").eval()
    ran = []
    for i, b in enumerate(model.vit.blocks):
        b.register_forward_hook(lambda m, inp, out, i=i: ran.append(i))
    with torch.no_grad():
        model(torch.randn(1, 3, 384, 384))
    assert ran == list(range(10))


def test_gradients_match_between_paths():
    torch.manual_seed(0)
    model = randomise_head(tiny("384")).eval()
    x = torch.randn(2, 3, 384, 384)
    grads = []
    for fwd in (model, model.forward_reference):
        model.zero_grad()
        fwd(x).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_fast_path_bf16_autocast_any_batch(batch):
    torch.manual_seed(0)
    model = randomise_head(tiny("448")).eval()
    x = torch.randn(batch, 3, 448, 448)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.shape == (batch,) and torch.isfinite(low).all()
    assert not torch.equal(low.float(), ref)  # autocast did take effect
    assert (low.float() - ref).abs().max().item() < 0.05 * max(ref.abs().max().item(), 1.0)


def test_train_mode_backprops_into_the_used_blocks_only():
    model = tiny("384").train()
    x = torch.randn(2, 3, 384, 384)
    out = model(x)
    out.sum().backward()
    assert tuple(model.cfg.feature_blocks) == (6, 7, 8, 9) and len(model.vit.blocks) == 12
    for i, block in enumerate(model.vit.blocks):  # blocks 0-9 feed the head, 10-11 are never run
        grads = [p.grad for p in block.parameters()]
        if i <= 9:
            assert all(g is not None for g in grads), f"block {i} feeds the head"
        else:
            assert all(g is None for g in grads), f"block {i} is never run"
    unused = {id(p) for p in model.unused_parameters()}
    assert all(p.grad is not None for p in model.parameters() if id(p) not in unused and p.requires_grad)
    assert all(p.grad is None for p in model.unused_parameters())


@pytest.mark.slow
def test_fast_path_under_torch_compile():
    torch.manual_seed(0)
    model = randomise_head(tiny("384")).eval()
    x = torch.randn(2, 3, 384, 384)
    compiled = torch.compile(model)
    with torch.no_grad():
        eager, comp = model(x), compiled(x)
    assert (eager - comp).abs().max().item() < 1e-4


# -- construction errors -------------------------------------------------------------------
def test_head_dim_sets_the_head_width_apart_from_the_vit_width():
    torch.manual_seed(0)
    model = randomise_head(tiny(384, head_dim=16, dim_mlp=16)).eval()
    assert model.conv1.weight.shape == (16, 4 * 32, 1, 1) and model.conv2.weight.shape == (8, 16, 1, 1)
    assert model.fc_score[0].in_features == 8 and model.vit.embed_dim == 32
    x = torch.randn(2, 3, 384, 384)
    with torch.no_grad():
        fast, ref = model(x), model.forward_reference(x)
    assert (fast - ref).abs().max().item() < 1e-5 and (fast - fast.mean()).abs().max().item() > 1e-5
    assert count_parameters(model) < count_parameters(tiny(384))  # 16 < D = 32 wide


@pytest.mark.parametrize("head_dim", [15, 12])  # odd; half (6) not divisible by the 4 heads
def test_head_dim_the_swin_heads_cannot_split_fails_clearly(head_dim):
    with pytest.raises(ValueError, match=f"head width {head_dim} .*num_heads"):
        variant_config(384, head_dim=head_dim).validate()


def test_image_size_not_multiple_of_patch_fails_clearly():
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        variant_config(384, img_size=450).validate()


def test_grid_not_divisible_by_window_fails_clearly():
    # 416 / 16 = 26 tokens, not a multiple of the window 4 -> suggests 384 or 448
    with pytest.raises(ValueError, match=r"window size 4 does not divide.*384.*448"):
        MANIQA(variant_config(384, img_size=416, embed_dim=32, vit_kwargs=TINY_VIT))


def test_unknown_variant_names_the_choices():
    with pytest.raises(ValueError, match="official, 384, 448, 640"):
        build_maniqa(512, pretrained=False)


# -- pretrained weights ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights_384(tmp_path_factory):
    """A small timm 'vit_base_patch16_384' weights file, as a user would download it."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src = timm.create_model("vit_base_patch16_384", pretrained=False, **TINY_VIT)
    path = tmp_path_factory.mktemp("weights") / "vit_base_patch16_384.safetensors"
    save_file(src.state_dict(), str(path))
    return path, src.state_dict()


def test_local_weights_file_loads_at_384(weights_384):
    path, sd = weights_384
    model = build_maniqa(384, weights_file=path, embed_dim=32, vit_kwargs=TINY_VIT)
    for k in ("pos_embed", "patch_embed.proj.weight", "blocks.9.mlp.fc2.weight"):
        assert torch.equal(model.vit.state_dict()[k], sd[k]), k


@pytest.mark.parametrize("res", [448, 640])
def test_local_weights_file_resamples_pos_embed(weights_384, res):
    path, sd = weights_384
    model = build_maniqa(res, weights_file=path, embed_dim=32, vit_kwargs=TINY_VIT)
    grid = res // 16
    assert model.vit.pos_embed.shape == (1, 1 + grid * grid, 32)
    expected = resample_abs_pos_embed(sd["pos_embed"], new_size=(grid, grid), num_prefix_tokens=1)
    assert torch.allclose(model.vit.pos_embed, expected, atol=1e-6)
    assert torch.equal(model.vit.blocks[0].attn.qkv.weight, sd["blocks.0.attn.qkv.weight"])


def test_weights_file_from_environment(weights_384, monkeypatch):
    path, sd = weights_384
    monkeypatch.setenv("IQA_VIT_WEIGHTS", str(path))
    model = build_maniqa(384, embed_dim=32, vit_kwargs=TINY_VIT)
    assert torch.equal(model.vit.cls_token, sd["cls_token"])


def test_missing_weights_file_names_the_parameter(tmp_path):
    with pytest.raises(PretrainedWeightsError, match=r"weights_file '.*nope.pth' does not exist"):
        build_maniqa(384, weights_file=tmp_path / "nope.pth", embed_dim=32, vit_kwargs=TINY_VIT)


def test_wrong_weights_file_says_what_it_must_hold(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"something": torch.zeros(3)}, bad)
    with pytest.raises(PretrainedWeightsError, match="must hold the timm 'vit_base_patch16_384' weights"):
        build_maniqa(384, weights_file=bad, embed_dim=32, vit_kwargs=TINY_VIT)


def test_offline_without_file_fails_naming_weights_file():
    """The real download path, on a machine with no network: a clear error, not random weights."""
    code = (
        "from iqa_lib.model import build_maniqa\n"
        "build_maniqa(384, embed_dim=32, vit_kwargs=dict(embed_dim=32, depth=12, num_heads=2))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "IQA_VIT_WEIGHTS"}
    env["HF_HUB_OFFLINE"] = "1"  # fail at once instead of retrying an unreachable hub
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "PretrainedWeightsError" in proc.stderr and "weights_file=PATH" in proc.stderr


def test_random_weights_only_on_purpose_and_loudly():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        build_maniqa(384, pretrained=False, embed_dim=32, vit_kwargs=TINY_VIT)
