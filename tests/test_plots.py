"""Every figure function returns a Figure on small made-up data that draws the data it was given
(axes with data, a PNG that is not blank), and the figures' numbers are the data's."""
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from iqa_lib import plots

RNG = np.random.default_rng(0)


def _saves(fig, tmp_path, name="fig.png"):
    """The figure has axes that hold data, and it renders to a PNG that is not one flat colour."""
    assert isinstance(fig, Figure)
    framed = [ax for ax in fig.axes if ax.get_visible() and ax.axison]  # picture grids hide their frames
    assert all(ax.has_data() for ax in framed), "an empty axes"
    assert any(ax.has_data() or ax.images for ax in fig.axes), "nothing drawn"
    path = tmp_path / name
    fig.savefig(path, dpi=50)
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert np.asarray(im.convert("L")).std() > 1.0, "a blank picture"
    return fig


def _lines(ax):
    return [line for line in ax.get_lines() if len(line.get_xdata())]


@pytest.fixture
def table(tmp_path):
    """A train table like load_table's: 12 images, 1-3 rows each, real JPEG files."""
    rows = []
    for i in range(12):
        path = tmp_path / f"img{i}.jpg"
        w, h = (40, 30) if i % 2 else (30, 40)
        Image.fromarray(RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        mos = round(float(RNG.uniform(2, 9)), 3)
        rows += [{"img_name": f"img{i}", "path": str(path), "mos": mos}] * (1 + i % 3)
    return pd.DataFrame(rows)


def test_mos_hist(tmp_path):
    mos = RNG.normal(5.5, 0.8, 200)
    fig = _saves(plots.plot_mos_hist(mos, mos_scale=10), tmp_path)
    ax = fig.axes[0]
    heights = [patch.get_height() for patch in ax.patches]
    np.testing.assert_allclose(heights, np.histogram(mos, bins=40, density=True)[0])
    assert f"n = 200, sd = {mos.std(ddof=1):.3f}" in ax.get_title()
    assert any(tuple(line.get_xdata()) == (mos.mean(), mos.mean()) for line in ax.get_lines())  # the mean


def test_mos_hist_constant(tmp_path):
    _saves(plots.plot_mos_hist([5.0, 5.0, 5.0]), tmp_path)  # no density, no failure


def test_image_sizes(tmp_path):
    sizes = pd.DataFrame({"width": [100, 120, 100, 90], "height": [80, 120, 100, 60],
                          "split": ["train", "train", "test", "test"]})
    fig = _saves(plots.plot_image_sizes(sizes), tmp_path)
    points = [np.asarray(c.get_offsets()).tolist() for c in fig.axes[0].collections]
    assert points == [[[100, 80], [120, 120]], [[100, 100], [90, 60]]]  # train, then test
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["train (2)", "test (2)"]
    fig = _saves(plots.plot_image_sizes(sizes.drop(columns="split")), tmp_path, "nosplit.png")
    assert np.asarray(fig.axes[0].collections[0].get_offsets()).tolist() == sizes[["width", "height"]].values.tolist()


def test_image_grid(table, tmp_path):
    fig = _saves(plots.plot_image_grid(table, n=3, thumb=32), tmp_path)
    images = table.drop_duplicates("img_name").sort_values("mos")
    best, worst = images["mos"].iloc[::-1].head(3), images["mos"].head(3)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [f"best {i + 1}: MOS {m:.2f}" for i, m in enumerate(best)] + \
                     [f"worst {i + 1}: MOS {m:.2f}" for i, m in enumerate(worst)]
    top = images.iloc[-1]  # the best image is drawn, as a thumbnail of its file's pixels
    drawn = fig.axes[0].images[0].get_array()
    with Image.open(top["path"]) as im:
        assert drawn.shape[:2] == (im.height * 32 // max(im.size), im.width * 32 // max(im.size))
    fig = _saves(plots.plot_image_grid(table.head(1), n=4, thumb=32), tmp_path, "one.png")
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == \
        [f"best 1: MOS {table['mos'].iloc[0]:.2f}", f"worst 1: MOS {table['mos'].iloc[0]:.2f}"]


def test_rows_per_image(table, tmp_path):
    fig = _saves(plots.plot_rows_per_image(table), tmp_path)
    ax = fig.axes[0]
    # 12 images with 1, 2, 3, 1, 2, 3 ... rows: four images of each row count
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3"]
    assert [patch.get_height() for patch in ax.patches] == [4, 4, 4]
    assert ax.get_title() == "24 rows for 12 images"


def test_folds(tmp_path):
    folds = pd.DataFrame({"mos": RNG.uniform(1, 9, 50), "fold": np.arange(50) % 5})
    table = plots.fold_table(folds)
    assert list(table.columns) == ["images", "mean", "sd", "min", "max"]
    assert table["images"].tolist() == [10] * 5
    fig = _saves(plots.plot_fold_distributions(folds), tmp_path)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == [f"fold {k}: n = 10, mean {m:.3f}" for k, m in folds.groupby("fold")["mos"].mean().items()]


def test_learning_curves(tmp_path):
    m = pd.DataFrame({"epoch": [0, 1, 2], "step": [5, 10, 15], "train_loss": [0.1, 0.05, 0.04],
                      "val_loss": [0.09, 0.06, 0.07], "plcc": [0.2, 0.5, 0.4], "srcc": [0.1, 0.45, 0.42],
                      "lr": [1e-4, 5e-5, 1e-5]})
    path = tmp_path / "metrics.csv"
    m.to_csv(path, index=False)
    fig = _saves(plots.plot_learning_curves(path, title="384_fold0"), tmp_path)
    drawn = [tuple(np.round(line.get_ydata(), 6)) for ax in fig.axes for line in _lines(ax)]
    for col in ("train_loss", "val_loss", "plcc", "srcc"):
        assert tuple(m[col]) in drawn, f"{col} is not drawn"


def test_learning_curves_of_a_run_validated_every_other_epoch(tmp_path):
    nan = float("nan")  # train.val_every: 2 leaves the validation columns of epochs 0 and 2 empty
    m = pd.DataFrame({"epoch": [0, 1, 2, 3], "step": [5, 10, 15, 20], "train_loss": [0.1, 0.05, 0.04, 0.03],
                      "val_loss": [nan, 0.06, nan, 0.07], "plcc": [nan, 0.5, nan, 0.3], "srcc": [nan, 0.45, nan, 0.4]})
    fig = _saves(plots.plot_learning_curves(m), tmp_path)
    drawn = {(tuple(line.get_xdata()), tuple(np.round(line.get_ydata(), 6))) for ax in fig.axes for line in _lines(ax)}
    assert ((0, 1, 2, 3), (0.1, 0.05, 0.04, 0.03)) in drawn
    for col in ("val_loss", "plcc", "srcc"):
        assert ((1, 3), tuple(m[col].dropna())) in drawn, f"{col}: not drawn at the validated epochs alone"
    assert ((1, 1), (0, 1)) in {(tuple(line.get_xdata()), tuple(line.get_ydata())) for line in fig.axes[1].get_lines()}
    # before its first validation a run's metrics.csv has no validation columns: the train loss alone
    early = plots.plot_learning_curves(m[["epoch", "step", "train_loss"]].iloc[:1])
    assert [tuple(line.get_ydata()) for line in _lines(early.axes[0])][0] == (0.1,)


SCHEDULE = {"first_cycle_steps": 20, "cycle_mult": 1.0, "max_lr": 1e-4, "min_lr": 1e-6,
            "warmup_steps": 5, "gamma": 0.9}


def test_lr_schedule_values():
    lrs = plots.lr_schedule(SCHEDULE, 45)
    assert len(lrs) == 45
    assert lrs[0] == pytest.approx(1e-6)  # the optimiser starts at min_lr
    assert lrs[5] == pytest.approx(1e-4)  # the peak after warm-up
    assert lrs[25] == pytest.approx(0.9 * 1e-4)  # the second cycle's peak is gamma times lower


def test_lr_schedule_plot(tmp_path):
    observed = pd.DataFrame({"step": [10, 20, 30], "lr": plots.lr_schedule(SCHEDULE, 31)[[10, 20, 30]]})
    fig = _saves(plots.plot_lr_schedule(SCHEDULE, 40, observed=observed, steps_per_epoch=10), tmp_path)
    curve, dots = [line for line in _lines(fig.axes[0]) if len(line.get_xdata()) > 2][:2]
    np.testing.assert_allclose(curve.get_ydata(), plots.lr_schedule(SCHEDULE, 40))
    np.testing.assert_allclose(dots.get_ydata(), observed["lr"])


def test_pred_vs_true(tmp_path):
    truth = RNG.uniform(2, 9, 40)
    oof = pd.DataFrame({"img_name": [f"i{i}" for i in range(40)], "mos": truth, "pred": truth + RNG.normal(0, 1, 40)})
    fig = plots.plot_pred_vs_true(oof)
    from iqa_lib.metrics import plcc
    assert f"{plcc(oof['pred'], oof['mos']):.3f}" in fig.axes[0].get_title()
    offsets = fig.axes[0].collections[0].get_offsets()
    np.testing.assert_allclose(np.asarray(offsets), oof[["mos", "pred"]].to_numpy())
    _saves(fig, tmp_path)
    _saves(plots.plot_pred_vs_true(oof.assign(pred=5.0)), tmp_path, "constant.png")


def test_prediction_correlation(tmp_path):
    base = RNG.uniform(2, 9, 30)
    table = pd.DataFrame({f"448_fold{k}": base + RNG.normal(0, 0.3, 30) for k in range(3)})
    fig = _saves(plots.plot_prediction_correlation(table), tmp_path)
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), table.corr().to_numpy())
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list(table.columns)
    assert f"{table.corr().iat[0, 1]:.2f}" in [t.get_text() for t in fig.axes[0].texts]
    fig = plots.plot_prediction_correlation(table, method="spearman")
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), table.corr(method="spearman").to_numpy())


def test_pred_distribution(tmp_path):
    pred, train = RNG.normal(5.5, 0.4, 30), RNG.normal(5.5, 0.8, 100)
    fig = _saves(plots.plot_pred_distribution(pred, train), tmp_path)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    for name, values in (("train MOS", train), ("predicted test MOS", pred)):
        assert f"{name}: mean {values.mean():.3f}, sd {values.std(ddof=1):.3f}" in labels
    edges = np.histogram_bin_edges(np.concatenate([pred, train]), bins=40)
    heights = [patch.get_height() for patch in fig.axes[0].patches]
    np.testing.assert_allclose(heights, np.concatenate([np.histogram(v, edges, density=True)[0] for v in (train, pred)]))
