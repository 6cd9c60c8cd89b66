"""train_lm.py: train the one-layer transformer from scratch on the token shards.

    python train_lm.py                                     # 20M tokens: about 12 minutes on 2 CPU cores
    python train_lm.py --device cuda --max-tokens 200000000  # one GPU, bf16 autocast
    torchrun --nproc_per_node 4 train_lm.py --device cuda   # several GPUs (DDP; gloo on CPU)

AdamW with linear warmup and cosine decay, gradient clipping, a validation loss every few hundred
steps, checkpoints that --resume continues exactly. The length of the run is a count of tokens, so
every machine trains the same model; --max-minutes turns a time budget into such a count once,
from a short timed start. The last line holds the model's validation loss beside a count-based
bigram model's, e.g. `val loss 3.40 | bigram 4.61`: a transformer that cannot beat bigram counts
has learned nothing worth decomposing.
"""
import lab  # first, before torch loads: lab/__init__.py lets waiting OpenMP threads sleep

import dataclasses
import math
import os
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

import data
from lab.plumbing import (Progress, UserError, arg, atomic_save, broadcast_int, copy_for_timing, fast_bf16, finite,
                          flat_dict, fmt_eta, labelled_crash, load_checkpoint, parse_config, refuse_to_replace,
                          require, require_memory, resumed_config, rng_state, run_main, set_rng_state, setup_processes,
                          timed_steps, warn_if_repeating)
from model import ModelConfig, Transformer


@dataclasses.dataclass
class TrainConfig:
    out: str = arg("out", "artifact root: reads <out>/data/, writes <out>/<lm-dir>/")
    lm_dir: str = arg("lm", "this run's folder under --out (e.g. lm_b for a second seed)")
    device: str = arg("auto", "auto, cpu, cuda or cuda:N")
    seed: int = arg(0, "seed for the weights and the order of the batches")
    max_tokens: int = arg(20_000_000, "tokens to train on (0: save the untrained model, the paper's "
                          "random-weights control)")
    max_minutes: float = arg(0.0, "a time budget instead of --max-tokens: the count that fits, timed once at the "
                             "start (0: use --max-tokens)")
    resume: bool = arg(False, "continue the run in <out>/<lm-dir>/ exactly where it stopped")
    overwrite: bool = arg(False, "replace a finished run in <out>/<lm-dir>/ (else refused)")
    batch_size: int = arg(32, "sequences per step, over all processes")
    model: ModelConfig = arg(ModelConfig(), "the transformer; its fields are flags of their own (--d-model ...)")
    lr: float = arg(3e-3, "peak learning rate")
    warmup_steps: int = arg(100, "linear warmup steps")
    bf16: bool = arg(True, "bf16 autocast (CUDA always; on CPU where it is faster, see lab/bench.py)")
    # set by programs (the tests, lab/compare.py), not on the command line
    min_lr_frac: float = arg(0.1, "final learning rate as a fraction of the peak", flag=False)
    weight_decay: float = arg(0.1, "AdamW weight decay (matrices only)", flag=False)
    grad_clip: float = arg(1.0, "clip the gradient norm to this (0: off)", flag=False)
    eval_every: int = arg(250, "steps between validation losses", flag=False)
    ckpt_every: int = arg(500, "steps between checkpoints", flag=False)

    def __post_init__(self):
        require(self.max_tokens >= 0, f"--max-tokens {self.max_tokens}", "must be >= 0 (0: the untrained model)")
        require(finite(self.max_minutes) and self.max_minutes >= 0, f"--max-minutes {self.max_minutes}",
                "must be a number of minutes >= 0 (0: use --max-tokens)")
        require(self.batch_size >= 1, f"--batch-size {self.batch_size}", "must be at least 1")
        require(finite(self.lr) and self.lr > 0, f"--lr {self.lr}", "must be a positive number")
        require(self.warmup_steps >= 0, f"--warmup-steps {self.warmup_steps}", "must be >= 0")
        require(finite(self.min_lr_frac) and 0 <= self.min_lr_frac <= 1, "min_lr_frac", "must lie in 0..1")
        require(finite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(finite(self.grad_clip) and self.grad_clip >= 0, "grad_clip", "must be >= 0 (0: off)")
        require(self.eval_every >= 1 and self.ckpt_every >= 1, "eval_every and ckpt_every", "must be at least 1")


def lr_at(step, cfg, max_steps):
    """Linear warmup, then cosine decay to min_lr_frac of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, cfg):
    """AdamW; weight decay on the matrices only (not on biases, gains and embeddings' ... vectors)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95), fused=True)


def memory_needed(mcfg, batch_size, value_bytes):
    """Bytes a training step holds, roughly: the weights with their gradients and AdamW's two moments
    (16 bytes a parameter), and what the forward pass keeps for the backward one, per token and layer
    (values of value_bytes: 2 under bf16 autocast). Within 20% of the peak measured on CPU at batch 256."""
    c = mcfg
    params = (2 * c.vocab_size + c.block_size) * c.d_model + c.n_layer * (4 * c.d_model ** 2 + 2 * c.d_model * c.d_mlp)
    per_token = c.n_layer * (16 * c.d_model + 4 * c.d_mlp + 2 * c.n_head * c.block_size) + 4 * c.d_model
    return 16 * params + batch_size * c.block_size * per_token * value_bytes


def train_step(net, opt, batch, lr, cfg, autocast):
    """One optimizer step on one batch (x, y); returns the loss. Under DDP, net averages the
    processes' gradients in backward."""
    for group in opt.param_groups:
        group["lr"] = lr
    with autocast:
        _, loss = net(*batch, logits=False)
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
    if not torch.isfinite(loss):
        raise UserError(f"the loss became {loss.item()}; the last good checkpoint is kept: lower --lr and rerun "
                        "with --resume")
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


@dataclasses.dataclass
class State:
    """What a checkpoint holds and --resume restores, beside the config."""
    model: Transformer
    opt: torch.optim.Optimizer
    batches: torch.Generator          # the order of the training windows
    step: int = 0
    max_steps: int = 0
    elapsed: float = 0.0              # seconds in the training loop, over all sessions
    history: list = dataclasses.field(default_factory=list)   # the validation losses


def train(cfg, on_step=None):
    """Train (or resume) the LM; returns the final checkpoint dict. on_step(step) runs after each
    optimizer step (the tests use it to simulate a crash)."""
    # 1. set-up: processes, data, the model and its optimizer, the run's length
    t_run = time.time()
    ddp, rank, world, device = setup_processes(cfg.device)
    data_dir, run_dir = os.path.join(cfg.out, "data"), os.path.join(cfg.out, cfg.lm_dir)
    ckpt_path, meta = os.path.join(run_dir, "ckpt.pt"), data.load_meta(data_dir)
    if cfg.resume:  # the run's own flags; one changed on this command line is refused
        cfg = resumed_config(cfg, ckpt_path, "LM checkpoint to resume", "--lm-dir")
    require(cfg.batch_size % world == 0, f"--batch-size {cfg.batch_size}",
            f"must be divisible by the {world} processes")
    train_tokens, val_tokens = data.load_tokens(data_dir, "train"), data.load_tokens(data_dir, "val")
    mcfg = dataclasses.replace(cfg.model, vocab_size=meta["vocab_size"])  # the vocabulary is the data's
    refuse_to_replace([ckpt_path], cfg, "--lm-dir")
    bf16 = cfg.bf16 and fast_bf16(device)
    require_memory(memory_needed(mcfg, cfg.batch_size // world, 2 if bf16 else 4), "training this LM",
                   "lower --batch-size, --d-mlp or --block-size", device)
    torch.manual_seed(cfg.seed)
    model = Transformer(mcfg).to(device)
    st = State(model, make_optimizer(model, cfg), torch.Generator().manual_seed(cfg.seed))
    net = DistributedDataParallel(model) if ddp else model   # DDP: averages the processes' gradients
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)
    per_rank, tokens_per_step = cfg.batch_size // world, cfg.batch_size * mcfg.block_size

    def next_batch(generator):  # this process's share of a batch (every process draws the same windows)
        x, y = data.get_batch(train_tokens, cfg.batch_size, mcfg.block_size, generator, device)
        return x[rank * per_rank:(rank + 1) * per_rank], y[rank * per_rank:(rank + 1) * per_rank]

    if cfg.resume:
        resume(st, ckpt_path, mcfg, meta)
    else:
        st.max_steps = run_length(cfg, model, next_batch, autocast, tokens_per_step, device)
    if rank == 0:
        announce(cfg, st, ckpt_path, f"{world} process(es) on {device}", tokens_per_step, len(train_tokens))
    save = lambda status, **final: rank == 0 and save_checkpoint(st, cfg, mcfg, meta, ckpt_path, status, **final)

    # 2. the training loop
    progress = Progress(os.path.join(run_dir, "log.jsonl") if rank == 0 else None, append=cfg.resume,
                        quiet=rank != 0)
    if st.step == 0:  # the untrained model's loss starts the curve
        st.history.append({"step": 0, "val_loss": evaluate(model, val_tokens, device), "tokens": 0})
        progress.log(st.history[-1])
    t_start, t_last, step_last = time.time(), time.time(), st.step
    with labelled_crash([ckpt_path] if rank == 0 else [], since=0 if cfg.resume else t_run):
        while st.step < st.max_steps:
            # a. one optimizer step on a fresh batch
            loss = train_step(net, st.opt, next_batch(st.batches), lr_at(st.step, cfg, st.max_steps), cfg, autocast)
            st.step += 1
            if on_step is not None:
                on_step(st.step)
            # b. the validation loss, every eval_every steps
            if st.step % cfg.eval_every == 0 or st.step == st.max_steps:
                st.history.append({"step": st.step, "train_loss": loss.item(), "lr": st.opt.param_groups[0]["lr"],
                                   "val_loss": evaluate(model, val_tokens, device),
                                   "tokens": st.step * tokens_per_step})
                progress.log(st.history[-1])
            # c. a progress line every few seconds (val only once there is one after step 0)
            if progress.due() or st.step == st.max_steps:
                rate, t_last, step_last = (st.step - step_last) / (time.time() - t_last), time.time(), st.step
                val = f"{st.history[-1]['val_loss']:.3f}" if st.history[-1]["step"] > 0 else "-"
                progress.say(f"step {st.step}/{st.max_steps} | loss {loss.item():.3f} | val {val} | "
                             f"{rate * tokens_per_step:,.0f} tok/s | ETA {fmt_eta((st.max_steps - st.step) / rate)}")
            # d. a checkpoint every ckpt_every steps
            if st.step % cfg.ckpt_every == 0 and st.step < st.max_steps:
                st.elapsed, t_start = st.elapsed + time.time() - t_start, time.time()
                save("running")

    # 3. the final evaluation: a longer validation loss, beside the bigram baseline
    st.elapsed += time.time() - t_start
    if ddp:
        torch.distributed.destroy_process_group()
    if rank != 0:
        return None
    val_loss = evaluate(model, val_tokens, device, max_tokens=10**6)
    bigram = bigram_loss(train_tokens, val_tokens, meta["vocab_size"])
    ckpt = save("final", val_loss=val_loss, bigram_loss=bigram)
    print(f"trained {st.step} steps ({st.step * tokens_per_step / 1e6:.1f}M tokens) in {fmt_eta(st.elapsed)}; "
          f"checkpoint {ckpt_path}\nval loss {val_loss:.3f} | bigram {bigram:.3f}")
    return ckpt


def run_length(cfg, model, next_batch, autocast, tokens_per_step, device):
    """The run's steps: a count of tokens, or (--max-minutes) the count that fits, timed on a copy of
    the model with batches of its own, so the run itself is untouched."""
    if not cfg.max_minutes:
        return math.ceil(cfg.max_tokens / tokens_per_step)
    twin, twin_opt = copy_for_timing(model, lambda m: make_optimizer(m, cfg))
    g = torch.Generator().manual_seed(cfg.seed + 1)
    return broadcast_int(timed_steps(cfg.max_minutes, lambda: train_step(twin, twin_opt, next_batch(g), cfg.lr, cfg,
                                                                         autocast)), device)


def announce(cfg, st, ckpt_path, processes, tokens_per_step, n_train):
    """The run's first lines: the config, the model, the length (and a warning if it repeats data)."""
    print(f"config: {flat_dict(cfg)}")
    print(f"model: {sum(p.numel() for p in st.model.parameters()) / 1e6:.2f}M parameters; {processes}; "
          + (f"resuming {ckpt_path} at step {st.step} of " if cfg.resume else "")
          + f"{st.max_steps} steps of {tokens_per_step:,} tokens ({st.max_steps * tokens_per_step / 1e6:.1f}M)")
    warn_if_repeating(st.max_steps * tokens_per_step, n_train, "tokens", "overfitting; the validation loss will "
                      "stop improving", "give data.py more --data, or lower --max-tokens")


def save_checkpoint(st, cfg, mcfg, meta, path, status, **final):
    """status: "running" (periodic) or "final"; a crash relabels the last one "crashed"."""
    ckpt = {"config": flat_dict(cfg), "model_config": dataclasses.asdict(mcfg), "model": st.model.state_dict(),
            "optimizer": st.opt.state_dict(), "step": st.step, "max_steps": st.max_steps, "elapsed": st.elapsed,
            "history": st.history, "batch_rng": st.batches.get_state(), "rng": rng_state(),
            "tokenizer_hash": meta["tokenizer_hash"], "status": status, "final": status == "final", **final}
    atomic_save(ckpt, path)
    return ckpt


def resume(st, path, mcfg, meta):
    """Restore st from the checkpoint at path: the weights, the optimizer, both random streams, the run."""
    ckpt = load_checkpoint(path, "LM checkpoint to resume",
                           "start without --resume, or point --out/--lm-dir at the run")
    if ckpt["model_config"] != dataclasses.asdict(mcfg) or ckpt["tokenizer_hash"] != meta["tokenizer_hash"]:
        raise UserError(f"{path} was trained with another model config or tokenizer; "
                        "use the same flags and data, or a new --lm-dir")
    st.model.load_state_dict(ckpt["model"])
    st.opt.load_state_dict(ckpt["optimizer"])
    st.batches.set_state(ckpt["batch_rng"])
    set_rng_state(ckpt["rng"])
    st.step, st.max_steps, st.elapsed, st.history = ckpt["step"], ckpt["max_steps"], ckpt["elapsed"], ckpt["history"]


@torch.no_grad()
def evaluate(model, tokens, device, max_tokens=64 * 128):
    """Mean next-token loss over consecutive, non-overlapping windows at the start of the
    validation split (the same windows every time, so the curve is comparable)."""
    T = model.cfg.block_size
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
