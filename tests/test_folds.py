"""Tests for iqa_lib.folds (SPEC §2)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from iqa_lib.folds import make_folds

CLIVE_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "clive_dev" / "train.csv"

# Caption duplicates (a, c), a three-way MOS tie (a, b, f) listed out of name order.
TINY_CSV = """img_name,img_path,mos,comments
c,./train/c.jpg,7.0,a cat
f,./train/f.jpg,5.0,v
a,./train/a.jpg,5.0,first caption of a
c,./train/c_dup.jpg,7.0,another caption
b,./train/b.jpg,5.0,y
d,./train/d.jpg,9.0,z
e,./train/e.jpg,3.0,w
a,./train/a.jpg,5.0,second caption of a
"""


@pytest.fixture
def tiny(tmp_path: Path) -> pd.DataFrame:
    path = tmp_path / "train.csv"
    path.write_text(TINY_CSV)
    return pd.read_csv(path)


def test_tiny_csv_exact_assignment(tiny):
    folds = make_folds(tiny, n_folds=3)
    # Sorted: d 9, c 7, then the tie a, b, f by name, then e 3; folds dealt 0, 1, 2, 0, ...
    assert folds["img_name"].tolist() == ["d", "c", "a", "b", "f", "e"]
    assert folds["fold"].tolist() == [0, 1, 2, 0, 1, 2]
    assert folds["mos"].tolist() == [9.0, 7.0, 5.0, 5.0, 5.0, 3.0]
    assert folds["fold"].dtype == np.int64
    assert list(folds.columns) == ["img_name", "img_path", "mos", "fold"]
    assert folds.index.tolist() == list(range(6))
    # The first row of a duplicated image is the one kept.
    assert folds.set_index("img_name").loc["c", "img_path"] == "./train/c.jpg"


def test_tiny_csv_two_folds(tiny):
    assert make_folds(tiny, n_folds=2)["fold"].tolist() == [0, 1, 0, 1, 0, 1]


def test_independent_of_input_row_order(tiny):
    expected = make_folds(tiny)
    for seed in range(5):
        shuffled = tiny.sample(frac=1.0, random_state=seed)
        got = make_folds(shuffled)
        # Which caption row is "first" changes with the shuffle; names, MOS and folds must not.
        pd.testing.assert_frame_equal(
            got[["img_name", "mos", "fold"]], expected[["img_name", "mos", "fold"]]
        )


def test_custom_column_names():
    df = pd.DataFrame({"name": ["x", "y", "z", "y"], "score": [1.0, 3.0, 2.0, 3.0]})
    folds = make_folds(df, n_folds=2, mos_col="score", name_col="name")
    assert folds["name"].tolist() == ["y", "z", "x"]
    assert folds["fold"].tolist() == [0, 1, 0]


def test_conflicting_mos_names_every_image():
    df = pd.DataFrame(
        {
            "img_name": ["x", "x", "x", "y", "y", "ok"],
            "mos": [5.0, 5.5, 5.0, 1.0, 2.0, 3.0],
        }
    )
    with pytest.raises(ValueError) as err:
        make_folds(df, n_folds=2)
    msg = str(err.value)
    assert "2 image(s)" in msg
    assert "'x' (3 rows, 2 values: [5.0, 5.5])" in msg
    assert "'y' (2 rows, 2 values: [1.0, 2.0])" in msg
    assert "'ok'" not in msg


def test_missing_column_is_named():
    df = pd.DataFrame({"img_name": ["a", "b"], "score": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"'mos'.*\['img_name', 'score'\]"):
        make_folds(df)
    with pytest.raises(ValueError, match="'name'"):
        make_folds(df, mos_col="score", name_col="name")


@pytest.mark.parametrize("n_folds", [1, 0, -3, 2.5])
def test_bad_n_folds(tiny, n_folds):
    with pytest.raises(ValueError, match="n_folds"):
        make_folds(tiny, n_folds=n_folds)


def test_more_folds_than_images(tiny):
    with pytest.raises(ValueError, match="exceeds the number of unique images"):
        make_folds(tiny, n_folds=7)


def test_non_finite_or_non_numeric_mos():
    with pytest.raises(ValueError, match=r"non-finite 'mos'.*\['b'\]"):
        make_folds(pd.DataFrame({"img_name": ["a", "b", "c"], "mos": [1.0, np.nan, 2.0]}), n_folds=2)
    with pytest.raises(ValueError, match="must be numeric"):
        make_folds(pd.DataFrame({"img_name": ["a", "b"], "mos": ["1.0", "2.0"]}), n_folds=2)


def _assert_balanced(folds: pd.DataFrame, n_folds: int) -> None:
    """Each fold's MOS mean and spread must match the whole set closely."""
    mos = folds["mos"]
    by_fold = folds.groupby("fold")["mos"]
    # A random 20% split would move the mean by ~sd/sqrt(n/5); the stride split far less.
    assert (by_fold.mean() - mos.mean()).abs().max() < 0.02 * mos.std()
    assert ((by_fold.std() / mos.std()) - 1).abs().max() < 0.05
    # The j-th best image of fold k is the (j * n_folds + k)-th best overall.
    ranked = mos.sort_values(ascending=False, kind="stable").to_numpy()
    for k, group in by_fold:
        np.testing.assert_array_equal(np.sort(group.to_numpy())[::-1], ranked[k::n_folds])


def test_balanced_on_synthetic_captions():
    rng = np.random.default_rng(0)
    mos = np.round(rng.normal(5.5, 0.8, size=2000), 2)  # rounding creates many ties
    names = [f"img{i:05d}" for i in range(2000)]
    repeats = rng.integers(1, 4, size=2000)
    df = pd.DataFrame({"img_name": np.repeat(names, repeats), "mos": np.repeat(mos, repeats)})
    folds = make_folds(df)
    assert len(folds) == 2000
    assert folds.groupby("fold").size().tolist() == [400] * 5
    _assert_balanced(folds, 5)


@pytest.mark.skipif(not CLIVE_TRAIN.exists(), reason="CLIVE dev data not present")
def test_clive_folds():
    df = pd.read_csv(CLIVE_TRAIN)
    folds = make_folds(df)
    assert folds.groupby("fold").size().tolist() == [126, 126, 125, 125, 125]
    assert folds["img_name"].is_unique
    assert set(folds["img_name"]) == set(df["img_name"])
    _assert_balanced(folds, 5)


# ------------------------------------------------------------------------------------------
# group-aware folds
# ------------------------------------------------------------------------------------------
def _clive_like(seed: int = 0) -> pd.DataFrame:
    """~1400 images in 300 groups of 1-8 (e.g. photos of one scene), caption rows repeated."""
    rng = np.random.default_rng(seed)
    rows, n = [], 0
    for g in range(300):
        centre = rng.uniform(10, 90)
        for _ in range(int(rng.integers(1, 9))):
            mos = round(float(np.clip(centre + rng.normal(0, 8), 0, 100)), 2)
            rows += [(f"img{n:05d}", mos, f"g{g:03d}")] * int(rng.integers(1, 3))
            n += 1
    return pd.DataFrame(rows, columns=["img_name", "mos", "group"])


def _kadid_like(seed: int = 0) -> pd.DataFrame:
    """40 reference scenes x 25 distortion types x 5 levels, with 0-3 rows lost per scene."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(1, 41):
        offset = rng.normal(0, 0.4)
        lost = set(rng.choice(125, size=int(rng.integers(0, 4)), replace=False).tolist())
        for i in range(125):
            if i in lost:
                continue
            t, level = divmod(i, 5)
            mos = float(np.clip(4.8 - 0.8 * level + offset + rng.normal(0, 0.3), 1, 5))
            rows.append((f"I{r:02d}_{t + 1:02d}_{level + 1:02d}", round(mos, 3), f"I{r:02d}"))
    return pd.DataFrame(rows, columns=["img_name", "mos", "group"])


@pytest.mark.parametrize("make", [_clive_like, _kadid_like])
@pytest.mark.parametrize("n_folds", [3, 5])
def test_group_folds_keep_groups_whole_and_balanced(make, n_folds):
    df = make()
    folds = make_folds(df, n_folds=n_folds, group_col="group")
    assert folds["img_name"].is_unique and set(folds["img_name"]) == set(df["img_name"])
    assert folds.groupby("group")["fold"].nunique().max() == 1  # no group split across folds
    sizes = folds.groupby("fold").size()
    assert sizes.index.tolist() == list(range(n_folds))
    # Sizes differ by at most the largest group.
    assert sizes.max() - sizes.min() <= folds.groupby("group").size().max()
    mos = folds["mos"]
    by_fold = folds.groupby("fold")["mos"]
    assert (by_fold.mean() - mos.mean()).abs().max() < 0.05 * mos.std()
    assert ((by_fold.std() / mos.std()) - 1).abs().max() < 0.05


@pytest.mark.parametrize("seed", range(4))
def test_group_folds_sizes_within_a_few_percent(seed):
    for make in (_clive_like, _kadid_like):
        sizes = make_folds(make(seed), group_col="group").groupby("fold").size()
        assert sizes.max() - sizes.min() <= 0.03 * sizes.mean()


def test_group_folds_deterministic_and_order_free():
    df = _kadid_like(3)
    expected = make_folds(df, group_col="group")
    pd.testing.assert_frame_equal(make_folds(df, group_col="group"), expected)
    for seed in range(3):
        got = make_folds(df.sample(frac=1.0, random_state=seed), group_col="group")
        pd.testing.assert_frame_equal(got.reset_index(drop=True), expected)
    assert list(expected.columns) == ["img_name", "mos", "group", "fold"]


def test_singleton_groups_give_the_teams_folds(tiny):
    plain = make_folds(tiny, n_folds=3)
    grouped = make_folds(tiny.assign(group=tiny["img_name"]), n_folds=3, group_col="group")
    assert grouped["fold"].tolist() == plain["fold"].tolist()
    assert grouped["img_name"].tolist() == plain["img_name"].tolist()


def test_group_folds_exact_small_case():
    # Groups by mean MOS: A 9 (3 images), B 7 (1), C 5 (2), D 3 (1), E 2 (2).
    df = pd.DataFrame({
        "img_name": ["a1", "a2", "a3", "b1", "c1", "c2", "d1", "e1", "e2"],
        "mos": [9.0, 9.5, 8.5, 7.0, 5.0, 5.0, 3.0, 2.0, 2.0],
        "group": ["A", "A", "A", "B", "C", "C", "D", "E", "E"],
    })
    folds = make_folds(df, n_folds=2, group_col="group").set_index("img_name")["fold"]
    # Block (A, B): A (3) -> fold 0, B -> fold 1. Block (C, D): C (2) -> fold 1 (1 image), D -> fold 0.
    # Block (E): E -> fold 1 (3 images vs fold 0's 4).
    assert {g: int(folds[g.lower() + "1"]) for g in "ABCDE"} == {"A": 0, "B": 1, "C": 1, "D": 0, "E": 1}


def test_group_folds_errors():
    df = pd.DataFrame({"img_name": ["a", "b", "c", "a"], "mos": [1.0, 2.0, 3.0, 1.0], "group": ["x", "y", "y", "z"]})
    with pytest.raises(ValueError, match=r"1 image\(s\) have rows in more than one 'group': \['a'\]"):
        make_folds(df, n_folds=2, group_col="group")
    with pytest.raises(ValueError, match="'scene' not found"):
        make_folds(df, n_folds=2, group_col="scene")
    with pytest.raises(ValueError, match=r"exceeds the number of groups in 'group' \(2\)"):
        make_folds(df.iloc[1:], n_folds=3, group_col="group")
    with pytest.raises(ValueError, match=r"no 'group' value: \['b'\]"):
        make_folds(df.iloc[:3].assign(group=["x", None, "y"]), n_folds=2, group_col="group")


def test_folds_for_table_is_group_aware_only_when_the_table_has_groups():
    from iqa_lib.folds import folds_for_table

    rng = np.random.default_rng(3)
    df = pd.DataFrame({"img_name": [f"i{i}" for i in range(60)], "mos": rng.uniform(1, 5, 60)})
    pd.testing.assert_frame_equal(folds_for_table(df), make_folds(df))
    grouped = df.assign(group=[f"g{i // 4}" for i in range(60)])
    folds = folds_for_table(grouped)
    assert folds.groupby("group")["fold"].nunique().max() == 1
