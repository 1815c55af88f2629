"""The Swin stage of MANIQA (SPEC §3), with the official module and state-dict names.

Every module with attention takes `fused`: True uses `scaled_dot_product_attention` (the fast path),
False spells the attention out like the official code (the reference path). Both give
the same numbers up to float rounding.
"""
import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, trunc_normal_
from torch import nn


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/ws * W/ws, ws*ws, C): windows in row-major order, tokens within them too."""
    return rearrange(x, "b (h p) (w q) c -> (b h w) (p q) c", p=ws, q=ws)


def window_reverse(windows: torch.Tensor, ws: int, H: int, W: int) -> torch.Tensor:
    """Inverse of window_partition: (B * nW, ws*ws, C) -> (B, H, W, C)."""
    return rearrange(windows, "(b h w) (p q) c -> b (h p) (w q) c", h=H // ws, w=W // ws, p=ws, q=ws)


def shifted_window_mask(H: int, W: int, ws: int, shift: int) -> torch.Tensor:
    """(nW, ws*ws, ws*ws) additive mask: -100 between tokens that the cyclic shift made neighbours."""
    region = torch.zeros(1, H, W, 1)
    cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    label = 0
    for hs in cuts:
        for wsl in cuts:
            region[:, hs, wsl, :] = label
            label += 1
    ids = window_partition(region, ws).squeeze(-1)  # (nW, ws*ws)
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return diff.ne(0).float() * -100.0


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative position bias."""

    def __init__(self, dim: int, ws: int, num_heads: int, proj_drop: float = 0.0):
        super().__init__()
        self.ws, self.num_heads = ws, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * ws - 1) + rel[..., 1])
        self.qkv = nn.Linear(dim, dim * 3)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> torch.Tensor:
        n = self.ws * self.ws
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1)  # (heads, n, n)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, fused: bool = True) -> torch.Tensor:
        Bw, n, C = x.shape  # Bw = batch * windows
        q, k, v = self.qkv(x).view(Bw, n, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        bias = self.position_bias()
        if fused:
            if mask is None:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
            else:
                # Fold the windows into the head axis so one (nW*heads, n, n) mask broadcasts over images.
                nW = mask.shape[0]
                full = (bias.unsqueeze(0) + mask.unsqueeze(1)).reshape(1, nW * self.num_heads, n, n)
                shape = (Bw // nW, nW * self.num_heads, n, -1)
                out = F.scaled_dot_product_attention(
                    q.reshape(shape), k.reshape(shape), v.reshape(shape), attn_mask=full.to(q.dtype)
                ).view(Bw, self.num_heads, n, -1)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1) + bias.unsqueeze(0)
            if mask is not None:
                nW = mask.shape[0]
                attn = attn.view(Bw // nW, nW, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
                attn = attn.view(-1, self.num_heads, n, n)
            out = self.attn_drop(attn.softmax(dim=-1)) @ v
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(Bw, n, C)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SwinBlock(nn.Module):
    """Pre-norm window attention + MLP on a (B, H*W, C) token map; `shift` > 0 rolls the windows."""

    def __init__(self, dim, resolution, num_heads, ws, shift, dim_mlp, drop, drop_path):
        super().__init__()
        self.resolution = resolution
        if min(resolution) <= ws:  # the map is one window: nothing to shift (official behaviour)
            ws, shift = min(resolution), 0
        self.ws, self.shift = ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, ws, num_heads, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim_mlp, drop)
        mask = shifted_window_mask(*resolution, ws, shift) if shift > 0 else None
        self.register_buffer("attn_mask", mask)

    def forward(self, x: torch.Tensor, fused: bool = True) -> torch.Tensor:
        H, W = self.resolution
        B, L, C = x.shape
        h = self.norm1(x).view(B, H, W, C)
        if self.shift:
            h = torch.roll(h, shifts=(-self.shift, -self.shift), dims=(1, 2))
        h = self.attn(window_partition(h, self.ws), mask=self.attn_mask, fused=fused)
        h = window_reverse(h, self.ws, H, W)
        if self.shift:
            h = torch.roll(h, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + self.drop_path(h.reshape(B, L, C))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinLayer(nn.Module):
    """`depth` Swin blocks (shift 0, ws//2, ...) then ReLU(conv3x3) on the 2-D map."""

    def __init__(self, dim, resolution, depth, num_heads, ws, dim_mlp, drop, drop_paths):
        super().__init__()
        self.resolution = resolution
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, num_heads, ws, 0 if i % 2 == 0 else ws // 2, dim_mlp, drop, drop_paths[i])
            for i in range(depth)
        )
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x: torch.Tensor, fused: bool = True) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, fused=fused)
        B, L, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, *self.resolution)
        return F.relu(self.conv(x)).flatten(2).transpose(1, 2)


class SwinStage(nn.Module):
    """MANIQA's `SwinTransformer`: (B, C, H, W) -> (B, C, H, W) through scaled residual Swin layers."""

    def __init__(self, dim, resolution, depths, num_heads, ws, dim_mlp, scale, drop=0.1, drop_path=0.1):
        super().__init__()
        self.resolution, self.scale = tuple(resolution), scale
        self.dropout = nn.Dropout(drop)
        # Never called in forward, but part of the official state dict (checkpoints load strictly).
        self.downsample = nn.Conv2d(dim, dim, 3, stride=2, padding=1)
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList(
            SwinLayer(dim, self.resolution, d, h, ws, dim_mlp, drop, rates[s : s + d])
            for d, h, s in zip(depths, num_heads, starts)
        )

    def forward(self, x: torch.Tensor, fused: bool = True) -> torch.Tensor:
        B, C, H, W = x.shape
        x = self.dropout(x).flatten(2).transpose(1, 2)
        for layer in self.layers:
            x = self.scale * layer(x, fused=fused) + x
        return x.transpose(1, 2).reshape(B, C, H, W)
