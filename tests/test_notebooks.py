"""The five notebooks: committed clean, parameters checked, and the whole pipeline run by papermill.

The pipeline test runs 01 -> 02 -> 03 (fold 0 at 64, 128 and 192 px, 2 epochs) -> 04 -> 05 once on
a small synthetic data set with the demo profile (about a minute and a half on a 2-core CPU);
several small tests then check what it wrote.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import nbformat
import pandas as pd
import pytest

from iqa_lib.config import ConfigError, load_config, repo_root, resolve_path
from iqa_lib.notebook import ParameterError, check_parameters, find_checkpoints, parse_runs, run_config

ROOT = repo_root()
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = ["01_eda.ipynb", "02_folds.ipynb", "03_train.ipynb", "04_infer.ipynb", "05_ensemble.ipynb"]
RESOLUTIONS = (64, 128, 192)  # the demo profile's input sizes
FOLD = 0  # the same fold at every resolution, so the cross-resolution OOF ensemble has images
N_TRAIN, N_TEST = 120, 30


# --------------------------------------------------------------------------------------------
# (a) the committed notebooks
# --------------------------------------------------------------------------------------------
def _read(name: str):
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def test_all_notebooks_present():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_commit_ready(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    # no papermill or widget state, no execution timings: only what a clean save keeps
    assert set(nb.metadata) <= {"kernelspec", "language_info"}, sorted(nb.metadata)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "starts with a title"
    for i, cell in enumerate(nb.cells):
        assert set(cell.metadata) <= {"tags"}, f"cell {i} metadata {sorted(cell.metadata)}"
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {i} has outputs"
            assert cell.execution_count is None, f"cell {i} has an execution count"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_parameter_convention(name):
    """imports + snapshot, then the `parameters` cell, then check_parameters."""
    code = [c for c in _read(name).cells if c.cell_type == "code"]
    tagged = [i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])]
    assert tagged == [1], "the second code cell, and only it, is tagged `parameters`"
    assert code[0].source.rstrip().endswith("_before = set(globals())")
    assert "check_parameters(globals(), _before" in code[2].source


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_papermill_lists_every_parameter_with_type_and_help(name):
    from papermill.inspection import inspect_notebook

    found = inspect_notebook(str(NOTEBOOK_DIR / name))
    source = next(c.source for c in _read(name).cells if "parameters" in c.metadata.get("tags", []))
    declared = [line.split(":")[0] for line in source.splitlines() if line.strip()]
    assert list(found) == declared
    for pname, p in found.items():
        assert p["inferred_type_name"] != "None", f"{pname} has no type annotation papermill can read"
        assert p["help"], f"{pname} has no comment"


# --------------------------------------------------------------------------------------------
# check_parameters, paths, run_params (no kernel)
# --------------------------------------------------------------------------------------------
def _namespace(annotations: dict, values: dict, injected: dict | None = None):
    """A notebook's globals: imports, the snapshot, declared values, injected values, IPython's."""
    ns = {"__name__": "__main__", "Optional": Optional, "In": [], "Out": {}}
    before = set(ns)
    ns.update({"__annotations__": annotations, **values, **(injected or {}), "_i3": "x", "_3": 1})
    return ns, before


def test_check_parameters_accepts_and_normalises():
    ann = {"res": int, "lr": Optional[float], "rate": float, "name": str, "tta": Optional[bool], "n": Optional[int]}
    ns, before = _namespace(ann, {"res": 448, "lr": None, "rate": 1, "name": "a", "tta": True, "n": None})
    assert check_parameters(ns, before) == {"res": 448, "lr": None, "rate": 1.0, "name": "a", "tta": True, "n": None}
    assert isinstance(check_parameters(ns, before)["rate"], float)  # an int is fine for a float


@pytest.mark.parametrize("ann, value, expect", [
    (int, "one", ["fold must be int", "the str 'one'", "-p fold 0"]),
    (int, 448.5, ["fold must be int", "448.5", "whole number"]),
    (int, True, ["fold must be int", "the bool True"]),  # bool is not an int
    (Optional[int], "3", ["fold must be int or None", "-p fold None"]),
    (bool, 1, ["fold must be bool", "-p fold True"]),
    (Optional[str], 2023, ["fold must be str or None", "-r fold 2023"]),
])
def test_check_parameters_rejects_wrong_types(ann, value, expect):
    ns, before = _namespace({"fold": ann}, {"fold": value})
    with pytest.raises(ParameterError) as e:
        check_parameters(ns, before)
    for text in expect:
        assert text in str(e.value)


def test_check_parameters_rejects_unknown_injected_names():
    ns, before = _namespace({"fold": int, "epochs": Optional[int]}, {"fold": 0, "epochs": None}, {"epoch": 3})
    with pytest.raises(ParameterError, match="unknown parameter 'epoch'.*Did you mean 'epochs'.*fold, epochs"):
        check_parameters(ns, before)


def test_check_parameters_reports_every_bad_value_and_choices():
    ns, before = _namespace({"res": int, "method": str}, {"res": "x", "method": "median"})
    with pytest.raises(ParameterError) as e:
        check_parameters(ns, before, choices={"method": ("iqr", "mean")})
    assert "res must be int" in str(e.value) and "'median' is not one of 'iqr', 'mean'" in str(e.value)


def test_check_parameters_needs_annotations():
    with pytest.raises(ParameterError, match="annotation"):
        check_parameters({"fold": 0}, set())


def test_resolve_path_is_relative_to_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as JupyterLab in notebooks/: the cwd must not matter
    assert (ROOT / "params").is_dir() and (ROOT / "iqa_lib").is_dir()
    assert resolve_path("data/demo") == ROOT / "data" / "demo"
    assert resolve_path(tmp_path / "x") == tmp_path / "x"


def test_run_config_overrides_and_paths(tmp_path):
    cfg = run_config("demo", 128, 1, data_dir=str(tmp_path), out_dir="outputs/x", epochs=3, lr=1e-3,
                     batch_size=None, weights_file="w.npz")
    assert (cfg.res, cfg.fold, cfg.profile) == (128, 1, "demo")
    assert cfg.train.epochs == 3 and cfg.train.batch_size == 8  # None keeps the profile's
    assert cfg.optim.lr == cfg.schedule.max_lr == 1e-3
    assert cfg.data_dir == str(tmp_path) and cfg.out_dir == str(ROOT / "outputs" / "x")
    assert cfg.model.weights_file == str(ROOT / "w.npz")


def test_run_config_takes_the_mos_scale_a_prepared_folder_records(tmp_path):
    assert run_config("demo", data_dir=str(tmp_path)).mos_scale == 10.0  # the profile's
    (tmp_path / "dataset.json").write_text('{"dataset": "clive", "mos_scale": 100.0}')
    assert run_config("demo", 128, 2, data_dir=str(tmp_path)).mos_scale == 100.0
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"dataset.json' is not a readable dataset.json"):
        run_config("demo", data_dir=str(tmp_path))


def test_run_config_missing_data_dir(tmp_path):
    with pytest.raises(ParameterError, match=r"data_dir .* does not exist.*python -m iqa_lib\.datasets\.demo"):
        run_config("demo", data_dir=str(tmp_path / "nothing"))
    with pytest.raises(ParameterError, match="data_dir"):
        run_config("team", 384, 0, data_dir=str(tmp_path / "nothing"))


def test_runs_selection(tmp_path):
    assert parse_runs("all", RESOLUTIONS, 5) is None
    assert parse_runs(" 128_fold1, 192_fold0 ", RESOLUTIONS, 5) == [(128, 1), (192, 0)]
    for bad in ("128-1", "512_fold0", "128_fold5", ","):
        with pytest.raises(ParameterError, match="runs"):
            parse_runs(bad, RESOLUTIONS, 5)
    cfg = load_config("demo", out_dir=str(tmp_path / "out"))
    with pytest.raises(ParameterError, match="03_train.ipynb"):
        find_checkpoints(cfg, RESOLUTIONS, "all")
    ckpt = tmp_path / "out" / "runs" / "128_fold1" / "128_fold1.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    assert find_checkpoints(cfg, RESOLUTIONS) == [(128, 1, ckpt)]
    with pytest.raises(ParameterError, match="no checkpoint for 192_fold0.*-p res 192 -p fold 0") as e:
        find_checkpoints(cfg, RESOLUTIONS, "128_fold1,192_fold0")
    # The command it suggests writes into this profile's out_dir, not the team's outputs/runs.
    assert f"{tmp_path / 'out' / 'runs' / '192_fold0' / '03_train.ipynb'}" in str(e.value)


# --------------------------------------------------------------------------------------------
# (b) the pipeline, end to end with papermill
# --------------------------------------------------------------------------------------------
def _execute(name: str, output: Path, parameters: dict, cwd: Path = ROOT):
    import papermill as pm

    return pm.execute_notebook(
        str(NOTEBOOK_DIR / name), str(output), parameters=parameters,
        kernel_name="python3", cwd=str(cwd), progress_bar=False,
    )


# The tests of the demo pipeline share it (~100 s on a CI core). They form one xdist group, which
# `make test` (--dist loadgroup) sends to one worker: the pipeline is built once, not once per worker.
@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from iqa_lib.datasets.demo import make_demo_data

    tmp = tmp_path_factory.mktemp("pipeline")
    data = make_demo_data(tmp / "data", n_train=N_TRAIN, n_test=N_TEST)
    out = tmp / "out"
    common = {"profile": "demo", "data_dir": str(data), "out_dir": str(out)}
    executed = {}

    def run(name, label=None, **extra):
        label = label or name.removesuffix(".ipynb")
        path = tmp / "executed" / f"{label}.ipynb"
        path.parent.mkdir(exist_ok=True)
        executed[label] = _execute(name, path, {**common, **extra})

    run("01_eda.ipynb")
    run("02_folds.ipynb")
    for res in RESOLUTIONS:
        run("03_train.ipynb", f"03_train_{res}", res=res, fold=FOLD, epochs=2)
    run("04_infer.ipynb")
    run("05_ensemble.ipynb")
    return SimpleNamespace(data=Path(data), out=out, notebooks=executed)


def _outputs(nb, kind):
    """Every output of `kind` ('image/png', 'text/plain', 'stream') in an executed notebook."""
    found = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if kind == "stream" and o.output_type == "stream":
                found.append(o.text)
            elif o.output_type in ("execute_result", "display_data") and kind in o.data:
                found.append(o.data[kind])
    return found


@pytest.mark.slow
@pytest.mark.xdist_group("pipeline")
def test_pipeline_notebooks_show_their_figures(pipeline):
    expected_figures = {"01_eda": 5, "02_folds": 1, "05_ensemble": 2, **{f"03_train_{r}": 3 for r in RESOLUTIONS}}
    for label, n in expected_figures.items():
        assert len(_outputs(pipeline.notebooks[label], "image/png")) >= n, label
    assert sorted(p.name for p in (pipeline.out / "eda").glob("*.png")) == [
        "best_worst.png", "image_sizes_train.png", "image_sizes_train_test.png", "mos_hist.png", "rows_per_image.png"]


@pytest.mark.slow
@pytest.mark.xdist_group("pipeline")
def test_pipeline_folds(pipeline):
    folds = pd.read_csv(pipeline.out / "folds.csv", dtype={"img_name": str})
    assert len(folds) == N_TRAIN and folds["img_name"].is_unique
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    assert "path" not in folds.columns


@pytest.mark.slow
@pytest.mark.xdist_group("pipeline")
@pytest.mark.parametrize("res", RESOLUTIONS)
def test_pipeline_runs(pipeline, res):
    run = pipeline.out / "runs" / f"{res}_fold{FOLD}"
    assert (run / f"{res}_fold{FOLD}.ckpt").is_file() and (run / "last.pt").is_file()
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == [0, 1]
    oof = pd.read_csv(run / "oof.csv")
    assert list(oof.columns) == ["img_name", "mos", "pred"] and len(oof) == N_TRAIN // 5
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["config"]["train"]["epochs"] == 2 and manifest["config"]["profile"] == "demo"


@pytest.mark.slow
@pytest.mark.xdist_group("pipeline")
def test_pipeline_predictions(pipeline):
    test = pd.read_csv(pipeline.data / "test.csv", dtype={"img_name": str})
    files = sorted((pipeline.out / "preds").glob("*.csv"))
    assert sorted(f.stem for f in files) == sorted(f"{r}_fold{FOLD}" for r in RESOLUTIONS)
    for f in files:
        pred = pd.read_csv(f, dtype={"img_name": str})
        assert pred["img_name"].tolist() == test["img_name"].tolist()
        assert pred["mos"].between(0, 10).all()


@pytest.mark.slow
@pytest.mark.xdist_group("pipeline")
def test_pipeline_submission(pipeline):
    from iqa_lib.ensemble import ensemble, load_predictions, validate_submission

    path = pipeline.out / "submission.csv"
    validate_submission(path, pipeline.data / "test.csv")
    # The scores are the IQR ensemble of the three runs' predictions, in test.csv's order.
    expected = ensemble(load_predictions(sorted((pipeline.out / "preds").glob("*.csv"))))
    submission = pd.read_csv(path, dtype={"img_name": str}).set_index("img_name")["mos"]
    pd.testing.assert_series_equal(submission, expected.loc[submission.index], check_names=False, rtol=1e-9)
    text = "\n".join(_outputs(pipeline.notebooks["05_ensemble"], "text/plain"))
    assert "ensemble (iqr)" in text and "submission" in text  # scored against test_labels.csv
    assert "resolution" in text and "iqr over 3 resolution(s)" in text  # the OOF table


@pytest.mark.slow
@pytest.mark.xdist_group("pipeline")
def test_relative_paths_work_from_the_notebooks_folder(pipeline, tmp_path):
    """JupyterLab runs a notebook with cwd notebooks/: relative paths still start at the root."""
    rel = lambda p: os.path.relpath(p, ROOT)  # noqa: E731
    out = tmp_path / "out"
    _execute("02_folds.ipynb", tmp_path / "02.ipynb",
             {"profile": "demo", "data_dir": rel(pipeline.data), "out_dir": rel(out)}, cwd=NOTEBOOK_DIR)
    assert (out / "folds.csv").read_text() == (pipeline.out / "folds.csv").read_text()


# --------------------------------------------------------------------------------------------
# (c) parameter errors through papermill
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name, parameters, expect", [
    ("03_train.ipynb", {"profile": "demo", "fold": "one"}, ["ParameterError", "fold must be int", "'one'", "-p fold 0"]),
    ("03_train.ipynb", {"profile": "demo", "res": 448.5}, ["res must be int", "448.5", "-p res 448"]),
    ("03_train.ipynb", {"profile": "demo", "epoch": 2},
     ["unknown parameter 'epoch'", "Did you mean 'epochs'", "res, fold, profile"]),
    ("03_train.ipynb", {"profile": "demo", "res": 512}, ["res=512", "64, 128, 192"]),
    ("01_eda.ipynb", {"profile": "nope"}, ["unknown profile 'nope'", "demo", "team"]),
    ("01_eda.ipynb", {"profile": "demo", "data_dir": "MISSING"},
     ["data_dir", "does not exist", "python -m iqa_lib.datasets.demo"]),
], ids=["fold-str", "res-float", "unknown-name", "res-512", "profile-nope", "data-dir-missing"])
def test_parameter_errors_through_papermill(tmp_path, name, parameters, expect):
    import papermill as pm

    missing = tmp_path / "no_such_data"
    parameters = {k: str(missing) if v == "MISSING" else v for k, v in parameters.items()}
    with pytest.raises(pm.PapermillExecutionError) as e:
        _execute(name, tmp_path / "out.ipynb", parameters)
    message = f"{e.value.ename}: {e.value.evalue}"
    for text in expect:
        assert text in message
    if "data_dir" in parameters:
        assert str(missing) in message


@pytest.mark.slow
def test_02_folds_on_a_grouped_table(tmp_path):
    """Group-aware folds (a `group` column, as KADID's reference images) may differ in size by
    more than one image; the notebook keeps each group in one fold and does not refuse them."""
    from iqa_lib.datasets.demo import make_demo_data

    data = make_demo_data(tmp_path / "data", n_train=50, n_test=5)
    train = pd.read_csv(data / "train.csv", dtype={"img_name": str})
    names = sorted(train["img_name"].unique())
    group_of = {n: f"g{min(i // 5, 7)}" for i, n in enumerate(names)}  # 7 groups of 5, one of 15
    train["group"] = train["img_name"].map(group_of)
    train.to_csv(data / "train.csv", index=False)
    out = tmp_path / "out"
    _execute("02_folds.ipynb", tmp_path / "02.ipynb", {"profile": "demo", "data_dir": str(data), "out_dir": str(out)})
    folds = pd.read_csv(out / "folds.csv", dtype={"img_name": str})
    assert folds.groupby("group")["fold"].nunique().max() == 1  # no group is split
    sizes = folds["fold"].value_counts()
    assert len(sizes) == 5 and sizes.max() - sizes.min() > 1  # the case the old assert refused
