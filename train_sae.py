"""train_sae.py: harvest the 512 MLP activations and fit the paper's sparse autoencoder.

    python train_sae.py                                  # 4,096 features (the paper's A/1), ~10 minutes
    python train_sae.py --sweep 512 1024 2048 4096       # several sizes on the same activations (A/0...)
    python train_sae.py --activation topk --k 32         # TopK instead of ReLU + L1 (Gao et al. 2024)

The LM is run over random windows of the training split and its MLP activations after the ReLU fill
a shuffled buffer; the SAE trains on batches drawn from it without replacement, and the buffer is
refilled from the LM when it runs dry, so a run sees far more activations than fit in memory (the
paper: 8 billion activations from 40 million contexts, repeating data makes dead features). Dead
features are resampled on the paper's schedule, scaled to the length of the run. Writes
<out>/<sae-dir>/F<n>/ckpt.pt and log.jsonl; its last line holds the held-out metrics, e.g.
`L0 18.2 | FVU 0.14 | dead 2.1% | 21.5M activations`.
"""
import dataclasses
import math
import os
import time

import numpy as np
import torch
import torch.distributed as dist

import data
import sae as sae_lib
import sae_fused
from common import (Progress, UserError, arg, atomic_save, fmt_eta, load_checkpoint, parse_config,
                    run_main, setup_processes)
from model import harvest, lm_fingerprint, load_lm


@dataclasses.dataclass
class SAETrainConfig:
    out: str = arg("out", "artifact root: reads <out>/data/ and <out>/<lm-dir>/, writes <out>/<sae-dir>/")
    lm_dir: str = arg("lm", "the LM run whose MLP activations to decompose")
    sae_dir: str = arg("sae", "this run's folder under --out; each size goes in F<n>/ inside it")
    device: str = arg("auto", "auto, cpu, cuda or cuda:N")
    seed: int = arg(0, "seed for the SAE's initialisation and the activations' order")
    max_minutes: float = arg(10.0, "wall-clock budget: sets the number of steps from the measured speed")
    max_activations: int = arg(0, "activation budget instead of --max-minutes (0: use the minutes)")
    resume: bool = arg(False, "continue the run in <out>/<sae-dir>/ exactly where it stopped")
    n_features: int = arg(4096, "dictionary size (the paper's A/1: 4,096 = 8x the 512 neurons)")
    sweep: list = arg([], "train several dictionary sizes on the same activations, e.g. 512 1024 2048 4096")
    activation: str = arg("relu", "relu (the paper: ReLU + L1 penalty) or topk (Gao et al. 2024)")
    l1_coeff: float = arg(3e-3, "L1 penalty coefficient, in the SAE's normalised units (relu)")
    k: int = arg(32, "active features per activation (topk)")
    lr: float = arg(1e-3, "Adam learning rate, constant (the paper: annealing did not help)")
    batch_size: int = arg(4096, "activations per step (the paper: 8,192)")
    buffer_size: int = arg(2**18, "activations per buffer fill (2^18 x 512 floats = 512 MB)")
    eval_activations: int = arg(2**16, "held-out activations (validation split) for the metrics")
    eval_every: int = arg(200, "steps between held-out metrics")
    ckpt_minutes: float = arg(1.0, "minutes between checkpoints (each taken at the next buffer refill)")
    fused: bool = arg(True, "the fused sparse step (else the plain autograd reference)")
    bf16: bool = arg(True, "bf16 for the dense encoder product where the hardware makes it fast (--no-bf16: never)")


def train(cfg, on_step=None):
    """Train one SAE per dictionary size on the same stream of activations; returns their checkpoints.
    on_step(step) runs after each step (the tests use it to simulate a crash)."""
    t_run = time.time()
    sizes = [int(s) for s in cfg.sweep] or [cfg.n_features]
    ddp, rank, world, device = setup_processes(cfg.device)
    check_config(cfg, sizes, world)
    master = rank == 0
    data_dir, run_dir = os.path.join(cfg.out, "data"), os.path.join(cfg.out, cfg.sae_dir)
    meta = data.load_meta(data_dir)
    model, lm_ckpt = load_lm(cfg.out, cfg.lm_dir, device)
    if lm_ckpt["tokenizer_hash"] != meta["tokenizer_hash"]:
        raise UserError(f"{cfg.out}/{cfg.lm_dir} was trained on other token shards than {data_dir}: "
                        "retrain the LM (python train_lm.py) after python data.py")
    lm_id = lm_fingerprint(lm_ckpt)
    train_tokens, val_tokens = data.load_tokens(data_dir, "train"), data.load_tokens(data_dir, "val")
    d_mlp = model.cfg.d_mlp

    torch.manual_seed(cfg.seed)
    saes, opts = [], []
    for n in sizes:
        s = sae_lib.SAE(make_sae_config(cfg, d_mlp, n)).to(device)
        saes.append(s)
        opts.append(sae_lib.make_optimizer(s, cfg.lr))
    windows = torch.Generator().manual_seed(cfg.seed + 1)  # which contexts fill the buffer
    shuffle = torch.Generator().manual_seed(cfg.seed + 2)  # the order inside a fill
    step, max_steps, seen, elapsed = 0, None, 0, 0.0
    since_fired = [torch.zeros(n, dtype=torch.long, device=device) for n in sizes]
    paths = [os.path.join(run_dir, f"F{n}", "ckpt.pt") for n in sizes]
    if cfg.resume:
        ckpts = [load_checkpoint(p, "SAE checkpoint to resume", "start without --resume") for p in paths]
        for s, o, c, i in zip(saes, opts, ckpts, range(len(sizes))):
            if c["lm_fingerprint"] != lm_id:
                raise UserError(f"{paths[i]} was trained on another LM than {cfg.out}/{cfg.lm_dir}: "
                                "start a new --sae-dir")
            s.load_state_dict(c["sae"])
            o.load_state_dict(c["optimizer"])
            since_fired[i] = c["since_fired"].to(device)
        c = ckpts[0]
        windows.set_state(c["windows_rng"])
        shuffle.set_state(c["shuffle_rng"])
        step, max_steps, seen, elapsed = c["step"], c["max_steps"], c["seen"], c["elapsed"]
        if master:
            print(f"resuming {run_dir} at step {step} of {max_steps}")
    if cfg.max_activations:
        max_steps = math.ceil(cfg.max_activations / cfg.batch_size)

    # held-out activations: random windows of the validation split, the same at every evaluation
    held_out = lambda n: harvest(model, val_tokens, n, torch.Generator().manual_seed(1234), device=device)[0]
    val_acts = held_out(cfg.eval_activations)
    if master:
        print(f"config: {dataclasses.asdict(cfg)}")
        print(f"LM {cfg.out}/{cfg.lm_dir} (step {lm_ckpt['step']}, {d_mlp} neurons); SAE sizes {sizes}; "
              f"held-out set {len(val_acts):,} activations; {world} process(es) on {device}")

    def save(final=False):
        if not master:
            return None
        out = []
        for s, o, n, i in zip(saes, opts, sizes, range(len(sizes))):
            c = {"config": dataclasses.asdict(cfg), "sae_config": dataclasses.asdict(s.cfg), "sae": s.state_dict(),
                 "optimizer": o.state_dict(), "step": step, "max_steps": max_steps, "seen": seen,
                 "elapsed": elapsed, "since_fired": since_fired[i], "windows_rng": windows.get_state(),
                 "shuffle_rng": shuffle.get_state(), "lm_dir": cfg.lm_dir, "lm_fingerprint": lm_id,
                 "tokenizer_hash": meta["tokenizer_hash"], "final": final, "history": histories[i]}
            atomic_save(c, paths[i])
            out.append(c)
        return out

    histories = [[] for _ in sizes] if not cfg.resume else [c["history"] for c in ckpts]
    logs = [Progress(os.path.join(run_dir, f"F{n}", "log.jsonl") if master else None, append=cfg.resume,
                     quiet=True) for n in sizes]
    progress = Progress(None, quiet=not master)
    per_rank = cfg.batch_size // world
    steps_per_fill = cfg.buffer_size // cfg.batch_size
    t_start = t_last = t_saved = time.time()
    step0 = step_last = step
    buffer = None
    by_time, t_cycle = max_steps is None, None  # a wall-clock budget (not resumed, no --max-activations)
    # A wall-clock budget's step count is an estimate that grows severalfold while L0 falls and the
    # sparse step speeds up; the resampling schedule (fractions of the run) waits until it has
    # settled, else all four resamplings land in the first minute, before any feature can be dead.
    settled = not by_time
    n_resamples = sum("resampled" in h for h in histories[0])
    last_resample = max([h["step"] for h in histories[0] if "resampled" in h], default=0)
    while max_steps is None or step < max_steps:
        if step % steps_per_fill == 0:
            # A fill boundary: the only state is the two generators, so this is where we checkpoint
            # (the 512 MB buffer never needs saving) and where --resume picks up.
            if step > step0 and time.time() - t_saved >= 60 * cfg.ckpt_minutes:
                elapsed, t_start = elapsed + time.time() - t_start, time.time()
                save()
                t_saved = time.time()
            buffer = harvest(model, train_tokens, cfg.buffer_size, windows, device=device)[0]
            buffer = buffer[torch.randperm(len(buffer), generator=shuffle).to(device)]
            if step == 0 and not cfg.resume:
                for s in saes:  # act_scale and b_dec (geometric median) from the first fill (paper)
                    s.init_from_data(buffer[:2**14])
        j = (step % steps_per_fill) * cfg.batch_size
        x = buffer[j + rank * per_rank: j + (rank + 1) * per_rank]
        for i, (s, o) in enumerate(zip(saes, opts)):
            stats = sae_step(s, o, x, cfg, ddp, world)
            if not math.isfinite(stats["loss"]):
                raise UserError(f"SAE F{sizes[i]} loss became {stats['loss']} at step {step}; the last good "
                                f"checkpoint ({paths[i]}) is kept: lower --lr and rerun with --resume")
            since_fired[i] = torch.where(stats["fired"] > 0, 0, since_fired[i] + 1)
        step += 1
        seen += cfg.batch_size
        if on_step is not None:
            on_step(step)
        if by_time and step >= 10 and (step - 10) % steps_per_fill == 0:
            # The time budget -> a step count, from the speed over the last buffer cycle (one
            # harvest included), re-estimated every cycle: early on L0 is in the hundreds and the
            # sparse step is slow, so a first estimate alone would stop the run minutes early.
            now = time.time()
            if t_cycle is not None:
                rate = steps_per_fill / (now - t_cycle)
                first, previous = max_steps is None, max_steps
                max_steps = max(step, step + int((cfg.max_minutes * 60 - (now - t_run)) * rate))
                if ddp:
                    n = torch.tensor([max_steps], device=device)
                    dist.broadcast(n, 0)
                    max_steps = int(n.item())
                settled = settled or (not first and max_steps <= 1.1 * previous)
                if master and first:
                    print(f"budget: {cfg.max_minutes} min, now at {rate * cfg.batch_size:,.0f} activations/s "
                          f"-> about {max_steps} steps, {max_steps * cfg.batch_size / 1e6:.1f}M activations "
                          "(re-estimated as the speed changes)")
            t_cycle = now
        if resample_due(step, max_steps, n_resamples, last_resample, settled, by_time):
            n_resamples, last_resample = n_resamples + 1, step
            for i, (s, o) in enumerate(zip(saes, opts)):
                dead = since_fired[i] >= min(sae_lib.dead_window(max_steps), step)
                sample = buffer[:min(len(buffer), 100 * cfg.batch_size)]
                n_dead = sae_lib.resample_dead(s, o, dead, sample, sae_fused.squared_errors(s, sample))
                if ddp:  # every rank resampled from its own inputs; rank 0's choice wins
                    for p in (s.W_enc, s.W_dec, s.b_enc):
                        dist.broadcast(p.data, 0)
                since_fired[i][dead] = 0
                histories[i].append({"step": step, "resampled": n_dead})
                logs[i].log(histories[i][-1])
                progress.say(f"step {step}: resampled {n_dead} dead features of F{sizes[i]}")
        if step % cfg.eval_every == 0 or step == max_steps:
            for i, s in enumerate(saes):
                m = sae_lib.evaluate(s, val_acts)
                record = {"step": step, "activations": seen, "mse": m["mse"], "fvu": m["fvu"], "l0": m["l0"],
                          "dead_frac": m["dead_frac"], "dense_frac": m["dense_frac"], "train_loss": stats["loss"]}
                histories[i].append(record)
                logs[i].log(record)
        if progress.due() or step == max_steps:
            now = time.time()
            rate = (step - step_last) / max(now - t_last, 1e-9)
            t_last, step_last = now, step
            last = next((h for h in reversed(histories[-1]) if "mse" in h), None)
            # dead here: silent for the whole resampling window in training (held-out sets are small)
            dead = (since_fired[-1] >= sae_lib.dead_window(max_steps or 10**6)).float().mean().item()
            metrics = (f" | F{sizes[-1]}: held-out MSE {last['mse']:.4f} L0 {last['l0']:.1f} | "
                       f"dead {100 * dead:.1f}%") if last else ""
            eta = fmt_eta((max_steps - step) / max(rate, 1e-9)) if max_steps else "?"
            progress.say(f"step {step}/{max_steps or '?'}{metrics} | {rate * cfg.batch_size:,.0f} act/s | ETA {eta}")
    elapsed += time.time() - t_start
    if ddp:
        dist.destroy_process_group()
    if not master:
        return None
    # the final metrics on a larger held-out set: "dead" needs many examples to mean anything
    final_acts = held_out(4 * cfg.eval_activations)
    for i, s in enumerate(saes):
        m = sae_lib.evaluate(s, final_acts)
        histories[i].append({"final": True, "step": step, "activations": seen, "held_out": len(final_acts),
                             **{k: m[k] for k in ("mse", "fvu", "l0", "dead_frac", "dense_frac")}})
        logs[i].log(histories[i][-1])
    ckpts = save(final=True)
    print(f"trained {len(sizes)} SAE(s) for {step} steps in {fmt_eta(elapsed)}; checkpoints in {run_dir}/")
    for n, h in zip(sizes, histories):
        f = h[-1]
        print(f"F{n}: L0 {f['l0']:.1f} | FVU {f['fvu']:.3f} | dead {100 * f['dead_frac']:.1f}% | "
              f"{seen / 1e6:.1f}M activations")
    return ckpts


def resample_due(step, max_steps, done, last, settled, by_time):
    """Whether resampling number done+1 is due: the paper's schedule, as fractions of the run, once
    the run's length is known (settled). Under a time budget the points that passed while it was
    being estimated follow one another a dead window apart, so each sees features silent that long."""
    schedule = sae_lib.resample_schedule(max_steps) if max_steps and settled else []
    return (done < len(schedule) and step >= schedule[done]
            and (not by_time or step - last >= sae_lib.dead_window(max_steps)))


def sae_step(s, opt, x, cfg, ddp, world):
    """One optimizer step. Under DDP each process has a slice of the batch: average the gradients
    (linear, so the decoder-gradient projection commutes with it), then step."""
    if not ddp:
        stats = sae_fused.train_step(s, opt, x, fused=cfg.fused, bf16=None if cfg.bf16 else False)
    else:
        opt.zero_grad(set_to_none=True)
        stats = sae_fused.fused_grads(s, x, bf16=None if cfg.bf16 else False)
        for p in s.parameters():
            dist.all_reduce(p.grad)
            p.grad /= world
        dist.all_reduce(stats["fired"])
        opt.step()
        sae_lib.normalize_decoder(s)
    return {k: (v.item() if torch.is_tensor(v) and v.dim() == 0 else v) for k, v in stats.items()}


def make_sae_config(cfg, d_in, n_features):
    try:
        return sae_lib.SAEConfig(d_in=d_in, n_features=n_features, l1_coeff=cfg.l1_coeff,
                                 activation=cfg.activation, k=cfg.k)
    except ValueError as e:
        raise UserError(str(e).replace("SAEConfig: ", "--").replace("_", "-", 1)) from None


def check_config(cfg, sizes, world):
    if any(n < 1 for n in sizes):
        raise UserError(f"--sweep/--n-features: dictionary sizes must be positive, got {sizes}")
    if cfg.batch_size < 1 or cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} must be positive and divisible by {world} process(es)")
    if cfg.buffer_size < cfg.batch_size:
        raise UserError(f"--buffer-size {cfg.buffer_size} must hold at least one batch ({cfg.batch_size})")
    if cfg.lr <= 0 or cfg.max_minutes <= 0 or cfg.max_activations < 0 or cfg.eval_every < 1 or cfg.ckpt_minutes < 0:
        raise UserError("--lr, --max-minutes and --eval-every must be positive, "
                        "--max-activations and --ckpt-minutes >= 0")


if __name__ == "__main__":
    run_main(lambda: train(parse_config(SAETrainConfig, description=__doc__.split("\n\n")[0])))
