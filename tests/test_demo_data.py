"""The synthetic demo data set: competition layout, captions, determinism, MOS, overwrite safety."""
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from iqa_lib.datasets import demo as demo_data
from iqa_lib.datasets.demo import DEFAULT_SIZES, MANIFEST, main, make_demo_data

NAME = re.compile(r"^[a-z0-9]{10}$")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The default data set, made once for the module."""
    return make_demo_data(tmp_path_factory.mktemp("demo") / "data")


def read(dest, name):
    return pd.read_csv(dest / name)


def small(dest, seed=0, **kw):
    return make_demo_data(dest, n_train=12, n_test=4, seed=seed, **kw)


def test_layout_and_columns(demo):
    for name in ("train.csv", "test.csv", "sample_submission.csv", "test_labels.csv", MANIFEST, "README.md"):
        assert (demo / name).is_file(), name
    train, test = read(demo, "train.csv"), read(demo, "test.csv")
    sub, labels = read(demo, "sample_submission.csv"), read(demo, "test_labels.csv")
    assert list(train.columns) == ["img_name", "img_path", "mos", "comments"]
    assert list(test.columns) == ["img_name", "img_path"]
    assert list(sub.columns) == ["img_name", "mos", "comments"]
    assert list(labels.columns) == ["img_name", "mos"]
    assert train.img_name.nunique() == 300 and len(test) == 100
    # The submission and the hidden labels follow the test order, one row per image.
    assert sub.img_name.tolist() == test.img_name.tolist() == labels.img_name.tolist()
    assert not set(train.img_name) & set(test.img_name)
    assert "synthetic" in (demo / "README.md").read_text().lower()


def test_names_paths_and_images(demo):
    for split, df in (("train", read(demo, "train.csv")), ("test", read(demo, "test.csv"))):
        assert df.img_name.map(NAME.match).all()
        assert (df.img_path == "./" + split + "/" + df.img_name + ".jpg").all()
        for path in df.img_path.unique()[:25]:
            with Image.open(demo / path) as img:
                assert img.format == "JPEG" and img.mode == "RGB"
                assert img.size in DEFAULT_SIZES
    # Exactly the listed images are on disk.
    assert len(list((demo / "train").glob("*.jpg"))) == 300
    assert len(list((demo / "test").glob("*.jpg"))) == 100


def test_images_are_near_the_demo_models_input_size():
    """The demo model sees 64-192 px: shrinking much larger images would erase blur, noise and JPEG."""
    assert all(64 <= side <= 96 for size in DEFAULT_SIZES for side in size)


def test_caption_rows_share_mos(demo):
    train = read(demo, "train.csv")
    rows = train.groupby("img_name").size()
    assert rows.between(1, 3).all() and rows.max() > 1  # several captions, as in the challenge
    assert (train.groupby("img_name").mos.nunique() == 1).all()
    assert train.comments.map(lambda c: isinstance(c, str) and len(c) > 10).all()


def test_mos_follows_severity(demo):
    m = read(demo, MANIFEST)
    assert m.mos.between(1.0, 9.5).all()
    assert m.mos.std() > 1.0  # a wide range to learn from
    assert np.corrcoef(m.severity, m.mos)[0, 1] < -0.9
    # Defects co-occur (a bad capture has several): the number of distortions rises with severity.
    n_distortions = (m[list(demo_data.DISTORTIONS)] > 0).sum(axis=1)
    assert n_distortions.max() == len(demo_data.DISTORTIONS) and np.corrcoef(n_distortions, m.mos)[0, 1] < -0.8
    # The manifest agrees with the published MOS.
    train = read(demo, "train.csv").drop_duplicates("img_name")
    both = pd.concat([train[["img_name", "mos"]], read(demo, "test_labels.csv")])
    assert both.set_index("img_name").mos.sort_index().equals(m.set_index("img_name").mos.sort_index())
    # Every distortion appears, pristine images too.
    for d in demo_data.DISTORTIONS:
        assert (m[d] > 0).any(), d
    assert (m.severity == 0).any()


def test_pristine_look_is_white_balanced_and_full_range():
    rng = np.random.default_rng(0)
    scene = rng.uniform(40, 120, size=(48, 64, 3)) * np.array([1.3, 1.0, 0.6])  # dim, with a cast
    out = demo_data.canonical(scene)
    means = out.reshape(-1, 3).mean(0)
    assert np.ptp(means) < 0.02 * means.mean()  # grey world
    assert np.allclose(np.percentile(out, (1, 99)), demo_data.CANONICAL_LEVELS, atol=0.5)
    flat = np.full((8, 8, 3), 77.0)
    assert np.array_equal(demo_data.canonical(flat), flat)  # nothing to stretch


def test_jpeg_distortion_is_the_files_own_quality(demo):
    """A JPEG-distorted image is written once at its low quality, not re-encoded at 95."""
    m = read(demo, MANIFEST)
    worst, clean = m[m.jpeg == demo_data.LEVELS].iloc[0], m[m.jpeg == 0].iloc[0]
    with Image.open(demo / worst.img_path) as low, Image.open(demo / clean.img_path) as high:
        # Luma quantisation step of the DC coefficient: large at quality 6, 2 at quality 95.
        assert low.quantization[0][0] > 10 * high.quantization[0][0]


def test_same_seed_same_bytes(tmp_path):
    a, b, c = small(tmp_path / "a"), small(tmp_path / "b"), small(tmp_path / "c", seed=1)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "train.csv").read_bytes() != (c / "train.csv").read_bytes()


def test_refuses_a_non_empty_folder(tmp_path):
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        small(dest)
    assert [p.name for p in dest.iterdir()] == ["mine.txt"]


def test_overwrite_removes_only_its_own_files(tmp_path):
    dest = small(tmp_path / "data")
    old = set((dest / "train").glob("*.jpg"))
    (dest / "mine.txt").write_text("keep me")
    (dest / "train" / "mine.jpg").write_bytes(b"not ours")
    small(dest, seed=1, overwrite=True)
    assert (dest / "mine.txt").read_text() == "keep me"
    assert (dest / "train" / "mine.jpg").read_bytes() == b"not ours"
    assert not old & set((dest / "train").glob("*.jpg"))  # the seed-0 images are gone
    new = read(dest, "train.csv").img_path.unique()
    assert all((dest / p).is_file() for p in new)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_train"):
        make_demo_data(tmp_path / "x", n_train=2)
    with pytest.raises(ValueError, match="sizes"):
        make_demo_data(tmp_path / "x", sizes=((8, 8),))
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(NotADirectoryError, match="is a file: pass a folder"):
        make_demo_data(file)


def test_works_without_matplotlib_samples(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_data, "load_sample_images", lambda: {})
    dest = small(tmp_path / "data")
    assert set(read(dest, MANIFEST).source) <= set(demo_data.SCENES)


def test_cli(tmp_path, capsys):
    dest = tmp_path / "cli"
    assert main([str(dest), "--n-train", "10", "--n-test", "3", "--seed", "2"]) == 0
    assert read(dest, "train.csv").img_name.nunique() == 10
    assert main([str(dest), "--n-train", "10", "--n-test", "3"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([str(dest), "--n-train", "10", "--n-test", "3", "--overwrite"]) == 0
