"""Tests for iqa_lib.data: table checks, image decoding, the uint8 cache, loader and model input."""

from __future__ import annotations

import os
import pickle
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iqa_lib import data as D

CLIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "clive_dev"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def save_image(path: Path, seed: int = 0, size: tuple[int, int] = (40, 30), fmt: str = "JPEG") -> Path:
    """A small random RGB image (different per seed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, fmt)
    return path


def make_data_dir(root: Path, n: int = 3, captions: int = 2) -> Path:
    """A valid competition-layout folder: train/*.jpg and train.csv with caption rows."""
    lines = ["img_name,img_path,mos,comments"]
    for i in range(n):
        save_image(root / "train" / f"im{i}.jpg", seed=i)
        lines += [f"im{i},./train/im{i}.jpg,{5 + i * 0.5},caption {c}" for c in range(captions)]
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


def problems_text(err: pytest.ExceptionInfo) -> str:
    return str(err.value)


def count_decodes(monkeypatch) -> list[str]:
    """Wrap load_resized so a test can see which files were decoded (in this process)."""
    calls: list[str] = []
    real = D.load_resized

    def counting(path, size, **kw):
        calls.append(str(path))
        return real(path, size, **kw)

    monkeypatch.setattr(D, "load_resized", counting)
    return calls


# --------------------------------------------------------------------------------------------
# load_table
# --------------------------------------------------------------------------------------------
def test_valid_table(tmp_path):
    root = make_data_dir(tmp_path, n=3, captions=2)
    df = D.load_table(root, check_images="decode", progress=False)
    assert len(df) == 6  # caption rows kept
    assert df["mos"].dtype == np.float64 and df["mos"].tolist()[:3] == [5.0, 5.0, 5.5]
    expected = str((root / "train" / "im1.jpg").resolve())
    assert df.loc[df["img_name"] == "im1", "path"].unique().tolist() == [expected]
    assert all(Path(p).is_absolute() for p in df["path"])


def test_unlabelled_test_csv(tmp_path):
    save_image(tmp_path / "test" / "t0.jpg")
    (tmp_path / "test.csv").write_text("img_name,img_path\nt0,./test/t0.jpg\n")
    df = D.load_table(tmp_path, "test.csv", labelled=False)
    assert df["img_name"].tolist() == ["t0"] and "mos" not in df
    with pytest.raises(D.DataError, match="no column 'mos'"):
        D.load_table(tmp_path, "test.csv", labelled=True)


def test_missing_data_dir_names_folder_and_layout(tmp_path):
    with pytest.raises(D.DataError) as err:
        D.load_table(tmp_path / "nope")
    msg = problems_text(err)
    assert str(tmp_path / "nope") in msg
    assert "train.csv" in msg and "train/" in msg and "data_dir" in msg


def test_missing_csv_lists_the_csvs_present(tmp_path):
    (tmp_path / "other.csv").write_text("a\n1\n")
    with pytest.raises(D.DataError) as err:
        D.load_table(tmp_path, "train.csv")
    msg = problems_text(err)
    assert str(tmp_path / "train.csv") in msg and "other.csv" in msg and "csv_name" in msg


def test_empty_csv_and_header_only(tmp_path):
    (tmp_path / "train.csv").write_text("")
    with pytest.raises(D.DataError, match="empty"):
        D.load_table(tmp_path)
    (tmp_path / "train.csv").write_text("img_name,img_path,mos,comments\n")
    with pytest.raises(D.DataError, match="no data rows"):
        D.load_table(tmp_path)


@pytest.mark.parametrize("bad, guess", [("MOS", "MOS"), ("mos_score", "mos_score")])
def test_missing_column_suggests_close_match(tmp_path, bad, guess):
    save_image(tmp_path / "train" / "a.jpg")
    (tmp_path / "train.csv").write_text(f"img_name,img_path,{bad},comments\na,./train/a.jpg,5,\n")
    with pytest.raises(D.DataError) as err:
        D.load_table(tmp_path)
    msg = problems_text(err)
    assert "train.csv line 1" in msg and "no column 'mos'" in msg and f"did you mean {guess!r}" in msg


def test_misspelled_name_column(tmp_path):
    save_image(tmp_path / "train" / "a.jpg")
    (tmp_path / "train.csv").write_text("img_nmae,img_path,mos\na,./train/a.jpg,5\n")
    with pytest.raises(D.DataError, match="did you mean 'img_nmae'"):
        D.load_table(tmp_path)


def test_every_problem_reported_in_one_error(tmp_path):
    for name in ("ok", "c1", "p1"):
        save_image(tmp_path / "train" / f"{name}.jpg")
    (tmp_path / "outside.jpg").write_bytes(b"")
    rows = [
        "img_name,img_path,mos,comments",  # line 1
        "ok,./train/ok.jpg,5,fine",  # 2
        ",./train/ok.jpg,5,",  # 3 empty img_name
        "e1,,5,",  # 4 empty img_path
        "o1,../outside.jpg,5,",  # 5 outside data_dir
        "m1,./train/missing.jpg,5,",  # 6 missing file
        "n1,./train/ok.jpg,abc,",  # 7 not a number
        "n2,./train/ok.jpg,,",  # 8 missing mos
        "n3,./train/ok.jpg,-1,",  # 9 negative
        "n4,./train/ok.jpg,11,",  # 10 above scale
        "n5,./train/ok.jpg,nan,",  # 11 not finite
        "c1,./train/c1.jpg,4,a",  # 12 conflicting mos ...
        "c1,./train/c1.jpg,6,b",  # 13
        "p1,./train/p1.jpg,5,a",  # 14 conflicting paths ...
        "p1,./train/ok.jpg,5,b",  # 15
        "x1,./train/ok.jpg,5,a caption, with a comma",  # 16 too many fields
    ]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(D.DataError) as err:
        D.load_table(tmp_path, check_images="none")
    msg = problems_text(err)
    kinds = {p.kind for p in err.value.problems}
    assert kinds == {
        "empty img_name", "empty img_path", "img_path outside data_dir", "image file missing", "mos not a number",
        "missing mos", "mos out of range", "mos not finite", "conflicting mos", "conflicting img_path",
        "too many fields",
    }
    assert len(err.value.problems) == 12
    for line in (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16):
        assert f"train.csv line {line}:" in msg, line
    assert "missing.jpg" in msg and "../outside.jpg" in msg
    assert "mos_scale=10" in msg  # the scale in force and the parameter to change
    assert "(line 12)" in msg and "(line 13)" in msg  # both rows of the conflicting image
    assert msg.count("-- fix:") == len(kinds)  # one fix line per kind


def test_data_error_survives_pickling():
    err = D.DataError([D.Problem("kind", "a.csv line 2", "what", "fix it")], "title")
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.problems == err.problems and isinstance(back, ValueError)


def test_line_numbers_survive_multiline_captions(tmp_path):
    save_image(tmp_path / "train" / "a.jpg")
    text = 'img_name,img_path,mos,comments\na,./train/a.jpg,5,"two\nlines"\n\nb,./train/b.jpg,5,x\n'
    (tmp_path / "train.csv").write_text(text)
    with pytest.raises(D.DataError) as err:
        D.load_table(tmp_path)
    assert "train.csv line 5:" in problems_text(err)  # header 1, a 2-3, blank 4, b 5


def test_listing_is_capped(tmp_path):
    rows = ["img_name,img_path,mos"] + [f"m{i},./train/m{i}.jpg,5" for i in range(D.MAX_LISTED + 7)]
    (tmp_path / "train.csv").write_text("\n".join(rows))
    with pytest.raises(D.DataError) as err:
        D.load_table(tmp_path)
    msg = problems_text(err)
    assert "image file missing (27)" in msg and "... and 7 more" in msg
    assert msg.count("not found") == D.MAX_LISTED
    assert len(err.value.problems) == 27


def test_mos_scale_parameter(tmp_path):
    save_image(tmp_path / "train" / "a.jpg")
    (tmp_path / "train.csv").write_text("img_name,img_path,mos\na,./train/a.jpg,73.5\n")
    with pytest.raises(D.DataError, match=r"set mos_scale: 100 \(in the profile's YAML, or in a dataset.json"):
        D.load_table(tmp_path)
    assert D.load_table(tmp_path, mos_scale=100)["mos"].tolist() == [73.5]


def test_invalid_arguments_name_the_parameter(tmp_path):
    make_data_dir(tmp_path, n=1)
    with pytest.raises(ValueError, match="check_images"):
        D.load_table(tmp_path, check_images="full")
    with pytest.raises(ValueError, match="mos_scale"):
        D.load_table(tmp_path, mos_scale=0)


@pytest.fixture
def broken_images(tmp_path) -> dict[str, Path]:
    """A text file named .jpg, a zero-byte .jpg and a JPEG cut in half, plus a good one."""
    train = tmp_path / "train"
    good = save_image(train / "good.jpg", size=(64, 64))
    (train / "text.jpg").write_text("this is not an image\n")
    (train / "zero.jpg").write_bytes(b"")
    data = good.read_bytes()
    (train / "trunc.jpg").write_bytes(data[: len(data) // 2])
    names = ["good", "text", "zero", "trunc"]
    rows = ["img_name,img_path,mos"] + [f"{n},./train/{n}.jpg,5" for n in names]
    (tmp_path / "train.csv").write_text("\n".join(rows))
    return {n: (train / f"{n}.jpg").resolve() for n in names}


def test_check_images_decode_reports_each_broken_file(tmp_path, broken_images):
    with pytest.raises(D.DataError) as err:
        D.load_table(tmp_path, check_images="decode", progress=False)
    msg = problems_text(err)
    assert {p.where for p in err.value.problems} == {str(broken_images[n]) for n in ("text", "zero", "trunc")}
    assert "empty file (0 bytes)" in msg and "truncated" in msg


def test_check_images_open_misses_only_truncation(tmp_path, broken_images):
    with pytest.raises(D.DataError) as err:
        D.load_table(tmp_path, check_images="open")
    assert {p.where for p in err.value.problems} == {str(broken_images[n]) for n in ("text", "zero")}
    assert len(D.load_table(tmp_path, check_images="none")) == 4


# --------------------------------------------------------------------------------------------
# read_rgb / load_resized
# --------------------------------------------------------------------------------------------
def _mode_image(mode: str) -> Image.Image:
    rgba = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 20, 4), dtype=np.uint8), "RGBA")
    if mode == "P+transparency":
        im = rgba.convert("RGB").convert("P")
        im.info["transparency"] = bytes([0, 128] + [255] * 254)  # per-entry alpha, as in a PNG tRNS chunk
        return im
    return rgba if mode == "RGBA" else rgba.convert(mode)


@pytest.mark.parametrize("mode, fmt", [
    ("1", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("P+transparency", "PNG"),
    ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("LAB", "TIFF"), ("RGB", "WEBP"),
])
def test_read_rgb_any_mode(tmp_path, mode, fmt):
    path = tmp_path / f"img.{fmt.lower()}"
    _mode_image(mode).save(path, fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Pillow's palette-transparency warning
        im = D.read_rgb(path)
    assert im.mode == "RGB" and im.size == (20, 12)
    # The pixels: the source's colours, alpha dropped (lossy formats: Pillow's decode of the file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = Image.open(path) if fmt in ("JPEG", "WEBP") else _mode_image(mode)
        expected = source.convert("RGBA" if mode.startswith("P") else "RGB").convert("RGB")
    assert np.array_equal(np.asarray(im), np.asarray(expected))


def test_palette_with_alpha_in_memory():
    pa = Image.new("RGB", (5, 3), (10, 200, 30)).convert("P").convert("PA")  # PNG cannot store PA
    out = D._to_rgb(pa)
    assert out.mode == "RGB" and out.size == (5, 3)
    expected = np.asarray(pa.convert("RGBA"))[..., :3]  # (10, 200, 30) dithered on the web palette
    assert np.array_equal(np.asarray(out), expected) and (expected[..., 1] == 204).all()


def test_alpha_is_dropped_not_composited(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., :3] = (200, 100, 50)  # fully transparent, coloured underneath
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    assert np.asarray(D.read_rgb(tmp_path / "a.png"))[0, 0].tolist() == [200, 100, 50]


def test_16bit_gradient_scales_like_opencv(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (8, 1))
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    out = np.asarray(D.read_rgb(tmp_path / "g16.png"))
    assert out.shape == (8, 256, 3)
    np.testing.assert_array_equal(out[0, :, 0], (ramp[0] >> 8).astype(np.uint8))
    assert out.min() == 0 and out.max() == 255 and (out[0, 128] == 128).all()  # not clipped to white


def test_32bit_int_and_float_images(tmp_path):
    Image.fromarray(np.array([[0, 32768, 65535]], np.int32)).save(tmp_path / "i.tiff")
    assert np.asarray(D.read_rgb(tmp_path / "i.tiff"))[0, :, 0].tolist() == [0, 128, 255]
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(tmp_path / "f.tiff")
    assert np.asarray(D.read_rgb(tmp_path / "f.tiff"))[0, :, 1].tolist() == [0, 128, 255]
    Image.fromarray(np.array([[0.0, 100.0, 255.0]], np.float32)).save(tmp_path / "f255.tiff")
    assert np.asarray(D.read_rgb(tmp_path / "f255.tiff"))[0, :, 2].tolist() == [0, 100, 255]


def test_one_pixel_image(tmp_path):
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "p.png")
    assert D.read_rgb(tmp_path / "p.png").size == (1, 1)
    out = D.load_resized(tmp_path / "p.png", 8)
    assert out.shape == (8, 8, 3) and (out == [10, 20, 30]).all()


def test_exif_orientation_applied_like_cv2_imread(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)  # stored: left half red, right half blue
    a[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(a).save(tmp_path / "rot.jpg", quality=95, exif=exif)
    out = np.asarray(D.read_rgb(tmp_path / "rot.jpg"))
    assert out.shape == (40, 20, 3)
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 50  # top (was left): red
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 50  # bottom (was right): blue


def test_load_resized_whole_image_no_aspect(tmp_path):
    a = np.zeros((30, 80, 3), np.uint8)
    a[:, 40:] = 255
    Image.fromarray(a).save(tmp_path / "w.png")
    out = D.load_resized(tmp_path / "w.png", 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8 and out.flags.writeable
    assert out[:, :6].max() < 10 and out[:, 10:].min() > 245  # left dark, right bright: squeezed, not cropped


def test_cv2_backend_missing_says_what_to_install(tmp_path, monkeypatch):
    save_image(tmp_path / "a.jpg")
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    with pytest.raises(ImportError, match="pip install opencv-python-headless"):
        D.load_resized(tmp_path / "a.jpg", 8, backend="cv2")
    with pytest.raises(ValueError, match="backend"):
        D.load_resized(tmp_path / "a.jpg", 8, backend="skimage")


def test_cv2_backend_calls_inter_cubic_at_full_resolution(tmp_path, monkeypatch):
    calls = []

    def resize(arr, dsize, interpolation):
        calls.append((arr.shape, dsize, interpolation))
        return np.zeros((dsize[1], dsize[0], 3), np.uint8)

    monkeypatch.setitem(sys.modules, "cv2", types.SimpleNamespace(INTER_CUBIC=2, resize=resize))
    save_image(tmp_path / "big.jpg", size=(200, 160))
    assert D.load_resized(tmp_path / "big.jpg", 16, backend="cv2").shape == (16, 16, 3)
    assert calls == [((160, 200, 3), (16, 16), 2)]  # no draft: 200x160 is > 4x 16 yet decoded in full


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory) -> Path:
    """A flat 12000x9000 grayscale JPEG (~1 MB on disk, 108 MP)."""
    path = tmp_path_factory.mktemp("huge") / "huge.jpg"
    Image.new("L", (12000, 9000), 128).save(path, quality=90)
    return path


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_huge_jpeg_decoded_with_draft(huge_jpeg):
    assert D.read_rgb(huge_jpeg, min_size=384).size == (1500, 1125)  # 1/8 scale: ~5 MB, not 324 MB
    t0 = time.perf_counter()
    out = D.load_resized(huge_jpeg, 384)
    assert time.perf_counter() - t0 < 2.0
    assert out.shape == (384, 384, 3) and abs(int(out.mean()) - 128) <= 1


def test_decompression_bomb_names_file_and_setting(tmp_path, monkeypatch):
    Image.new("RGB", (40, 40)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 px > 2 * 100
    with pytest.raises(D.DataError) as err:
        D.read_rgb(tmp_path / "bomb.png")
    msg = problems_text(err)
    assert str(tmp_path / "bomb.png") in msg and "MAX_IMAGE_PIXELS" in msg
    (tmp_path / "train.csv").write_text("img_name,img_path,mos\nb,./bomb.png,5\n")
    with pytest.raises(D.DataError, match="MAX_IMAGE_PIXELS") as err:
        D.load_table(tmp_path, check_images="open")
    assert err.value.problems[0].where == str((tmp_path / "bomb.png").resolve())
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert D.read_rgb(tmp_path / "bomb.png").size == (40, 40)


def test_read_rgb_reports_unreadable_file(tmp_path):
    (tmp_path / "t.jpg").write_text("hello")
    with pytest.raises(D.DataError, match="unreadable image") as err:
        D.read_rgb(tmp_path / "t.jpg")
    assert str(tmp_path / "t.jpg") in problems_text(err)


# --------------------------------------------------------------------------------------------
# ImageStore
# --------------------------------------------------------------------------------------------
@pytest.fixture
def image_paths(tmp_path) -> list[str]:
    return [str(save_image(tmp_path / "imgs" / f"i{k}.jpg", seed=k, size=(48 + k, 36))) for k in range(6)]


def test_cache_equals_decode_path(tmp_path, image_paths):
    plain = D.ImageStore.open(image_paths, 24)
    cached = D.ImageStore.open(image_paths, 24, cache_dir=tmp_path / "c", progress=False)
    assert len(cached) == len(plain) == 6 and cached.size == 24 and plain.cache_path is None
    assert cached.cache_path.parent == (tmp_path / "c").resolve() and cached.cache_path.name.endswith("_24")
    for i in range(6):
        a, b = plain[i], cached[i]
        assert a.shape == (24, 24, 3) and a.dtype == np.uint8 and b.flags.writeable
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(cached[-1], plain[5])
    with pytest.raises(IndexError):
        cached[6]


def test_cache_built_once_then_reused_in_any_order(tmp_path, image_paths, monkeypatch):
    calls = count_decodes(monkeypatch)
    first = D.ImageStore.open(image_paths, 16, cache_dir=tmp_path / "c", progress=False)
    assert len(calls) == 6
    again = D.ImageStore.open(image_paths[::-1], 16, cache_dir=tmp_path / "c", progress=False)
    assert len(calls) == 6 and again.cache_path == first.cache_path  # same image set: same cache
    np.testing.assert_array_equal(again[0], first[5])
    other_size = D.ImageStore.open(image_paths, 8, cache_dir=tmp_path / "c", progress=False)
    assert len(calls) == 12 and other_size.cache_path != first.cache_path


def test_changed_file_is_redecoded_alone(tmp_path, image_paths, monkeypatch):
    D.ImageStore.open(image_paths, 16, cache_dir=tmp_path / "c", progress=False)
    save_image(Path(image_paths[2]), seed=99, size=(50, 40))
    st = os.stat(image_paths[2])
    os.utime(image_paths[2], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # coarse-mtime file systems
    calls = count_decodes(monkeypatch)
    store = D.ImageStore.open(image_paths, 16, cache_dir=tmp_path / "c", progress=False)
    assert calls == [image_paths[2]]
    np.testing.assert_array_equal(store[2], D.ImageStore.open(image_paths, 16)[2])


def test_half_built_cache_is_rebuilt(tmp_path, image_paths, monkeypatch):
    store = D.ImageStore.open(image_paths, 16, cache_dir=tmp_path / "c", progress=False)
    expected = [store[i] for i in range(6)]
    (store.cache_path / "index.json").unlink()  # as if killed before the index was written
    with open(store.cache_path / "images.u8", "r+b") as f:
        f.write(b"\0" * 16 * 16 * 3 * 3)  # rows written by the killed run are garbage
    (store.cache_path / ".images.999999.tmp").write_bytes(b"partial")  # a killed build's temp file
    calls = count_decodes(monkeypatch)
    again = D.ImageStore.open(image_paths, 16, cache_dir=tmp_path / "c", progress=False)
    assert len(calls) == 6 and (again.cache_path / "index.json").is_file()
    assert not list(again.cache_path.glob(".images.*.tmp"))
    for i in range(6):
        np.testing.assert_array_equal(again[i], expected[i])


def test_broken_image_in_cache_build_is_reported_then_retried_alone(tmp_path, image_paths, monkeypatch):
    Path(image_paths[1]).write_text("not an image")
    with pytest.raises(D.DataError) as err:
        D.ImageStore.open(image_paths, 16, cache_dir=tmp_path / "c", progress=False)
    assert image_paths[1] in problems_text(err)
    save_image(Path(image_paths[1]), seed=1, size=(49, 36))
    calls = count_decodes(monkeypatch)
    store = D.ImageStore.open(image_paths, 16, cache_dir=tmp_path / "c", progress=False)
    assert calls == [image_paths[1]]
    np.testing.assert_array_equal(store[1], D.load_resized(image_paths[1], 16))


def test_pool_build_matches_in_process_build(tmp_path, image_paths):
    serial = D.ImageStore.open(image_paths, 16, cache_dir=tmp_path / "a", progress=False)
    pooled = D.ImageStore.open(image_paths, 16, cache_dir=tmp_path / "b", num_workers=2, progress=False)
    for i in range(6):
        np.testing.assert_array_equal(serial[i], pooled[i])


def test_store_pickles_without_its_memmap(tmp_path, image_paths):
    store = D.ImageStore.open(image_paths, 16, cache_dir=tmp_path / "c", progress=False)
    first = store[0]  # opens the memmap
    clone = pickle.loads(pickle.dumps(store))
    assert clone._mm is None and len(pickle.dumps(store)) < 10_000
    np.testing.assert_array_equal(clone[0], first)


def test_store_argument_errors(image_paths, tmp_path):
    with pytest.raises(ValueError, match="size"):
        D.ImageStore.open(image_paths, 0)
    with pytest.raises(ValueError, match="paths is empty"):
        D.ImageStore.open([], 16)
    with pytest.raises(ValueError, match="num_workers"):
        D.ImageStore.open(image_paths, 16, num_workers=-1)


# --------------------------------------------------------------------------------------------
# dataset and loader
# --------------------------------------------------------------------------------------------
def test_dataset_items(image_paths):
    store = D.ImageStore.open(image_paths, 16)
    ds = D.IQADataset(store, [1.5] * 6)
    img, target, i = ds[3]
    assert img.dtype == torch.uint8 and img.shape == (16, 16, 3) and i == 3
    assert target.dtype == torch.float32 and target.item() == 1.5
    assert torch.isnan(D.IQADataset(store)[0][1])
    with pytest.raises(ValueError, match="targets"):
        D.IQADataset(store, [1.0, 2.0])


def test_loader_with_two_workers_over_the_cache(tmp_path, image_paths):
    store = D.ImageStore.open(image_paths, 16, cache_dir=tmp_path / "c", progress=False)
    ds = D.IQADataset(store, np.arange(6, dtype=np.float32))

    def epoch(seed):
        loader = D.make_loader(ds, 4, shuffle=True, num_workers=2, seed=seed)
        assert loader.persistent_workers
        return list(loader)

    batches = epoch(7)
    order = torch.cat([b[2] for b in batches]).tolist()
    assert sorted(order) == list(range(6))
    for images, targets, idx in batches:
        assert images.dtype == torch.uint8 and targets.dtype == torch.float32
        assert targets.tolist() == idx.float().tolist()
        for img, i in zip(images, idx.tolist()):
            np.testing.assert_array_equal(img.numpy(), store[i])
    assert torch.cat([b[2] for b in epoch(7)]).tolist() == order  # seeded


def test_a_cache_built_by_threads_is_read_by_spawned_workers(tmp_path, image_paths, monkeypatch):
    """Spawn (macOS, Windows, Python >= 3.14 defaults) pickles the store: each worker reopens the memmap."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the decoding threads obey the limit too
    with pytest.raises(D.DataError, match="MAX_IMAGE_PIXELS") as err:
        D.ImageStore.open(image_paths, 16, cache_dir=tmp_path / "c", num_workers=2, progress=False)
    assert len(err.value.problems) == 6
    monkeypatch.undo()
    store = D.ImageStore.open(image_paths, 16, cache_dir=tmp_path / "c", num_workers=2, progress=False)
    loader = torch.utils.data.DataLoader(D.IQADataset(store), batch_size=3, num_workers=1,
                                         multiprocessing_context="spawn")
    images = torch.cat([b[0] for b in loader])
    for i in range(6):
        np.testing.assert_array_equal(images[i].numpy(), D.load_resized(image_paths[i], 16))


def test_loader_with_batch_sampler_and_argument_errors(image_paths):
    ds = D.IQADataset(D.ImageStore.open(image_paths, 8))
    loader = D.make_loader(ds, None, shuffle=False, sampler=[[5, 0], [2]])
    assert [b[2].tolist() for b in loader] == [[5, 0], [2]]
    with pytest.raises(ValueError, match="shuffle=False"):
        D.make_loader(ds, 2, shuffle=True, sampler=[0, 1])
    with pytest.raises(ValueError, match="batch_size=None needs sampler"):
        D.make_loader(ds, None, shuffle=False)


# --------------------------------------------------------------------------------------------
# to_model_input
# --------------------------------------------------------------------------------------------
def test_normalisation_values_and_layout():
    x = torch.zeros(1, 2, 2, 3, dtype=torch.uint8)
    x[0, 0, 0] = torch.tensor([0, 128, 255])
    y = D.to_model_input(x)
    assert y.shape == (1, 3, 2, 2) and y.dtype == torch.float32 and y.is_contiguous()
    expected = (torch.tensor([0, 128, 255]) / 255.0 - 0.5) / 0.5
    torch.testing.assert_close(y[0, :, 0, 0], expected, rtol=0, atol=1e-7)
    assert y[0, 0, 0, 0] == -1.0 and y[0, 2, 0, 0] == 1.0
    torch.testing.assert_close(D.to_model_input(x.numpy()), y)


def _rows_image(n: int, s: int = 4) -> torch.Tensor:
    """n copies of an image whose pixel value encodes (row, col): any flip is recognisable."""
    r, c = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    img = (r * 16 + c).to(torch.uint8)[..., None].expand(s, s, 3)
    return img.expand(n, s, s, 3).clone()


@pytest.mark.parametrize("flip, dim", [("vertical", -2), ("horizontal", -1)])
def test_flip_axis(flip, dim):
    x = _rows_image(32)
    base = D.to_model_input(x[:1])
    out = D.to_model_input(x, train=True, flip=flip, generator=torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, base[0].flip(dim)) for o in out])
    kept = torch.tensor([torch.equal(o, base[0]) for o in out])
    assert (flipped | kept).all() and flipped.any() and kept.any()


def test_vertical_flip_reverses_rows():
    x = _rows_image(64)
    out = D.to_model_input(x, train=True, generator=torch.Generator().manual_seed(1))
    first_rows = {round(float(o[0, 0, 0]) * 127.5 + 127.5) for o in out}
    assert first_rows == {0, 48}  # row 0 (value 0) or row 3 (value 48) on top; column 0 stays


def test_no_flip_unless_training_or_none():
    x = _rows_image(16)
    base = D.to_model_input(x)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(D.to_model_input(x, train=False, generator=g), base)
    assert torch.equal(D.to_model_input(x, train=True, flip="none", generator=g), base)


def test_flip_is_deterministic_with_a_seeded_generator():
    x = _rows_image(64)
    a = D.to_model_input(x, train=True, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(123)  # the global RNG must not matter when a generator is given
    b = D.to_model_input(x, train=True, generator=torch.Generator().manual_seed(3))
    c = D.to_model_input(x, train=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flip_probability_is_one_half():
    x = _rows_image(4000, s=2)
    out = D.to_model_input(x, train=True, generator=torch.Generator().manual_seed(0))
    rate = (out[:, 0, 0, 0] != out[0:1, 0, 0, 0].new_tensor(-1.0)).float().mean().item()
    assert 0.46 < rate < 0.54


def test_invalid_flip_names_parameter_and_choices():
    with pytest.raises(ValueError, match="flip must be one of .*vertical.*horizontal.*none"):
        D.to_model_input(_rows_image(1), flip="diagonal")
    with pytest.raises(ValueError, match="uint8"):
        D.to_model_input(torch.zeros(1, 4, 4, 3))


# --------------------------------------------------------------------------------------------
# real data (optional)
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(not CLIVE.is_dir(), reason="shared/data/clive_dev not present")
def test_clive_dev_table():
    df = D.load_table(CLIVE, "train.csv", mos_scale=100, check_images="open", progress=False)
    assert len(df) == 627 and df["mos"].between(0, 100).all()
