"""MANIQA (NTIRE 2022 NR-IQA winner) and the team's 384 / 448 / 640 variants, SPEC §3.

One class builds every variant from a `MANIQAConfig`; `build_maniqa(res)` is the one-call
builder. The backbone may be any timm ViT with `forward_intermediates` (the team's
vit_base_patch16_384, DINOv2, EVA, DeiT...): `describe_backbone` reads its patch, width, depth and
input normalisation from the model itself. Two forward paths share the weights and agree to
float rounding:

- `forward` (fast, default) = `head(features(x))`: the feature blocks from timm's
  `forward_intermediates` without running the blocks after them, fused attention, the score head
  vectorised over the batch. With a frozen backbone the trainer may cache `features` once and
  train `head` alone (iqa_lib/features.py).
- `forward_reference`: what the official code does: hooks on every ViT block, the whole ViT
  run (final norm and classifier included), attention spelled out, a per-image head loop.
"""
import os
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import nn

from .swin import SwinStage

WEIGHTS_ENV = "IQA_VIT_WEIGHTS"  # a local backbone weights file, for machines without internet


@dataclass
class MANIQAConfig:
    backbone: str = "vit_base_patch16_384"  # timm model name
    img_size: int = 384
    patch_size: int = 16
    embed_dim: int = 768  # D, the ViT width
    head_dim: int | None = None  # width of the Swin stages (the second works at half); None = D (MANIQA's)
    feature_blocks: tuple[int, ...] = (6, 7, 8, 9)
    num_tab: int = 2
    window_size: int = 4
    depths: tuple[int, ...] = (2, 2)
    num_heads: tuple[int, ...] = (4, 4)
    dim_mlp: int = 768
    scale: float = 0.8
    head_hidden: int = 96
    head_dropout: float = 0.5
    drop_rate: float = 0.1  # TAB and Swin dropout (official default, not tuned by the team)
    drop_path_rate: float = 0.1
    vit_kwargs: dict = field(default_factory=dict)  # extra timm arguments (small test/demo backbones)
    # Input normalisation (x / 255 - mean) / std, per RGB channel: the backbone's pretrained config's
    # (describe_backbone). 0.5 / 0.5 is vit_base_patch16_384's, so the team's recipe is unchanged.
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    _TUPLES = ("feature_blocks", "depths", "num_heads", "mean", "std")

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def head_width(self) -> int:
        return self.head_dim or self.embed_dim

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in self._TUPLES:
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MANIQAConfig":
        d = dict(d)  # checkpoints older than `mean` / `std` were all trained with 0.5 / 0.5: the defaults
        for k in cls._TUPLES:
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def validate(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size {self.img_size} is not a multiple of the patch size {self.patch_size}: "
                f"use e.g. {self.img_size // self.patch_size * self.patch_size} or "
                f"{(self.img_size // self.patch_size + 1) * self.patch_size}."
            )
        step = self.patch_size * self.window_size
        if self.grid % self.window_size and self.grid > self.window_size:
            raise ValueError(
                f"img_size {self.img_size} gives a {self.grid}x{self.grid} token grid (patch {self.patch_size}), "
                f"which the Swin window size {self.window_size} does not divide: use an img_size that is a "
                f"multiple of patch*window = {step}, e.g. {self.img_size // step * step or step} or "
                f"{(self.img_size // step + 1) * step}."
            )
        width = self.head_width
        if width % 2 or any((width // 2) % h for h in self.num_heads):
            raise ValueError(f"the head width {width} (head_dim, or embed_dim when null) must be even and its half "
                             f"divisible by every num_heads {self.num_heads} (stage 2 works at half the width)")


# The official configuration and the team's three (SPEC §3 table).
VARIANTS: dict[str, MANIQAConfig] = {
    "official": MANIQAConfig(backbone="vit_base_patch8_224", img_size=224, patch_size=8, head_hidden=384, head_dropout=0.1),
    "384": MANIQAConfig(img_size=384),
    "448": MANIQAConfig(img_size=448),
    "640": MANIQAConfig(img_size=640),
}


class PretrainedWeightsError(RuntimeError):
    """The backbone's pretrained weights could not be had; the message says what to pass."""


@lru_cache(maxsize=32)
def _describe(backbone: str, img_size: int, vit_items: tuple) -> dict:
    try:
        with torch.device("meta"):  # the architecture without allocating or initialising a weight
            vit = timm.create_model(backbone, pretrained=False, img_size=img_size, **dict(vit_items))
    except Exception as e:
        hint = ", ".join(timm.list_models(f"*{backbone.split('_')[0]}*")[:6]) if backbone else ""
        raise ValueError(f"model.backbone '{backbone}' could not be built by timm ({type(e).__name__}: {e}). "
                         f"Use a timm ViT name{f', e.g. {hint}' if hint else ''}.") from None
    if not all(hasattr(vit, a) for a in ("forward_intermediates", "patch_embed", "blocks", "embed_dim")):
        raise ValueError(f"model.backbone '{backbone}' is not a timm ViT with forward_intermediates (a patch "
                         f"embedding and a list of blocks): MANIQA needs one, e.g. vit_base_patch16_384.")
    pcfg = getattr(vit, "pretrained_cfg", None) or {}
    return dict(patch_size=int(vit.patch_embed.patch_size[0]), embed_dim=int(vit.embed_dim), depth=len(vit.blocks),
                mean=tuple(pcfg.get("mean", (0.5, 0.5, 0.5))), std=tuple(pcfg.get("std", (0.5, 0.5, 0.5))))


def describe_backbone(backbone: str, img_size: int, vit_kwargs: dict | None = None) -> dict:
    """What MANIQA needs to know of a timm ViT, read from the model (built on the meta device: no
    weights, no download): patch_size, embed_dim, depth, and its pretrained config's mean / std."""
    return dict(_describe(backbone, int(img_size), tuple(sorted((vit_kwargs or {}).items()))))


def create_backbone(cfg: MANIQAConfig, pretrained: bool, weights_file: str | os.PathLike | None = None) -> nn.Module:
    """The timm ViT. Loads weights from `weights_file` (or $IQA_VIT_WEIGHTS), else timm's download.

    A local file goes through timm's pretrained loader, so the position embedding is resampled
    when `img_size` differs from the file's (the team's 448 and 640 start from 384 weights).
    Never falls back to random weights silently: an unreachable download raises.
    """
    kwargs = dict(img_size=cfg.img_size, **cfg.vit_kwargs)
    weights_file = weights_file or (os.environ.get(WEIGHTS_ENV) if pretrained else None)
    if not pretrained:
        if weights_file:
            raise ValueError("weights_file was given with pretrained=False: drop one of the two.")
        return timm.create_model(cfg.backbone, pretrained=False, **kwargs)
    if weights_file:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise PretrainedWeightsError(
                f"weights_file '{path}' does not exist: point `weights_file` (or ${WEIGHTS_ENV}) at a timm "
                f"'{cfg.backbone}' weights file (.safetensors, .pth or .npz; e.g. from the Hugging Face hub, "
                f"timm/{cfg.backbone}), or at any timm ViT's file with model.backbone set to its name; on a "
                f"machine with internet, weights_file null lets timm download them."
            )
        try:
            return timm.create_model(cfg.backbone, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
        except Exception as e:
            if "weights_only" in str(e) or "GLOBAL" in str(e):  # torch's safe unpickler refused it
                raise PretrainedWeightsError(
                    f"weights_file '{path}' contains Python objects that would run code when loaded, so it was "
                    f"not loaded. Use the .safetensors file of '{cfg.backbone}', or, if you trust this file, "
                    f"re-save its state_dict (`torch.save(model.state_dict(), path)`) and pass that."
                ) from None
            raise PretrainedWeightsError(
                f"weights_file '{path}' could not be loaded into '{cfg.backbone}' ({type(e).__name__}: {e}). "
                f"It must hold the timm '{cfg.backbone}' weights."
            ) from e
    try:
        return timm.create_model(cfg.backbone, pretrained=True, **kwargs)
    except Exception as e:  # offline, hub unreachable, no cached copy
        raise PretrainedWeightsError(
            f"Could not download the pretrained '{cfg.backbone}' weights ({type(e).__name__}: {e}).\n"
            f"On a machine without internet, download them elsewhere (timm / Hugging Face hub) and pass "
            f"weights_file=PATH (notebook parameter `weights_file`, or set ${WEIGHTS_ENV}); "
            f"pass pretrained=False only to train from random weights on purpose."
        ) from e


class TABlock(nn.Module):
    """Transposed attention: attention among the C channels, each a vector of the N tokens."""

    def __init__(self, dim: int, drop: float = 0.1):
        super().__init__()
        self.c_q, self.c_k, self.c_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm_fact = dim**-0.5
        self.proj_drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, fused: bool = True) -> torch.Tensor:
        B, C, N = x.shape
        q, k, v = self.c_q(x), self.c_k(x), self.c_v(x)
        if fused:
            out = F.scaled_dot_product_attention(q, k, v)  # scale N^-0.5, as the official norm_fact
        else:
            out = (q @ k.transpose(-2, -1) * self.norm_fact).softmax(dim=-1) @ v
        # Transpose-then-reshape is NOT a transpose's inverse; the official weights depend on it.
        out = out.transpose(1, 2).reshape(B, C, N)
        return self.proj_drop(out) + x


def _score_mlp(dim: int, hidden: int, drop: float, last: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(drop), nn.Linear(hidden, 1), last)


class MANIQA(nn.Module):
    def __init__(self, cfg: MANIQAConfig, pretrained: bool = False, weights_file: str | os.PathLike | None = None):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.vit = create_backbone(cfg, pretrained, weights_file)
        self.backbone_frozen = False
        patch = self.vit.patch_embed.patch_size[0]
        if patch != cfg.patch_size or self.vit.embed_dim != cfg.embed_dim:
            raise ValueError(
                f"backbone '{cfg.backbone}' has patch {patch} and width {self.vit.embed_dim}, but the config "
                f"says patch_size={cfg.patch_size}, embed_dim={cfg.embed_dim}."
            )
        if max(cfg.feature_blocks) >= len(self.vit.blocks):
            raise ValueError(f"feature_blocks {cfg.feature_blocks} need a ViT deeper than {len(self.vit.blocks)} blocks")
        D, H, g, n = cfg.embed_dim, cfg.head_width, cfg.grid, cfg.grid**2
        swin = dict(resolution=(g, g), depths=cfg.depths, num_heads=cfg.num_heads, ws=cfg.window_size,
                    dim_mlp=cfg.dim_mlp, scale=cfg.scale, drop=cfg.drop_rate, drop_path=cfg.drop_path_rate)
        c_in = D * len(cfg.feature_blocks)
        self.tablock1 = nn.ModuleList(TABlock(n, cfg.drop_rate) for _ in range(cfg.num_tab))
        self.conv1 = nn.Conv2d(c_in, H, 1)
        self.swintransformer1 = SwinStage(H, **swin)
        self.tablock2 = nn.ModuleList(TABlock(n, cfg.drop_rate) for _ in range(cfg.num_tab))
        self.conv2 = nn.Conv2d(H, H // 2, 1)
        self.swintransformer2 = SwinStage(H // 2, **swin)
        self.fc_score = _score_mlp(H // 2, cfg.head_hidden, cfg.head_dropout, nn.ReLU())
        self.fc_weight = _score_mlp(H // 2, cfg.head_hidden, cfg.head_dropout, nn.Sigmoid())
        # Kept for the official state dict, but they never reach the score: freezing them keeps
        # DDP (which insists every trainable weight gets a gradient) and the optimiser off them.
        for p in self.unused_parameters():
            p.requires_grad_(False)

    def unused_parameters(self):
        """ViT blocks after the last feature block, its final norm and classifier, the Swin `downsample`s."""
        last = max(self.cfg.feature_blocks)
        mods = [*self.vit.blocks[last + 1 :], self.vit.norm, self.vit.head, self.vit.fc_norm,
                self.swintransformer1.downsample, self.swintransformer2.downsample]
        return [p for m in mods for p in m.parameters()]

    def load_other_size(self, state: dict) -> "MANIQA":
        """Load the weights of this MANIQA trained at another input size (`train.init_from`): the ViT's
        position embedding is resampled to this token grid by timm; buffers of another shape (the Swin
        attention masks, which follow the grid) stay this model's. Raises ValueError naming any weight
        that does not fit."""
        own = self.state_dict()
        buffers = {name for name, _ in self.named_buffers()}
        state = {k: v for k, v in state.items() if not (k in buffers and v.shape != own[k].shape)}
        pos = state.get("vit.pos_embed")
        if pos is not None and pos.shape != own["vit.pos_embed"].shape:
            prefix = 0 if getattr(self.vit, "no_embed_class", False) else self.vit.num_prefix_tokens
            state["vit.pos_embed"] = resample_abs_pos_embed(pos, list(self.vit.patch_embed.grid_size),
                                                            num_prefix_tokens=prefix)
        wrong = sorted(k for k in state if k not in own or state[k].shape != own[k].shape)
        missing = sorted(set(own) - set(state) - buffers)
        if wrong or missing:
            raise ValueError(f"those weights do not fit this model: {', '.join((wrong + missing)[:5])} (of another "
                             f"shape, unknown or missing): e.g. a token grid smaller than model.window_size")
        self.load_state_dict(state, strict=False)
        return self

    # -- the shared middle: TABs and Swin stages on (B, len(feature_blocks) * D, N) -------------
    def _stages(self, x: torch.Tensor, fused: bool) -> torch.Tensor:
        g = self.cfg.grid
        for tab in self.tablock1:
            x = tab(x, fused)
        x = self.swintransformer1(self.conv1(x.unflatten(2, (g, g))), fused)
        x = x.flatten(2)
        for tab in self.tablock2:
            x = tab(x, fused)
        x = self.swintransformer2(self.conv2(x.unflatten(2, (g, g))), fused)
        return x.flatten(2).transpose(1, 2)  # (B, N, H/2) tokens, H = cfg.head_width

    def freeze_backbone(self, blocks: int | None = None) -> "MANIQA":
        """Train the head only: the ViT gets no gradients and stays in eval mode (see `train`).

        `blocks=N` freezes only the ViT's embeddings and its first N blocks: the blocks after them
        are fine-tuned with the head, and backpropagation stops at block N."""
        tuned = set() if blocks is None else {id(p) for b in self.vit.blocks[blocks:] for p in b.parameters()}
        for p in self.vit.parameters():
            if id(p) not in tuned:
                p.requires_grad_(False)
        self.backbone_frozen = blocks is None
        if self.backbone_frozen:
            self.vit.eval()
        return self

    def train(self, mode: bool = True) -> "MANIQA":
        super().train(mode)
        if self.backbone_frozen:
            self.vit.eval()  # a frozen backbone computes what the feature cache stored
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, len(feature_blocks) * D, N) backbone features."""
        feats = self.vit.forward_intermediates(
            x, indices=list(self.cfg.feature_blocks), stop_early=True, intermediates_only=True
        )  # each (B, D, g, g), prefix tokens (CLS, registers) dropped
        return torch.cat(feats, dim=1).flatten(2)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, len(feature_blocks) * D, N) backbone features -> (B,) scores."""
        x = self._stages(feats, fused=True)
        f, w = self.fc_score(x), self.fc_weight(x)  # (B, N, 1)
        return ((f * w).sum(dim=(1, 2)) / w.sum(dim=(1, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fast path: (B, 3, S, S) normalised images -> (B,) scores."""
        return self.head(self.features(x))

    @torch.compiler.disable
    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The official computation, for checking the fast path and for team-style benchmarks."""
        outputs = []
        hooks = [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in self.vit.blocks]
        try:
            with _unfused_vit_attention(self.vit):
                self.vit(x)
        finally:
            for h in hooks:
                h.remove()
        feats = torch.cat([outputs[i][:, self.vit.num_prefix_tokens :] for i in self.cfg.feature_blocks], dim=2)
        x = self._stages(feats.transpose(1, 2), fused=False)
        scores = []
        for tokens in x:  # one image at a time, as the official code
            f, w = self.fc_score(tokens), self.fc_weight(tokens)
            scores.append((f * w).sum() / w.sum())
        return torch.stack(scores)


@contextmanager
def _unfused_vit_attention(vit: nn.Module):
    attns = [b.attn for b in vit.blocks if hasattr(b.attn, "fused_attn")]
    saved = [a.fused_attn for a in attns]
    for a in attns:
        a.fused_attn = False
    try:
        yield
    finally:
        for a, s in zip(attns, saved):
            a.fused_attn = s


def variant_config(res: int | str, **overrides) -> MANIQAConfig:
    key = str(res)
    if key not in VARIANTS:
        raise ValueError(f"unknown MANIQA variant res={res!r}: choose one of {', '.join(VARIANTS)}.")
    return replace(VARIANTS[key], **overrides)


def build_maniqa(res: int | str = 384, pretrained: bool = True, weights_file=None, **overrides) -> MANIQA:
    """One call: `build_maniqa(448, pretrained=True)`; `overrides` change any MANIQAConfig field."""
    cfg = variant_config(res, **overrides)
    if not pretrained:
        warnings.warn(
            f"MANIQA {res}: the '{cfg.backbone}' backbone starts from RANDOM weights (pretrained=False). "
            "The team's recipe fine-tunes ImageNet weights; pass pretrained=True or weights_file=PATH for that.",
            stacklevel=2,
        )
    return MANIQA(cfg, pretrained=pretrained, weights_file=weights_file)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
