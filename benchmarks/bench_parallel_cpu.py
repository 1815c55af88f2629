"""Does `run_all --parallel N` pay on this CPU? A profile's training step, all the cores' threads in
one process, against N processes at once with the threads split between them (what --parallel N
does to the grid's trainings).

    python benchmarks/bench_parallel_cpu.py --profile cpu                # each input size, N = 2
    python benchmarks/bench_parallel_cpu.py --profile demo --parallel 4

Random weights and inputs (no data, no weights file), the profile's batch size, the autocast the
trainer would use on this CPU, blocks frozen as the profile says. Throughput is images per second
summed over the processes; a speedup above 1 means N trainings at once finish sooner than one after
the other. The two ways alternate `--repeat` times and the medians are compared: on a shared VM a
single reading can be off by 20%. Validation, 04_infer and 05_ensemble run one at a time either way.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from common import profile_step, save, table


def worker(profile: str, res: int, threads: int, warmup: int, steps: int) -> None:
    """Time `steps` training steps in this process, on `threads` threads; print one JSON line."""
    torch.set_num_threads(threads)
    from iqa_lib.config import load_config

    cfg = load_config(profile, res)
    tp = cfg.train
    _, step, amp = profile_step(cfg)
    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - t) / steps
    print(json.dumps({"step_s": seconds, "images_per_s": tp.batch_size / seconds, "batch": tp.batch_size,
                      "side": cfg.model.img_size, "bf16": amp is not None}), flush=True)


def measure(args, res: int, processes: int) -> dict:
    """`processes` workers at once, the cores' threads split between them: their summed throughput."""
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--worker", "--profile", args.profile, "--res", str(res),
           "--threads", str(threads), "--warmup", str(args.warmup), "--steps", str(args.steps)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a worker failed ({res} px, {processes} processes): see its error above")
    rows = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    return {"res": res, "side": rows[0]["side"], "batch": rows[0]["batch"], "bf16": rows[0]["bf16"],
            "processes": processes, "threads_each": threads, "step_s": max(r["step_s"] for r in rows),
            "images_per_s": sum(r["images_per_s"] for r in rows)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--res", type=int, nargs="+", help="the profile's input sizes to measure (default: all)")
    ap.add_argument("--parallel", type=int, default=2, help="trainings at once, as run_all --parallel N")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3, help="alternate the two ways this many times (medians)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.profile, args.res[0], args.threads, args.warmup, args.steps)
    if args.parallel < 2:
        ap.error("--parallel must be at least 2 (it is compared with one training at a time)")
    if args.repeat < 1 or args.steps < 1:
        ap.error("--repeat and --steps must be at least 1")
    from iqa_lib.config import profile_resolutions

    rows = []
    for res in args.res or profile_resolutions(args.profile):
        readings = [(measure(args, res, 1), measure(args, res, args.parallel)) for _ in range(args.repeat)]
        pair = []
        for k, processes in enumerate((1, args.parallel)):
            each = [r[k] for r in readings]
            pair.append({**each[0], "step_s": statistics.median(r["step_s"] for r in each),
                         "images_per_s": statistics.median(r["images_per_s"] for r in each),
                         "readings_images_per_s": [round(r["images_per_s"], 2) for r in each]})
        pair[1]["speedup"] = pair[1]["images_per_s"] / pair[0]["images_per_s"]
        rows += pair
        print(table(rows[-2:], ["res", "side", "batch", "processes", "threads_each", "step_s", "images_per_s",
                                "speedup", "readings_images_per_s"]), flush=True)
    save(f"parallel_runs_{args.profile}", {"what": "training-step throughput, one process with all threads vs "
                                              f"{args.parallel} processes with the threads split (run_all --parallel); "
                                              f"medians of {args.repeat} alternating readings of {args.steps} steps",
                                      "cpu_count": os.cpu_count(), "rows": rows}, torch.device("cpu"))


if __name__ == "__main__":
    main()
