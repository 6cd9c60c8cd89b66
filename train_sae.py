"""train_sae.py: harvest the 512 MLP activations and fit the paper's sparse autoencoder.

    python train_sae.py                                  # 4,096 features (the paper's A/1), ~10 minutes
    python train_sae.py --sweep 512 1024 2048 4096       # several sizes on the same activations (A/0...)
    python train_sae.py --activation topk --k 32         # TopK instead of ReLU + L1 (Gao et al. 2024)
    python train_sae.py --recipe paper                   # the paper's training recipe (resampling) instead of 2024's
    python train_sae.py --snapshots 0 1000000            # also keep the SAE as it was at 0 and 1M activations

The LM is run over random windows of the training split and its MLP activations after the ReLU fill
a shuffled buffer; the SAE trains on batches drawn from it without replacement, and the buffer is
refilled from the LM when it runs dry, so a run sees far more activations than fit in memory (the
paper: 8 billion activations from 40 million contexts, repeating data makes dead features). The
default recipe, Anthropic's 2024 update (see the end of this file), starts the encoder as the
decoder's transpose, warms the L1 penalty up, decays the learning rate and never resamples; with
--recipe paper, dead features are resampled on the paper's schedule, scaled to the length of the
run (on a 2-core run the 2024 recipe left no dead feature where the paper's left 9%). Writes
<out>/<sae-dir>/F<n>/ckpt.pt and log.jsonl; its last line holds the held-out metrics, e.g.
`L0 34.6 | FVU 0.040 | dead 0.0% | 12.0M activations`. A snapshot at <count> activations goes in
<out>/<sae-dir>_at<count>/F<n>/ckpt.pt, a folder analyze.py reads with --sae-dir <sae-dir>_at<count>.
"""
import dataclasses
import math
import os
import time

import torch
import torch.distributed as dist

import data
import sae as sae_lib
from lab import sae_fast
from lab.plumbing import (Budget, Progress, Stopwatch, UserError, arg, atomic_save, finite, flat_dict, fmt_eta, load_checkpoint,
                    mark_crashed, parse_config, refuse_to_replace, require, run_main, setup_processes,
                    warn_if_repeating)
from model import harvest, lm_fingerprint, load_lm

# --recipe: how the SAE starts and is trained (the 2024 recipe is at the end of this file)
RECIPES = {"paper": "the paper's: PyTorch's default initialisation, resampling at 2.5/5/7.5/10% of the steps, "
                    "constant learning rate",
           "2024": "Anthropic's April 2024 update: encoder initialised as 0.01 x the decoder's transpose, L1 "
                   "coefficient warmed up over the first 5% of the steps, learning rate decayed to 0 over the last "
                   "20%, no resampling"}


@dataclasses.dataclass
class SAETrainConfig:  # the SAE's own fields default to sae.py's SAEConfig: one home for each
    out: str = arg("out", "artifact root: reads <out>/data/ and <out>/<lm-dir>/, writes <out>/<sae-dir>/")
    lm_dir: str = arg("lm", "the LM run whose MLP activations to decompose")
    sae_dir: str = arg("sae", "this run's folder under --out; each size goes in F<n>/ inside it")
    device: str = arg("auto", "auto, cpu, cuda or cuda:N")
    seed: int = arg(0, "seed for the SAE's initialisation and the activations' order")
    max_minutes: float = arg(10.0, "wall-clock budget: sets the number of steps from the measured speed")
    max_activations: int = arg(0, "activation budget instead of --max-minutes (0: use the minutes)")
    resume: bool = arg(False, "continue the run in <out>/<sae-dir>/ exactly where it stopped")
    overwrite: bool = arg(False, "replace a finished run in <out>/<sae-dir>/ (else refused)")
    n_features: int = arg(sae_lib.SAEConfig.n_features, "dictionary size (the paper's A/1: 4,096 = 8x the 512 neurons)")
    sweep: list = arg([], "train several dictionary sizes on the same activations, e.g. 512 1024 2048 4096")
    activation: str = arg(sae_lib.SAEConfig.activation, "relu (the paper: ReLU + L1 penalty) or topk (Gao et al. 2024)")
    l1_coeff: float = arg(sae_lib.SAEConfig.l1_coeff, "L1 penalty coefficient, in the SAE's normalised units (relu)")
    k: int = arg(sae_lib.SAEConfig.k, "active features per activation (topk)")
    recipe: str = arg("2024", "how the SAE starts and is trained: 2024 (Anthropic's April 2024 update: tied "
                      "initialisation, L1 warm-up, LR decay, no resampling; the default: on our runs it leaves no "
                      "dead features, see the README) or paper (Bricken et al. 2023, the reference)")
    lr: float = arg(1e-3, "Adam learning rate: constant (paper recipe: annealing did not help), or its peak (2024)")
    batch_size: int = arg(4096, "activations per step (the paper: 8,192)")
    buffer_size: int = arg(2**18, "activations per buffer fill (2^18 x 512 floats = 512 MB)")
    eval_activations: int = arg(2**16, "held-out activations (validation split) for the metrics")
    eval_every: int = arg(200, "steps between held-out metrics")
    ckpt_minutes: float = arg(1.0, "minutes between checkpoints (each taken at the next buffer refill)")
    snapshots: list = arg([], "activation counts at which to also keep a copy of the checkpoints, e.g. 0 1000000 "
                          "(0: the SAE as initialised, before any step), in <out>/<sae-dir>_at<count>/F<n>/")
    fused: bool = arg(True, "the fused sparse step (else the plain autograd reference)")
    bf16: bool = arg(True, "bf16 for the dense encoder product where the hardware makes it fast (--no-bf16: never)")

    def __post_init__(self):
        require(all(str(n).isdigit() and int(n) >= 1 for n in self.sweep), f"--sweep {' '.join(map(str, self.sweep))}",
                "expects positive dictionary sizes, e.g. --sweep 512 1024")
        require(all(str(n).isdigit() for n in self.snapshots), f"--snapshots {' '.join(map(str, self.snapshots))}",
                "expects activation counts >= 0, e.g. --snapshots 0 1000000")
        require(finite(self.max_minutes) and self.max_minutes > 0, f"--max-minutes {self.max_minutes}",
                "must be a positive number of minutes")
        require(self.max_activations >= 0, f"--max-activations {self.max_activations}",
                "must be >= 0 (0: use --max-minutes)")
        require(self.n_features >= 1, f"--n-features {self.n_features}", "must be at least 1")
        require(self.recipe in RECIPES, f"--recipe {self.recipe}", "must be paper or 2024")
        require(finite(self.l1_coeff), f"--l1-coeff {self.l1_coeff}", "must be a number >= 0")
        require(finite(self.lr) and self.lr > 0, f"--lr {self.lr}", "must be a positive number")
        require(self.batch_size >= 1, f"--batch-size {self.batch_size}", "must be at least 1")
        require(self.buffer_size >= self.batch_size, f"--buffer-size {self.buffer_size}",
                f"must hold at least one batch (--batch-size {self.batch_size})")
        require(self.eval_activations >= 1, f"--eval-activations {self.eval_activations}", "must be at least 1")
        require(self.eval_every >= 1, f"--eval-every {self.eval_every}", "must be at least 1")
        require(finite(self.ckpt_minutes) and self.ckpt_minutes >= 0, f"--ckpt-minutes {self.ckpt_minutes}",
                "must be a number >= 0")
        for n in self.sizes:  # --activation, --l1-coeff, --k: sae.py's checks, worded as flags
            self.sae_config(sae_lib.SAEConfig.d_in, n)

    @property
    def sizes(self):
        return [int(n) for n in self.sweep] or [self.n_features]

    def sae_config(self, d_in, n_features):
        try:
            return sae_lib.SAEConfig(d_in=d_in, n_features=n_features, l1_coeff=self.l1_coeff,
                                     activation=self.activation, k=self.k)
        except ValueError as e:
            raise UserError(str(e).replace("SAEConfig: ", "--").replace("_", "-", 1)) from None


def train(cfg, on_step=None):
    """Train one SAE per dictionary size on the same stream of activations; returns their checkpoints.
    on_step(step) runs after each step (the tests use it to simulate a crash)."""
    # setup: processes, the LM whose activations we decompose, one SAE and optimizer per size
    t_run, watch = time.time(), Stopwatch()  # the watch: where this session's time goes
    sizes = cfg.sizes
    ddp, rank, world, device = setup_processes(cfg.device)
    require(cfg.batch_size % world == 0, f"--batch-size {cfg.batch_size}", f"must be divisible by the {world} processes")
    master = rank == 0
    data_dir, run_dir = os.path.join(cfg.out, "data"), os.path.join(cfg.out, cfg.sae_dir)
    meta = data.load_meta(data_dir)
    model, lm_ckpt = load_lm(cfg.out, cfg.lm_dir, device)
    if lm_ckpt["tokenizer_hash"] != meta["tokenizer_hash"]:
        raise UserError(f"{cfg.out}/{cfg.lm_dir} was trained on other token shards than {data_dir}: "
                        "retrain the LM (python train_lm.py) after python data.py")
    lm_id = lm_fingerprint(lm_ckpt)
    train_tokens, val_tokens = data.load_tokens(data_dir, "train"), data.load_tokens(data_dir, "val")
    paths = [os.path.join(run_dir, f"F{n}", "ckpt.pt") for n in sizes]
    refuse_to_replace(paths, cfg, "--sae-dir")
    torch.manual_seed(cfg.seed)
    saes = [sae_lib.SAE(cfg.sae_config(model.cfg.d_mlp, n)).to(device) for n in sizes]
    if cfg.recipe == "2024":
        for s in saes:
            init_2024(s)
    opts = [sae_lib.make_optimizer(s, cfg.lr) for s in saes]
    windows = torch.Generator().manual_seed(cfg.seed + 1)  # which contexts fill the buffer
    shuffle = torch.Generator().manual_seed(cfg.seed + 2)  # the order inside a fill
    steps_per_fill = cfg.buffer_size // cfg.batch_size
    warn_overfitting = lambda max_steps: master and warn_if_repeating(
        max_steps * cfg.batch_size, len(train_tokens), "training tokens' activations",
        "the paper: repeating data makes dead features",
        "give data.py more --data, or lower --max-minutes/--max-activations")

    # resume: the SAEs, their optimizers, the dead-feature counters and both random streams
    step, max_steps, seen, elapsed = 0, None, 0, 0.0
    since_fired = [torch.zeros(n, dtype=torch.long, device=device) for n in sizes]
    histories = [[] for _ in sizes]
    if cfg.resume:
        ckpts = [load_checkpoint(p, "SAE checkpoint to resume", "start without --resume") for p in paths]
        for i, (s, o, c) in enumerate(zip(saes, opts, ckpts)):
            check_resumable(c, paths[i], lm_id, cfg)
            s.load_state_dict(c["sae"])
            o.load_state_dict(c["optimizer"])
            since_fired[i], histories[i] = c["since_fired"].to(device), c["history"]
        c = ckpts[0]
        windows.set_state(c["windows_rng"])
        shuffle.set_state(c["shuffle_rng"])
        step, max_steps, seen, elapsed = c["step"], c["max_steps"], c["seen"], c["elapsed"]
        if master:
            print(f"resuming {run_dir} at step {step} of {max_steps}")
    if cfg.max_activations:
        max_steps = math.ceil(cfg.max_activations / cfg.batch_size)
    # no step count yet: time every buffer cycle from step 10 on (one harvest included)
    budget = Budget(cfg.max_minutes, t_run, start=10, span=steps_per_fill, once=False, per_step=cfg.batch_size,
                    unit="activations", device=device, quiet=not master) if max_steps is None else None
    # --recipe 2024's L1 warm-up: (from step, over 5% of a length); under a time budget schedule_2024 sets it
    warm_up = (0, max_steps) if budget is None else None
    if cfg.resume and ckpts[0].get("warm_up") is not None:  # where the interrupted run's warm-up began
        warm_up = tuple(ckpts[0]["warm_up"])

    # held-out activations: random windows of the validation split, the same at every evaluation
    held_out = lambda n: harvest(model, val_tokens, n, torch.Generator().manual_seed(1234), device=device)[0]
    val_acts = held_out(cfg.eval_activations)
    evaluate = sae_fast.evaluate if cfg.fused else sae_lib.evaluate   # the same metrics, the first faster
    if master:
        print(f"config: {flat_dict(cfg)}")
        print(f"LM {cfg.out}/{cfg.lm_dir} (step {lm_ckpt['step']}, {model.cfg.d_mlp} neurons); SAE sizes {sizes}; "
              f"held-out set {len(val_acts):,} activations; {world} process(es) on {device}")
        print(f"recipe {cfg.recipe}: {RECIPES[cfg.recipe]}")
    if max_steps:
        warn_overfitting(max_steps)

    def save(status, folder=run_dir):
        """status: "running" (periodic), "final"; mark_crashed turns the last one into "crashed".
        "snapshot": a copy in another folder (--snapshots), the run's state at that step."""
        if not master:
            return None
        out = []
        for s, o, i in zip(saes, opts, range(len(sizes))):
            c = {"config": flat_dict(cfg), "sae_config": dataclasses.asdict(s.cfg), "sae": s.state_dict(),
                 "optimizer": o.state_dict(), "step": step, "max_steps": max_steps, "seen": seen,
                 "elapsed": elapsed, "since_fired": since_fired[i], "windows_rng": windows.get_state(),
                 "shuffle_rng": shuffle.get_state(), "lm_dir": cfg.lm_dir, "lm_fingerprint": lm_id,
                 "tokenizer_hash": meta["tokenizer_hash"], "status": status, "final": status == "final",
                 "time_split": watch.split(),  # this session's seconds per phase (Stopwatch)
                 "warm_up": warm_up,  # --recipe 2024: (the step its L1 warm-up began, the length it spans)
                 "history": histories[i]}
            atomic_save(c, os.path.join(folder, f"F{sizes[i]}", "ckpt.pt"))
            out.append(c)
        return out

    # the training loop
    logs = [Progress(os.path.join(run_dir, f"F{n}", "log.jsonl") if master else None, append=cfg.resume,
                     quiet=True) for n in sizes]
    progress = Progress(None, quiet=not master)
    per_rank = cfg.batch_size // world
    t_start = t_last = t_saved = time.time()
    step0 = step_last = step
    seen0 = seen
    buffer = None
    # The resampling schedule (fractions of the run) waits until a time budget's estimate has
    # settled: it grows severalfold while L0 falls, and all four resamplings would otherwise land
    # in the first minute, before any feature can be dead.
    n_resamples = sum("resampled" in h for h in histories[0])
    last_resample = max([h["step"] for h in histories[0] if "resampled" in h], default=0)
    # --snapshots still to take (a resumed run took those up to its checkpoint before writing it)
    snapshots = sorted(n for n in {int(n) for n in cfg.snapshots} if not cfg.resume or n > seen)

    def take_snapshots():
        """A copy of the checkpoints for each --snapshots count that seen has reached, in a sibling
        folder <sae-dir>_at<count>/ (analyze.py reads it with --sae-dir), taken at that very step."""
        nonlocal elapsed, t_start
        while snapshots and snapshots[0] <= seen:
            folder = f"{os.path.normpath(run_dir)}_at{snapshots.pop(0)}"
            elapsed, t_start = elapsed + time.time() - t_start, time.time()
            with watch("checkpoints"):
                save("snapshot", folder)
            progress.say(f"step {step}: snapshot of {seen:,} activations in {folder}/")

    try:
        while max_steps is None or step < max_steps:
            # 1. refill the activation buffer when it runs dry. Its only state is the two generators,
            # so a fill boundary is where we checkpoint (the 512 MB buffer is never saved) and resume.
            if step % steps_per_fill == 0:
                if step > step0 and time.time() - t_saved >= 60 * cfg.ckpt_minutes:
                    elapsed, t_start = elapsed + time.time() - t_start, time.time()
                    with watch("checkpoints"):
                        save("running")
                    t_saved = time.time()
                with watch("harvest"):
                    buffer = harvest(model, train_tokens, cfg.buffer_size, windows, device=device)[0]
                    buffer = buffer[torch.randperm(len(buffer), generator=shuffle).to(device)]
                    if step == 0 and not cfg.resume:
                        for s in saes:  # act_scale and b_dec (geometric median) from the first fill (paper)
                            s.init_from_data(buffer[:2**14])
                if step == 0:
                    take_snapshots()  # --snapshots 0: the SAE as initialised, the analysis' noise control
            # 2. one optimizer step per dictionary size, on this process's slice of the batch
            j = (step % steps_per_fill) * cfg.batch_size
            x = buffer[j + rank * per_rank: j + (rank + 1) * per_rank]
            l1_coeff = cfg.l1_coeff
            if cfg.recipe == "2024":  # this step's L1 coefficient and learning rate (the end of this file)
                l1_factor, warm_up = schedule_2024(step, max_steps, budget, warm_up, opts, cfg.lr)
                l1_coeff *= l1_factor
            for i, (s, o) in enumerate(zip(saes, opts)):
                with watch("SAE steps"):
                    stats = sae_step(s, o, x, cfg, ddp, world, l1_coeff)
                if not math.isfinite(stats["loss"]):
                    raise UserError(f"SAE F{sizes[i]} loss became {stats['loss']} at step {step}; the last good "
                                    f"checkpoint ({paths[i]}) is kept: lower --lr and rerun with --resume")
                since_fired[i] = torch.where(stats["fired"] > 0, 0, since_fired[i] + 1)
            step += 1
            seen += cfg.batch_size
            # 3. a time budget becomes a step count, re-estimated every buffer cycle
            if budget:
                was_settled, max_steps = budget.settled, budget.estimate(step, max_steps)
                if budget.settled and not was_settled:  # the estimate grows severalfold before it settles
                    warn_overfitting(max_steps)
            if on_step is not None:
                on_step(step)
            # 4. resample dead features (the paper: at 25k/50k/75k/100k of 1M steps; here the same fractions)
            if cfg.recipe == "paper" and resample_due(step, max_steps, n_resamples, last_resample,
                                                      not budget or budget.settled, bool(budget)):
                n_resamples, last_resample = n_resamples + 1, step
                for i, (s, o) in enumerate(zip(saes, opts)):
                    with watch("resampling"):
                        n_dead = resample(s, o, since_fired[i], buffer, step, max_steps, cfg.batch_size, ddp)
                    histories[i].append({"step": step, "resampled": n_dead})
                    logs[i].log(histories[i][-1])
                    progress.say(f"step {step}: resampled {n_dead} dead features of F{sizes[i]}")
            # 5. held-out metrics
            if step % cfg.eval_every == 0 or step == max_steps:
                for i, s in enumerate(saes):
                    with watch("held-out metrics"):
                        m = evaluate(s, val_acts)
                    histories[i].append({"step": step, "activations": seen,
                                         **{k: m[k] for k in ("mse", "fvu", "l0", "dead_frac", "dense_frac")},
                                         "train_loss": stats["loss"]})
                    logs[i].log(histories[i][-1])
            # 6. the --snapshots this step reached
            take_snapshots()
            # 7. progress line, for the largest size
            if progress.due() or step == max_steps:
                now = time.time()
                rate = (step - step_last) / max(now - t_last, 1e-9)
                t_last, step_last = now, step
                progress.say(progress_line(step, max_steps, rate, cfg.batch_size, sizes[-1], histories[-1],
                                           since_fired[-1]))
    except Exception as e:  # keep the last checkpoint's weights, labelled (Ctrl-C is no crash: resume it)
        if master:
            mark_crashed(paths, e, since=0 if cfg.resume else t_run)
        raise

    # final evaluation, on a larger held-out set: "dead" needs many examples to mean anything
    elapsed += time.time() - t_start
    if ddp:
        dist.destroy_process_group()
    if not master:
        return None
    with watch("held-out metrics"):
        final_acts = held_out(4 * cfg.eval_activations)
        finals = [evaluate(s, final_acts) for s in saes]
    with watch("checkpoints"):
        for i, m in enumerate(finals):
            histories[i].append({"final": True, "step": step, "activations": seen, "held_out": len(final_acts),
                                 **{k: m[k] for k in ("mse", "fvu", "l0", "dead_frac", "dense_frac")}})
            logs[i].log(histories[i][-1])
        ckpts = save("final")
    print(f"trained {len(sizes)} SAE(s) for {step} steps in {fmt_eta(elapsed)}; checkpoints in {run_dir}/")
    if cfg.recipe == "2024" and warm_up is None:
        print("warning: the run ended before its time budget made a first estimate, so the L1 penalty never "
              "warmed up and the SAE is dense: give it more --max-minutes, or a fixed --max-activations")
    if snapshots:
        print(f"no snapshot at {', '.join(f'{n:,}' for n in snapshots)} activations: the run ended at {seen:,}")
    stepping = watch.seconds.get("SAE steps", 0.0)
    if stepping > 0:  # the stage's speed against its step's: what harvesting, evaluating and saving cost
        print(f"{watch.line()}; {(seen - seen0) / stepping:,.0f} activations/s in the steps, "
              f"{(seen - seen0) / sum(watch.split().values()):,.0f} over the whole stage")
    for n, h in zip(sizes, histories):
        f = h[-1]
        print(f"F{n}: L0 {f['l0']:.1f} | FVU {f['fvu']:.3f} | dead {100 * f['dead_frac']:.1f}% | "
              f"{seen / 1e6:.1f}M activations")
    return ckpts


def check_resumable(ckpt, path, lm_id, cfg):
    """A checkpoint this run may go on from: made on this LM, with this recipe, by a run (not a copy)."""
    if ckpt["lm_fingerprint"] != lm_id:
        raise UserError(f"{path} was trained on another LM than {cfg.out}/{cfg.lm_dir}: start a new --sae-dir")
    trained_with = ckpt["config"].get("recipe", "paper")  # (checkpoints from before --recipe: paper)
    if trained_with != cfg.recipe:
        raise UserError(f"--recipe {cfg.recipe}: {path} was trained with --recipe {trained_with}; "
                        "resume it with that one")
    if ckpt.get("status") == "snapshot":  # taken between two buffer refills: no point to resume from
        raise UserError(f"{path} is a --snapshots copy, not a run to resume: resume the run's own --sae-dir")


def progress_line(step, max_steps, rate, batch_size, n, history, since_fired):
    """`step 800/5642 | F4096: held-out MSE 0.0123 L0 18.2 | dead 2.1% | 90,000 act/s | ETA 3m10s`."""
    last = next((h for h in reversed(history) if "mse" in h), None)
    # dead here: silent for the whole resampling window in training (held-out sets are small)
    dead = (since_fired >= sae_lib.dead_window(max_steps or 10**6)).float().mean().item()
    metrics = f" | F{n}: held-out MSE {last['mse']:.4f} L0 {last['l0']:.1f} | dead {100 * dead:.1f}%" if last else ""
    eta = fmt_eta((max_steps - step) / max(rate, 1e-9)) if max_steps else "?"
    return f"step {step}/{max_steps or '?'}{metrics} | {rate * batch_size:,.0f} act/s | ETA {eta}"


def resample(s, opt, since_fired, buffer, step, max_steps, batch_size, ddp):
    """Resample one SAE's dead features (silent for the paper's window, or since the start if
    shorter) from a sample of the buffer; returns how many. Resets their counters in place."""
    dead = since_fired >= min(sae_lib.dead_window(max_steps), step)
    n_dead = 0
    if dead.any():  # the errors of ~400k inputs cost as much as 100 steps: only when there is work
        sample = buffer[:min(len(buffer), 100 * batch_size)]
        n_dead = sae_lib.resample_dead(s, opt, dead, sample, sae_fast.squared_errors(s, sample))
    if ddp:  # every rank resampled from its own inputs; rank 0's choice wins
        for p in (s.W_enc, s.W_dec, s.b_enc):
            dist.broadcast(p.data, 0)
    since_fired[dead] = 0
    return n_dead


def resample_due(step, max_steps, done, last, settled, by_time):
    """Whether resampling number done+1 is due: the paper's schedule, as fractions of the run, once
    the run's length is known (settled). Under a time budget the points that passed while it was
    being estimated follow one another a dead window apart, so each sees features silent that long."""
    schedule = sae_lib.resample_schedule(max_steps) if max_steps and settled else []
    return (done < len(schedule) and step >= schedule[done]
            and (not by_time or step - last >= sae_lib.dead_window(max_steps)))


def sae_step(s, opt, x, cfg, ddp, world, l1_coeff):
    """One optimizer step, with this step's L1 coefficient. Under DDP each process has a slice of the
    batch: average the gradients (linear, so the decoder-gradient projection commutes with it), then step."""
    if not ddp:
        stats = sae_fast.train_step(s, opt, x, fused=cfg.fused, bf16=None if cfg.bf16 else False, l1_coeff=l1_coeff)
    else:
        opt.zero_grad(set_to_none=True)
        stats = sae_fast.fused_grads(s, x, bf16=None if cfg.bf16 else False, l1_coeff=l1_coeff)
        for p in s.parameters():
            dist.all_reduce(p.grad)
            p.grad /= world
        dist.all_reduce(stats["fired"])
        opt.step()
        sae_lib.normalize_decoder(s)
    return {k: (v.item() if torch.is_tensor(v) and v.dim() == 0 else v) for k, v in stats.items()}


# ----------------------------------------------------------------------------------------------
# --recipe 2024: Anthropic's April 2024 update of their SAE training, adapted to this code. The
# update drops the pre-encoder bias (its encoder reads x, not x - b_dec); we keep it, and b_dec at
# the geometric median, so that one SAE module (sae.py) serves both recipes: a recipe is how the SAE
# starts and is trained, never what it is, and every later stage reads both alike.
#
# The decoder stays unit-norm (sae.py's constraint). The update lets the decoder norms float and
# weights each feature's L1 term by its decoder norm, sum_i f_i ||d_i||. With ||d_i|| = 1 that
# penalty is ours, and the norm the update frees is absorbed by our encoder, which is unconstrained:
# divide d_i by c, multiply encoder row i and b_enc[i] by c, and f_i ||d_i||, the reconstruction and
# the loss are unchanged. So both parametrise the same family of SAEs with the same loss; only the
# optimiser's path through it differs.

INIT_SCALE_2024 = 0.01


@torch.no_grad()
def init_2024(s):
    """The update's initialisation: the decoder's rows random unit directions (as sae.SAE makes them),
    the encoder their transpose, b_enc = 0. The update starts the decoder norms at 0.1 with W_enc =
    W_dec^T: feature i reads 0.1 u_i . x and writes 0.1 u_i (u_i a unit direction). Moved into our
    unit decoder (the feature carries the norm: 0.1 f_i, as above) it reads 0.1 * 0.1 u_i . x, so
    INIT_SCALE_2024 = 0.01 = 0.1^2 starts the very SAE the update starts. Its reconstruction starts
    near b_dec: with x_bar = x - b_dec, sum_i ReLU(0.01 u_i . x_bar) u_i is about 0.01 F / (2 d_in)
    x_bar, 0.04 x_bar at 8x."""
    s.W_enc.copy_(INIT_SCALE_2024 * s.W_dec)
    s.b_enc.zero_()


def l1_warmup(step, total):
    """The L1 coefficient's factor at a step (0-based, the step about to be taken) of a run of total
    steps (the update): from 0 linearly to 1 over the first 5%, then 1."""
    return min(1.0, step / (0.05 * total))


def lr_decay(step, total):
    """The learning rate's factor (the update): 1, then linearly to 0 over the last 20% of the steps."""
    return min(1.0, (total - step) / (0.2 * total))


def schedule_2024(step, max_steps, budget, warm_up, opts, lr):
    """Both schedules at this step: sets the optimizers' learning rate; returns the L1 coefficient's
    factor and warm_up, (the step the warm-up began, the run length it is 5% of).

    They are fractions of max_steps. Under a time budget that is an estimate, made once a buffer
    cycle has been timed and at first several times too low (a fresh SAE is dense and slow). The
    warm-up begins at that first estimate and ramps over 5% of it, from that step, and is fixed then:
    shorter than 5% of the run it turns out to be, but a run that waited for the estimate to settle
    kept its L1 penalty at 0 and its SAE dense (L0 about 3,000, 5,000 activations/s against 17,000
    later) for a third of a 10-minute budget, and reached 8.6M activations. The LR decay (the last
    20%) waits for the estimate to settle, then reads the estimate of the moment and never raises the
    rate again: if the estimate grows once the decay has begun, the rate holds until the schedule
    comes back down to it. A run of known length (--max-activations, or resumed: the checkpoint's
    max_steps and warm_up) follows both exactly."""
    if warm_up is None and max_steps:
        warm_up = (step, max_steps)
    if max_steps and (budget is None or budget.settled):  # (the lr is checkpointed: a resume holds it)
        for o in opts:
            o.param_groups[0]["lr"] = min(o.param_groups[0]["lr"], lr * lr_decay(step, max_steps))
    return (l1_warmup(step - warm_up[0], warm_up[1]) if warm_up else 0.0), warm_up


if __name__ == "__main__":
    run_main(lambda: train(parse_config(SAETrainConfig, description=__doc__.split("\n\n")[0])))
