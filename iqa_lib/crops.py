"""How a stored image becomes model inputs when it is larger than the model's input.

The team's recipe resizes every image to the model's input side S and shows it whole. The
other way, usual for IQA models trained from scratch (and MANIQA's own 224 training), keeps
more of the image's own pixels: store it at a larger side L (`model.load_size`), train on a
random S x S crop of it, and at validation / test time average the predictions over a fixed
n x n grid of crops (`model.crop_grid`) that together cover the whole image. Blur and noise
survive at L; at a small S they are resized away.
"""
from __future__ import annotations

import numpy as np
import torch


def whole_image_view(img_size: int) -> dict:
    """The input view of a model shown whole images (the team's recipe, and checkpoints that
    predate crops): stored at the model's input side, one crop = the image."""
    return {"load_size": int(img_size), "crop_grid": 1}


def grid_size(view: dict, img_size: int) -> int:
    """n of the n x n grid of crops a view is scored over; 0 when the image is shown whole."""
    return int(view["crop_grid"]) if view["load_size"] > img_size else 0


def random_crops(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random `size` x `size` crop per image of a (B, L, L, C) batch, on its device.

    The offsets come from `generator` (its own device; moved here) or torch's global RNG.
    """
    b, height, width = x.shape[:3]
    if size > min(height, width):
        raise ValueError(f"crop {size} is larger than the images ({height}x{width})")
    if (height, width) == (size, size):
        return x
    gen_device = generator.device if generator is not None else x.device
    top = torch.randint(0, height - size + 1, (b,), generator=generator, device=gen_device).to(x.device)
    left = torch.randint(0, width - size + 1, (b,), generator=generator, device=gen_device).to(x.device)
    span = torch.arange(size, device=x.device)
    rows = (top[:, None] + span)[:, :, None]  # (B, S, 1)
    cols = (left[:, None] + span)[:, None, :]  # (B, 1, S)
    return x[torch.arange(b, device=x.device)[:, None, None], rows, cols]


def grid_offsets(side: int, size: int, n: int) -> list[int]:
    """`n` distinct crop offsets evenly spread over `side`: first at 0, last flush with the far edge;
    one crop (n = 1) is the centre crop, and a crop as large as the image is the image, once."""
    if n < 1:
        raise ValueError(f"crop_grid must be >= 1, got {n}")
    if size > side:
        raise ValueError(f"crop {size} is larger than the images ({side})")
    if n == 1 or side == size:
        return [(side - size) // 2]
    if n > side - size + 1:  # load_config refuses such a view; the feature cache counts on n x n crops
        raise ValueError(f"crop_grid {n} needs images of at least {size + n - 1} px for crops of {size}, got {side}")
    return np.linspace(0, side - size, n).round().astype(int).tolist()


def grid_crops(x: torch.Tensor, size: int, n: int) -> list[torch.Tensor]:
    """The n x n grid of `size` crops of a (B, C, L, L) model-input batch (one tensor per place)."""
    rows = grid_offsets(x.shape[-2], size, n)
    cols = grid_offsets(x.shape[-1], size, n)
    return [x[..., i:i + size, j:j + size] for i in rows for j in cols]
