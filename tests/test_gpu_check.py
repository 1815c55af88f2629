"""benchmarks/gpu_check.py --dry-run: every section of the GPU check runs on a CPU at tiny sizes,
so the one prepared command cannot rot before a GPU is lent (issue 14)."""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
SECTIONS = ["1a_fast_vs_reference", "1b_bf16_vs_fp32", "1c_compiled_train_step", "2_train_step_384",
            "2_train_step_448", "2_train_step_640", "2_tab_attention", "4_grid_estimate",
            "1d_resume_after_kill", "3_input_pipeline"]
# The GPU machine has neither: the kit's training loop cannot be imported there.
WITHOUT_KIT_DEPS = ("import runpy, sys; sys.modules['pydantic'] = None; sys.modules['filelock'] = None; "
                    "sys.path.insert(0, sys.argv[1]); sys.argv = sys.argv[2:]; "
                    "runpy.run_path(sys.argv[0], run_name='__main__')")


def dry_run(out: Path, *args: str, prefix: tuple = ()) -> dict:
    cmd = [sys.executable, *prefix, str(SCRIPT), "--dry-run", "--out", str(out), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    result["_stdout"] = proc.stdout
    return result


def errors(obj, where=""):
    """Every place in the JSON that recorded an error (a section or a single measurement)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "error":
                yield f"{where}: {v}"
            else:
                yield from errors(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from errors(v, f"{where}[{i}]")


def small(x, limit):
    return isinstance(x, (int, float)) and math.isfinite(x) and 0 <= x < limit


@pytest.mark.slow
def test_dry_run_measures_every_section(tmp_path):
    r = dry_run(tmp_path / "dry.json")
    s = r["sections"]
    assert r["complete"] and r["settings"]["dry_run"] and list(s) == SECTIONS
    assert not list(errors(s)), list(errors(s))
    for name in SECTIONS:  # the kit imports here, so nothing is skipped either
        assert s[name]["status"] == "ok", (name, s[name])
        assert s[name]["summary"], name

    # 1: real comparisons, not placeholders
    assert small(s["1a_fast_vs_reference"]["max_abs_diff"], 1e-4) and s["1a_fast_vs_reference"]["passed"]
    assert len(s["1a_fast_vs_reference"]["scores_fast"]) == 2
    assert small(s["1b_bf16_vs_fp32"]["max_abs_diff"], s["1b_bf16_vs_fp32"]["tolerance_abs"])
    c = s["1c_compiled_train_step"]
    assert c["passed"] and c["grads_missing"] == 0 and c["grads_nonfinite"] == 0 and math.isfinite(c["loss"])
    d = s["1d_resume_after_kill"]
    assert d["passed"] and d["metrics_identical"] and d["max_abs_diff"] == 0
    assert d["killed_at"]["epoch"] >= 1 and d["killed_at"]["batch_in_epoch"] > 0
    assert d["manifest_status_after_kill"] == "running" and d["resumed_log_says_resuming"]

    # 2: every path timed with FLOPs from the counter; compile time apart from the steady step
    for res in (384, 448, 640):
        t = s[f"2_train_step_{res}"]
        assert t["flops_per_step"]["kit (fast path)"] > 0 and t["flops_per_step"]["reference"] > 0
        for path in ("reference", "kit_eager", "kit_compiled"):
            assert t[path]["images_per_s"] > 0 and t[path]["tflops_per_s"] > 0, (res, path, t[path])
            assert t[path]["mfu_bf16"] is None  # no GPU peak on a CPU
        assert "compile_s" in t["kit_compiled"]
        assert all(t["eval"][k]["images_per_s"] > 0 for k in ("reference_fp32", "kit_bf16", "kit_bf16_flip_tta"))
    tab = s["2_tab_attention"]
    assert tab["faster_overall"] in ("sdpa", "explicit")
    assert all(row["faster"] in ("sdpa", "explicit") and row["sdpa"]["fwd_bwd_ms"] > 0 for row in tab["rows"])

    # 3 and 4
    p = s["3_input_pipeline"]
    assert p["decode_loader"]["images_per_s"] > 0 and p["kit_loader"]["cache_img_s"] > 0
    assert p["fit"]["status"] == "completed" and p["fit"]["last_epoch_train_img_s"] > 0
    assert p["inference"]["flip_tta"]["finite"] and p["inference"]["no_tta"]["images"] > 0
    assert p["gpu_consumes_img_s"] > 0 and p["bottleneck"]
    g = s["4_grid_estimate"]
    assert g["totals"]["reference"]["typical_h"] > 0 and g["totals"]["kit"]["cap_h"] > g["totals"]["kit"]["typical_h"]

    assert "section" in r["_stdout"] and "1a_fast_vs_reference" in r["_stdout"]  # the closing table


def test_without_pydantic_and_filelock_the_kit_sections_skip_and_the_rest_runs(tmp_path):
    r = dry_run(tmp_path / "nokit.json", "--only", "1a", "1c", "2_train_step_384", "1d", "3",
                prefix=("-c", WITHOUT_KIT_DEPS, str(SCRIPT.parent)))
    s = r["sections"]
    assert list(s) == SECTIONS and r["complete"]
    assert s["1a_fast_vs_reference"]["status"] == "ok" and s["1a_fast_vs_reference"]["passed"]
    not_installed = re.compile(r"^iqa_lib\.\w+ needs (pydantic|filelock): not installed on this machine$")
    assert s["1d_resume_after_kill"]["status"] == "skipped"
    assert not_installed.match(s["1d_resume_after_kill"]["skipped"]), s["1d_resume_after_kill"]
    p = s["3_input_pipeline"]
    assert p["status"] == "ok" and p["decode_loader"]["images_per_s"] > 0  # no kit code needed for it
    for part in ("kit_loader", "fit", "inference"):
        assert not_installed.match(p[part]["skipped"]), (part, p[part])
    assert s["2_train_step_448"]["skipped"] == "not selected (--only)"
    # torch.compile itself imports filelock (torch.utils._filelock): without it 1c records the error
    # and section 2 measures everything else instead of failing on every resolution.
    c, t = s["1c_compiled_train_step"], s["2_train_step_384"]
    assert t["status"] == "ok" and t["kit_eager"]["images_per_s"] > 0
    if c["status"] == "error":
        assert "filelock" in c["error"] and "torch.compile failed in 1c" in t["kit_compiled"]["skipped"]
    else:
        assert c["passed"] and t["kit_compiled"]["images_per_s"] > 0
    assert not [e for e in errors(s) if not e.startswith(".1c_compiled_train_step")], list(errors(s))


def test_a_spent_budget_skips_with_a_note(tmp_path):
    r = dry_run(tmp_path / "budget.json", "--budget-s", "0")
    assert r["complete"] and list(r["sections"]) == SECTIONS
    for name, sec in r["sections"].items():
        assert sec["status"] == "skipped" and "budget" in sec["skipped"], (name, sec)
