"""lab/bench_busy.py: how fast does training go when another program keeps one core busy?

    python -m lab.bench_busy             # about 2 minutes on a 2-core CPU; run it on a quiet machine
    python -m lab.bench_busy --seconds 5 # shorter cases

A student's laptop is rarely idle: a browser tab or a video call keeps a core busy. PyTorch's CPU
threads (OpenMP, libgomp) by default spin while they wait for each other, so when one of them has
lost its core to another program, the others spin through their time slices waiting for it. The
scripts set OMP_WAIT_POLICY=PASSIVE (waiting threads sleep) unless the environment sets it. This
benchmark measures both policies on the LM's training step and the SAE's fused step, alone and
beside one busy process, each in a fresh process (the policy is read once, when torch loads), the
cases interleaved so that a drift of the machine hits them alike. Throughput is the mean over the
case's window, not the best step: a busy core slows every step, and the mean is what a run sees.
"""
import argparse
import json
import os
import subprocess
import sys
import time

# libgomp's settings: by default a waiting thread spins 300,000 times before it sleeps; PASSIVE sleeps at once;
# a short spin count is the middle way
POLICIES = {"default (spin)": {}, "PASSIVE (sleep)": {"OMP_WAIT_POLICY": "PASSIVE"},
            "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"}}


def child(kind, seconds):
    """In a fresh process: one kind of step repeated for `seconds`; prints its throughput as JSON."""
    import torch

    from lab.bench import lm_step
    from lab.bench_sae import realistic_sae
    from lab.sae_fast import train_step
    from sae import make_optimizer
    if kind == "lm":
        step, per_step = lm_step(), 32 * 128
    else:
        sae, x = realistic_sae(4096)
        opt, batch = make_optimizer(sae, 0.0), x[:4096]   # lr 0: the SAE's sparsity stays put while timed
        step, per_step = (lambda: train_step(sae, opt, batch)), 4096
    step()  # warm-up: allocations, optimizer state
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    print(json.dumps({"rate": n * per_step / (time.perf_counter() - t0), "threads": torch.get_num_threads()}))


def run_case(kind, policy, busy, seconds):
    env = {**{k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}, **policy}
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        out = subprocess.run([sys.executable, "-m", "lab.bench_busy", "--child", kind, "--seconds", str(seconds)],
                             env=env, capture_output=True, text=True, check=True)
    finally:
        if hog:
            hog.kill()
            hog.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="seconds each case runs")
    p.add_argument("--repeats", type=int, default=2, help="times each case runs, interleaved")
    p.add_argument("--child", choices=["lm", "sae"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.seconds)
    rates = {}
    for _ in range(args.repeats):
        for kind in ("lm", "sae"):
            for busy in (False, True):
                for name, policy in POLICIES.items():
                    r = run_case(kind, policy, busy, args.seconds)
                    rates.setdefault((kind, name, busy), []).append(r["rate"])
    print(f"{os.cpu_count()} cores, {r['threads']} torch threads; mean throughput over {args.seconds:g} s, "
          f"{args.repeats} interleaved runs each (min-max)")
    print(f"{'step':5s} {'OpenMP wait policy':20s} {'alone':>22s} {'one core busy':>22s} {'busy/alone':>10s}")
    unit = {"lm": "tok/s", "sae": "act/s"}
    span = lambda v: f"{sum(v) / len(v):,.0f} ({min(v):,.0f}-{max(v):,.0f})"
    for kind in ("lm", "sae"):
        for name in POLICIES:
            quiet, busy = rates[kind, name, False], rates[kind, name, True]
            print(f"{kind:5s} {name:20s} {span(quiet):>22s} {span(busy):>22s} "
                  f"{sum(busy) / sum(quiet):10.2f}  {unit[kind]}")


if __name__ == "__main__":
    main()
