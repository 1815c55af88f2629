"""A small, synthetic data set in the competition layout, made offline in a few seconds.

The real challenge data cannot be shipped, so the demo profile trains on images made here:
procedural scenes (gradients, shapes, stripes, checkers, textures, a toy landscape) and
crops of the sample images matplotlib ships, each degraded by real distortions (gaussian
blur, gaussian noise, JPEG compression, contrast loss, colour cast, and combinations) at
several strengths. The MOS (0-10 scale) is a smooth decreasing function of the total
degradation severity plus a little noise, so a model can learn it.

How an image is made, and why (the demo model is a narrow ViT trained from scratch for a few
hundred steps at 64, 128 and 192 px; see params/demo.yaml):

1. The scene is drawn at its final, small size (64-80 px a side, ``DEFAULT_SIZES``): near the
   64-192 px the model sees, so blur, noise and JPEG blocks reach it instead of being erased by
   a large downscale (images of 120-200 px lost most of them when shrunk to 64 px).
2. It is normalised to a "pristine" look (``canonical``): grey-world white balance and levels
   stretched so that 1 % / 99 % of the pixels sit at 8 / 247. A colour cast or a contrast loss
   is then a departure from a known reference, not something any random scene may have.
3. It gets a capture badness ``b ~ U(0, 1)``: each of the five distortions is present with
   probability ``clip(1.5 * (b - 0.15), 0, 1)`` at strength ``clip(round(0.5 + 4 b + N(0, 0.4)), 1, 4)``,
   so bad captures suffer several defects at once, as a photo from a poor camera or a
   heavily recompressed upload does (about 25 % of the images are pristine).
4. The MOS: ``severity = sum of the strengths / 4`` (0 to 5) and
   ``mos = 9.2 - 8 * (1 - exp(-severity / 2.5)) + N(0, 0.6)``, clipped to [1, 9.5].

Layout written under ``dest`` (the same as the challenge's, SPEC §1, plus two extras)::

    train.csv               img_name,img_path,mos,comments  (1-3 caption rows per image)
    test.csv                img_name,img_path
    sample_submission.csv   img_name,mos,comments
    test_labels.csv         img_name,mos   (the hidden test MOS: scores the demo only)
    demo_manifest.csv       one row per image: split, source, distortion levels, severity, mos
    README.md               what this folder is
    train/*.jpg, test/*.jpg

Command line: ``python -m iqa_lib.datasets.demo DEST [--n-train N] [--n-test N] [--seed S] [--overwrite]``.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from .cli import check_dest, remove_written, run_command

Size = tuple[int, int]  # (width, height), PIL's order

# Near the demo model's 64-192 px inputs: shrinking a larger image to 64 px would erase most of
# its blur, noise and JPEG artefacts before the model sees them.
DEFAULT_SIZES: tuple[Size, ...] = ((64, 64), (80, 64), (64, 80), (72, 72))
NAME_ALPHABET = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789"))
NAME_LENGTH = 10  # the challenge's names are 10 lowercase letters/digits
CLEAN_QUALITY = 95  # JPEG quality of images without a JPEG distortion

# Files the generator writes at the top of `dest`; with overwrite=True only these (and the
# images listed in the previous manifest) are removed.
TOP_FILES = ("train.csv", "test.csv", "sample_submission.csv", "test_labels.csv", "demo_manifest.csv", "README.md")
MANIFEST = "demo_manifest.csv"

# matplotlib's sample photos; whichever exist are used as extra sources.
SAMPLE_IMAGES = {
    "grace_hopper.jpg": "a portrait of a woman in a navy uniform",
    "Minduka_Present_Blue_Pack.png": "a blue gift package",
    "logo2.png": "a logo with a colourful chart",
}

# --- distortions ---------------------------------------------------------------------------
# Each distortion has four strengths; level L (1..4) contributes severity L/4 to the total.
LEVELS = 4
BLUR_RADIUS = (0.8, 1.4, 2.2, 3.4)  # gaussian sigma in pixels
NOISE_SIGMA = (6.0, 12.0, 20.0, 32.0)  # on the 0-255 scale
JPEG_QUALITY = (40, 22, 12, 6)
CONTRAST_KEEP = (0.75, 0.55, 0.4, 0.28)  # fraction of the contrast kept
COLOUR_SHIFT = (0.08, 0.15, 0.24, 0.34)  # size of the per-channel gain change
DISTORTIONS = ("blur", "noise", "jpeg", "contrast", "colour")
# Defects co-occur: an image's badness b ~ U(0, 1) sets how likely each distortion is,
# p = clip(PRESENCE_SLOPE * (b - PRESENCE_FROM), 0, 1), and how strong:
# level = clip(round(0.5 + 4 b + N(0, LEVEL_SD)), 1, 4).
PRESENCE_SLOPE, PRESENCE_FROM, LEVEL_SD = 1.5, 0.15, 0.4

# --- pristine look -------------------------------------------------------------------------------
CANONICAL_LEVELS = (8.0, 247.0)  # where the 1st / 99th percentiles of a pristine image sit

# --- MOS ---------------------------------------------------------------------------------------
# mos = top - range * (1 - exp(-severity / decay)); severity runs 0-5 (five distortions, L/4 each)
MOS_TOP, MOS_RANGE, MOS_DECAY = 9.2, 8.0, 2.5
MOS_NOISE_SD = 0.6  # sets the severity-MOS correlation near -0.9, like a noisy human panel
MOS_CLIP = (1.0, 9.5)


@dataclass
class DemoImage:
    """One generated image and everything the CSVs need about it."""

    name: str
    split: str  # "train" or "test"
    source: str  # scene generator or sample image
    description: str  # a short caption of the content
    size: Size
    levels: dict[str, int] = field(default_factory=dict)  # distortion -> level 1..4
    mos: float = 0.0

    @property
    def severity(self) -> float:
        return sum(self.levels.values()) / LEVELS


def severity_to_mos(severity: np.ndarray | float) -> np.ndarray:
    """The noiseless MOS of a total severity: 9.2 when pristine, 2.3 at the worst (severity 5)."""
    return MOS_TOP - MOS_RANGE * (1.0 - np.exp(-np.asarray(severity, dtype=float) / MOS_DECAY))


# --- scenes --------------------------------------------------------------------------------------
def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(20, 235, size=3)


def _linear_ramp(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A (h, w) ramp in [0, 1] along a random direction."""
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:h, 0:w]
    t = x * np.cos(angle) + y * np.sin(angle)
    return (t - t.min()) / max(t.max() - t.min(), 1e-6)


def _two_colour(t: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    return c0 + t[..., None] * (c1 - c0)


def scene_gradient(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A smooth two-colour gradient, linear or radial."""
    if rng.random() < 0.5:
        t = _linear_ramp(rng, h, w)
    else:
        y, x = np.mgrid[0:h, 0:w]
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = np.hypot(x - cx, y - cy)
        t = t / t.max()
    return _two_colour(t, _colour(rng), _colour(rng))


def scene_shapes(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Rectangles, ellipses and triangles on a gradient."""
    img = Image.fromarray(scene_gradient(rng, w, h).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 9)):
        x0, y0 = rng.uniform(-0.1, 0.9) * w, rng.uniform(-0.1, 0.9) * h
        x1, y1 = x0 + rng.uniform(0.1, 0.5) * w, y0 + rng.uniform(0.1, 0.5) * h
        fill = tuple(int(c) for c in _colour(rng))
        kind = rng.integers(3)
        if kind == 0:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif kind == 1:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    return np.asarray(img, dtype=float)


def scene_stripes(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Sinusoidal stripes or a checkerboard: fine detail that blur and JPEG visibly damage."""
    y, x = np.mgrid[0:h, 0:w]
    if rng.random() < 0.5:
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
    else:
        cell = int(rng.integers(4, 17))
        t = ((x // cell + y // cell) % 2).astype(float)
    return _two_colour(t, _colour(rng), _colour(rng))


def scene_texture(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Multi-octave value noise, coloured: looks like stone, bark or clouds."""
    t = np.zeros((h, w))
    for octave in range(4):  # finer octaves would look like sensor noise
        cells = 2 ** (octave + 2)
        coarse = rng.random((cells, cells)).astype(np.float32)
        up = Image.fromarray(coarse, mode="F").resize((w, h), Image.Resampling.BICUBIC)
        t += np.asarray(up) / 2**octave
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    return _two_colour(t, _colour(rng), _colour(rng))


def scene_objects(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A toy landscape: sky, ground, sun, a house and a few trees."""
    horizon = int(h * rng.uniform(0.45, 0.7))
    sky = np.linspace(0, 1, horizon)[:, None].repeat(w, 1)
    img = np.empty((h, w, 3))
    img[:horizon] = _two_colour(sky, np.array([70, 120, 220]) * rng.uniform(0.7, 1.1), np.array([200, 225, 250]))
    ground = np.linspace(0, 1, h - horizon)[:, None].repeat(w, 1)
    img[horizon:] = _two_colour(ground, np.array([90, 160, 70]) * rng.uniform(0.7, 1.2), np.array([40, 90, 30]))
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    r = rng.uniform(0.06, 0.12) * w
    sx, sy = rng.uniform(r, w - r), rng.uniform(r, horizon * 0.6)
    draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=(250, 220, 80))
    hw = rng.uniform(0.2, 0.35) * w  # house
    hx, hy = rng.uniform(0, w - hw), horizon + rng.uniform(0.0, 0.15) * h
    wall = tuple(int(c) for c in _colour(rng))
    draw.rectangle((hx, hy - 0.7 * hw, hx + hw, hy), fill=wall)
    draw.polygon([(hx - 0.1 * hw, hy - 0.7 * hw), (hx + 1.1 * hw, hy - 0.7 * hw), (hx + hw / 2, hy - 1.2 * hw)], fill=(150, 50, 40))
    draw.rectangle((hx + 0.4 * hw, hy - 0.35 * hw, hx + 0.6 * hw, hy), fill=(80, 50, 30))
    for _ in range(rng.integers(1, 4)):  # trees
        tx, tr = rng.uniform(0, w), rng.uniform(0.05, 0.1) * w
        ty = horizon + rng.uniform(0.05, 0.25) * h
        draw.rectangle((tx - tr * 0.2, ty - tr, tx + tr * 0.2, ty + tr), fill=(100, 70, 40))
        draw.ellipse((tx - tr, ty - 2.6 * tr, tx + tr, ty - 0.6 * tr), fill=(30, int(rng.uniform(90, 150)), 40))
    return np.asarray(pil, dtype=float)


SCENES: dict[str, tuple[Callable[[np.random.Generator, int, int], np.ndarray], str]] = {
    "gradient": (scene_gradient, "a smooth colour gradient"),
    "shapes": (scene_shapes, "simple coloured shapes on a plain background"),
    "stripes": (scene_stripes, "a striped or checkered pattern"),
    "texture": (scene_texture, "a textured surface like stone or clouds"),
    "objects": (scene_objects, "a drawing of a house and trees under the sun"),
}


def load_sample_images() -> dict[str, Image.Image]:
    """matplotlib's sample photos that exist in this installation, as RGB (may be empty)."""
    try:
        from matplotlib import cbook
    except ImportError:  # the demo works without them
        return {}
    found = {}
    for name in SAMPLE_IMAGES:
        try:
            with cbook.get_sample_data(name) as f:
                img = Image.open(f)
                img.load()
        except (OSError, ValueError):
            continue
        if img.mode in ("RGBA", "LA", "P"):  # transparent logos: composite on white
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.split()[-1])
        found[name] = img.convert("RGB")
    return found


def crop_resize(rng: np.random.Generator, img: Image.Image, w: int, h: int) -> np.ndarray:
    """A random crop with the target aspect ratio (40-100% of the largest), resized to (w, h)."""
    W, H = img.size
    scale = min(W / w, H / h) * rng.uniform(0.4, 1.0)
    cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
    x0, y0 = int(rng.integers(0, W - cw + 1)), int(rng.integers(0, H - ch + 1))
    out = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.LANCZOS)
    return np.asarray(out, dtype=float)


def canonical(pixels: np.ndarray) -> np.ndarray:
    """A scene given the pristine look every distortion departs from: grey-world white balance,
    then levels stretched so that its 1st / 99th percentiles sit at 8 / 247."""
    means = pixels.reshape(-1, 3).mean(0)
    x = pixels * (means.mean() / np.maximum(means, 1.0))
    lo, hi = np.percentile(x, (1, 99))
    if hi - lo < 1.0:  # a flat image: nothing to stretch
        return np.clip(x, 0, 255)
    low, high = CANONICAL_LEVELS
    return np.clip(low + (x - lo) * (high - low) / (hi - lo), 0, 255)


# --- distortions ---------------------------------------------------------------------------
def apply_distortions(rng: np.random.Generator, pixels: np.ndarray, levels: dict[str, int]) -> tuple[Image.Image, int]:
    """Degrade a float (h, w, 3) image; returns the image and the JPEG quality to save it with.

    Order: colour and contrast (scene-wide), then blur, then noise (as a sensor adds it after the
    optics), and JPEG last, as the encoder that writes the file, so it is never re-encoded.
    """
    x = pixels
    if "colour" in levels:
        gains = rng.normal(size=3)
        gains = 1.0 + COLOUR_SHIFT[levels["colour"] - 1] * gains / np.abs(gains).max()
        x = x * gains
    if "contrast" in levels:
        keep = CONTRAST_KEEP[levels["contrast"] - 1]
        x = x.mean() + keep * (x - x.mean())
    img = Image.fromarray(np.clip(x, 0, 255).round().astype(np.uint8))
    if "blur" in levels:
        img = img.filter(ImageFilter.GaussianBlur(BLUR_RADIUS[levels["blur"] - 1]))
    if "noise" in levels:
        x = np.asarray(img, dtype=float) + rng.normal(0, NOISE_SIGMA[levels["noise"] - 1], size=(img.height, img.width, 3))
        img = Image.fromarray(np.clip(x, 0, 255).round().astype(np.uint8))
    quality = JPEG_QUALITY[levels["jpeg"] - 1] if "jpeg" in levels else CLEAN_QUALITY
    return img, quality


def draw_levels(rng: np.random.Generator) -> dict[str, int]:
    """The distortions of one capture (0-5 of them) and a strength 1..4 for each.

    A badness b ~ U(0, 1) drives both: each distortion is present with probability
    clip(1.5 (b - 0.15), 0, 1) at strength clip(round(0.5 + 4 b + N(0, 0.4)), 1, 4).
    """
    badness = rng.random()
    present = rng.random(len(DISTORTIONS)) < np.clip(PRESENCE_SLOPE * (badness - PRESENCE_FROM), 0.0, 1.0)
    strength = np.clip(np.round(0.5 + LEVELS * badness + rng.normal(0, LEVEL_SD, len(DISTORTIONS))), 1, LEVELS)
    return {d: int(level) for d, on, level in zip(DISTORTIONS, present, strength) if on}


# --- captions --------------------------------------------------------------------------------
PHRASES = {
    "blur": ("the image is blurry", "details are soft and out of focus", "the focus is off"),
    "noise": ("there is visible grain", "the picture is noisy", "flat areas are speckled with noise"),
    "jpeg": ("blocky compression artifacts are visible", "it looks heavily compressed", "edges show jpeg blocks"),
    "contrast": ("the colors look washed out", "the contrast is low and flat", "it looks faded"),
    "colour": ("there is a color cast", "the white balance is off", "the colors look unnatural"),
}
CLEAN_PHRASES = ("it is clean and sharp", "the quality is good", "nothing looks wrong with it")
STRONG = ("slightly", "noticeably", "strongly", "very strongly")


def make_comments(rng: np.random.Generator, item: DemoImage, n: int) -> list[str]:
    """`n` short caption strings that mention the content and what is wrong with the image."""
    comments = []
    for _ in range(n):
        if item.levels:
            parts = [str(rng.choice(PHRASES[d])) for d in item.levels]
            worst = max(item.levels.values())
            listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
            text = f"{item.description}; {STRONG[worst - 1]} degraded: {listed}"
        else:
            text = f"{item.description}; {rng.choice(CLEAN_PHRASES)}"
        comments.append(text)
    return comments


# --- the data set ------------------------------------------------------------------------------
def _unique_names(rng: np.random.Generator, n: int) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        name = "".join(rng.choice(NAME_ALPHABET, size=NAME_LENGTH))
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _check_args(n_train: int, n_test: int, sizes: Sequence[Size]) -> list[Size]:
    # 5 training images at least: the kit splits them into 5 folds.
    for label, value, low in (("n_train", n_train, 5), ("n_test", n_test, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")
    checked = []
    for s in sizes:
        if len(s) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 16 for v in s):
            raise ValueError(f"sizes must be (width, height) pairs of integers >= 16, got {s!r}")
        checked.append((int(s[0]), int(s[1])))
    if not checked:
        raise ValueError("sizes is empty: give at least one (width, height) pair, e.g. ((160, 120),)")
    return checked


def _prepare_dest(dest: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder unless overwrite; then remove only what a previous run wrote."""
    check_dest(dest, overwrite, "dest", holds="path for the demo data",
               replaces="the demo files there (other files are kept)")
    if dest.is_dir():
        # The previous demo's images (its manifest names them: only .jpg files in train/ and
        # test/ go), then its top-level files.
        remove_written(dest, (MANIFEST,), TOP_FILES, suffix=".jpg")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "train").mkdir(exist_ok=True)
    (dest / "test").mkdir(exist_ok=True)


def _generate(rng: np.random.Generator, dest: Path, n_train: int, n_test: int, sizes: list[Size]) -> list[DemoImage]:
    """Make and save every image (train, then test); returns their descriptions."""
    samples = load_sample_images()
    sources = list(SCENES) + list(samples)
    names = _unique_names(rng, n_train + n_test)
    out = []
    for i, name in enumerate(names):
        source = str(rng.choice(sources))
        w, h = sizes[int(rng.integers(len(sizes)))]
        if source in SCENES:
            make, description = SCENES[source]
            pixels = make(rng, w, h)
        else:
            pixels, description = crop_resize(rng, samples[source], w, h), SAMPLE_IMAGES[source]
        item = DemoImage(name, "train" if i < n_train else "test", source, description, (w, h), draw_levels(rng))
        noisy = severity_to_mos(item.severity) + rng.normal(0, MOS_NOISE_SD)
        item.mos = round(float(np.clip(noisy, *MOS_CLIP)), 3)
        img, quality = apply_distortions(rng, canonical(pixels), item.levels)
        # Fixed encoder settings keep the files byte-identical for a seed.
        img.save(dest / item.split / f"{name}.jpg", format="JPEG", quality=quality, subsampling=2, optimize=False)
        out.append(item)
    return out


def _tables(rng: np.random.Generator, items: list[DemoImage]) -> dict[str, pd.DataFrame]:
    train_rows, test_rows, manifest = [], [], []
    for it in items:
        path = f"./{it.split}/{it.name}.jpg"
        if it.split == "train":
            for c in make_comments(rng, it, int(rng.integers(1, 4))):
                train_rows.append((it.name, path, it.mos, c))
        else:
            test_rows.append((it.name, path, it.mos))
        manifest.append(
            dict(img_name=it.name, img_path=path, split=it.split, source=it.source, width=it.size[0], height=it.size[1],
                 **{d: it.levels.get(d, 0) for d in DISTORTIONS}, severity=it.severity, mos=it.mos)
        )
    test = pd.DataFrame(test_rows, columns=["img_name", "img_path", "mos"])
    return {
        "train.csv": pd.DataFrame(train_rows, columns=["img_name", "img_path", "mos", "comments"]),
        "test.csv": test[["img_name", "img_path"]],
        "sample_submission.csv": test[["img_name"]].assign(mos=0.0, comments="nice image"),
        "test_labels.csv": test[["img_name", "mos"]],
        MANIFEST: pd.DataFrame(manifest),
    }


README_TEXT = """# Demo data (synthetic)

Made by `python -m iqa_lib.datasets.demo` (seed {seed}): {n_train} training and {n_test} test images in
the layout of the 2023 Samsung AI Challenge (IQA), for trying the kit without the real data.
Nothing here was downloaded and nothing here was rated by people.

- Images: procedural scenes (gradients, shapes, stripes/checkers, textures, a toy landscape) and
  crops of the sample images that ship with matplotlib, {sizes} pixels (width x height): near the
  64-192 px the demo model sees. Each is first given a pristine look (grey-world white balance,
  1 % / 99 % of the pixels at 8 / 247).
- Distortions, 0-5 per image, each at strength 1-4: gaussian blur, gaussian noise, JPEG
  compression (the file's own quality; other images are saved at quality {clean}), contrast
  loss, colour cast. They co-occur: an image's badness b ~ U(0, 1) makes each present with
  probability clip(1.5 (b - 0.15), 0, 1), at strength clip(round(0.5 + 4 b + N(0, 0.4)), 1, 4).
- MOS (0-10): {top} - {rng_} * (1 - exp(-severity / {decay})) + noise (sd {sd}), clipped to
  [{lo}, {hi}]; severity = sum of the strengths / 4.
- `train.csv` (`img_name,img_path,mos,comments`) has 1-3 rows per image, one per generated
  comment, all with the image's MOS. `test.csv` and `sample_submission.csv` are as in the
  challenge. `test_labels.csv` holds the test MOS (the real challenge hides it) so the demo's
  submission can be scored; `demo_manifest.csv` lists each image's source and distortions.

Regenerate with `python -m iqa_lib.datasets.demo DEST --seed {seed} --overwrite` (same seed, same bytes).
"""


def _write_tables(dest: Path, tables: dict[str, pd.DataFrame], seed: int, n_train: int, n_test: int, sizes: list[Size]) -> None:
    for name, df in tables.items():
        df.to_csv(dest / name, index=False, lineterminator="\n", float_format="%.3f")
    (dest / "README.md").write_text(
        README_TEXT.format(
            seed=seed, n_train=n_train, n_test=n_test, sizes=", ".join(f"{w}x{h}" for w, h in sizes),
            clean=CLEAN_QUALITY, top=MOS_TOP, rng_=MOS_RANGE, decay=MOS_DECAY, sd=MOS_NOISE_SD, lo=MOS_CLIP[0], hi=MOS_CLIP[1],
        ),
        encoding="utf-8",
    )


def make_demo_data(
    dest: str | Path,
    n_train: int = 300,
    n_test: int = 100,
    seed: int = 0,
    sizes: Sequence[Size] = DEFAULT_SIZES,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic data set in the competition layout to `dest` and return its path.

    Args:
        dest: folder to create (or an empty one).
        n_train, n_test: number of training and test images (not rows: train.csv has 1-3 per image).
        seed: the same seed gives byte-identical CSVs and images.
        sizes: image sizes as (width, height); each image takes one at random.
        overwrite: replace the demo files of an earlier run in a non-empty `dest`. Only the files
            this generator writes are removed; anything else there is left alone.

    Raises:
        FileExistsError: `dest` is not empty and `overwrite` is False.
        ValueError: a count or size is invalid.
    """
    sizes = _check_args(n_train, n_test, sizes)
    dest = Path(dest).expanduser()
    _prepare_dest(dest, overwrite)
    rng = np.random.default_rng(seed)
    # Images are written as they are made, so memory stays small for large n_train.
    items = _generate(rng, dest, int(n_train), int(n_test), sizes)
    _write_tables(dest, _tables(rng, items), seed, int(n_train), int(n_test), sizes)
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m iqa_lib.datasets.demo",
        description="Write a small synthetic IQA data set in the 2023 Samsung AI Challenge layout.",
    )
    parser.add_argument("dest", help="folder to create, e.g. data/demo")
    parser.add_argument("--n-train", type=int, default=300, help="training images (default 300)")
    parser.add_argument("--n-test", type=int, default=100, help="test images (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace the demo files of an earlier run in DEST")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    dest = run_command(lambda: make_demo_data(args.dest, args.n_train, args.n_test, args.seed, overwrite=args.overwrite))
    if dest is None:
        return 2
    print(f"wrote {args.n_train} train + {args.n_test} test images to {dest} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
