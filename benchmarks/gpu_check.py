"""Everything that needs a GPU, measured by one command in under eight minutes (issue 14).

    PYTHONPATH=. python benchmarks/gpu_check.py              # = make gpu-check; a CUDA GPU, < 8 min
    python benchmarks/gpu_check.py --dry-run --out x.json    # CPU, tiny sizes, < 1 min (tests/test_gpu_check.py)

Random weights (nothing is downloaded), no install step. Writes
benchmarks/results/gpu_check_<device>.json after EVERY section (a timeout keeps what was
measured) and prints a table (section, figure, value) at the end. Sections, in run order:

1a fast path == reference path, fp32 (TF32 off), 384, batch 2
1b bf16 autocast vs fp32 scores, fast path, within a stated tolerance
1c one training step: bf16 + fused Adam + torch.compile -> finite gradients; cold compile time
2  per resolution 384 / 448 / 640 at the params' batch sizes: training step of the team-style
   reference (fp32, forward_reference: full ViT, hooks, per-image head loop, plain Adam) vs the
   kit (bf16, fused Adam, eager and compiled): images/s, speedup, TFLOP/s, MFU against the chip's
   dense bf16 peak, memory; eval forward images/s (with and without flip TTA). FLOPs are counted
   by torch.utils.flop_counter on one forward+backward on the meta device (no hand formulas).
2  TAB attention (channels x channels over 576-1,600 tokens): SDPA (each backend) vs an explicit
   bf16 matmul + softmax, forward and forward+backward: which is faster
4  hours for the team's 15-run grid on this GPU, from the measured throughput
1d (kit) a tiny deterministic fit SIGKILLed mid-epoch and resumed == an uninterrupted fit
3  (kit) input pipeline at 384 on generated JPEGs: decode loader and kit loader images/s with
   8-16 workers vs what the GPU consumes; a short real fit; predict() with and without TTA

Model-level sections use only torch, timm, numpy, PyYAML, iqa_lib.model and benchmarks/common.py. The kit-dependent
ones (1d, 3) come last and import iqa_lib.config / train / infer lazily: where those cannot be
imported (no pydantic or filelock on the GPU machine) they record why and the rest still runs.
Every section runs under a global time budget (--budget-s) and records its error and goes on.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from common import RESULTS, machine, make_step, measure_loader, peak_bf16_tflops, sync, table, timeit
from iqa_lib.model import build_maniqa

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params"
RESOLUTIONS = (384, 448, 640)
TRAIN_IMAGES, TEST_IMAGES = 54_662, 13_012  # SPEC §1: unique training images, test images
# Dense bf16 peaks (TFLOP/s, vendor data sheets) that benchmarks/common.py does not list; checked first.
EXTRA_BF16_PEAKS = {"GH200": 989.4, "H100 NVL": 835.0, "B200": 2250.0, "L40S": 362.05, "A10G": 70.0, "A10": 125.0}

# --dry-run: the demo profile's narrow ViT (params/demo.yaml), tiny inputs, batch 2, one step.
DRY_MODEL = dict(embed_dim=64, head_hidden=32, head_dropout=0.1, vit_kwargs=dict(embed_dim=64, depth=10, num_heads=2))
DRY_SIZE = {384: 64, 448: 64, 640: 64}  # one size: the dry run compiles once
DRY_BATCH = 2

TOL_FAST_VS_REF = 1e-4  # max |fast - reference| on the 0-1 target scale, fp32
TOL_BF16 = 1e-2  # max |bf16 - fp32| on the 0-1 target scale (= 0.1 MOS on the challenge's 0-10)
TIMING_COLUMNS = re.compile(r"second|per_s|time", re.I)  # metrics.csv columns that may differ between runs


class SkipSection(Exception):
    """A section (or part) that cannot run here; the message says why."""


def gib(n_bytes: float) -> float:
    return n_bytes / 2**30


def deep_merge(into: dict, layer: dict) -> dict:
    for k, v in (layer or {}).items():
        if isinstance(v, dict) and isinstance(into.get(k), dict) and k != "vit_kwargs":
            deep_merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)
    return into


def team_params(res: int, profile: str = "team") -> dict:
    """base.yaml -> {res}.yaml -> the profile (top level, then resolutions[res]), read with PyYAML only
    (iqa_lib.config needs pydantic, which the GPU machine lacks)."""
    def read(name):
        p = PARAMS / f"{name}.yaml"
        return (yaml.safe_load(p.read_text()) or {}) if p.is_file() else {}
    out = read("base")
    deep_merge(out, read(str(res)))
    prof = read(profile)
    per_res = (prof.pop("resolutions", None) or {}).get(res) or {}
    return deep_merge(deep_merge(out, prof), per_res)


def peak_tflops(name: str) -> float | None:
    for key, value in EXTRA_BF16_PEAKS.items():
        if key.lower() in name.lower():
            return value
    return peak_bf16_tflops(name)


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def clean(obj):
    """JSON-safe: NaN/inf -> None, tuples -> lists, numpy/torch scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        obj = obj.item()
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


@contextmanager
def exact_fp32():
    """TF32 off for matmuls and convolutions (a true fp32 reference), restored afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class _Reference(nn.Module):
    """Calls forward_reference, so functional_call can run the team-style path too."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, x):
        return self.m.forward_reference(x)


def count_flops(model: nn.Module, x: torch.Tensor, path: str) -> int:
    """FLOPs of one forward+backward, counted by FlopCounterMode on the meta device (no memory,
    no compute; attention counted as its matmuls whatever SDPA kernel the GPU would pick)."""
    target = model if path == "fast" else _Reference(model)
    state = {n: torch.empty_like(t, device="meta").requires_grad_(t.requires_grad)
             for n, t in [*target.named_parameters(), *target.named_buffers()]}
    xm = torch.empty(x.shape, device="meta")
    with FlopCounterMode(display=False) as counter:
        functional_call(target, state, (xm,)).sum().backward()
    return int(counter.get_total_flops())


def load_demo_maker():
    try:
        from iqa_lib.datasets.demo import make_demo_data
    except ImportError as e:
        if getattr(e, "name", "") != "iqa_lib.datasets.demo" and getattr(e, "name", "") != "iqa_lib.datasets":
            raise
        from iqa_lib.demo_data import make_demo_data  # the old place
    return make_demo_data


def kit_import(what: str, *modules: str) -> None:
    """Import `modules`; a third-party module missing here becomes a skip note, a kit error stays an error."""
    import importlib

    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError as e:
            name = getattr(e, "name", None) or str(e)
            if name.startswith("iqa_lib"):
                raise
            raise SkipSection(f"{what} needs {name.split('.')[0]}: not installed on this machine") from None


def make_fit_data(dest: Path, n_train: int, n_test: int, copies: int, size=None, seed: int = 0) -> dict:
    """make_demo_data, then each image hard-linked `copies` times under new names (one file decoded per
    name, as real data), so thousands of large JPEGs cost seconds instead of minutes to make."""
    import pandas as pd

    make = load_demo_maker()
    t = time.perf_counter()
    kw = {"sizes": (size,)} if size else {}
    make(dest, n_train=n_train, n_test=n_test, seed=seed, **kw)
    for csv in ("train.csv", "test.csv"):
        df = pd.read_csv(dest / csv, dtype=str, keep_default_na=False)
        parts = [df]
        for r in range(1, copies):
            d = df.copy()
            d["img_name"] = d["img_name"] + f"c{r}"
            new_paths = []
            for p in d["img_path"]:
                base, ext = p.rsplit(".", 1)
                new = f"{base}c{r}.{ext}"
                src, dst = dest / p, dest / new
                if not dst.exists():
                    try:
                        os.link(src, dst)
                    except OSError:
                        import shutil

                        shutil.copyfile(src, dst)
                new_paths.append(new)
            d["img_path"] = new_paths
            parts.append(d)
        pd.concat(parts).to_csv(dest / csv, index=False)
    return {"train_images": n_train * copies, "test_images": n_test * copies, "unique_images": n_train + n_test,
            "image_size": list(size) if size else "demo default sizes", "make_s": time.perf_counter() - t}


class _DecodeSet(torch.utils.data.Dataset):
    """Kit-independent stand-in for the decode path: JPEG draft decode, RGB, bicubic resize to S x S."""

    def __init__(self, paths, size):
        self.paths, self.size = list(paths), int(size)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            im.draft("RGB", (self.size, self.size))
            im = im.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC)
            return torch.from_numpy(np.asarray(im).copy())


# The 1d child: one fit; with "kill" it SIGKILLs itself one batch after the first mid-epoch last.pt
# of epoch >= 1 (the parent also watches last.pt and kills it, should these hooks not fit the kit).
FIT_CHILD = r"""
import json, os, signal, sys
a = json.loads(sys.argv[1])
from iqa_lib.config import load_config
import iqa_lib.train as T
if a.get("kill"):
    armed = {"on": False, "batches": 0}
    real_save = getattr(T, "atomic_torch_save", None)
    if real_save is not None:
        def save(obj, path, *args, **kw):
            out = real_save(obj, path, *args, **kw)
            if os.path.basename(str(path)) == "last.pt" and isinstance(obj, dict) \
                    and obj.get("epoch", 0) >= 1 and obj.get("batch_in_epoch", 0) > 0:
                armed["on"] = True
                if not hasattr(getattr(T, "D", None), "to_model_input"):
                    os.kill(os.getpid(), signal.SIGKILL)
            return out
        T.atomic_torch_save = save
    D = getattr(T, "D", None)
    if D is not None and hasattr(D, "to_model_input"):
        real_input = D.to_model_input
        def to_input(*args, **kw):
            if armed["on"]:
                armed["batches"] += 1
                if armed["batches"] >= 2:  # one more batch trained after the save: lost work to redo
                    os.kill(os.getpid(), signal.SIGKILL)
            return real_input(*args, **kw)
        D.to_model_input = to_input
cfg = load_config(a["profile"], res=a["res"], fold=0, overrides=a["overrides"], data_dir=a["data_dir"],
                  out_dir=a["out_dir"])
r = T.fit(cfg, progress=False)
print("RESULT " + json.dumps({"status": r.status, "best_epoch": r.best_epoch, "best": r.best}, default=str), flush=True)
"""


class Check:
    def __init__(self, args):
        self.args = args
        self.dry = args.dry_run
        self.device = torch.device("cpu" if self.dry else "cuda")
        if self.dry:  # tiny tensors: one thread, and no OpenMP spin-waits on a shared 2-core machine
            torch.set_num_threads(1)
        self.cuda = self.device.type == "cuda"
        self.t0 = time.perf_counter()
        self.budget = float(args.budget_s)
        self.warmup = 1 if self.dry else args.warmup
        self.steps = 1 if self.dry else args.steps
        self.backend = args.compile_backend or ("eager" if self.dry else "inductor")
        self.workers = args.workers if args.workers is not None else (0 if self.dry else min(16, os.cpu_count() or 1))
        self.resolutions = tuple(args.res)
        self.state: dict = {"speed": {}}
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # as the kit's trainer sets it (non-deterministic runs)
        self.kit = self._probe_kit()
        info = machine(self.device)
        gpu = {}
        if self.cuda:
            p = torch.cuda.get_device_properties(self.device)
            peak = peak_tflops(p.name)
            gpu = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": gib(p.total_memory),
                   "multiprocessors": p.multi_processor_count, "peak_bf16_dense_tflops": peak,
                   "peak_note": None if peak else f"'{p.name}' is not in the peak table: MFU is null",
                   "cudnn": torch.backends.cudnn.version()}
        self.peak = gpu.get("peak_bf16_dense_tflops")
        self.result = {
            "benchmark": "gpu_check", **info, "gpu": gpu or None,
            "settings": {
                "dry_run": self.dry, "budget_s": self.budget, "warmup_steps": self.warmup, "timed_steps": self.steps,
                "timing": "median of the timed steps, torch.cuda.synchronize around each",
                "compile_backend": self.backend, "compile_kwargs": {"dynamic": False},
                "loader_workers": self.workers, "resolutions": list(self.resolutions),
                "tf32_default": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
                "cudnn_benchmark": torch.backends.cudnn.benchmark,
                "mfu": "each path's own FLOPs (counted) per second / the chip's dense bf16 peak, also for fp32",
                "weights": "random (pretrained=False): nothing downloaded",
                "model": ("dry run: narrow ViT (embed 64, depth 10), inputs " + str(DRY_SIZE)) if self.dry
                else "the team's MANIQA on vit_base_patch16_384 (iqa_lib.model.VARIANTS)",
            },
            "kit_imports": self.kit, "sections": {}, "complete": False,
        }
        self.out = Path(args.out) if args.out else RESULTS / f"gpu_check_{self._slug(info)}.json"
        # Planned sections and their expected seconds on an H100/H200 (dry run: all small).
        kit_train = self.kit.get("iqa_lib.train") == "ok"
        self.plan = [("1a_fast_vs_reference", self.s1a, 20), ("1b_bf16_vs_fp32", self.s1b, 5),
                     ("1c_compiled_train_step", self.s1c, 120)]
        self.plan += [(f"2_train_step_{r}", lambda r=r: self.s2(r), {384: 30, 448: 30, 640: 45}.get(r, 45))
                      for r in self.resolutions]
        self.plan += [("2_tab_attention", self.s_tab, 20), ("4_grid_estimate", self.s4, 1),
                      ("1d_resume_after_kill", self.s1d, 60 if kit_train else 1),
                      ("3_input_pipeline", self.s3, 75 if kit_train else 25)]

    # -- bookkeeping ---------------------------------------------------------------------------
    @staticmethod
    def _slug(info) -> str:
        return "cpu" if info["device_type"] == "cpu" else re.sub(r"[^a-z0-9]+", "-", info["device"].lower()).strip("-")

    def _probe_kit(self) -> dict:
        out = {}
        for m in ("iqa_lib.config", "iqa_lib.data", "iqa_lib.train", "iqa_lib.infer"):
            try:
                __import__(m)
                out[m] = "ok"
            except ImportError as e:
                out[m] = f"needs {getattr(e, 'name', None) or e}"
            except Exception as e:  # the kit mid-change: recorded, the sections say more
                out[m] = f"{type(e).__name__}: {e}"[:300]
        return out

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def selected(self, name: str) -> bool:
        return not self.args.only or name.startswith(tuple(self.args.only))

    def reserve_after(self, name: str) -> float:
        """Seconds the sections after `name` expect: what a compile must leave them."""
        if self.dry:
            return 0.0
        names = [n for n, _, _ in self.plan]
        return sum(need for n, _, need in self.plan[names.index(name) + 1:] if self.selected(n))

    def write(self) -> None:
        self.result["elapsed_s"] = time.perf_counter() - self.t0
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(clean(self.result), indent=2) + "\n")
        os.replace(tmp, self.out)

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def run(self) -> dict:
        self.write()
        for name, fn, need in self.plan:
            self.current = name
            t = time.perf_counter()
            need_now = 1.0 if self.dry else need
            print(f"== {name}: ~{need_now:.0f} s, {self.left():.0f} s of the budget left", flush=True)
            if not self.selected(name):
                entry = {"status": "skipped", "skipped": "not selected (--only)"}
            elif self.left() < need_now:
                entry = {"status": "skipped",
                         "skipped": f"needs ~{need_now:.0f} s, {max(self.left(), 0):.0f} s of the {self.budget:.0f} s budget left"}
            else:
                try:
                    entry = {"status": "ok", **fn()}
                except SkipSection as e:
                    entry = {"status": "skipped", "skipped": str(e)}
                except Exception as e:
                    entry = {"status": "error", "error": f"{type(e).__name__}: {e}"[:3000],
                             "traceback": traceback.format_exc()[-4000:]}
            self.free()
            entry["seconds"] = time.perf_counter() - t
            self.result["sections"][name] = entry
            status = entry["status"] + (f" ({entry.get('skipped') or entry.get('error')})" if entry["status"] != "ok" else "")
            print(f"   {status[:300]} in {entry['seconds']:.1f} s", flush=True)
            self.write()
        self.state.clear()
        self.result["complete"] = True
        self.write()
        return self.result

    def guarded(self, fn) -> dict:
        """One measurement: an OOM or error is recorded (memory freed) and the section goes on."""
        err = None
        try:
            return fn()
        except torch.cuda.OutOfMemoryError as e:
            err = {"oom": True, "error": f"out of memory: {str(e).splitlines()[0][:300]}"}
        except SkipSection as e:
            err = {"skipped": str(e)}
        except Exception as e:
            err = {"error": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc()[-2500:]}
        self.free()
        return err

    # -- helpers ---------------------------------------------------------------------------------
    def size(self, res: int) -> int:
        return DRY_SIZE[res] if self.dry else res

    def batch(self, res: int, key: str = "batch_size") -> int:
        return DRY_BATCH if self.dry else int(team_params(res)["train"][key])

    def build(self, res: int) -> nn.Module:
        overrides = {"img_size": self.size(res), **DRY_MODEL} if self.dry else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the random-weights warning: intended here
            model = build_maniqa(res, pretrained=False, **overrides)
        return model.to(self.device).train()

    def mem_start(self) -> int:
        if not self.cuda:
            return 0
        self.free()
        torch.cuda.reset_peak_memory_stats(self.device)
        return torch.cuda.memory_allocated(self.device)

    def mem_figures(self, start: int, held: int = 0, label: str = "train_mem_gib") -> dict:
        """peak_mem_gib: the process's peak; `label`: the peak above what existed at `start` (+ `held`)."""
        if not self.cuda:
            return {"peak_mem_gib": None, label: None}
        peak = torch.cuda.max_memory_allocated(self.device)
        return {"peak_mem_gib": gib(peak), label: gib(peak - start + held),
                "peak_reserved_gib": gib(torch.cuda.max_memory_reserved(self.device))}

    def rates(self, flops: int | None, step_s: float, batch: int) -> dict:
        tflops = flops / step_s / 1e12 if flops else None
        return {"step_s": step_s, "images_per_s": batch / step_s, "tflops_per_s": tflops,
                "mfu_bf16": tflops / self.peak if tflops and self.peak else None}

    def time_train(self, base, path: str, x, y, flops: int | None, compile_: bool = False) -> dict:
        """Training-step speed of one path on a copy of `base` (same weights for every path)."""
        start = self.mem_start()
        model = copy.deepcopy(base).train()
        params = [p for p in model.parameters() if p.requires_grad]
        if path == "reference":  # the team's: fp32, official forward, torch's default Adam
            opt = torch.optim.Adam(params, lr=1e-5, weight_decay=1e-5)
            step = make_step(model.forward_reference, opt, x, y, None)
        else:  # the kit's: bf16 autocast, fused Adam, optionally compiled
            opt = torch.optim.Adam(params, lr=1e-5, weight_decay=1e-5, fused=True)
            fwd = torch.compile(model, backend=self.backend, dynamic=False) if compile_ else model
            step = make_step(fwd, opt, x, y, torch.bfloat16)
        out = {}
        if compile_:
            t = time.perf_counter()
            step()
            sync(self.device)
            out["first_step_s"] = time.perf_counter() - t
        seconds = timeit(step, self.device, warmup=self.warmup, repeat=self.steps)
        out.update(self.rates(flops, seconds, len(x)), **self.mem_figures(start))
        if compile_:
            out["compile_s"] = max(out["first_step_s"] - seconds, 0.0)
        del model, opt, step
        return out

    def time_eval(self, base, path: str, res: int, tta: bool) -> dict:
        B = self.batch(res, "val_batch_size")
        x = torch.randn(B, 3, self.size(res), self.size(res), device=self.device)
        model = base.eval()
        fwd = model.forward_reference if path == "reference" else model
        amp = path != "reference"

        @torch.no_grad()
        def run():
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                views = [x, x.flip(-2), x.flip(-1)] if tta else [x]
                return torch.stack([fwd(v).float() for v in views]).mean(0)
        try:
            start = self.mem_start()
            s = timeit(run, self.device, warmup=self.warmup, repeat=self.steps)
            return {"batch": B, "precision": "bf16" if amp else "fp32", "seconds_per_batch": s, "images_per_s": B / s,
                    **self.mem_figures(start, label="activations_gib")}
        finally:
            base.train()

    # -- 1: correctness --------------------------------------------------------------------------
    def s1a(self) -> dict:
        res, B = 384, 2
        torch.manual_seed(0)
        model = self.build(res).eval()
        x = torch.randn(B, 3, self.size(res), self.size(res), device=self.device)
        with exact_fp32(), torch.no_grad():
            fast = model(x).float()
            ref = model.forward_reference(x).float()
        diff = (fast - ref).abs().max().item()
        rel = ((fast - ref).abs() / ref.abs().clamp(min=1e-6)).max().item()
        self.state["model_384"] = model.train()
        passed = math.isfinite(diff) and diff < TOL_FAST_VS_REF and bool(torch.isfinite(fast).all())
        return {"res": res, "img_size": self.size(res), "batch": B, "precision": "fp32, TF32 off", "mode": "eval",
                "scores_fast": fast.tolist(), "scores_reference": ref.tolist(), "max_abs_diff": diff,
                "max_rel_diff": rel, "tolerance_abs": TOL_FAST_VS_REF, "passed": passed,
                "summary": {"max |fast - reference|": diff, "passed": passed}}

    def s1b(self) -> dict:
        res = 384
        B = 2 if self.dry else 8
        model = self.state.get("model_384")
        model = (model if model is not None else self.build(res)).eval()
        torch.manual_seed(1)
        x = torch.randn(B, 3, self.size(res), self.size(res), device=self.device)
        with torch.no_grad():
            with exact_fp32():
                fp32 = model(x).float()
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                bf16 = model(x).float()
        model.train()
        diff = (bf16 - fp32).abs().max().item()
        rel = ((bf16 - fp32).abs() / fp32.abs().clamp(min=1e-6)).max().item()
        passed = math.isfinite(diff) and diff <= TOL_BF16
        return {"res": res, "img_size": self.size(res), "batch": B, "scores_fp32": fp32.tolist(),
                "scores_bf16": bf16.tolist(), "max_abs_diff": diff, "max_rel_diff": rel, "tolerance_abs": TOL_BF16,
                "tolerance_note": "scores on the 0-1 target scale (mos / mos_scale): 1e-2 = 0.1 MOS on the challenge's "
                                  "0-10 scale; random weights, so trained weights may differ",
                "passed": passed, "summary": {"max |bf16 - fp32|": diff, "passed": passed}}

    def s1c(self) -> dict:
        res = 384
        B, S = self.batch(res), self.size(res)
        model = self.state.pop("model_384", None)
        model = (model if model is not None else self.build(res)).train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-5, weight_decay=1e-5, fused=True)
        compiled = torch.compile(model, backend=self.backend, dynamic=False)
        torch.manual_seed(2)
        x = torch.randn(B, 3, S, S, device=self.device)
        y = torch.rand(B, device=self.device)
        watch = [params[0], params[len(params) // 2], params[-1]]
        before = [p.detach().clone() for p in watch]
        start = self.mem_start()
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            pred = compiled(x)
        loss = F.mse_loss(pred.float(), y)
        loss.backward()
        sync(self.device)
        first_fwd_bwd = time.perf_counter() - t
        missing = sum(p.grad is None for p in params)
        bad = sum(int(not torch.isfinite(p.grad).all()) for p in params if p.grad is not None)
        grad_norm = torch.norm(torch.stack([p.grad.float().norm() for p in params if p.grad is not None])).item()
        opt.step()
        sync(self.device)
        first_step = time.perf_counter() - t
        changed = sum(int(not torch.equal(b, p.detach())) for b, p in zip(before, watch))
        params_finite = all(bool(torch.isfinite(p).all()) for p in params)
        steady = timeit(make_step(compiled, opt, x, y, torch.bfloat16), self.device, warmup=0, repeat=max(1, self.steps // 3))
        held = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        mem = self.mem_figures(start, held=held)  # the weights existed before `start`: counted back in
        passed = bool(torch.isfinite(loss)) and missing == 0 and bad == 0 and params_finite and changed == len(watch)
        self.state["cold_compile_s"] = max(first_step - steady, 0.0)
        del compiled, opt, model
        return {"res": res, "img_size": S, "batch": B, "precision": "bf16 autocast", "optimizer": "Adam(fused=True)",
                "compile_backend": self.backend, "loss": loss.item(), "pred_finite": bool(torch.isfinite(pred).all()),
                "trainable_tensors": len(params), "grads_missing": missing, "grads_nonfinite": bad,
                "grad_norm": grad_norm, "params_finite_after_step": params_finite,
                "watched_params_changed": f"{changed}/{len(watch)}", "first_fwd_bwd_s": first_fwd_bwd,
                "first_step_s": first_step, "steady_step_s": steady, "cold_compile_s": self.state["cold_compile_s"],
                **mem, "passed": passed,
                "summary": {"finite gradients, weights updated": passed, "cold compile s": self.state["cold_compile_s"],
                            "steady step s": steady}}

    # -- 2: speed ---------------------------------------------------------------------------------
    def s2(self, res: int) -> dict:
        S, B = self.size(res), self.batch(res)
        torch.manual_seed(0)
        base = self.build(res)
        x = torch.randn(B, 3, S, S, device=self.device)
        y = torch.rand(B, device=self.device)
        flops = {p: self.guarded(lambda p=p: {"flops": count_flops(base, x, p)}) for p in ("fast", "reference")}
        f_fast, f_ref = flops["fast"].get("flops"), flops["reference"].get("flops")
        out = {"res": res, "img_size": S, "batch": B, "tokens": (S // 16) ** 2,
               "flops_per_step": {"kit (fast path)": f_fast, "reference": f_ref,
                                  "source": "torch.utils.flop_counter, one fwd+bwd on the meta device"}}
        out["reference"] = self.guarded(lambda: self.time_train(base, "reference", x, y, f_ref))
        out["kit_eager"] = self.guarded(lambda: self.time_train(base, "kit", x, y, f_fast))
        # Compiling costs minutes; leave the later sections their time (384 reuses 1c's caches).
        est = (self.state.get("cold_compile_s") or 120.0) * (0.4 if res == 384 else 1.3) + 10
        room = self.left() - self.reserve_after(self.current)
        c1 = self.result["sections"].get("1c_compiled_train_step", {})
        if c1.get("status") == "error":
            out["kit_compiled"] = {"skipped": "torch.compile failed in 1c (its error is there): not tried again"}
        elif self.dry or room >= est:
            out["kit_compiled"] = self.guarded(lambda: self.time_train(base, "kit", x, y, f_fast, compile_=True))
            out["kit_compiled"]["compile_note"] = ("compile_s = first step - steady step; at 384 the caches of 1c "
                                                   "are warm" if res == 384 else "compile_s = first step - steady step")
            if not self.dry:
                torch._dynamo.reset()  # drop this size's graphs before the next size compiles
        else:
            out["kit_compiled"] = {"skipped": f"compile estimated at ~{est:.0f} s, {room:.0f} s left after the "
                                              f"later sections' share of the budget"}
        out["eval"] = {"reference_fp32": self.guarded(lambda: self.time_eval(base, "reference", res, tta=False)),
                       "kit_bf16": self.guarded(lambda: self.time_eval(base, "kit", res, tta=False)),
                       "kit_bf16_flip_tta": self.guarded(lambda: self.time_eval(base, "kit", res, tta=True))}
        ref_s = out["reference"].get("step_s")
        for k in ("kit_eager", "kit_compiled"):
            if ref_s and out[k].get("step_s"):
                out[k]["speedup_vs_reference"] = ref_s / out[k]["step_s"]
        speed = {"reference_train": out["reference"].get("images_per_s"),
                 "kit_eager_train": out["kit_eager"].get("images_per_s"),
                 "kit_compiled_train": out["kit_compiled"].get("images_per_s"),
                 "reference_eval": out["eval"]["reference_fp32"].get("images_per_s"),
                 "kit_eval": out["eval"]["kit_bf16"].get("images_per_s"),
                 "kit_eval_tta": out["eval"]["kit_bf16_flip_tta"].get("images_per_s")}
        self.state["speed"][res] = speed
        g = lambda d, k: d.get(k) if isinstance(d, dict) else None  # noqa: E731
        out["summary"] = {
            "reference img/s": speed["reference_train"], "kit eager img/s": speed["kit_eager_train"],
            "kit compiled img/s": speed["kit_compiled_train"],
            "speedup eager": g(out["kit_eager"], "speedup_vs_reference"),
            "speedup compiled": g(out["kit_compiled"], "speedup_vs_reference"),
            "MFU reference": g(out["reference"], "mfu_bf16"), "MFU kit eager": g(out["kit_eager"], "mfu_bf16"),
            "MFU kit compiled": g(out["kit_compiled"], "mfu_bf16"),
            "compile s": g(out["kit_compiled"], "compile_s"),
            "train mem GiB ref/kit": f"{_fmt(g(out['reference'], 'train_mem_gib'))} / {_fmt(g(out['kit_eager'], 'train_mem_gib'))}",
            "eval img/s kit (TTA)": f"{_fmt(speed['kit_eval'])} ({_fmt(speed['kit_eval_tta'])})",
            "errors": ", ".join(k for k in ("reference", "kit_eager", "kit_compiled") if "error" in out[k]) or None,
        }
        return out

    def s_tab(self) -> dict:
        """TAB: attention among C channels, each a vector of N tokens (head dim N = 576-1,600)."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backends = {f"sdpa_4d_{n}": getattr(SDPBackend, b) for n, b in
                    (("flash", "FLASH_ATTENTION"), ("efficient", "EFFICIENT_ATTENTION"),
                     ("cudnn", "CUDNN_ATTENTION"), ("math", "MATH")) if hasattr(SDPBackend, b)}
        D = DRY_MODEL["embed_dim"] if self.dry else 768
        rows, totals = [], {"sdpa": 0.0, "explicit": 0.0}
        for res in self.resolutions:
            S, B = self.size(res), self.batch(res)
            N = (S // 16) ** 2
            for stage, C in (("tablock1", 4 * D), ("tablock2", D)):
                if self.left() - self.reserve_after(self.current) < 2:
                    rows.append({"res": res, "stage": stage, "skipped": "budget"})
                    continue
                torch.manual_seed(3)
                q, k, v = (torch.randn(B, C, N, device=self.device, dtype=torch.bfloat16, requires_grad=True)
                           for _ in range(3))
                grad = torch.randn(B, C, N, device=self.device, dtype=torch.bfloat16)
                scale = N ** -0.5

                def explicit():
                    return (q @ k.transpose(-2, -1) * scale).softmax(dim=-1) @ v

                def sdpa():  # exactly the model's call: 3-D (B, C, N), the default dispatch
                    return F.scaled_dot_product_attention(q, k, v)

                def sdpa_4d(backend=None):  # one head: (B, 1, C, N), which the fused kernels accept
                    with sdpa_kernel([backend]) if backend is not None else nullcontext():
                        return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]

                variants = {"sdpa": sdpa, "explicit": explicit, "sdpa_4d": sdpa_4d,
                            **{n: (lambda b=b: sdpa_4d(b)) for n, b in backends.items()}}
                with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16):
                    want = explicit().float()
                row = {"res": res, "stage": stage, "batch": B, "channels": C, "tokens (head dim)": N}
                for name, fn in variants.items():
                    row[name] = self.guarded(lambda fn=fn, name=name: self._time_attention(
                        fn, q, k, v, grad, want, forced=name in backends))
                fb = {n: row[n].get("fwd_bwd_ms") for n in ("sdpa", "explicit") if isinstance(row[n], dict)}
                if len(fb) == 2 and all(fb.values()):
                    row["faster"] = min(fb, key=fb.get)
                    row["ratio_explicit_over_sdpa"] = fb["explicit"] / fb["sdpa"]
                    for n in totals:
                        totals[n] += fb[n]
                timed = {n: r["fwd_bwd_ms"] for n, r in row.items() if isinstance(r, dict) and r.get("fwd_bwd_ms")}
                row["fastest_variant"] = min(timed, key=timed.get) if timed else None
                rows.append(row)
        faster = min(totals, key=totals.get) if all(totals.values()) else None
        summary = {f"{r['res']} {r['stage']} faster (fastest variant)": f"{r['faster']} ({r['fastest_variant']})"
                   for r in rows if "faster" in r}
        summary["overall faster (sum fwd+bwd)"] = faster
        return {"precision": "bf16 autocast (as in the model)", "rows": rows,
                "fwd_bwd_ms_total": totals, "faster_overall": faster,
                "note": "sdpa = the kit's TABlock call (3-D q, k, v; default dispatch); sdpa_4d = the same as one "
                        "head (B, 1, C, N), which fused kernels may accept; sdpa_4d_<backend> forces a backend "
                        "(unsupported = its kernel refuses these shapes); explicit = bf16 matmul + softmax "
                        "(TABlock fused=False). faster = sdpa vs explicit; fastest_variant = over all variants.",
                "summary": summary}

    def _time_attention(self, fn, q, k, v, grad, want, forced: bool) -> dict:
        def fwd():
            with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16):
                return fn()

        def fwd_bwd():
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                out = fn()
            out.backward(grad)
            q.grad = k.grad = v.grad = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = fwd().float()
        except RuntimeError as e:
            if forced:  # a forced backend that refuses these shapes: a finding, not a failure
                return {"unsupported": str(e).splitlines()[0][:200]}
            raise
        diff = (got - want).abs().max().item()
        f = timeit(fwd, self.device, warmup=self.warmup, repeat=self.steps)
        fb = timeit(fwd_bwd, self.device, warmup=self.warmup, repeat=self.steps)
        return {"fwd_ms": f * 1e3, "fwd_bwd_ms": fb * 1e3, "max_abs_diff_vs_explicit": diff}

    # -- 4: the grid ------------------------------------------------------------------------------
    def s4(self) -> dict:
        speed = self.state["speed"]
        if not speed:
            raise SkipSection("no training throughput was measured (section 2 skipped or failed)")
        n_folds = int(team_params(384).get("n_folds", 5))
        typical = self.args.typical_epochs
        train_imgs, val_imgs = TRAIN_IMAGES * (n_folds - 1) / n_folds, TRAIN_IMAGES / n_folds
        rows, totals = [], {}
        for res, sp in speed.items():
            p = team_params(res)
            cap, patience = int(p["train"]["epochs"]), int(p["train"]["patience"])
            kit_train = sp.get("kit_compiled_train") or sp.get("kit_eager_train")
            kit_path = "compiled" if sp.get("kit_compiled_train") else "eager"
            for path, tr, ev in (("reference", sp.get("reference_train"), sp.get("reference_eval")),
                                 (f"kit ({kit_path})", kit_train, sp.get("kit_eval"))):
                if not tr or not ev:
                    rows.append({"res": res, "path": path, "skipped": "throughput missing"})
                    continue
                epoch_h = (train_imgs / tr + val_imgs / ev) / 3600
                predict_h = TEST_IMAGES / ev / 3600
                row = {"res": res, "path": path, "train_img_s": tr, "eval_img_s": ev, "epoch_h": epoch_h,
                       f"run_h_{typical}_epochs": typical * epoch_h + predict_h,
                       f"run_h_{cap}_epochs": cap * epoch_h + predict_h, "patience": patience}
                rows.append(row)
                key = path.split(" ")[0]
                t = totals.setdefault(key, {"typical_h": 0.0, "cap_h": 0.0, "resolutions": []})
                t["typical_h"] += n_folds * row[f"run_h_{typical}_epochs"]
                t["cap_h"] += n_folds * row[f"run_h_{cap}_epochs"]
                t["resolutions"].append(res)
        summary = {}
        for key, t in totals.items():
            summary[f"{key}: grid h at {typical} epochs"] = t["typical_h"]
            summary[f"{key}: grid h at the 200-epoch cap"] = t["cap_h"]
            summary[f"{key}: resolutions measured"] = ",".join(map(str, t["resolutions"]))
        return {"assumptions": {
                    "train_images": TRAIN_IMAGES, "n_folds": n_folds, "runs": n_folds * len(speed),
                    "per_epoch": f"{train_imgs:.0f} training images at the training images/s + {val_imgs:.0f} "
                                 f"validation images at the eval (no TTA) images/s",
                    "epochs": f"the params' cap ({cap} epochs, the team's max) and a typical early-stopped run of "
                              f"{typical} epochs (--typical-epochs: best epoch ~{typical - patience} + patience {patience})",
                    "per_run_extra": f"{TEST_IMAGES} test images predicted once per run",
                    "device": "one GPU, runs one after another, batch sizes of params/{res}.yaml, loader assumed to "
                              "keep up (section 3 says whether it does)",
                    "kit_path": "the compiled kit where section 2 measured it, else eager"},
                "rows": rows, "totals": totals, "summary": summary,
                **({"note": "dry run: tiny CPU model, the hours mean nothing"} if self.dry else {})}

    # -- 1d: resume after SIGKILL (kit) -------------------------------------------------------------
    def s1d(self) -> dict:
        kit_import("iqa_lib.train", "iqa_lib.config", "iqa_lib.train", "iqa_lib.checkpoint")
        from iqa_lib.checkpoint import safe_torch_load
        from iqa_lib.config import load_config

        import pandas as pd

        tmp = Path(tempfile.mkdtemp(prefix="gpu_check_resume_"))
        try:
            data = tmp / "data"
            # GPU: 48 training images per fold, 6 steps per epoch; dry run: 16, 2 steps per epoch.
            load_demo_maker()(data, n_train=20 if self.dry else 60, n_test=4, seed=0)
            overrides = {"train.epochs": 2 if self.dry else 3, "train.batch_size": 8, "train.num_workers": 0,
                         "train.patience": 10, "train.deterministic": True,
                         "train.save_every_steps": 1 if self.dry else 2, "train.device": self.device.type}
            args = {"profile": "demo", "res": 64, "overrides": overrides, "data_dir": str(data)}
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                   "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "PYTHONUNBUFFERED": "1",
                   **({"OMP_NUM_THREADS": "1"} if self.dry else {})}

            def child(name, kill=False):
                a = {**args, "out_dir": str(tmp / name), "kill": kill}
                log = open(tmp / f"{name}.log", "w")
                return subprocess.Popen([sys.executable, "-c", FIT_CHILD, json.dumps(a)], stdout=log,
                                        stderr=subprocess.STDOUT, env=env, cwd=REPO), tmp / f"{name}.log"

            def cfg_of(name):
                return load_config("demo", res=64, fold=0, overrides=overrides, data_dir=str(data),
                                   out_dir=str(tmp / name))

            def finish(proc, log, what):
                limit = max(30.0, self.left() - self.reserve_after(self.current) + 20)
                try:
                    proc.wait(timeout=limit)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    raise RuntimeError(f"the {what} fit did not end within {limit:.0f} s: {log.read_text()[-1500:]}")
                text = log.read_text()
                if proc.returncode != 0:
                    raise RuntimeError(f"the {what} fit failed (exit {proc.returncode}): {text[-2500:]}")
                line = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
                return json.loads(line[-1][7:]) if line else {}, text

            t = time.perf_counter()
            ref_proc, ref_log = child("uninterrupted")
            kill_proc, kill_log = child("killed", kill=True)
            last = cfg_of("killed").run.last
            killed_by, seen = "itself (hook one batch after a mid-epoch last.pt)", None
            deadline = time.time() + max(30.0, self.left() - self.reserve_after(self.current))
            while kill_proc.poll() is None and time.time() < deadline:
                if last.is_file() and last.stat().st_mtime_ns != seen:
                    seen = last.stat().st_mtime_ns
                    try:
                        st = safe_torch_load(last, "resume state")
                        if st.get("epoch", 0) >= 1 and st.get("batch_in_epoch", 0) > 0 and kill_proc.poll() is None:
                            time.sleep(0.02)
                            if kill_proc.poll() is None:
                                os.kill(kill_proc.pid, signal.SIGKILL)
                                killed_by = "the parent (watching last.pt)"
                    except Exception:
                        pass
                time.sleep(0.02)
            if kill_proc.poll() is None:
                kill_proc.kill()
            kill_proc.wait()
            killed = kill_proc.returncode == -signal.SIGKILL
            if not killed:
                raise RuntimeError(f"the fit to be killed ended with exit {kill_proc.returncode} before it was "
                                   f"killed: {kill_log.read_text()[-2000:]}")
            state = safe_torch_load(last, "resume state")
            killed_at = {k: state.get(k) for k in ("epoch", "batch_in_epoch", "step")}
            manifest = cfg_of("killed").run.manifest
            status_after_kill = json.loads(manifest.read_text()).get("status") if manifest.is_file() else None
            cuda_rng_saved = (state.get("rng") or {}).get("cuda") is not None
            del state
            res_proc, res_log = child("killed")  # the same out_dir: resumes from last.pt
            resumed, resumed_text = finish(res_proc, res_log, "resumed")
            reference, _ = finish(ref_proc, ref_log, "uninterrupted")
            a = pd.read_csv(cfg_of("uninterrupted").run.metrics)
            b = pd.read_csv(cfg_of("killed").run.metrics)
            keep = [c for c in a.columns if not TIMING_COLUMNS.search(c)]
            a, b = a[keep], b[[c for c in keep if c in b.columns]]
            identical = a.shape == b.shape and a.equals(b)
            num = [c for c in keep if pd.api.types.is_numeric_dtype(a[c])]
            max_diff = (float((a[num] - b[num]).abs().max().max()) if a.shape == b.shape and num else None)
            return {"profile": "demo", "res": 64, "device": self.device.type, "overrides": overrides,
                    "killed_by": killed_by, "killed_at": killed_at, "manifest_status_after_kill": status_after_kill,
                    "cuda_rng_in_resume_state": cuda_rng_saved,
                    "resumed_log_says_resuming": "resum" in resumed_text.lower(),
                    "uninterrupted": reference, "resumed": resumed, "compared_columns": keep,
                    "epochs_compared": len(a), "metrics_identical": identical, "max_abs_diff": max_diff,
                    "passed": identical and resumed.get("status") == "completed", "seconds_fits": time.perf_counter() - t,
                    "summary": {"killed at (epoch, batch)": f"{killed_at['epoch']}, {killed_at['batch_in_epoch']}",
                                "metrics.csv identical to uninterrupted": identical, "max |diff|": max_diff}}
        finally:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)

    # -- 3: input pipeline (partly kit) ---------------------------------------------------------------
    def s3(self) -> dict:
        res = 384
        S = self.size(res)
        W = self.workers
        B = self.batch(res)
        tmp = Path(tempfile.mkdtemp(prefix="gpu_check_pipeline_"))
        out: dict = {"res": res, "img_size": S, "batch": B, "workers": W,
                     "workers_note": None if self.dry or W >= 8 else f"only {W} CPU cores: fewer than the 8-16 asked for"}
        gpu_rate = self.state["speed"].get(res, {}).get("kit_eager_train")
        out["gpu_consumes_img_s"] = gpu_rate
        out["gpu_consumes_source"] = "section 2: kit eager training step at this size and batch (the fit's path)"
        try:
            data = tmp / "data"
            if self.dry:
                out["data"] = make_fit_data(data, n_train=20, n_test=4, copies=2)
            else:
                out["data"] = make_fit_data(data, n_train=100, n_test=32, copies=16, size=(1024, 768))
            train_paths = sorted(str(p) for p in (data / "train").glob("*.jpg"))

            def decode_loader():
                loader = torch.utils.data.DataLoader(_DecodeSet(train_paths, S), batch_size=B, shuffle=True,
                                                     num_workers=W, persistent_workers=W > 0)
                measure_loader(loader, max_batches=2)  # start the workers first
                r = measure_loader(loader)
                return {"images_per_s": r["images_per_s"], "images": r["images"], "seconds": r["seconds"],
                        "what": "PIL draft decode + bicubic resize every epoch (no kit code), DataLoader"}
            out["decode_loader"] = self.guarded(decode_loader)

            def kit_loader():
                kit_import("iqa_lib.data", "iqa_lib.data")
                from bench_loader import bench
                from iqa_lib import data as D

                table_ = D.load_table(data, "train.csv", labelled=True, mos_scale=10.0, check_images="none",
                                      progress=False)
                paths = sorted(set(table_["path"]))
                row = bench("generated JPEG", paths, S, [W], B, tmp / "out" / "cache")[0]
                return {"cache_build_s": row["cache_build_s"], "cache_build_img_s": len(paths) / row["cache_build_s"],
                        "cache_img_s": row["cache_img_s"], "decode_img_s": row["decode_img_s"],
                        "what": "benchmarks/bench_loader.bench: the kit's ImageStore + make_loader"}
            out["kit_loader"] = self.guarded(kit_loader)
            out["fit"] = self.guarded(lambda: self._fit(data, tmp / "out", W))
            ckpt = out["fit"].get("checkpoint")
            out["inference"] = (self.guarded(lambda: self._predict(ckpt, data, W)) if ckpt else
                                {"skipped": out["fit"].get("skipped") or "no checkpoint: the fit did not run"})
        finally:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        fed = {"decode every epoch": out["decode_loader"].get("images_per_s"),
               "kit cache": out["kit_loader"].get("cache_img_s"), "kit decode": out["kit_loader"].get("decode_img_s")}
        verdict = {}
        if gpu_rate:
            for k, v in fed.items():
                if v:
                    verdict[k] = ("loader-bound" if v < gpu_rate else "GPU-bound") + f" ({v / gpu_rate:.2f}x of what the GPU takes)"
        out["fed_img_s"] = fed
        out["bottleneck"] = verdict or None
        fit = out.get("fit", {})
        out["summary"] = {"GPU consumes img/s": gpu_rate, **{f"fed img/s, {k}": v for k, v in fed.items()},
                          "fit achieved img/s (last epoch)": fit.get("last_epoch_train_img_s"),
                          **{f"bottleneck, {k}": v for k, v in verdict.items()},
                          "predict img/s (TTA)": f"{_fmt(out.get('inference', {}).get('no_tta', {}).get('images_per_s'))} "
                                                 f"({_fmt(out.get('inference', {}).get('flip_tta', {}).get('images_per_s'))})",
                          "skipped": "; ".join(sorted({v["skipped"] for v in out.values()
                                                      if isinstance(v, dict) and "skipped" in v})) or None}
        return out

    def _fit(self, data: Path, out_dir: Path, W: int) -> dict:
        kit_import("iqa_lib.train", "iqa_lib.config", "iqa_lib.train")
        from iqa_lib.config import load_config
        from iqa_lib.train import fit

        if self.dry:
            cfg = load_config("demo", res=64, fold=0, data_dir=str(data), out_dir=str(out_dir), overrides={
                "train.epochs": 2, "train.num_workers": W, "train.device": "cpu", "train.patience": 10})
        else:
            cfg = load_config("team", res=384, fold=0, data_dir=str(data), out_dir=str(out_dir), overrides={
                "model.pretrained": False, "train.epochs": 2, "train.num_workers": W, "train.device": "cuda",
                "train.patience": 10})
        t = time.perf_counter()
        r = fit(cfg, progress=False, force=False)
        seconds = time.perf_counter() - t
        hist = r.history
        cols = [c for c in ("epoch", "train_images_per_s", "train_seconds", "val_loss", "srcc") if c in hist.columns]
        return {"profile": cfg.profile, "res": cfg.res, "batch": cfg.train.batch_size, "epochs": cfg.train.epochs,
                "precision": cfg.train.precision, "compile": cfg.train.compile, "status": r.status,
                "best_epoch": r.best_epoch, "best": r.best, "history": hist[cols].to_dict("records"),
                "last_epoch_train_img_s": float(hist["train_images_per_s"].iloc[-1]) if len(hist) else None,
                "fit_seconds": seconds, "checkpoint": str(cfg.run.checkpoint),
                "note": "epoch 0 includes the first-step warm-up; the last epoch is the steady figure"}

    def _predict(self, ckpt: str, data: Path, W: int) -> dict:
        kit_import("iqa_lib.infer", "iqa_lib.infer")
        from iqa_lib.infer import predict

        B = self.batch(384, "val_batch_size") if self.dry else int(team_params(384)["infer"]["batch_size"])
        out = {"batch": B, "what": "predict(checkpoint, data_dir, 'test.csv'): model load + decode + forward, "
                                   "end to end (model-only eval speed: section 2)"}
        runs = (("warm_up", False), ("no_tta", False), ("flip_tta", True))
        for name, tta in runs:
            t = time.perf_counter()
            df = predict(ckpt, data, "test.csv", batch_size=B, tta=tta, device=self.device.type, precision="bf16",
                         num_workers=W, progress=False)
            s = time.perf_counter() - t
            ok = len(df) > 0 and bool(np.isfinite(df["mos"].to_numpy(dtype=float)).all())
            out[name] = {"images": len(df), "seconds": s, "images_per_s": len(df) / s, "finite": ok}
        return out


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def print_table(result: dict) -> None:
    rows = []
    for name, sec in result["sections"].items():
        if sec["status"] != "ok":
            rows.append({"section": name, "figure": sec["status"],
                         "value": (sec.get("skipped") or sec.get("error") or "")[:90]})
            continue
        for k, v in (sec.get("summary") or {}).items():
            if v is not None:
                rows.append({"section": name, "figure": k, "value": v if isinstance(v, (int, float)) else str(v)[:90]})
        rows.append({"section": name, "figure": "seconds", "value": sec.get("seconds")})
    print()
    print(table(rows, ["section", "figure", "value"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, one step per measurement (< 1 min)")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/gpu_check_<device>.json)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="time budget for all sections (default 420)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per measurement (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    ap.add_argument("--res", type=int, nargs="+", default=list(RESOLUTIONS), choices=RESOLUTIONS)
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; dry run: eager)")
    ap.add_argument("--workers", type=int, default=None, help="loader workers (default min(16, CPU cores))")
    ap.add_argument("--only", nargs="+", default=None, metavar="PREFIX",
                    help="run only the sections whose names start with these (e.g. 1a 2_tab); for reruns")
    ap.add_argument("--typical-epochs", type=int, default=30, help="epochs of an early-stopped run, for the grid estimate")
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible. Run it on a GPU machine, or use --dry-run for the CPU smoke test.",
              file=sys.stderr)
        return 2
    check = Check(args)
    print(f"gpu_check on {check.result['device']} ({'dry run' if check.dry else 'full'}), "
          f"budget {check.budget:.0f} s -> {check.out}", flush=True)
    result = check.run()
    print_table(result)
    print(f"\nwrote {check.out} in {result['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
