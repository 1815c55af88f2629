"""Shared by the benchmark scripts: timing, the machine's description, result files."""
import json
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from iqa_lib.runinfo import device_name, package_versions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, for MFU.
BF16_PEAK_TFLOPS = {"H100 SXM": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0}


def peak_bf16_tflops(name: str) -> float | None:
    for key, value in BF16_PEAK_TFLOPS.items():
        if key.lower() in name.lower():
            return value
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device, warmup=1, repeat=3, min_seconds=0.0) -> float:
    """Median seconds per call of `fn` after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    while len(times) < repeat or sum(times) < min_seconds:
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def machine(device: torch.device | None = None) -> dict:
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {"device": device_name(device), "device_type": device.type, "torch_threads": torch.get_num_threads(),
            "versions": package_versions(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def save(name: str, result: dict, device: torch.device | None = None, slug: str | None = None) -> Path:
    """benchmarks/results/{name}_{cpu|gpu-name}.json, with the machine it ran on."""
    info = machine(device)
    if slug is None:
        slug = "cpu" if info["device_type"] == "cpu" else re.sub(r"[^a-z0-9]+", "-", info["device"].lower()).strip("-")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}_{slug}.json"
    path.write_text(json.dumps({"benchmark": name, **info, **result}, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(RESULTS.parents[1])}  ({info['device']})")
    return path


def table(rows: list[dict], columns: list[str]) -> str:
    cells = [[f"{r.get(c):.3g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def measure_loader(loader, max_batches: int | None = None) -> dict:
    """Iterate a data loader and time it (worker start-up included; `first_batch_s` shows it).

    Returns images, batches, seconds, images_per_s and first_batch_s.
    """
    images = batches = 0
    first = float("nan")
    t0 = time.perf_counter()
    for batch in loader:
        head = batch[0] if isinstance(batch, (tuple, list)) else batch
        images += len(head)
        batches += 1
        if batches == 1:
            first = time.perf_counter() - t0
        if max_batches is not None and batches >= max_batches:
            break
    seconds = time.perf_counter() - t0
    return {"images": images, "batches": batches, "seconds": seconds,
            "images_per_s": images / seconds if seconds > 0 else float("inf"), "first_batch_s": first}


def make_step(forward, optimizer, x, y, amp_dtype):
    """One training step (zero grads, forward under autocast, MSE, backward, optimiser step) as a
    closure to time: `forward` is the model path measured (kit or team-style reference)."""
    import torch.nn.functional as F

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            pred = forward(x)
        F.mse_loss(pred.float(), y).backward()
        optimizer.step()
    return step


def profile_step(cfg):
    """The trainer's training step for one run's parameters (`load_config(...)`), on the CPU with random
    weights and a random batch: blocks frozen as the profile says, fused Adam over the trainer's
    parameter groups, its autocast. Returns (model, step, autocast dtype or None)."""
    from iqa_lib.infer import autocast_dtype, model_config
    from iqa_lib.model import MANIQA
    from iqa_lib.train import param_groups

    tp = cfg.train
    torch.manual_seed(0)
    model = MANIQA(model_config(cfg)).train()
    if tp.freeze_backbone or tp.freeze_blocks:
        model.freeze_backbone(None if tp.freeze_backbone else tp.freeze_blocks)
    opt = torch.optim.Adam(param_groups(model, cfg.optim.backbone_lr_scale), lr=cfg.optim.lr, fused=True)
    amp = autocast_dtype(tp.precision, torch.device("cpu"), tp.cpu_bf16)
    side = cfg.model.img_size
    x, y = torch.randn(tp.batch_size, 3, side, side), torch.rand(tp.batch_size)
    return model, make_step(model, opt, x, y, amp), amp
