"""train_sae.py: harvest the 512 MLP activations and fit the paper's sparse autoencoder (by default with
Anthropic's 2024 recipe; --recipe paper trains it as the paper did).

    python train_sae.py                                  # 4,096 features (the paper's A/1), 12M activations
    python train_sae.py --sweep 512 1024 2048 4096       # several sizes on the same activations (A/0...)

The LM runs over random windows of the training split; its MLP activations after the ReLU fill a shuffled
buffer, refilled when it runs dry: the SAE sees far more activations than fit in memory, never the same twice
(the paper: 8 billion activations; repeated data makes dead features). Each size's SAE goes in
<out>/<sae-dir>/F<n>/; its held-out metrics end the run: `F4096: L0 34.7 | FVU 0.040 | dead 0.0% | 12.0M activations`.
"""
import lab  # first, before torch loads: lab/__init__.py lets waiting OpenMP threads sleep

import dataclasses

import torch

import sae as sae_lib
from lab import sae_fast
from lab.plumbing import arg, flag_errors, flags, parse_config, require, run_main
from lab.run import Run, lm_and_shards, log_sae_metrics, print_sae_metrics, require_finite, sae_memory, sae_progress
from model import harvest

RECIPES = {"paper": "the paper's: default initialisation, resampling at 2.5/5/7.5/10% of the steps, constant lr",
           "2024": "Anthropic's April 2024 update: encoder 0.01 x decoder^T, L1 warmup, lr decay, no resampling"}


@flags
class SAETrainConfig:  # the SAE's own fields default to sae.py's SAEConfig: one home for each
    out: str = arg("out", "artifact root: reads <out>/data/ and <out>/<lm-dir>/, writes <out>/<sae-dir>/")
    lm_dir: str = arg("lm", "the LM run whose MLP activations to decompose")
    sae_dir: str = arg("sae", "this run's folder under --out; each size goes in F<n>/ inside it")
    device: str = arg("auto", "auto, cpu, cuda or cuda:N")
    seed: int = arg(0, "seed for the SAE's initialisation and the activations' order")
    max_activations: int = arg(12_000_000, "activations to train on (the paper: 8 billion)", at_least=1)
    max_minutes: float = arg(0.0, "a time budget instead of a count", at_least=0, note=" (0: use --max-activations)")
    resume: bool = arg(False, "continue the run in <out>/<sae-dir>/ exactly where it stopped")
    overwrite: bool = arg(False, "replace a finished run in <out>/<sae-dir>/ (else refused)")
    n_features: int = arg(sae_lib.SAEConfig.n_features, "dictionary size (the paper's A/1: 4,096)", at_least=1)
    sweep: list = arg([], "several dictionary sizes on the same activations, e.g. 512 1024 2048 4096", check=[
        (lambda v: all(str(n).isdigit() and int(n) >= 1 for n in v),
         "expects positive dictionary sizes, e.g. --sweep 512 1024"),
        (lambda v: len({int(n) for n in v}) == len(v),
         "names a size twice: each size trains once, into its own F<n>/")])
    activation: str = arg(sae_lib.SAEConfig.activation, "relu (the paper: ReLU + L1 penalty) or topk (Gao et al. 2024)")
    l1_coeff: float = arg(sae_lib.SAEConfig.l1_coeff, "L1 penalty coefficient (relu), in normalised units", at_least=0)
    k: int = arg(sae_lib.SAEConfig.k, "active features per activation (topk)")
    recipe: str = arg("2024", "2024 (Anthropic's April 2024 update) or paper (Bricken et al.)", one_of=list(RECIPES))
    lr: float = arg(1e-3, "Adam learning rate: constant (paper recipe), or its peak (2024)", above=0)
    batch_size: int = arg(4096, "activations per step (the paper: 8,192)", at_least=1)
    snapshots: list = arg([], "activation counts at which to keep a copy too (0: the SAE as initialised), in "
                          "<out>/<sae-dir>_at<count>/", check=(
        lambda v: all(str(n).isdigit() for n in v), "expects activation counts >= 0, e.g. --snapshots 0 1000000"))
    fused: bool = arg(True, "the fused sparse step of lab/sae_fast.py (--no-fused: sae.py's autograd reference)")
    # set by programs (the tests, lab/compare.py), not on the command line
    buffer_size: int = arg(2**18, "activations per buffer fill (2^18 x 512 floats = 512 MB)", flag=False)
    eval_activations: int = arg(2**16, "held-out activations (validation split) for the metrics", False, at_least=1)
    eval_every: int = arg(200, "steps between held-out metrics", False, at_least=1)
    ckpt_minutes: float = arg(1.0, "minutes between checkpoints (at the next buffer refill)", False, at_least=0)
    bf16: bool = arg(True, "bf16 for the fused step's dense product where the hardware makes it fast", flag=False)

    def __post_init__(self):  # after each field's own check (@flags): what a check of one field cannot say
        require(self.buffer_size >= self.batch_size, f"buffer_size {self.buffer_size}",
                f"must hold at least one batch (--batch-size {self.batch_size})")
        self.sae_configs(sae_lib.SAEConfig.d_in)  # --activation, --l1-coeff, --k: sae.py's checks, worded as flags

    @property
    def sizes(self):
        return [int(n) for n in self.sweep] or [self.n_features]

    def sae_configs(self, d_in):
        with flag_errors("SAEConfig"):
            return [sae_lib.SAEConfig(d_in=d_in, n_features=n, l1_coeff=self.l1_coeff, activation=self.activation,
                                      k=self.k) for n in self.sizes]


def train(cfg, on_step=None):
    """Train one SAE per dictionary size on the same activations; on_step(steps taken): the tests' crash hook."""
    # 1. set-up: the LM, one SAE and optimizer per size, the first fill (lab/run.py: processes, --resume, checks)
    run = Run(cfg, "SAE", "--sae-dir", lambda c: [f"F{n}" for n in c.sizes], pattern="F*", unit="activations")
    cfg = run.cfg   # on --resume, cfg is the checkpoint's: the run goes on as it began
    # the fast paths, chosen here: lab/sae_fast.py's gradients (bf16=None: where it is fast), metrics and errors
    grads = (lambda s, x, l1: sae_fast.fused_grads(s, x, l1, bf16=None if cfg.bf16 else False)) if cfg.fused else None
    evaluate, sq_errors = (sae_fast.evaluate, sae_fast.squared_errors) if cfg.fused else (sae_lib.evaluate, None)
    saes, opts, since_fired, fill, buffer, validation_acts = set_up(run, cfg, grads)
    val_acts = validation_acts(cfg.eval_activations)   # the validation split's, the same at every evaluation
    steps_per_fill, per_rank = cfg.buffer_size // cfg.batch_size, cfg.batch_size // run.world
    sync = run.grad_sync(["fired"])  # under DDP: the processes' gradients averaged, their counts summed

    # 2. the training loop
    with run.crash_label():
        for step in run.steps(on_step):
            # a. refill the activation buffer when it runs dry (the set-up's fill is the first). Its only state is
            # the two generators, so a fill boundary is where we checkpoint (the buffer is never saved) and resume.
            if step % steps_per_fill == 0 and step > 0:
                run.checkpoint(minutes=cfg.ckpt_minutes)
                buffer = run.timed("harvest", fill)
            # b. one optimizer step per dictionary size, on this process's slice of the batch
            j = (step % steps_per_fill) * cfg.batch_size + run.rank * per_rank
            x, l1_coeff = buffer[j:j + per_rank], cfg.l1_coeff
            if cfg.recipe == "2024":  # the schedules: the L1 coefficient warms up, the learning rate decays
                l1_coeff *= l1_warmup(step, run.max_steps)
                for o in opts:
                    o.param_groups[0]["lr"] = cfg.lr * lr_decay(step, run.max_steps)
            stats = [run.timed("SAE steps", sae_step, s, o, x, grads, l1_coeff, sync) for s, o in zip(saes, opts)]
            for silent, st in zip(since_fired, stats):  # steps each feature has been silent
                silent.add_(1).masked_fill_(st["fired"] > 0, 0)
            # c. --recipe paper: resample dead features at 2.5/5/7.5/10% of the run (25k..100k of its 1M steps)
            if cfg.recipe == "paper" and step + 1 in sae_lib.resample_schedule(run.max_steps):
                for i, (s, o) in enumerate(zip(saes, opts)):
                    n_dead = run.timed("resampling", resample, s, o, since_fired[i], buffer, step + 1, run, sq_errors)
                    run.log({"step": step + 1, "resampled": n_dead}, i)
                    run.say(f"step {step + 1}: resampled {n_dead} dead features of F{s.cfg.n_features}")
            # d. held-out metrics every eval_every steps, and a progress line
            if (step + 1) % cfg.eval_every == 0 or step + 1 == run.max_steps:
                log_sae_metrics(run, evaluate, saes, val_acts, step + 1, [dict(train_loss=st["loss"]) for st in stats])
            run.progress(lambda: sae_progress(saes[-1], run.histories[-1], since_fired[-1], run.max_steps))

    # 3. the final evaluation, on a larger held-out set: "dead" needs many examples to mean anything
    if not run.end_processes():
        return None
    final_acts = validation_acts(4 * cfg.eval_activations)
    log_sae_metrics(run, evaluate, saes, final_acts, run.step, [dict(final=True, held_out=len(final_acts))] * len(saes))
    ckpts = run.finish(timed_phase="SAE steps")
    print_sae_metrics(saes, run.histories, run.step * cfg.batch_size)  # `F4096: L0 34.7 | FVU 0.040 | ...`
    return ckpts


def set_up(run, cfg, grads):
    """The LM; the SAEs (--recipe 2024: its start), their optimizers, a new run's first fill (each SAE's scale
    and b_dec come from it); fill() for the next, validation_acts(n): n activations on fixed validation windows."""
    model, about_lm, lm, train_tokens, val_tokens = lm_and_shards(cfg, run.device)
    run.refuse_unsafe_start(sae_memory(cfg.sizes, model.cfg.d_mlp, cfg.batch_size // run.world, cfg.buffer_size))
    torch.manual_seed(cfg.seed)
    saes = [sae_lib.SAE(c).to(run.device) for c in cfg.sae_configs(model.cfg.d_mlp)]
    for s in saes if cfg.recipe == "2024" else []:
        init_2024(s)
    opts = [sae_lib.make_optimizer(s, cfg.lr) for s in saes]
    since_fired = [torch.zeros(n, dtype=torch.long, device=run.device) for n in cfg.sizes]
    windows_rng, shuffle_rng = torch.Generator().manual_seed(cfg.seed + 1), torch.Generator().manual_seed(cfg.seed + 2)

    def fill():  # buffer_size activations of the LM on random windows of the training split, shuffled
        acts = harvest(model, train_tokens, cfg.buffer_size, windows_rng, device=run.device)[0]
        return acts[torch.randperm(len(acts), generator=shuffle_rng).to(run.device)]
    buffer = None if cfg.resume else run.timed("harvest", fill)  # resumed: the loop refills (a fill boundary)
    for s in saes if buffer is not None else []:  # act_scale, and b_dec at the geometric median (paper)
        s.init_from_data(buffer[:2**14])
    state = [dict(sae_config=dataclasses.asdict(s.cfg), sae=s, optimizer=o, seen=lambda step: step * cfg.batch_size,
                  since_fired=f, windows_rng=windows_rng, shuffle_rng=shuffle_rng, **lm)   # what a checkpoint holds
             for s, o, f in zip(saes, opts, since_fired)]
    # the run's length (--max-minutes: the steps that fit, timed on the batch and step given) and its checkpoints
    run.start(cfg.max_activations, cfg.batch_size, state,
              timed=(lambda g: harvest(model, train_tokens, cfg.batch_size, g, device=run.device)[0],
                     lambda s, o, x: sae_step(s, o, x, grads, cfg.l1_coeff)))
    run.announce(f"{about_lm}; SAE sizes {cfg.sizes}\nrecipe {cfg.recipe}: {RECIPES[cfg.recipe]}\n", len(train_tokens))
    validation_acts = lambda n: harvest(model, val_tokens, n, torch.Generator().manual_seed(1234), device=run.device)[0]
    return saes, opts, since_fired, fill, buffer, validation_acts


def sae_step(s, opt, x, grads, l1_coeff, sync=None):
    """One optimizer step (sae.train_step; grads None: by autograd) at this step's L1 coefficient. sync: under
    DDP, the gradients of the processes' slices averaged (linear, so removing their parallel part commutes)."""
    stats = sae_lib.train_step(s, opt, x, l1_coeff, grads, sync)
    stats["loss"] = float(stats["loss"])  # a number, for the history; "fired" stays a tensor
    require_finite(stats["loss"], f"SAE F{s.cfg.n_features}: ")
    return stats


def resample(s, opt, since_fired, buffer, step, run, sq_errors=None):
    """Resample one SAE's dead features (silent for the paper's window, or since the start if shorter) from
    a sample of the buffer; returns how many. Resets their counters in place. sq_errors(s, x): each input's
    squared error (None: sae.resample_dead computes them)."""
    dead = since_fired >= min(sae_lib.dead_window(run.max_steps), step)
    n_dead = 0
    if dead.any():  # 100 steps' inputs, at most the buffer (262k at the defaults; the paper: 819,200). Their
        # errors cost as much as 100 steps: only when there is work
        sample = buffer[:min(len(buffer), 100 * run.per_step)]
        n_dead = sae_lib.resample_dead(s, opt, dead, sample, sq_errors(s, sample) if sq_errors else None)
    run.agree([s.W_enc.data, s.W_dec.data, s.b_enc.data])  # every rank resampled on its own inputs: rank 0's wins
    since_fired[dead] = 0
    return n_dead


# ----------------------------------------------------------------------------------------------
# --recipe 2024: Anthropic's April 2024 update of their SAE training. It drops the pre-encoder bias and lets the
# decoder norms float, weighting each feature's L1 term by its norm; we keep sae.py's module as it is (pre-encoder
# bias, unit-norm decoder), so a recipe is how one SAE starts and is trained, never what it is. The two parametrise
# the same SAEs with the same loss: divide a decoder row by c and multiply its encoder row and bias by c, and
# nothing changes but the optimiser's path. The rest is sae.py's as in the paper: b_dec at the geometric median,
# the parallel gradient removed, the dictionary renormalised. The schedules are functions of the step and the run's
# length alone.

@torch.no_grad()
def init_2024(s):
    """The update's start: encoder = decoder^T, b_enc = 0, decoder rows of norm 0.1: feature i reads
    f_i = 0.1 u_i . x (u_i its unit direction) and adds 0.1 f_i u_i. Our decoder row is u_i itself, so the
    same SAE's feature is 0.1 f_i = 0.01 u_i . x: an encoder row of 0.01 W_dec[i]."""
    s.W_enc.copy_(0.01 * s.W_dec)
    s.b_enc.zero_()


def l1_warmup(step, total):
    """The L1 coefficient's factor before step (0-based) of total (the update): 0 to 1 linearly over the first 5%."""
    return min(1.0, step / (0.05 * total))


def lr_decay(step, total):
    """The learning rate's factor before step of total (the update): 1, then to 0 linearly over the last 20%."""
    return min(1.0, (total - step) / (0.2 * total))


if __name__ == "__main__":
    run_main(lambda: train(parse_config(SAETrainConfig, description=__doc__.split("\n\n")[0])))
