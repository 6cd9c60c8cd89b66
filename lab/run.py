"""lab/run.py: the engineering around both training loops, one seam that train_lm.py and train_sae.py share.

The loops read as the algorithm; what makes a run robust happens in the few calls they make here,
each named for what it does:

    run = Run(cfg, "LM", "--lm-dir")          # processes (DDP); --resume takes the run's own flags
    run.refuse_unsafe_start(need)             # no finished run replaced, none too big; the lock
    run.start(count, per_step, state, timed=(batch, step))  # the length (--max-minutes timed once), or resumed
    run.announce(lines, available)            # the first lines
    with run.crash_label():                   # an exception labels the last checkpoint "crashed"
        for step in run.steps(on_step):       # the steps taken before this one; --snapshots as they come
            run.checkpoint(every=500)         # atomic checkpoints, with the digest of their tensors
            ...                               # the method, in the open
            run.timed("harvest", fn, ...)     # fn(...), its time counted in its phase
            run.log(record)                   # the model's history and log.jsonl
            run.progress(text)                # a line every few seconds, with the rate and the ETA
    if run.end_processes():                   # DDP ends; rank 0 goes on to the final evaluation
        run.finish()                          # the final checkpoints; the length, the time and where it went

A checkpoint is what the trainer's state names (its weights, optimizer and random streams, by the
keys its readers use) beside what every run records here: torch's global random state, the history
of log.jsonl, the flags, the step, the run's length, the time spent, a status.
"""
import contextlib
import copy
import glob
import json
import math
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from lab.corpus import load_shards
from lab.plumbing import (TORCH_RNG, Progress, Stopwatch, UserError, alive, atomic_save, atomic_write_text,
                          broadcast_int, flat_dict, fmt_eta, labelled_crash, lm_fingerprint, load_checkpoint,
                          make_folder, refuse_to_replace, require, require_memory, resumed_config, setup_processes,
                          timed_steps, warn_if_repeating)
from lab.trained import load_lm
from sae import dead_window

# Each trainer's words in the refusals and warnings below: what it builds and reads, and the flags that fix it;
# resume: what a resumed checkpoint must hold as the run does (else the problem, formatted with the flags).
WORDING = {"LM": dict(memory=("training this LM", "lower --batch-size, --d-mlp or --block-size"),
                      data=("tokens", "overfitting; the validation loss will stop improving",
                            "give data.py more --data, or lower --max-tokens"),
                      resume=(["model_config", "tokenizer_hash"], "was trained with another model config or "
                              "tokenizer; use the same flags and data, or a new --lm-dir")),
           "SAE": dict(memory=("training these SAEs", "lower --n-features (or --sweep's sizes) or --batch-size"),
                       data=("tokens' activations", "the paper: repeating data makes dead features",
                             "give data.py more --data, or lower --max-activations"),
                       resume=(["lm_fingerprint"], "was trained on another LM than {out}/{lm_dir}: start a new "
                               "--sae-dir"))}


class Run:
    """One training run's processes, length, checkpoints, logs, progress and clocks.

    subfolders(cfg): one per model the run trains, each with its ckpt.pt (default: one, the run's folder
    itself); pattern: how they are found on --resume, before the run's flags (and so its subfolders)
    are known; unit: what a step takes in (tokens, activations), for the progress lines."""

    def __init__(self, cfg, what, dir_flag, subfolders=lambda cfg: [""], pattern="", unit="tokens"):
        self.t_run, self.watch = time.time(), Stopwatch()
        self.ddp, self.rank, self.world, self.device = setup_processes(cfg.device)
        self.what, self.dir_flag, self.unit = what, dir_flag, unit
        self.folder = os.path.join(cfg.out, getattr(cfg, dir_flag[2:].replace("-", "_")))
        if cfg.resume:  # the run's own flags; one changed on this command line is refused
            wanted = os.path.join(self.folder, pattern, "ckpt.pt")
            found = sorted(glob.glob(wanted)) or [wanted]
            cfg = resumed_config(cfg, found[0], f"{what} checkpoint to resume", dir_flag)
        require(cfg.batch_size % self.world == 0, f"--batch-size {cfg.batch_size}",
                f"must be divisible by the {self.world} processes")
        self.cfg, self.paths = cfg, [os.path.join(self.folder, sub, "ckpt.pt") for sub in subfolders(cfg)]
        self.step = self.max_steps = 0
        self.elapsed = 0.0  # seconds in the training loop, over all sessions
        self.saved_step = None  # the step of the last checkpoint a --resume could go on from

    def refuse_unsafe_start(self, need):
        """Before anything is computed or written: a finished run is replaced only with --overwrite, a run
        whose estimated memory (need, bytes) is more than the device has free is refused; then the
        folder's lock is taken (one writer per run)."""
        refuse_to_replace(self.paths, self.cfg, self.dir_flag)
        require_memory(need, *WORDING[self.what]["memory"], self.device)
        if self.rank == 0:
            self.lock = take_lock(self.folder)

    def start(self, count, per_step, state, timed):
        """The run's length: enough steps of per_step inputs (tokens, activations) for count, or with
        --max-minutes the steps that fit, timed once (timed_length); or, with --resume, where the
        checkpoints left it. state: one dict per path, what its checkpoint holds by name (see saved)
        beside torch's random state and the history (self.histories); a resumed checkpoint's values of
        the names in WORDING's resume must be the run's. timed: (batch, step), what timed_length times.
        Opens the logs."""
        self.histories = [[] for _ in state]   # each model's records: log(record, i) appends to the i-th
        self.state = [{**s, "rng": TORCH_RNG, "history": h} for s, h in zip(state, self.histories)]
        self.per_step = per_step
        self.logs = [Progress(os.path.join(os.path.dirname(p), "log.jsonl") if self.rank == 0 else None,
                              append=self.cfg.resume, quiet=True) for p in self.paths]
        self.printer = Progress(None, quiet=self.rank != 0)
        if not self.cfg.resume:
            self.max_steps = self.timed_length(*timed) if self.cfg.max_minutes else math.ceil(count / per_step)
        else:
            self.restore()
        self.snapshots = sorted(n for n in {int(n) for n in getattr(self.cfg, "snapshots", [])}
                                if not self.cfg.resume or n > self.step * per_step)

    def timed_length(self, batch, step):
        """--max-minutes as a count of steps, timed once (lab/plumbing.timed_steps) on the trainer's own
        step(module, optimizer, batch) of copies of the state's modules and optimizers, with batches of
        their own, batch(generator): the run itself is untouched. Every process takes rank 0's count."""
        twins = [copy.deepcopy((next(v for v in s.values() if isinstance(v, torch.nn.Module)), s["optimizer"]))
                 for s in self.state]  # copied together, each optimizer holds its own copy's parameters
        g = torch.Generator().manual_seed(self.cfg.seed + 3)   # a stream no trainer's own state uses

        def one_step():
            x = batch(g)
            for twin, opt in twins:
                step(twin, opt, x)
        return broadcast_int(timed_steps(self.cfg.max_minutes, one_step), self.device)

    def restore(self):
        """--resume: every object of the state put back from its checkpoint, and the run's record."""
        fix = f"start without --resume, or point --out/{self.dir_flag} at the run"
        must_match, problem = WORDING[self.what]["resume"]
        ckpts = [load_checkpoint(p, f"{self.what} checkpoint to resume", fix) for p in self.paths]
        for c, path, state in zip(ckpts, self.paths, self.state):
            if c.get("status") == "snapshot":  # taken between two checkpoints: no point to resume from
                raise UserError(f"{path} is a --snapshots copy, not a run to resume: resume the run's own "
                                f"{self.dir_flag}")
            missing = [name for name in state if name not in c]
            if missing:   # written before the trainer's state held these
                raise UserError(f"{path} holds no {', '.join(missing)}: it cannot be resumed exactly; {fix}")
            for name in must_match:
                if c[name] != state[name]:
                    raise UserError(f"{path} {problem.format_map(vars(self.cfg))}")
            for name, obj in state.items():
                put_back(obj, c[name])
        self.step, self.max_steps, self.elapsed = (ckpts[0][k] for k in ("step", "max_steps", "elapsed"))
        self.saved_step = self.step
        for log, c in zip(self.logs, ckpts):  # what a crash left after the checkpoint (a record, half a line) goes
            if log.log_path:
                atomic_write_text("".join(json.dumps(r) + "\n" for r in c["history"]), log.log_path)

    def announce(self, lines, available):
        """The run's first lines (rank 0): the config, the trainer's lines, the processes and the length,
        and a warning if the run reads its data (available inputs) more than twice over."""
        if self.rank != 0:
            return
        per_step = self.per_step
        print(f"config: {flat_dict(self.cfg)}")
        print(lines + f"{self.world} process(es) on {self.device}; "
              + (f"resuming {self.folder} at step {self.step} of " if self.cfg.resume else "")
              + f"{self.max_steps} steps of {per_step:,} {self.unit} ({self.max_steps * per_step / 1e6:.1f}M)")
        warn_if_repeating(self.max_steps * per_step, available, *WORDING[self.what]["data"])

    @contextlib.contextmanager
    def crash_label(self):
        """Around the loop: an exception labels the last checkpoint this run wrote "crashed"; Ctrl-C
        (no crash: the checkpoint stays resumable) says what --resume would go on from."""
        try:
            with labelled_crash(self.paths if self.rank == 0 else [], since=0 if self.cfg.resume else self.t_run):
                yield
        except KeyboardInterrupt:
            raise KeyboardInterrupt(
                "no checkpoint was written yet: rerun to start over" if self.saved_step is None else
                f"the checkpoint of step {self.saved_step:,} is intact: rerun with --resume to go on from it") from None

    def steps(self, on_step=None):
        """The steps left, each as the count of steps taken before it; --snapshots as the run reaches
        them (0: the state as initialised, before the first). on_step(steps taken) runs after each step
        (the tests use it to simulate a crash)."""
        self.t_start = self.t_last = self.t_saved = time.time()
        self.step_last = self.first_step = self.step
        self.take_snapshots(self.step)
        while self.step < self.max_steps:
            yield self.step
            self.take_snapshots(self.step + 1)
            self.step += 1
            if on_step is not None:
                on_step(self.step)

    def progress(self, text):
        """After a step: every few seconds, and at the last step, a line `step 12/300 | text | 25,000
        tok/s | ETA 3m10s`; text() gives the trainer's part, computed only then."""
        done = self.step + 1
        if not (self.printer.due() or done == self.max_steps):
            return
        rate = (done - self.step_last) / max(time.time() - self.t_last, 1e-9)
        self.t_last, self.step_last = time.time(), done
        parts = [f"step {done}/{self.max_steps}", text(), f"{rate * self.per_step:,.0f} {self.unit[:3]}/s",
                 f"ETA {fmt_eta((self.max_steps - done) / max(rate, 1e-9))}"]
        self.say(" | ".join(p for p in parts if p))

    def say(self, line):
        self.printer.say(line)

    def log(self, record, i=0):
        """A record in the i-th model's history (its checkpoint's) and log.jsonl."""
        self.state[i]["history"].append(record)
        self.logs[i].log(record)

    def timed(self, phase, fn, *args, **kwargs):
        """fn(*args, **kwargs), its seconds added to the phase's: the summary says where the time went."""
        with self.watch(phase):
            return fn(*args, **kwargs)

    def checkpoint(self, every=None, minutes=None):
        """Before a step: a "running" checkpoint (which --resume goes on from) every `every` steps, or at
        the first call `minutes` after the last one; never again the one the run resumed from."""
        due = self.step % every == 0 if every else (time.time() - self.t_saved) / 60 >= minutes
        if due and self.step > self.first_step:
            self.save("running")

    def save(self, status, folder=None, step=None, **final):
        """Rank 0 writes the checkpoints, atomically: status "running" (periodic), "final", or "snapshot"
        (a copy in another folder, of the state after `step` steps); a crash relabels the last one
        "crashed". Returns them (rank 0)."""
        now, step = time.time(), self.step if step is None else step
        self.elapsed, self.t_start = self.elapsed + now - self.t_start, now
        if status == "running":
            self.t_saved, self.saved_step = now, step
        if self.rank != 0:
            return None
        with self.watch("checkpoints"):
            ckpts = [{**{name: saved(obj, step) for name, obj in state.items()}, "config": flat_dict(self.cfg),
                      "step": step, "max_steps": self.max_steps, "elapsed": self.elapsed, "status": status,
                      "final": status == "final", "time_split": self.watch.split(), **final} for state in self.state]
            for c, path in zip(ckpts, self.paths):
                atomic_save(c, path if folder is None else os.path.join(folder, os.path.relpath(path, self.folder)))
        if status == "final":  # the run is over: the folder is free for the next one
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.lock)
        return ckpts

    def take_snapshots(self, done):
        """--snapshots: a copy of the checkpoints as they are once the run has seen each count (done:
        steps taken), in <folder>_at<count>/."""
        while self.snapshots and self.snapshots[0] <= done * self.per_step:
            folder = f"{os.path.normpath(self.folder)}_at{self.snapshots.pop(0)}"
            self.save("snapshot", folder, step=done)
            self.say(f"step {done}: snapshot of {done * self.per_step:,} {self.unit} in {folder}/")

    def finish(self, timed_phase=None, **final):
        """The final checkpoints (with the trainer's last numbers, final), then the summary; returns them."""
        ckpts = self.save("final", **final)
        self.summary(timed_phase)
        return ckpts

    def summary(self, timed_phase=None):
        """The run's last lines, before the trainer's own: its length and time, where its checkpoints
        are, the --snapshots it never reached; where the time went, and the rate in timed_phase."""
        seen, trained = self.step * self.per_step, (self.step - self.first_step) * self.per_step
        print(f"trained {self.step} steps ({seen / 1e6:.1f}M {self.unit}) in {fmt_eta(self.elapsed)}; "
              f"checkpoints in {self.folder}/")
        if self.snapshots:
            counts = ", ".join(f"{n:,}" for n in self.snapshots)
            print(f"no snapshot at {counts} {self.unit}: the run ended at {seen:,}")
        if timed_phase:
            stepping = max(self.watch.seconds.get(timed_phase, 0.0), 1e-9)
            print(f"{self.watch.line()}; {trained / stepping:,.0f} {self.unit}/s in the steps, "
                  f"{trained / sum(self.watch.split().values()):,.0f} over the whole stage")

    # processes: DDP over torchrun (NCCL between GPUs, gloo between CPU processes)

    def share(self, batch):
        """This process's rows of a batch (tensors of the same length): every process draws the same
        inputs, and takes its share."""
        n = len(batch[0]) // self.world
        return tuple(t[self.rank * n:(self.rank + 1) * n] for t in batch)

    def distributed(self, model):
        """The model to call in training: under DDP, a wrapper that averages the gradients in backward."""
        return DistributedDataParallel(model) if self.ddp else model

    def average_grads(self, module, counts=()):
        """Each process's gradients (and counts, tensors summed in place) averaged over the processes."""
        if not self.ddp:
            return
        for p in module.parameters():
            dist.all_reduce(p.grad)
            p.grad /= self.world
        for c in counts:
            dist.all_reduce(c)

    def grad_sync(self, counts):
        """sae.train_step's sync: None on one process; under DDP, a function that averages a module's
        gradients over the processes and sums the step's statistics named in counts."""
        return (lambda module, stats: self.average_grads(module, [stats[k] for k in counts])) if self.ddp else None

    def agree(self, tensors):
        """Rank 0's values on every process (a random choice each process made on its own inputs)."""
        for t in tensors if self.ddp else ():
            dist.broadcast(t, 0)

    def end_processes(self):
        """The loop is over: its time added up, the process group left; True on rank 0, which finishes."""
        self.elapsed, self.t_start = self.elapsed + time.time() - self.t_start, time.time()
        if self.ddp:
            dist.destroy_process_group()
        return self.rank == 0


def saved(obj, step):
    """What a checkpoint holds for one object of a trainer's state, after `step` steps: a module's or
    optimizer's state_dict, a random generator's state, a function's value at the step (a count that
    grows with it); anything else (a tensor, a list, a fixed value) as it is."""
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    if hasattr(obj, "get_state"):
        return obj.get_state()
    return obj(step) if callable(obj) else obj


def put_back(obj, value):
    """--resume: the object as its checkpoint holds it (tensors and lists in place; a fixed value or a
    function of the step has nothing to put back)."""
    if hasattr(obj, "load_state_dict"):
        obj.load_state_dict(value)
    elif hasattr(obj, "set_state"):
        obj.set_state(value)
    elif torch.is_tensor(obj):
        obj.copy_(value)
    elif isinstance(obj, list):
        obj[:] = value


def require_finite(loss, who=""):
    """A loss that became NaN or inf ends the run in one line; the last checkpoint (before it) is good."""
    if not math.isfinite(loss):
        raise UserError(f"{who}the loss became {loss}; the last good checkpoint is kept: lower --lr and rerun "
                        "with --resume")


def log_sae_metrics(run, evaluate, saes, acts, step, extras):
    """train_sae.py's held-out metrics: each SAE's on acts by evaluate (sae.py's, or lab/sae_fast.py's, the same
    numbers), without the per-feature densities, with its extras[i], in its history and log.jsonl (run.log)."""
    for i, (s, extra) in enumerate(zip(saes, extras)):
        m = run.timed("held-out metrics", evaluate, s, acts)
        run.log({"step": step, "activations": step * run.per_step, **extra,
                 **{k: m[k] for k in ("mse", "fvu", "l0", "dead_frac", "dense_frac")}}, i)


def sae_progress(sae, history, since_fired, max_steps):
    """train_sae.py's part of a progress line, `F4096: held-out MSE 0.0123 L0 18.2 | dead 2.1%`, for
    its largest size (once it has held-out metrics)."""
    last = next((h for h in reversed(history) if "mse" in h), None)
    # dead here: silent for the whole resampling window in training (held-out sets are small)
    dead = (since_fired >= dead_window(max_steps)).float().mean().item()
    return (f"F{sae.cfg.n_features}: held-out MSE {last['mse']:.4f} L0 {last['l0']:.1f} | dead "
            f"{100 * dead:.1f}%") if last else ""


def print_sae_metrics(saes, histories, seen):
    """train_sae.py's last lines, each SAE's held-out metrics after seen activations, e.g.
    `F4096: L0 34.7 | FVU 0.040 | dead 0.0% | 12.0M activations`."""
    for s, h in zip(saes, histories):
        print(f"F{s.cfg.n_features}: L0 {h[-1]['l0']:.1f} | FVU {h[-1]['fvu']:.3f} | dead "
              f"{100 * h[-1]['dead_frac']:.1f}% | {seen / 1e6:.1f}M activations")


def take_lock(folder):
    """One writer per run folder: a file named lock holds the writer's process id. Another live
    process's lock refuses the run; a lock whose process is gone (a crash, a kill) is taken over, as is
    one of this very process (an earlier run in it that raised). Returns the lock's path."""
    make_folder(folder)
    path = os.path.join(folder, "lock")
    while True:
        try:
            with os.fdopen(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY), "w") as f:
                f.write(str(os.getpid()))
            return path
        except FileExistsError:
            try:
                pid = int(open(path).read() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and alive(pid):
                raise UserError(f"{folder} is being written by another process (pid {pid}): wait for it to end, or "
                                "choose another folder") from None
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


# The memory estimates that refuse_unsafe_start checks, before anything is allocated (else a run
# swaps for minutes, or dies in an allocator traceback).

def lm_memory(mcfg, batch_size, value_bytes):
    """Bytes an LM training step holds, roughly: the weights with their gradients and AdamW's two moments
    (16 bytes a parameter), and what the forward pass keeps for the backward one, per token and layer
    (values of value_bytes: 2 under bf16 autocast). Within 20% of the peak measured on CPU at batch 256."""
    c = mcfg
    params = (2 * c.vocab_size + c.block_size) * c.d_model + c.n_layer * (4 * c.d_model ** 2 + 2 * c.d_model * c.d_mlp)
    per_token = c.n_layer * (16 * c.d_model + 4 * c.d_mlp + 2 * c.n_head * c.block_size) + 4 * c.d_model
    return 16 * params + batch_size * c.block_size * per_token * value_bytes


def sae_memory(sizes, d_in, batch_size, buffer_size):
    """Bytes an SAE run holds, roughly: each SAE's weights with their gradients and Adam's two moments (16
    bytes a parameter), one step's dense (batch, features) arrays, and the activation buffer while it
    is harvested, refilled and shuffled: six buffers' worth (a short run at the default settings
    peaked at 3.5 GB resident on CPU)."""
    params = sum(2 * n * d_in + n + d_in for n in sizes)
    return 16 * params + 16 * batch_size * max(sizes) + 6 * 4 * buffer_size * d_in


def lm_and_shards(cfg, device):
    """What train_sae.py reads: the LM whose activations it decomposes (warned of when unfinished), a line
    that names it, what each SAE's checkpoint records of it (so that an SAE is never analysed against
    another LM), and the token shards it was trained on (refused when they are other shards)."""
    model, lm_ckpt = load_lm(cfg.out, cfg.lm_dir, device)
    if not lm_ckpt.get("final"):
        print(f"warning: {cfg.out}/{cfg.lm_dir} is an unfinished run ({lm_ckpt.get('status')} at step "
              f"{lm_ckpt['step']:,} of {lm_ckpt['max_steps']:,}): its SAE decomposes the LM as it is now; finish it "
              "first with python train_lm.py --resume", flush=True)
    meta, train_tokens, val_tokens = load_shards(cfg.out)
    if lm_ckpt["tokenizer_hash"] != meta["tokenizer_hash"]:
        raise UserError(f"{cfg.out}/{cfg.lm_dir} was trained on other token shards than {cfg.out}/data: "
                        "retrain the LM (python train_lm.py) after python data.py")
    lm = {"lm_dir": cfg.lm_dir, "lm_fingerprint": lm_fingerprint(lm_ckpt), "tokenizer_hash": meta["tokenizer_hash"]}
    about = f"LM {cfg.out}/{cfg.lm_dir} (step {lm_ckpt['step']}, {model.cfg.d_mlp} neurons)"
    return model, about, lm, train_tokens, val_tokens
