"""
Speed of one SAE training step (sae.py): the autograd reference against the fused sparse step,
fp32 and with a bf16 encoder product, at F = 4096 and 16384 features, d = 512, batch 4096, L0 ~32.
A benchmark, not a test: `python -m lab.bench_sae` prints a table and, last, the headline speedup.
lab/bench.py imports bench_sae() and gemm_gflops().

FLOP floors per activation (d inputs, F features, L0 active features):
  dense  12*d*F: the autograd step's six GEMMs (encoder, decoder, and two backward each)
  sparse 2*d*F for the encoder product, the only dense one, + 8*d*L0 for decoding, the sampled
         gradient into the active features and the two weight gradients (+ 2*d*L0 with bf16, to
         recompute the active pre-activations in fp32)
A step's "% floor" is the time the floor would take at the measured GEMM rate over the time the
step took (fp32 rate for everything, except the bf16 encoder product at the bf16 rate).
"""
import copy
import time

import torch

from lab.plumbing import fast_bf16
from sae import SAE, SAEConfig, make_optimizer
from lab.sae_fast import train_step


def gemm_gflops(dtype=torch.float32, m=4096, k=512, n=4096, seconds=1.0, device="cpu"):
    """The machine's best matrix-multiply rate (GFLOP/s) for an (m,k) @ (k,n) product in dtype."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)
    best, t_end = float("inf"), time.perf_counter() + seconds
    while True:
        torch.mm(a, b, out=out)
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        if t0 > t_end:
            return 2 * m * k * n / best / 1e9


def gemm_rates():
    return {"fp32": gemm_gflops(torch.float32), "bf16": gemm_gflops(torch.bfloat16)}


def realistic_sae(F, d=512, L0=32, n=16384, seed=0):
    """An SAE on synthetic activations (sparse positive combinations of 2F random directions),
    with each encoder bias set so the feature fires on a fraction L0/F of inputs: the sparsity of
    a trained SAE, without training one."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    D = torch.randn(2 * F, d, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    idx = torch.randint(0, 2 * F, (n, 16), generator=g)
    x = (torch.rand(n, 16, 1, generator=g) * D[idx]).sum(1).relu()
    sae = SAE(SAEConfig(d_in=d, n_features=F))
    sae.init_from_data(x)
    with torch.no_grad():
        pre = sae.pre_acts(x[:4096] * sae.act_scale)
        sae.b_enc -= pre.sort(0).values[int(4096 * (1 - L0 / F))]
    return sae, x


def time_steps(step, seconds):
    """Best time of repeated calls (best-of: robust to other processes on a shared machine)."""
    step()  # warm-up: allocations, optimizer state
    times, t_end = [], time.perf_counter() + seconds
    while len(times) < 2 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_sae(seconds_per_case=3.0, gemm_gflops=None, sizes=(4096, 16384), batch=4096, d=512,
              quick=False, verbose=True):
    """Rows of dict(F, step, act_s, l0, dense_floor, sparse_floor), printed as a table when
    verbose. gemm_gflops: dict with the measured 'fp32' and 'bf16' rates in GFLOP/s (measured here
    if None). quick: F = 4096 only."""
    rates = gemm_gflops or gemm_rates()
    rows = []
    if verbose:
        print(f"\nSAE training step, d={d}, batch {batch}, best of {seconds_per_case:g} s per case")
        print(f"{'F':>6} {'step':<11} {'act/s':>8} {'L0':>5} {'of dense floor':>15} {'of sparse floor':>16}")
    for F in sizes[:1] if quick else sizes:
        sae, x = realistic_sae(F, d)
        xb = x[:batch]
        start = copy.deepcopy(sae.state_dict())
        for name, kw in [("autograd", dict(fused=False)), ("fused fp32", dict(bf16=False)),
                         ("fused bf16", dict(bf16=True))]:
            sae.load_state_dict(start)
            opt = make_optimizer(sae, 0.0)  # all of Adam's arithmetic, but L0 stays put while we time
            out = {}
            t = time_steps(lambda: out.update(train_step(sae, opt, xb, **kw)), seconds_per_case)
            l0 = out["l0"].item()
            dense = 12 * d * F / (rates["fp32"] * 1e9)
            enc_rate = rates["bf16" if kw.get("bf16") else "fp32"]
            rest = (10 if kw.get("bf16") else 8) * d * l0
            sparse = 2 * d * F / (enc_rate * 1e9) + rest / (rates["fp32"] * 1e9)
            rows.append(dict(F=F, step=name, act_s=batch / t, l0=l0,
                             dense_floor=dense * batch / t, sparse_floor=sparse * batch / t))
            if verbose:
                r = rows[-1]
                print(f"{F:>6} {name:<11} {r['act_s']:>8.0f} {l0:>5.1f} "
                      f"{r['dense_floor']:>15.1%} {r['sparse_floor']:>16.1%}")
    return rows


def speedup(rows, F=4096):
    """fused/autograd activations/s at F, for train_step's default fused step on this machine."""
    speed = {(r["F"], r["step"]): r["act_s"] for r in rows}
    default = "fused bf16" if fast_bf16("cpu") else "fused fp32"
    return speed[F, default] / speed[F, "autograd"]


if __name__ == "__main__":
    torch.manual_seed(0)
    rates = gemm_rates()
    print(f"GEMM (4096x512 @ 512x4096), {torch.get_num_threads()} threads: "
          f"fp32 {rates['fp32']:.0f} GFLOP/s, bf16 {rates['bf16']:.0f} GFLOP/s")
    rows = bench_sae(gemm_gflops=rates)
    print(f"(fused = {'fused bf16' if fast_bf16('cpu') else 'fused fp32'}, train_step's default here)")
    print(f"sae fused/autograd speedup at F=4096: {speedup(rows):.1f}x")
