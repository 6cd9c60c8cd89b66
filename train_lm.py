"""train_lm.py: train the one-layer transformer from scratch on the token shards.

    python train_lm.py                                     # 20M tokens: about 12 minutes on 2 CPU cores
    torchrun --nproc_per_node 4 train_lm.py --device cuda   # several GPUs (DDP; docs/gpu.md)

AdamW with linear warmup, cosine decay and gradient clipping, for a count of tokens (--max-minutes: the count that
fits, timed once), so every machine trains the same model. The last line holds the validation loss beside a bigram
model's, `val loss 3.40 | bigram 4.61`: a transformer that cannot beat bigram counts learned nothing to decompose.
"""
import lab  # first, before torch loads: lab/__init__.py lets waiting OpenMP threads sleep

import dataclasses
import math

import numpy as np
import torch

import data
from lab.fused_ce import unembed_cross_entropy
from lab.plumbing import arg, fast_bf16, flags, parse_config, require, run_main
from lab.run import Run, lm_memory, require_finite
from model import ModelConfig, Transformer


@flags
class TrainConfig:  # at_least=, above=...: a bad value is one line naming the flag (lab/plumbing.py)
    out: str = arg("out", "artifact root: reads <out>/data/, writes <out>/<lm-dir>/")
    lm_dir: str = arg("lm", "this run's folder under --out (e.g. lm_b for a second seed)")
    device: str = arg("auto", "auto, cpu, cuda or cuda:N")
    seed: int = arg(0, "seed for the weights and the order of the batches")
    max_tokens: int = arg(20_000_000, "tokens to train on", at_least=0, note=" (0: the untrained model)")
    max_minutes: float = arg(0.0, "a time budget instead of --max-tokens", at_least=0, note=" (0: use --max-tokens)")
    resume: bool = arg(False, "continue the run in <out>/<lm-dir>/ exactly where it stopped")
    overwrite: bool = arg(False, "replace a finished run in <out>/<lm-dir>/ (else refused)")
    batch_size: int = arg(32, "sequences per step, over all processes", at_least=1)
    model: ModelConfig = arg(ModelConfig(), "the transformer; its fields are flags of their own (--d-model ...)")
    lr: float = arg(3e-3, "peak learning rate", above=0)
    warmup_steps: int = arg(100, "linear warmup steps", at_least=0)
    bf16: bool = arg(True, "bf16 autocast (CUDA always; on CPU where it is faster, see lab/bench.py)")
    fused: bool = arg(True, "the loss by lab/fused_ce.py, without the logits (--no-fused: the plain reference)")
    # set by programs (the tests, lab/compare.py), not on the command line
    min_lr_frac: float = arg(0.1, "final learning rate as a fraction of the peak", False, at_least=0, at_most=1)
    weight_decay: float = arg(0.1, "AdamW weight decay (matrices only)", False, at_least=0)
    grad_clip: float = arg(1.0, "clip the gradient norm to this", False, at_least=0, note=" (0: off)")
    eval_every: int = arg(250, "steps between validation losses", False, at_least=1)
    ckpt_every: int = arg(500, "steps between checkpoints", False, at_least=1)


def lr_at(step, cfg, max_steps):
    """Linear warmup, then cosine decay to min_lr_frac of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, cfg):
    """AdamW; weight decay on the matrices only (not on the biases and the LayerNorm gains)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95), fused=True)


def train_step(net, lm_loss, opt, batch, lr, cfg, autocast):
    """One optimizer step on one batch (x, y); returns the loss. net gives the final residual stream (under
    DDP it averages the gradients in backward); lm_loss(h, W_U, y): the mean cross-entropy of its logits."""
    for group in opt.param_groups:
        group["lr"] = lr
    x, y = batch
    with autocast:
        loss = lm_loss(net(x, unembed=False), getattr(net, "module", net).unembed.weight, y)
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
    require_finite(loss.item())
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def train(cfg, on_step=None):
    """Train (or resume) the LM; returns the final checkpoint. on_step(steps taken): the tests' crash hook."""
    # 1. set-up: the data, the model, its optimizer, what a checkpoint holds (lab/run.py: processes, --resume, checks)
    run = Run(cfg, "LM", "--lm-dir")
    cfg, device = run.cfg, run.device   # on --resume, cfg is the checkpoint's: the run goes on as it began
    meta, train_tokens, val_tokens = data.load_shards(cfg.out)
    mcfg = dataclasses.replace(cfg.model, vocab_size=meta["vocab_size"])  # the vocabulary is the data's
    bf16, tokens_per_step = cfg.bf16 and fast_bf16(device), cfg.batch_size * mcfg.block_size
    run.refuse_unsafe_start(lm_memory(mcfg, cfg.batch_size // run.world, 2 if bf16 else 4))
    torch.manual_seed(cfg.seed)
    model = Transformer(mcfg).to(device)
    opt, batch_rng = make_optimizer(model, cfg), torch.Generator().manual_seed(cfg.seed)
    lm_loss = unembed_cross_entropy if cfg.fused else plain_cross_entropy   # the fast path, chosen here
    net, autocast = run.distributed(model), torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)
    next_batch = lambda g: run.share(data.get_batch(train_tokens, cfg.batch_size, mcfg.block_size, g, device))
    # the run's length (--max-minutes: the steps that fit, timed on the batch and step given) and its checkpoints
    run.start(cfg.max_tokens, tokens_per_step, [dict(model_config=dataclasses.asdict(mcfg), model=model, optimizer=opt,
              batch_rng=batch_rng, tokenizer_hash=meta["tokenizer_hash"])],
              timed=(next_batch, lambda m, o, batch: train_step(m, lm_loss, o, batch, cfg.lr, cfg, autocast)))
    run.announce(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; ", len(train_tokens))
    if run.step == 0:  # the untrained model's loss starts the curve
        run.log(dict(step=0, val_loss=evaluate(model, val_tokens, device), tokens=0))

    # 2. the training loop
    with run.crash_label():
        for step in run.steps(on_step):
            # a. a checkpoint every ckpt_every steps (the state after them, which --resume continues)
            run.checkpoint(every=cfg.ckpt_every)
            # b. one optimizer step on a fresh batch, at the schedule's learning rate
            loss = train_step(net, lm_loss, opt, next_batch(batch_rng), lr_at(step, cfg, run.max_steps), cfg, autocast)
            # c. the validation loss, every eval_every steps (run.log adds it to history and to log.jsonl)
            if (step + 1) % cfg.eval_every == 0 or step + 1 == run.max_steps:
                run.log(dict(step=step + 1, train_loss=loss.item(), lr=opt.param_groups[0]["lr"],
                             val_loss=evaluate(model, val_tokens, device), tokens=(step + 1) * tokens_per_step))
            last = run.histories[0][-1]   # the untrained model's record, until the first evaluation
            run.progress(lambda: f"loss {loss.item():.3f} | val "   # (formatted only when a line is printed)
                         + (format(last["val_loss"], ".3f") if last["step"] else "-"))

    # 3. the final evaluation: a longer validation loss, beside the bigram baseline
    if not run.end_processes():
        return None
    val_loss = evaluate(model, val_tokens, device, max_tokens=10**6)
    bigram = bigram_loss(train_tokens, val_tokens, meta["vocab_size"])
    ckpt = run.finish(val_loss=val_loss, bigram_loss=bigram)[0]
    print(f"val loss {val_loss:.3f} | bigram {bigram:.3f}")
    return ckpt


def plain_cross_entropy(h, W_U, targets):
    """The mean cross-entropy of the logits h @ W_U^T: the reference for lab/fused_ce.py's, which never holds them."""
    return torch.nn.functional.cross_entropy((h @ W_U.T).flatten(0, 1).float(), targets.flatten())


@torch.no_grad()
def evaluate(model, tokens, device, max_tokens=64 * 128):
    """Mean next-token loss over consecutive, non-overlapping windows at the start of the validation split
    (the same windows every time, so the curve is comparable). The model has no dropout: no eval mode."""
    T = model.cfg.block_size
    n = min(len(tokens) - 1, max_tokens) // T
    require(n > 0, f"validation split of {len(tokens)} tokens", f"is shorter than the context {T}: add data")
    total = 0.0
    for i in range(0, n, 64):
        rows = range(i, min(n, i + 64))
        w = data.windows(tokens, [r * T for r in rows], T + 1, device)
        _, loss = model(w[:, :-1], w[:, 1:])
        total += loss.item() * len(rows)
    return total / n


def bigram_loss(train_tokens, val_tokens, vocab_size):
    """Cross-entropy of a count-based bigram model on the validation split: P(b|a) from the training split's
    counts of (a, b), add-alpha smoothed with the best of a few alphas (its best shot); pairs counted sparsely."""
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
