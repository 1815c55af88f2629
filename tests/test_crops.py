"""Training on random crops of a larger stored image, scoring over a grid of crops."""
import numpy as np
import pandas as pd
import pytest
import torch

from iqa_lib.crops import grid_crops, grid_offsets, random_crops
from iqa_lib.config import ConfigError, load_config
from iqa_lib.infer import predict_indices
from iqa_lib.model import MANIQAConfig
from iqa_lib.train import fit

from conftest import checkpoint_vs_oof, make_exposure_data


def numbered_images(b=5, side=12):
    """(B, L, L, 3) uint8 whose pixel values encode (image, row, column): a crop reveals its offset."""
    i, r, c = np.meshgrid(np.arange(b), np.arange(side), np.arange(side), indexing="ij")
    return torch.from_numpy(np.stack([i * 40, r * 20, c * 20], -1).astype(np.uint8))


def test_random_crops_are_slices_of_their_own_image():
    x = numbered_images()
    gen = torch.Generator().manual_seed(0)
    crops = random_crops(x, 5, gen)
    assert crops.shape == (5, 5, 5, 3)
    tops = set()
    for b in range(5):
        top, left = int(crops[b, 0, 0, 1]) // 20, int(crops[b, 0, 0, 2]) // 20
        tops.add(top)
        assert torch.equal(crops[b], x[b, top:top + 5, left:left + 5])
    assert len(tops) > 1  # offsets differ per image
    again = random_crops(x, 5, torch.Generator().manual_seed(0))
    assert torch.equal(crops, again)  # the generator decides


def test_random_crops_same_size_is_identity_and_too_large_fails():
    x = numbered_images(side=8)
    assert random_crops(x, 8) is x
    with pytest.raises(ValueError, match="crop 9 is larger"):
        random_crops(x, 9)


@pytest.mark.parametrize("side,size,n,expected", [
    (12, 5, 1, [3]),            # one crop: the centre
    (12, 5, 2, [0, 7]),         # the two edges
    (12, 5, 3, [0, 4, 7]),
    (8, 8, 4, [0]),             # no room: the whole image once
])
def test_grid_offsets(side, size, n, expected):
    assert grid_offsets(side, size, n) == expected


def test_grid_crops_cover_the_image():
    x = torch.rand(2, 3, 13, 13)
    crops = grid_crops(x, 5, 3)
    assert len(crops) == 9 and all(c.shape == (2, 3, 5, 5) for c in crops)
    assert grid_offsets(13, 5, 3) == [0, 4, 8]  # first at 0, last flush with the far edge
    places = [(i, j) for i in (0, 4, 8) for j in (0, 4, 8)]
    assert all(torch.equal(c, x[..., i:i + 5, j:j + 5]) for c, (i, j) in zip(crops, places)), "row by row"
    covered = torch.zeros(13, 13, dtype=torch.bool)
    for i, j in places:
        covered[i:i + 5, j:j + 5] = True
    assert covered.all()
    with pytest.raises(ValueError, match="crop_grid must be >= 1"):
        grid_offsets(13, 5, 0)
    assert grid_offsets(7, 5, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="crop_grid 3 needs images of at least 7 px for crops of 5, got 6"):
        grid_offsets(6, 5, 3)  # only two places: a 3 x 3 grid would repeat crops


class MeanBrightness(torch.nn.Module):
    """Scores an input by its mean, and records the input shapes it saw."""

    def __init__(self):
        super().__init__()
        self.shapes = []
        self.cfg = MANIQAConfig()  # the input normalisation predict_indices reads (0.5 / 0.5)

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return x.mean(dim=(1, 2, 3))


def test_predict_indices_averages_the_grid():
    from iqa_lib.data import to_model_input

    x = numbered_images(b=3, side=12)
    dataset = torch.utils.data.TensorDataset(x, torch.zeros(3), torch.arange(3))
    model = MeanBrightness()
    preds = predict_indices(model, dataset, [2, 0], torch.device("cpu"), None, batch_size=4, crop=5, crop_grid=2)
    full = to_model_input(x[[2, 0]])
    manual = np.mean([full[..., i:i + 5, j:j + 5].mean(dim=(1, 2, 3)).numpy() for i in (0, 7) for j in (0, 7)], 0)
    assert np.allclose(preds, manual, atol=1e-6)
    assert set(model.shapes) == {(2, 3, 5, 5)} and len(model.shapes) == 4


def test_load_size_defaults_to_img_size_and_must_not_be_smaller(tmp_path):
    p = load_config("demo", 64, 0)
    assert p.model.load_size == p.model.img_size == 64
    assert load_config("demo", 64, 0, {"model.load_size": 96}).model.load_size == 96
    with pytest.raises(ConfigError, match=r"model.load_size \(32\) is smaller than model.img_size \(64\)"):
        load_config("demo", 64, 0, {"model.load_size": 32})
    with pytest.raises(ConfigError, match="crop_grid"):
        load_config("demo", 64, 0, {"model.crop_grid": 0})
    with pytest.raises(ConfigError, match=r"model.crop_grid \(3\) asks for more crops per side than model.load_size "
                                          r"\(65\) has places for crops of model.img_size \(64\): use crop_grid <= 2"):
        load_config("demo", 64, 0, {"model.load_size": 65, "model.crop_grid": 3})
    assert load_config("demo", 64, 0, {"model.load_size": 66, "model.crop_grid": 3}).model.crop_grid == 3


def test_fit_on_crops_and_predict_with_the_checkpoints_view(tmp_path):
    from iqa_lib.checkpoint import safe_torch_load
    from iqa_lib.infer import predict

    data = make_exposure_data(tmp_path / "data", n_train=40, n_test=6)
    params = load_config("demo", 64, 0, {
        "data_dir": str(data), "out_dir": str(tmp_path / "out"), "train.epochs": 1, "train.batch_size": 8,
        "train.num_workers": 0, "model.load_size": 96, "model.crop_grid": 2,
    })
    result = fit(params, progress=False)
    ckpt = safe_torch_load(result.checkpoint)
    assert ckpt["input"] == {"load_size": 96, "crop_grid": 2}
    assert ckpt["model_config"]["img_size"] == 64
    df = predict(result.checkpoint, data, progress=False)
    assert len(df) == 6 and df["mos"].between(0, 10).all()
    # predict takes the checkpoint's view (96 px stored, 2 x 2 crops of 64): the run's own validation scores
    both = checkpoint_vs_oof(params, data)
    assert len(both) == len(pd.read_csv(params.run.oof))
    np.testing.assert_allclose(both["pred"], both["mos_y"], atol=1e-4)
    # Another view is refused rather than silently mixed: for the completed run, and on resume.
    last = safe_torch_load(result.run_dir / "last.pt", "resume state")
    assert last["input"] == ckpt["input"]
    other = load_config("demo", 64, 0, {
        "data_dir": str(data), "out_dir": str(tmp_path / "out"), "train.epochs": 2, "model.load_size": 128})
    with pytest.raises(RuntimeError, match=r"completed run of another model \(model.crop_grid: 2 -> 1, "
                                           r"model.load_size: 96 -> 128, train.epochs: 1 -> 2\)"):
        fit(other, progress=False)
    manifest = result.run_dir / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"completed"', '"interrupted"'))
    with pytest.raises(RuntimeError, match="another model configuration"):
        fit(other, progress=False)
    assert safe_torch_load(result.checkpoint)["input"] == {"load_size": 96, "crop_grid": 2}  # kept


def test_completed_run_with_other_training_parameters_warns(tmp_path, capsys):
    data = make_exposure_data(tmp_path / "data", n_train=30, n_test=2)
    ov = {"data_dir": str(data), "out_dir": str(tmp_path / "out"), "train.epochs": 1, "train.num_workers": 0}
    first = fit(load_config("demo", 64, 0, ov), progress=False)
    again = fit(load_config("demo", 64, 0, {**ov, "optim.lr": 1.0e-3, "train.num_workers": 1}),
                progress=False)
    out = capsys.readouterr().out
    assert "WARNING it completed with other parameters (optim.lr: 0.0003 -> 0.001)" in out
    assert again.checkpoint == first.checkpoint and again.status == "completed"
