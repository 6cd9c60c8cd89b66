"""lab/bench.py: how fast are the hot loops, against a plain reference measured in the same run?

    python -m lab.bench            # a few minutes on a 2-core CPU
    python -m lab.bench --quick    # fewer, shorter cases

Speed is science here: the number of activations the SAE sees in ten minutes decides whether the
paper's results show up on a laptop. Timed tests would be flaky on shared machines, so speed lives
here, as ratios against a reference run moments before on the same machine, beside the machine's
own measured matrix-multiply rate (the FLOP floor). Prints a table; the last line is the headline.
"""
import argparse

import torch

from lab.bench_sae import bench_sae, gemm_rates, speedup, time_steps
from lab.fused_ce import unembed_cross_entropy
from model import ModelConfig, Transformer
from train_lm import plain_cross_entropy


def flops_per_token(cfg):
    """Forward+backward matmul FLOPs per token (6 per weight, plus attention's scores)."""
    d, L = cfg.d_model, cfg.n_layer
    weights = L * (4 * d * d + 2 * d * cfg.d_mlp) + d * cfg.vocab_size
    return 6 * weights + L * 6 * cfg.block_size * d  # QK^T and AV: 2*T*d each, forward, x3 with backward


def lm_step(batch_size=32, block_size=128, plain=False):
    """One LM training step as train_lm.py takes it, or the plain reference: float32, the full
    logits through F.cross_entropy, PyTorch's default (for-loop) AdamW."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(block_size=block_size)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **({} if plain else {"fused": True}))
    x = torch.randint(0, 4096, (batch_size, block_size))
    y = torch.randint(0, 4096, (batch_size, block_size))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not plain):
            loss = (plain_cross_entropy if plain else unembed_cross_entropy)(model(x, unembed=False),
                                                                             model.unembed.weight, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def bench_lm(seconds, gemm):
    tokens = 32 * 128
    flops = flops_per_token(ModelConfig())
    rows = []
    for name, plain in (("plain reference (fp32, full logits, AdamW)", True),
                        ("train_lm.py (bf16 autocast, fused unembed+CE, fused AdamW)", False)):
        rate = tokens / time_steps(lm_step(plain=plain), seconds)
        rows.append((name, rate, rate * flops / 1e9))
    print(f"\nLM training step, batch 32 x 128 tokens, {flops / 1e6:.1f} MFLOP per token")
    print(f"{'step':62s} {'tokens/s':>10s} {'GFLOP/s':>8s} {'of fp32 peak':>12s} {'of bf16 peak':>12s}")
    for name, rate, gf in rows:
        print(f"{name:62s} {rate:10,.0f} {gf:8.1f} {gf / gemm['fp32']:12.0%} {gf / gemm['bf16']:12.0%}")
    return rows[1][1] / rows[0][1]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter cases")
    args = p.parse_args()
    seconds = 2.0 if args.quick else 6.0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    gemm = gemm_rates()
    print(f"matrix multiply (4096x512 @ 512x4096): fp32 {gemm['fp32']:.0f} GFLOP/s, bf16 {gemm['bf16']:.0f} GFLOP/s")
    lm_speedup = bench_lm(seconds, gemm)
    sae_speedup = speedup(bench_sae(seconds_per_case=seconds, gemm_gflops=gemm, quick=args.quick))
    print(f"\nlm train_lm.py/plain speedup: {lm_speedup:.2f}x")
    print(f"sae fused/autograd speedup at F=4096: {sae_speedup:.1f}x")


if __name__ == "__main__":
    main()
