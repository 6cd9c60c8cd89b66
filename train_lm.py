"""train_lm.py: train the one-layer transformer from scratch on the token shards.

    python train_lm.py                                   # CPU, about 12 minutes
    python train_lm.py --device cuda --max-minutes 60    # one GPU, bf16 autocast
    torchrun --nproc_per_node 4 train_lm.py --device cuda # several GPUs (DDP; gloo on CPU)

AdamW with linear warmup and cosine decay, gradient clipping, periodic validation loss, atomic
checkpoints with everything needed to continue exactly (--resume). The last line printed holds
the model's validation loss beside a count-based bigram model's, e.g. `val loss 3.10 | bigram 4.42`:
a transformer that cannot beat bigram counts has learned nothing worth decomposing.
"""
import dataclasses
import math
import os
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import data
from common import (Progress, UserError, arg, atomic_save, fast_bf16, fmt_eta, load_checkpoint,
                    parse_config, rng_state, run_main, set_rng_state, setup_processes)
from model import ModelConfig, Transformer, flops_per_token


@dataclasses.dataclass
class TrainConfig:
    out: str = arg("out", "artifact root: reads <out>/data/, writes <out>/lm/")
    lm_dir: str = arg("lm", "this run's folder under --out (e.g. lm_b for a second seed)")
    device: str = arg("auto", "auto, cpu, cuda or cuda:N")
    seed: int = arg(0, "seed for the weights and the order of the batches")
    max_minutes: float = arg(12.0, "wall-clock budget: sets the number of steps from the measured speed")
    max_tokens: int = arg(0, "token budget instead of --max-minutes (0: use the minutes)")
    resume: bool = arg(False, "continue the run in <out>/<lm-dir>/ exactly where it stopped")
    batch_size: int = arg(32, "sequences per step, over all processes")
    block_size: int = arg(128, "context length")
    n_layer: int = arg(1, "transformer layers (the paper: 1)")
    n_head: int = arg(4, "attention heads")
    d_model: int = arg(128, "residual stream width (the paper: 128)")
    d_mlp: int = arg(512, "MLP neurons (the paper: 512)")
    activation: str = arg("relu", "MLP nonlinearity (the paper: relu)")
    lr: float = arg(3e-3, "peak learning rate")
    min_lr_frac: float = arg(0.1, "final learning rate as a fraction of the peak")
    warmup_steps: int = arg(100, "linear warmup steps")
    weight_decay: float = arg(0.1, "AdamW weight decay (matrices only)")
    grad_clip: float = arg(1.0, "clip the gradient norm to this (0: off)")
    eval_every: int = arg(250, "steps between validation losses")
    ckpt_every: int = arg(500, "steps between checkpoints")
    bf16: bool = arg(True, "bf16 autocast (CUDA always; on CPU where it is faster, see bench.py)")
    random_init_only: bool = arg(False, "save the untrained model and stop (the paper's random-weights control)")


def lr_at(step, cfg, max_steps):
    """Linear warmup, then cosine decay to min_lr_frac of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(cfg, on_step=None):
    """Train (or resume) the LM; returns the final checkpoint dict. on_step(step) runs after each
    optimizer step (the tests use it to simulate a crash)."""
    t_run = time.time()
    ddp, rank, world, device = setup_processes(cfg.device)
    if cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} must be divisible by the {world} processes")
    for name in ("batch_size", "block_size", "eval_every", "ckpt_every"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.lr <= 0 or cfg.max_minutes <= 0 or cfg.max_tokens < 0:
        raise UserError("--lr and --max-minutes must be positive and --max-tokens non-negative")
    master = rank == 0
    data_dir, run_dir = os.path.join(cfg.out, "data"), os.path.join(cfg.out, cfg.lm_dir)
    ckpt_path = os.path.join(run_dir, "ckpt.pt")
    meta = data.load_meta(data_dir)
    train_tokens, val_tokens = data.load_tokens(data_dir, "train"), data.load_tokens(data_dir, "val")
    mcfg = ModelConfig(vocab_size=meta["vocab_size"], block_size=cfg.block_size, n_layer=cfg.n_layer,
                       n_head=cfg.n_head, d_model=cfg.d_model, d_mlp=cfg.d_mlp, activation=cfg.activation)
    try:
        mcfg.validate()
    except ValueError as e:
        raise UserError(str(e)) from None

    torch.manual_seed(cfg.seed)
    model = Transformer(mcfg).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95),
                            fused=True)
    batches = torch.Generator().manual_seed(cfg.seed)  # the order of the training windows
    step, max_steps, elapsed, history = 0, None, 0.0, []
    if cfg.resume:
        ckpt = load_checkpoint(ckpt_path, "LM checkpoint to resume",
                               "start without --resume, or point --out/--lm-dir at the run")
        if ckpt["model_config"] != dataclasses.asdict(mcfg) or ckpt["tokenizer_hash"] != meta["tokenizer_hash"]:
            raise UserError(f"{ckpt_path} was trained with another model config or tokenizer; "
                            "use the same flags and data, or a new --lm-dir")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        batches.set_state(ckpt["batch_rng"])
        set_rng_state(ckpt["rng"])
        step, max_steps, elapsed, history = ckpt["step"], ckpt["max_steps"], ckpt["elapsed"], ckpt["history"]
        if master:
            print(f"resuming {ckpt_path} at step {step} of {max_steps}")
    elif master and os.path.exists(ckpt_path) and not cfg.random_init_only:
        print(f"note: starting over; {ckpt_path} will be replaced at the first checkpoint (use --resume to continue it)")
    if cfg.max_tokens:
        max_steps = math.ceil(cfg.max_tokens / (cfg.batch_size * cfg.block_size))
    if master:
        print(f"config: {dataclasses.asdict(cfg)}")
        print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
              f"{flops_per_token(mcfg) / 1e6:.1f} MFLOP per training token; {world} process(es) on {device}")

    def save(final=False):
        if not master:
            return
        ckpt = {"config": dataclasses.asdict(cfg), "model_config": dataclasses.asdict(mcfg),
                "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "max_steps": max_steps, "elapsed": elapsed, "history": history,
                "batch_rng": batches.get_state(), "rng": rng_state(),
                "tokenizer_hash": meta["tokenizer_hash"], "final": final}
        atomic_save(ckpt, ckpt_path)
        return ckpt

    if cfg.random_init_only:  # the paper's control: an SAE on a transformer that never learned
        max_steps = 0
        return save(final=True)

    net = DistributedDataParallel(model) if ddp else model
    use_amp = cfg.bf16 and fast_bf16(device)
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=use_amp)
    progress = Progress(os.path.join(run_dir, "log.jsonl") if master else None, append=cfg.resume,
                        quiet=not master)
    per_rank = cfg.batch_size // world
    tokens_per_step = cfg.batch_size * cfg.block_size
    if step == 0:  # the untrained model's loss starts the curve
        history.append({"step": 0, "val_loss": evaluate(model, val_tokens, cfg, device), "tokens": 0})
        progress.log(history[-1])
    t_start, t_last, step_last = time.time(), time.time(), step
    while max_steps is None or step < max_steps:
        x, y = data.get_batch(train_tokens, cfg.batch_size, cfg.block_size, batches, device)
        x, y = x[rank * per_rank:(rank + 1) * per_rank], y[rank * per_rank:(rank + 1) * per_rank]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg, max_steps or 10**9)
        with autocast:
            _, loss = net(x, y, logits=False)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if not torch.isfinite(loss):
            raise UserError(f"loss became {loss.item()} at step {step}; the last good checkpoint "
                            f"({ckpt_path}) is kept: lower --lr and rerun with --resume")
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if max_steps is None and step == 10:  # past the warm-up: time the next 30 steps
            t_cal = time.time()
        if max_steps is None and step == 40:  # the time budget -> a step count, once
            rate = 30 / (time.time() - t_cal)
            max_steps = step + max(0, int((cfg.max_minutes * 60 - (time.time() - t_run)) * rate))
            if ddp:  # every rank must agree on the length of the run
                n = torch.tensor([max_steps], device=device)
                dist.broadcast(n, 0)
                max_steps = int(n.item())
            if master:
                print(f"budget: {cfg.max_minutes} min at {rate * tokens_per_step:,.0f} tokens/s "
                      f"-> {max_steps} steps, {max_steps * tokens_per_step / 1e6:.1f}M tokens")
        if on_step is not None:
            on_step(step)
        if step % cfg.eval_every == 0 or step == max_steps:
            record = {"step": step, "train_loss": loss.item(), "val_loss": evaluate(model, val_tokens, cfg, device),
                      "lr": opt.param_groups[0]["lr"], "tokens": step * tokens_per_step}
            history.append(record)
            progress.log(record)
        if progress.due() or step == max_steps:
            now = time.time()
            rate = (step - step_last) / (now - t_last)
            t_last, step_last = now, step
            val = f" | val {history[-1]['val_loss']:.3f}" if history else ""
            eta = fmt_eta((max_steps - step) / rate) if max_steps else "?"
            progress.say(f"step {step}/{max_steps or '?'} | loss {loss.item():.3f}{val} | "
                         f"{rate * tokens_per_step:,.0f} tok/s | ETA {eta}")
        if step % cfg.ckpt_every == 0 or step == max_steps:
            elapsed_now = elapsed + time.time() - t_start
            elapsed, t_start = elapsed_now, time.time()
            save(final=step == max_steps)
    if ddp:
        dist.destroy_process_group()
    if not master:
        return None
    final_val = evaluate(model, val_tokens, cfg, device, max_tokens=10**6)
    bigram = bigram_loss(train_tokens, val_tokens, meta["vocab_size"])
    ckpt = save(final=True)
    ckpt["val_loss"], ckpt["bigram_loss"] = final_val, bigram
    atomic_save(ckpt, ckpt_path)
    print(f"trained {step} steps ({step * tokens_per_step / 1e6:.1f}M tokens) in {fmt_eta(elapsed)}; "
          f"checkpoint {ckpt_path}")
    print(f"val loss {final_val:.3f} | bigram {bigram:.3f}")
    return ckpt


@torch.no_grad()
def evaluate(model, tokens, cfg, device, max_tokens=64 * 128):
    """Mean next-token loss over consecutive, non-overlapping windows at the start of the
    validation split (the same windows every time, so the curve is comparable)."""
    T = cfg.block_size
    n = min(len(tokens) - 1, max_tokens) // T
    if n == 0:
        raise UserError(f"validation split of {len(tokens)} tokens is shorter than the context {T}: add data")
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, n, 64):
        rows = range(i, min(n, i + 64))
        w = data.windows(tokens, [r * T for r in rows], T + 1, device)
        _, loss = model(w[:, :-1], w[:, 1:])
        total += loss.item() * len(rows)
    model.train(was_training)
    return total / n


def bigram_loss(train_tokens, val_tokens, vocab_size):
    """Cross-entropy of a count-based bigram model on the validation split: P(b|a) from counts of
    (a, b) in the training split, add-alpha smoothed with the best alpha of a few (the baseline's
    best shot). Pairs are counted sparsely, so it works for any vocabulary size."""
    a, b = np.asarray(train_tokens[:-1], np.int64), np.asarray(train_tokens[1:], np.int64)
    pairs, counts = np.unique(a * vocab_size + b, return_counts=True)
    unigram = np.bincount(a, minlength=vocab_size)
    va, vb = np.asarray(val_tokens[:-1], np.int64), np.asarray(val_tokens[1:], np.int64)
    keys = va * vocab_size + vb
    pos = np.clip(np.searchsorted(pairs, keys), 0, len(pairs) - 1)
    c = np.where(pairs[pos] == keys, counts[pos], 0)
    return min(float(-np.mean(np.log((c + alpha) / (unigram[va] + alpha * vocab_size))))
               for alpha in (1e-3, 1e-2, 0.1, 1.0))


if __name__ == "__main__":
    run_main(lambda: train(parse_config(TrainConfig, description=__doc__.split("\n\n")[0])))
