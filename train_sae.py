"""train_sae.py: harvest the 512 MLP activations and fit the paper's sparse autoencoder.

    python train_sae.py                                  # 4,096 features (the paper's A/1), 12M activations
    python train_sae.py --sweep 512 1024 2048 4096       # several sizes on the same activations (A/0...)
    python train_sae.py --activation topk --k 32         # TopK instead of ReLU + L1 (Gao et al. 2024)
    python train_sae.py --recipe paper                   # the paper's recipe (resampling) instead of 2024's
    python train_sae.py --snapshots 0 1000000            # also keep the SAE as it was at 0 and 1M activations

The LM runs over random windows of the training split and its MLP activations after the ReLU fill
a shuffled buffer; the SAE trains on batches drawn from it without replacement, and the buffer is
refilled from the LM when it runs dry, so a run sees far more activations than fit in memory (the
paper: 8 billion activations from 40 million contexts; repeated data makes dead features). The
default recipe, Anthropic's 2024 update (the end of this file), starts the encoder as the decoder's
transpose, warms the L1 penalty up, decays the learning rate and never resamples; --recipe paper
resamples dead features on the paper's schedule, scaled to the length of the run. Writes
<out>/<sae-dir>/F<n>/ckpt.pt and log.jsonl; the last line holds the held-out metrics, e.g.
`F4096: L0 34.6 | FVU 0.040 | dead 0.0% | 12.0M activations`. A snapshot at <count> activations goes
in <out>/<sae-dir>_at<count>/F<n>/ckpt.pt, a folder analyze.py reads with --sae-dir <sae-dir>_at<count>.
"""
import dataclasses
import functools
import math
import os
import time

import torch
import torch.distributed as dist

import data
import sae as sae_lib
from lab import sae_fast
from lab.plumbing import (Progress, Stopwatch, UserError, arg, atomic_save, broadcast_int, copy_for_timing, finite,
                          flat_dict, fmt_eta, labelled_crash, load_checkpoint, parse_config, refuse_to_replace, require,
                          run_main, setup_processes, timed_steps, warn_if_repeating)
from model import harvest, lm_fingerprint, load_lm

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
    max_activations: int = arg(12_000_000, "activations to train on (the paper: 8 billion)")
    max_minutes: float = arg(0.0, "a time budget instead of --max-activations: the count that fits, timed once at "
                             "the start, whose steps are the slowest (a fresh SAE is dense), so it ends early")
    resume: bool = arg(False, "continue the run in <out>/<sae-dir>/ exactly where it stopped")
    overwrite: bool = arg(False, "replace a finished run in <out>/<sae-dir>/ (else refused)")
    n_features: int = arg(sae_lib.SAEConfig.n_features, "dictionary size (the paper's A/1: 4,096 = 8x the 512 neurons)")
    sweep: list = arg([], "train several dictionary sizes on the same activations, e.g. 512 1024 2048 4096")
    activation: str = arg(sae_lib.SAEConfig.activation, "relu (the paper: ReLU + L1 penalty) or topk (Gao et al. 2024)")
    l1_coeff: float = arg(sae_lib.SAEConfig.l1_coeff, "L1 penalty coefficient, in the SAE's normalised units (relu)")
    k: int = arg(sae_lib.SAEConfig.k, "active features per activation (topk)")
    recipe: str = arg("2024", "how the SAE starts and is trained: 2024 (Anthropic's April 2024 update; the default, "
                      "it leaves no dead features on our runs) or paper (Bricken et al. 2023, the reference)")
    lr: float = arg(1e-3, "Adam learning rate: constant (paper recipe: annealing did not help), or its peak (2024)")
    batch_size: int = arg(4096, "activations per step (the paper: 8,192)")
    snapshots: list = arg([], "activation counts at which to also keep a copy of the checkpoints, e.g. 0 1000000 "
                          "(0: the SAE as initialised, before any step), in <out>/<sae-dir>_at<count>/F<n>/")
    fused: bool = arg(True, "the fused sparse step of lab/sae_fast.py (--no-fused: sae.py's autograd reference)")
    # set by programs (the tests, lab/compare.py), not on the command line
    buffer_size: int = arg(2**18, "activations per buffer fill (2^18 x 512 floats = 512 MB)", flag=False)
    eval_activations: int = arg(2**16, "held-out activations (validation split) for the metrics", flag=False)
    eval_every: int = arg(200, "steps between held-out metrics", flag=False)
    ckpt_minutes: float = arg(1.0, "minutes between checkpoints (each taken at the next buffer refill)", flag=False)
    bf16: bool = arg(True, "bf16 for the fused step's dense product where the hardware makes it fast", flag=False)

    def __post_init__(self):
        require(all(str(n).isdigit() and int(n) >= 1 for n in self.sweep), f"--sweep {' '.join(map(str, self.sweep))}",
                "expects positive dictionary sizes, e.g. --sweep 512 1024")
        require(all(str(n).isdigit() for n in self.snapshots), f"--snapshots {' '.join(map(str, self.snapshots))}",
                "expects activation counts >= 0, e.g. --snapshots 0 1000000")
        require(self.max_activations >= 1, f"--max-activations {self.max_activations}", "must be at least 1")
        require(finite(self.max_minutes) and self.max_minutes >= 0, f"--max-minutes {self.max_minutes}",
                "must be a number of minutes >= 0 (0: use --max-activations)")
        require(self.n_features >= 1, f"--n-features {self.n_features}", "must be at least 1")
        require(self.recipe in RECIPES, f"--recipe {self.recipe}", "must be paper or 2024")
        require(finite(self.l1_coeff), f"--l1-coeff {self.l1_coeff}", "must be a number >= 0")
        require(finite(self.lr) and self.lr > 0, f"--lr {self.lr}", "must be a positive number")
        require(self.batch_size >= 1, f"--batch-size {self.batch_size}", "must be at least 1")
        require(self.buffer_size >= self.batch_size, f"buffer_size {self.buffer_size}",
                f"must hold at least one batch (--batch-size {self.batch_size})")
        require(self.eval_activations >= 1 and self.eval_every >= 1, "eval_activations and eval_every",
                "must be at least 1")
        require(finite(self.ckpt_minutes) and self.ckpt_minutes >= 0, "ckpt_minutes", "must be a number >= 0")
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
    # 1. set-up: processes, the LM whose activations we decompose, one SAE and optimizer per size
    t_run, watch = time.time(), Stopwatch()  # the watch: where this session's time goes
    sizes = cfg.sizes
    ddp, rank, world, device = setup_processes(cfg.device)
    require(cfg.batch_size % world == 0, f"--batch-size {cfg.batch_size}", f"must be divisible by the {world} processes")
    master, per_rank = rank == 0, cfg.batch_size // world
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
    since_fired = [torch.zeros(n, dtype=torch.long, device=device) for n in sizes]  # steps each feature was silent
    histories = [[] for _ in sizes]

    # 2. the run's length in steps: resumed from the checkpoints, a count of activations, or a timed start
    step, seen, elapsed = 0, 0, 0.0
    if cfg.resume:
        ckpts = [load_checkpoint(p, "SAE checkpoint to resume", "start without --resume") for p in paths]
        for i, c in enumerate(ckpts):
            check_resumable(c, paths[i], lm_id, cfg)
            saes[i].load_state_dict(c["sae"])
            opts[i].load_state_dict(c["optimizer"])
            since_fired[i], histories[i] = c["since_fired"].to(device), c["history"]
        windows.set_state(ckpts[0]["windows_rng"])
        shuffle.set_state(ckpts[0]["shuffle_rng"])
        step, max_steps, seen, elapsed = (ckpts[0][k] for k in ("step", "max_steps", "seen", "elapsed"))
    elif cfg.max_minutes:
        max_steps = broadcast_int(timed_start(cfg, model, train_tokens, saes, device), device)
    else:
        max_steps = math.ceil(cfg.max_activations / cfg.batch_size)

    # held-out activations: random windows of the validation split, the same at every evaluation
    held_out = lambda n: harvest(model, val_tokens, n, torch.Generator().manual_seed(1234), device=device)[0]
    val_acts = held_out(cfg.eval_activations)
    evaluate = sae_fast.evaluate if cfg.fused else sae_lib.evaluate   # the same metrics, the first faster
    if master:
        print(f"config: {flat_dict(cfg)}")
        print(f"LM {cfg.out}/{cfg.lm_dir} (step {lm_ckpt['step']}, {model.cfg.d_mlp} neurons); SAE sizes {sizes}; "
              f"held-out set {len(val_acts):,} activations; {world} process(es) on {device}")
        print(f"recipe {cfg.recipe}: {RECIPES[cfg.recipe]}")
        print(("resuming " + run_dir + f" at step {step} of " if cfg.resume else "")
              + f"{max_steps} steps of {cfg.batch_size:,} activations ({max_steps * cfg.batch_size / 1e6:.1f}M)")
        warn_if_repeating(max_steps * cfg.batch_size, len(train_tokens), "tokens' activations",
                          "the paper: repeating data makes dead features", "give data.py more --data, or lower "
                          "--max-activations")

    def save(status, folder=run_dir):
        """status: "running" (periodic), "final"; a crash relabels the last one "crashed".
        "snapshot": a copy in another folder (--snapshots), the run's state at that step."""
        if not master:
            return None
        out = []
        for i, (s, o) in enumerate(zip(saes, opts)):
            c = {"config": flat_dict(cfg), "sae_config": dataclasses.asdict(s.cfg), "sae": s.state_dict(),
                 "optimizer": o.state_dict(), "step": step, "max_steps": max_steps, "seen": seen,
                 "elapsed": elapsed, "since_fired": since_fired[i], "windows_rng": windows.get_state(),
                 "shuffle_rng": shuffle.get_state(), "lm_dir": cfg.lm_dir, "lm_fingerprint": lm_id,
                 "tokenizer_hash": meta["tokenizer_hash"], "status": status, "final": status == "final",
                 "time_split": watch.split(), "history": histories[i]}
            atomic_save(c, os.path.join(folder, f"F{sizes[i]}", "ckpt.pt"))
            out.append(c)
        return out

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

    # 3. the training loop
    logs = [Progress(os.path.join(run_dir, f"F{n}", "log.jsonl") if master else None, append=cfg.resume,
                     quiet=True) for n in sizes]
    progress = Progress(None, quiet=not master)
    t_start = t_last = t_saved = time.time()
    step0 = step_last = step
    seen0 = seen
    with labelled_crash(paths if master else [], since=0 if cfg.resume else t_run):
        while step < max_steps:
            # a. refill the activation buffer when it runs dry. Its only state is the two generators,
            # so a fill boundary is where we checkpoint (the 512 MB buffer is never saved) and resume.
            if step % steps_per_fill == 0:
                if step > step0 and time.time() - t_saved >= 60 * cfg.ckpt_minutes:
                    elapsed, t_start, t_saved = elapsed + time.time() - t_start, time.time(), time.time()
                    with watch("checkpoints"):
                        save("running")
                with watch("harvest"):
                    buffer = harvest(model, train_tokens, cfg.buffer_size, windows, device=device)[0]
                    buffer = buffer[torch.randperm(len(buffer), generator=shuffle).to(device)]
                if step == 0:
                    for s in saes:  # act_scale and b_dec (geometric median) from the first fill (paper)
                        s.init_from_data(buffer[:2**14])
                    take_snapshots()  # --snapshots 0: the SAE as initialised, the analysis' noise control
            # b. one optimizer step per dictionary size, on this process's slice of the batch
            j = (step % steps_per_fill) * cfg.batch_size
            x = buffer[j + rank * per_rank: j + (rank + 1) * per_rank]
            l1_coeff = cfg.l1_coeff * (schedule_2024(step, max_steps, opts, cfg.lr) if cfg.recipe == "2024" else 1)
            for i, (s, o) in enumerate(zip(saes, opts)):
                with watch("SAE steps"):
                    stats = sae_step(s, o, x, cfg, ddp, world, l1_coeff)
                if not math.isfinite(stats["loss"]):
                    raise UserError(f"SAE F{sizes[i]} loss became {stats['loss']} at step {step}; the last good "
                                    f"checkpoint ({paths[i]}) is kept: lower --lr and rerun with --resume")
                since_fired[i] = torch.where(stats["fired"] > 0, 0, since_fired[i] + 1)
            step, seen = step + 1, seen + cfg.batch_size
            if on_step is not None:
                on_step(step)
            # c. resample dead features (--recipe paper: at 2.5/5/7.5/10% of the run, as at 25k..100k of its 1M)
            if cfg.recipe == "paper" and step in sae_lib.resample_schedule(max_steps):
                for i, (s, o) in enumerate(zip(saes, opts)):
                    with watch("resampling"):
                        n_dead = resample(s, o, since_fired[i], buffer, step, max_steps, cfg.batch_size, ddp)
                    histories[i].append({"step": step, "resampled": n_dead})
                    logs[i].log(histories[i][-1])
                    progress.say(f"step {step}: resampled {n_dead} dead features of F{sizes[i]}")
            # d. held-out metrics every eval_every steps
            if step % cfg.eval_every == 0 or step == max_steps:
                for i, s in enumerate(saes):
                    with watch("held-out metrics"):
                        m = evaluate(s, val_acts)
                    histories[i].append({"step": step, "activations": seen, **pick(m), "train_loss": stats["loss"]})
                    logs[i].log(histories[i][-1])
            # e. the --snapshots this step reached, and a progress line every few seconds (the largest size)
            take_snapshots()
            if progress.due() or step == max_steps:
                rate, t_last, step_last = (step - step_last) / max(time.time() - t_last, 1e-9), time.time(), step
                progress.say(progress_line(step, max_steps, rate, cfg.batch_size, sizes[-1], histories[-1],
                                           since_fired[-1]))

    # 4. the final evaluation, on a larger held-out set: "dead" needs many examples to mean anything
    elapsed += time.time() - t_start
    if ddp:
        dist.destroy_process_group()
    if not master:
        return None
    with watch("held-out metrics"):
        final_acts = held_out(4 * cfg.eval_activations)
        for i, s in enumerate(saes):
            histories[i].append({"final": True, "step": step, "activations": seen, "held_out": len(final_acts),
                                 **pick(evaluate(s, final_acts))})
            logs[i].log(histories[i][-1])
    with watch("checkpoints"):
        ckpts = save("final")
    print(f"trained {len(sizes)} SAE(s) for {step} steps in {fmt_eta(elapsed)}; checkpoints in {run_dir}/")
    if snapshots:
        print(f"no snapshot at {', '.join(f'{n:,}' for n in snapshots)} activations: the run ended at {seen:,}")
    stepping = watch.seconds.get("SAE steps", 0.0)
    if stepping > 0:  # the stage's speed against its step's: what harvesting, evaluating and saving cost
        print(f"{watch.line()}; {(seen - seen0) / stepping:,.0f} activations/s in the steps, "
              f"{(seen - seen0) / sum(watch.split().values()):,.0f} over the whole stage")
    for n, h in zip(sizes, histories):
        print(f"F{n}: L0 {h[-1]['l0']:.1f} | FVU {h[-1]['fvu']:.3f} | dead {100 * h[-1]['dead_frac']:.1f}% | "
              f"{seen / 1e6:.1f}M activations")
    return ckpts


def sae_step(s, opt, x, cfg, ddp, world, l1_coeff):
    """One optimizer step (sae.train_step) with this step's L1 coefficient, its gradient by the fused
    sparse step of lab/sae_fast.py (--fused) or by autograd. Under DDP each process has a slice of the
    batch and the gradients are averaged (linear, so removing their parallel part commutes with it).
    Returns the step's statistics as numbers, "fired" as a tensor."""
    grads = functools.partial(sae_fast.fused_grads, bf16=None if cfg.bf16 else False) if cfg.fused else None
    sync = functools.partial(average_grads, world=world) if ddp else None
    stats = sae_lib.train_step(s, opt, x, l1_coeff, grads, sync)
    return {k: (v.item() if torch.is_tensor(v) and v.dim() == 0 else v) for k, v in stats.items()}


def average_grads(s, stats, world):
    for p in s.parameters():
        dist.all_reduce(p.grad)
        p.grad /= world
    dist.all_reduce(stats["fired"])


def pick(metrics):
    """The held-out metrics a history keeps (sae.evaluate's dict without the per-feature densities)."""
    return {k: metrics[k] for k in ("mse", "fvu", "l0", "dead_frac", "dense_frac")}


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


def timed_start(cfg, model, tokens, saes, device):
    """--max-minutes as a count of steps: time a few steps, each with its batch's harvest, on copies of
    the SAEs, so that the run itself is untouched. A fresh SAE fires on about half of its features
    until its L1 penalty bites, so these first steps are its slowest: the count is low, and the run
    ends before the minutes are up."""
    g = torch.Generator().manual_seed(cfg.seed + 3)
    twins = [copy_for_timing(s, lambda m: sae_lib.make_optimizer(m, cfg.lr)) for s in saes]
    sample = harvest(model, tokens, 2**14, g, device=device)[0]
    for twin, _ in twins:
        twin.init_from_data(sample)

    def step():
        x = harvest(model, tokens, cfg.batch_size, g, device=device)[0]
        for twin, opt in twins:
            sae_step(twin, opt, x, cfg, False, 1, cfg.l1_coeff)
    return timed_steps(cfg.max_minutes, step)


def progress_line(step, max_steps, rate, batch_size, n, history, since_fired):
    """`step 800/2930 | F4096: held-out MSE 0.0123 L0 18.2 | dead 2.1% | 20,000 act/s | ETA 3m10s`."""
    last = next((h for h in reversed(history) if "mse" in h), None)
    # dead here: silent for the whole resampling window in training (held-out sets are small)
    dead = (since_fired >= sae_lib.dead_window(max_steps)).float().mean().item()
    metrics = f" | F{n}: held-out MSE {last['mse']:.4f} L0 {last['l0']:.1f} | dead {100 * dead:.1f}%" if last else ""
    return (f"step {step}/{max_steps}{metrics} | {rate * batch_size:,.0f} act/s | "
            f"ETA {fmt_eta((max_steps - step) / max(rate, 1e-9))}")


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


def schedule_2024(step, max_steps, opts, lr):
    """Both schedules at this step: sets the optimizers' learning rate, returns the L1 coefficient's
    factor. Both are functions of the step and the run's length alone, so a resumed run goes on
    exactly where it stopped (the learning rate is also in the optimizer's checkpoint)."""
    for o in opts:
        o.param_groups[0]["lr"] = lr * lr_decay(step, max_steps)
    return l1_warmup(step, max_steps)


if __name__ == "__main__":
    run_main(lambda: train(parse_config(SAETrainConfig, description=__doc__.split("\n\n")[0])))
