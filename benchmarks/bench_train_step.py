"""Training-step throughput: a team-style reference vs the kit's default, same weights and inputs.

(a) reference: fp32, the official forward (full ViT with hooks, per-image head loop, attention
    spelled out), torch's default Adam.
(b) kit: the fast path, bf16 autocast on a GPU (fp32 on a CPU), fused Adam, and
    torch.compile with --compile.

    python benchmarks/bench_train_step.py                      # GPU: 384/448/640 at the params' batch sizes
    python benchmarks/bench_train_step.py --res 384 --batch 2  # what fits a CPU in a minute

FLOPs are counted with torch.utils.flop_counter on one forward+backward of the fast path
(matmuls, convolutions, attention); MFU = those FLOPs per second / the GPU's dense bf16 peak.
"""
import argparse
import copy
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import make_step, peak_bf16_tflops, save, table, timeit
from iqa_lib.model import MANIQA, variant_config
from iqa_lib.config import load_config
from iqa_lib.runinfo import device_name


def count_flops(model, x) -> int:
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def bench_res(res, batch, device, compile_, repeat):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = MANIQA(variant_config(res)).to(device).train()
    x = torch.randn(batch, 3, res, res, device=device)
    y = torch.rand(batch, device=device)
    cuda = device.type == "cuda"
    rows = {}
    for name in ("reference", "kit"):
        model = copy.deepcopy(base)  # same starting weights for both
        params = [p for p in model.parameters() if p.requires_grad]
        if name == "reference":
            opt = torch.optim.Adam(params, lr=1e-5, weight_decay=1e-5)
            step = make_step(model.forward_reference, opt, x, y, None)
        else:
            opt = torch.optim.Adam(params, lr=1e-5, weight_decay=1e-5, fused=True)
            fwd = torch.compile(model) if compile_ else model
            step = make_step(fwd, opt, x, y, torch.bfloat16 if cuda else None)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        seconds = timeit(step, device, warmup=3 if compile_ and name == "kit" else 1, repeat=repeat)
        rows[name] = {"res": res, "batch": batch, "path": name, "step_s": seconds, "images_per_s": batch / seconds,
                      "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None}
        del model, opt, step
    flops = count_flops(base, x)  # fp32 FLOP count of the fast path: the same arithmetic in any precision
    peak = peak_bf16_tflops(device_name(device)) if cuda else None
    for r in rows.values():
        r["tflops_per_s"] = flops / r["step_s"] / 1e12
        r["mfu_bf16"] = r["tflops_per_s"] / peak if peak else None
    rows["kit"]["speedup_vs_reference"] = rows["reference"]["step_s"] / rows["kit"]["step_s"]
    rows["kit"]["flops_per_step"] = rows["reference"]["flops_per_step"] = flops
    return list(rows.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", type=int, nargs="+", default=None, help="default: 384 448 640 on GPU, 384 on CPU")
    ap.add_argument("--batch", type=int, default=None, help="default: the params' batch size (GPU) or 2 (CPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the kit's model")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res_list = args.res or ([384, 448, 640] if device.type == "cuda" else [384])
    rows = []
    for res in res_list:
        batch = args.batch or (load_config("team", res).train.batch_size if device.type == "cuda" else 2)
        rows += bench_res(res, batch, device, args.compile, args.repeat if device.type == "cuda" else min(args.repeat, 3))
        print(table(rows[-2:], ["res", "batch", "path", "step_s", "images_per_s", "tflops_per_s", "mfu_bf16",
                                "peak_mem_gib", "speedup_vs_reference"]), flush=True)
    save("train_step", {"compile": args.compile, "flops_source": "torch.utils.flop_counter (fast path fwd+bwd)",
                        "rows": rows}, device)


if __name__ == "__main__":
    main()
