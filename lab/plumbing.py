"""lab/plumbing.py: the small plumbing every script shares.

Flags generated from a config dataclass, one-line errors for bad input, atomic checkpoints,
device choice, and a progress printer that also appends to log.jsonl. Nothing here is about the
science; it lives here so the scripts can be about the science.
"""
import argparse
import contextlib
import dataclasses
import errno
import glob
import hashlib
import json
import math
import os
import shutil
import sys
import time
import types

import torch
import torch.distributed


class UserError(ValueError):
    """Bad input from the person running a script: printed as one line, no stack trace. A ValueError,
    so a library caller catching ValueError (e.g. around ModelConfig(...)) still catches it."""


def arg(default, help, flag=True, at_least=None, at_most=None, above=None, one_of=None, check=None, note=""):
    """A config field with its --help text: `lr: float = arg(3e-4, "peak learning rate", above=0)`.
    flag=False: a field set by the program, not on the command line (e.g. the vocabulary size).
    The value's bounds (a finite number >= at_least, <= at_most, > above; one of one_of; or check, a
    pair (ok(value), problem), or a list of such pairs) are checked by check_fields; note is said after
    the problem, and in --help."""
    meta = {"help": help + note, "flag": flag, "check": check or bounds(at_least, at_most, above, one_of, note)}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    if dataclasses.is_dataclass(default):  # a nested config: its fields become flags of their own
        return dataclasses.field(default_factory=type(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flags(cls):
    """@flags: a dataclass whose fields are arg()s, each checked by check_fields when an instance is made
    (parsed, built by a program or loaded from a checkpoint), before the class's own __post_init__."""
    own = getattr(cls, "__post_init__", None)

    def post_init(self):
        check_fields(self)
        if own is not None:
            own(self)
    cls.__post_init__ = post_init
    return dataclasses.dataclass(cls)


def require(ok, flag, problem):
    """One flag check: `require(cfg.lr > 0, "--lr", "must be positive")` -> UserError naming the flag."""
    if not ok:
        raise UserError(f"{flag} {problem}")


def finite(x):
    """A number that is neither NaN nor infinite (every comparison with NaN is False, so say it)."""
    return isinstance(x, (int, float)) and math.isfinite(x)


def check_fields(cfg):
    """Each field's bounds (arg's), in order: the first bad value is one UserError naming it as it was
    typed, `--lr 0 must be > 0`, `--sweep 512 512 names a size twice` (a field set by programs, not a
    flag, by its name alone)."""
    for f in dataclasses.fields(cfg):
        check, value = f.metadata.get("check"), getattr(cfg, f.name)
        for ok, problem in check if isinstance(check, list) else [check] if check else []:
            if not ok(value):
                typed = " ".join(map(str, value)) if isinstance(value, list) else value
                raise UserError(f"--{f.name.replace('_', '-')} {typed} {problem}" if f.metadata.get("flag", True)
                                else f"{f.name} {problem}")


@contextlib.contextmanager
def flag_errors(config_name):
    """A library config's error about one of its fields (`SAEConfig: l1_coeff must be >= 0`), worded
    as the flag that sets it (`--l1-coeff must be >= 0`)."""
    try:
        yield
    except ValueError as e:
        raise UserError(str(e).replace(f"{config_name}: ", "--").replace("_", "-", 1)) from None


def bounds(at_least, at_most, above, one_of, note):
    """arg's check from its bounds, (ok(value), problem), or None; a NaN is never ok."""
    if one_of is not None:
        return (lambda v: v in one_of), f"must be {' or '.join(map(str, one_of))}"
    if at_least is None and above is None:
        return None
    low = above if at_least is None else at_least
    ok = lambda v: (finite(v) and (v > above if at_least is None else v >= at_least)
                    and (at_most is None or v <= at_most))
    if at_most is not None:
        return ok, f"must lie in {low}..{at_most}{note}"
    return ok, f"must be {'>' if at_least is None else '>='} {low}{note}"


def flag_fields(cls, every=False):
    """[(nested field name or None, field)] for every command-line flag of a config dataclass (every:
    the fields that programs set too). A field holding another config (TrainConfig.model) contributes
    its fields under their own flat names (--d-model, not --model-d-model), so the command line does
    not show the nesting."""
    out = []
    for f in dataclasses.fields(cls):
        if not (every or f.metadata.get("flag", True)):
            continue
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
            out += [(f.name, g) for g in dataclasses.fields(f.default_factory) if every or g.metadata.get("flag", True)]
        else:
            out.append((None, f))
    return out


def parse_config(cls, argv=None, description=None):
    """Build an argparse parser from a dataclass's fields, parse argv, return an instance."""
    return parse_configs([cls], argv, description)[0]


def parse_configs(classes, argv=None, description=None):
    """One command line for several config dataclasses (analyze.py's step and a lab tool's own
    flags): one instance of each, every flag given to the class that has it."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for cls in classes:
        for _, f in flag_fields(cls):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            name = "--" + f.name.replace("_", "-")
            help = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
            if isinstance(default, bool):
                parser.add_argument(name, action=argparse.BooleanOptionalAction, default=default, help=help)
            elif isinstance(default, list):
                parser.add_argument(name, nargs="*", default=default, help=help)
            else:
                kind = type(default) if default is not None else str
                parser.add_argument(name, type=kind, default=default, help=help)
    values = vars(parser.parse_args(argv))
    return [from_dict(cls, values) for cls in classes]


def from_dict(cls, values):
    """A config from a dict of its values, nested ({"model": {"d_model": 128}}) or flat
    ({"d_model": 128}, as the command line and checkpoints from before the nesting have them).
    Keys the config no longer has are dropped."""
    top, nested = {}, {}
    for f in dataclasses.fields(cls):
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            inner = values.get(f.name) if isinstance(values.get(f.name), dict) else {}
            nested[f.name] = from_dict(sub, {**{g.name: values[g.name] for g in dataclasses.fields(sub)
                                                if g.name in values}, **inner})
        elif f.name in values:
            top[f.name] = values[f.name]
    return cls(**top, **nested)


def flat_dict(cfg):
    """A config as one flat dict, a key per field (the flags, and the fields programs set): what a
    checkpoint saves, so a resumed run and lab/compare.py's runs take every setting of the run they
    continue or copy (readers look up ckpt["config"]["block_size"]; from_dict rebuilds the nesting)."""
    return {f.name: getattr(getattr(cfg, parent) if parent else cfg, f.name)
            for parent, f in flag_fields(type(cfg), every=True)}


def run_main(main):
    """Run a script's main(); turn a UserError into one line on stderr and exit code 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:  # a training loop says what was kept (lab/run.py's crash_label)
        print(f"\ninterrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        sys.exit(130)


def atomic_save(obj, path):
    """torch.save to a temporary file, then os.replace: a crash never leaves a half-written file, and
    a failed write (a full disk) leaves no temporary file behind. A dict also carries the digest of
    its tensors, which load_checkpoint checks: a damaged file is refused by name, never loaded."""
    if isinstance(obj, dict):
        obj = {**obj, "digest": tensor_digest(obj)}
    with replacing(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(text, path):
    """The same for a text file (reports, JSON, HTML)."""
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def save_figure(fig, path, dpi=110):
    """A matplotlib figure as a PNG, written the same way (never half a figure over a good one)."""
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")


@contextlib.contextmanager
def replacing(path):
    """A temporary path beside path to write; once written it replaces path. If the write fails, the
    temporary file is removed and the error is one line naming the path and the fix."""
    tmp = f"{path}.tmp{os.getpid()}"
    make_folder(os.path.dirname(path) or ".")
    for stale in glob.glob(glob.escape(path) + ".tmp*"):  # left by a writer killed mid-way (SIGKILL, power)
        pid = stale[len(path) + 4:]
        if pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)):
            os.remove(stale)
    with removed_on_failure([tmp], path):
        yield tmp
        os.replace(tmp, path)


@contextlib.contextmanager
def removed_on_failure(paths, name):
    """Files being written at paths are removed if the writing fails, so a full disk gets no fuller and
    an interrupt leaves no half file; an I/O failure becomes one line naming the file and the fix."""
    try:
        yield
    except BaseException as e:  # (an interrupt too)
        for p in paths:
            if os.path.exists(p):
                os.remove(p)
        if isinstance(e, (OSError, RuntimeError)):  # (torch.save reports a full disk as a RuntimeError)
            raise UserError(write_error(getattr(e, "filename", None) or name, e)) from None
        raise


def alive(pid):
    """Is process pid running (on this machine)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def make_folder(path):
    """os.makedirs, with a one-line error naming the folder and the fix (a file in the way, no rights)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(write_error(path, e, is_folder=True)) from None


def write_error(path, e, is_folder=False):
    """Why path (a file, or a folder to make) could not be written, in words, with the fix."""
    folder = os.path.abspath(path) if is_folder else os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if getattr(e, "errno", None) == errno.ENOSPC or shutil.disk_usage(folder).free < 2**20:
        return f"cannot write {path}: no space left on {folder}: free some space, or choose another --out"
    if not os.path.isdir(folder):
        return f"cannot write {path}: {folder} is a file, not a folder: choose another --out"
    if getattr(e, "errno", None) in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: {folder} is not writable: choose another --out"
    return f"cannot write {path} ({type(e).__name__}: {(str(e).splitlines() or [''])[0]}): choose another --out"


def tensor_digest(obj):
    """sha256 of every tensor in a (nested) dict or list, with its key: a checkpoint's integrity check."""
    h = hashlib.sha256()

    def walk(x, key):
        if torch.is_tensor(x):
            h.update(key.encode())
            h.update(x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                if k != "digest":
                    walk(x[k], f"{key}/{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{key}/{i}")
    walk(obj, "")
    return h.hexdigest()


def load_checkpoint(path, what, fix):
    """torch.load with a one-line error naming the file and the script that makes it; a file whose
    tensors no longer match their digest, or whose weights are not finite, is refused."""
    if not os.path.exists(path):
        raise UserError(f"no {what} at {path}: {fix}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"cannot read {what} {path} ({type(e).__name__}): {fix}") from None
    if isinstance(ckpt, dict) and "digest" in ckpt and tensor_digest(ckpt) != ckpt["digest"]:
        raise UserError(f"{what} {path} is damaged (its tensors no longer match the digest saved with them): restore "
                        f"a copy, or {fix}")
    weights = (ckpt.get("model") or ckpt.get("sae") or {}) if isinstance(ckpt, dict) else {}
    bad = sum(int((~torch.isfinite(w)).sum()) for w in weights.values() if torch.is_tensor(w) and w.is_floating_point())
    if bad:
        raise UserError(f"{what} {path} holds {bad:,} non-finite weights (NaN or inf): {fix}")
    return ckpt


def require_memory(need, what, fix, device):
    """Refuse a run whose estimated memory is more than the device has free, before it allocates
    (else it swaps for minutes, or dies in an allocator traceback)."""
    have = free_memory(device)
    if need > have:
        raise UserError(f"{what} needs about {need / 2**30:,.1f} GiB, more than the {have / 2**30:,.1f} GiB free "
                        f"on {device}: {fix}")


def free_memory(device):
    """Bytes free on device: the GPU's free memory, or the machine's available RAM (Linux), or its
    total RAM where the system does not say what is available."""
    if str(device).startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return math.inf


def pick_device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is visible; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    return name


def setup_processes(device_name):
    """(ddp, rank, world_size, device). Under torchrun (RANK is set) join the process group: NCCL
    between GPUs, gloo between CPU processes (so DDP runs, and is tested, on a laptop too)."""
    device = pick_device(device_name)
    if "RANK" not in os.environ:
        return False, 0, 1, device
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return True, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), device


def fast_bf16(device):
    """Is a bf16 matmul much faster than float32 here? On CUDA, and on CPUs with AMX or
    AVX512-BF16 (lab/bench_sae.py measures it); elsewhere bf16 is emulated, and slower."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    return device.type == "cpu" and (torch.cpu._is_amx_tile_supported()
                                     or torch.cpu._is_avx512_bf16_supported())


def rng_state():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# torch's global random state (and CUDA's) as a generator-like object: a trainer's state names it
# beside its torch.Generators, and lab/run.py saves and restores it the same way.
TORCH_RNG = types.SimpleNamespace(get_state=rng_state, set_state=set_rng_state)


def lm_fingerprint(ckpt):
    """A short hash of an LM checkpoint's weights: SAE checkpoints carry it, so an SAE is never
    analysed against another LM than the one it decomposed."""
    h = hashlib.sha256()
    for k, v in sorted(ckpt["model"].items()):
        h.update(k.encode() + v.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


def broadcast_int(n, device):
    """Rank 0's n on every process (under DDP every rank must agree on the length of the run)."""
    if not torch.distributed.is_initialized():
        return n
    t = torch.tensor([n], device=device)
    torch.distributed.broadcast(t, 0)
    return int(t.item())


def warn_if_repeating(read, available, what, why, fix):
    """One line when a run would read its data more than twice over."""
    if read > 2 * available:
        print(f"warning: this run reads the {available:,} training {what} about {read / available:.0f} "
              f"times ({why}): {fix}", flush=True)


# Flags that say where and how this session runs, not what the run computes: they may differ on --resume.
MAY_CHANGE_ON_RESUME = {"out", "lm_dir", "sae_dir", "device", "resume", "overwrite", "snapshots", "ckpt_every",
                        "ckpt_minutes"}


def resumed_config(cfg, path, what, dir_flag):
    """--resume goes on with the run as it was started: a flag left at its default takes the run's
    value from its checkpoint at path, and a flag set to another value than the run's is refused
    (the run would change midway, and its checkpoints would record a value it did not use)."""
    saved = load_checkpoint(path, what, "start without --resume, or point --out at the run")["config"]
    given, default = flat_dict(cfg), flat_dict(type(cfg)())
    keep = {k: saved[k] for k in given if k in saved and k not in MAY_CHANGE_ON_RESUME}
    flag = lambda k, v: f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
    changed = [k for k, v in keep.items() if given[k] != v and given[k] != default[k]]
    if changed:
        raise UserError(f"{', '.join(flag(k, given[k]) for k in changed)}: {path} was trained with "
                        f"{', '.join(flag(k, keep[k]) for k in changed)}; a resumed run keeps its flags: drop "
                        f"them, or start a new run in another {dir_flag}")
    taken = [flag(k, v) for k, v in keep.items() if given[k] != v]
    if taken:
        print(f"resume: the run's own flags, as it was started: {', '.join(taken)}")
    return from_dict(type(cfg), {**given, **keep})


def refuse_to_replace(paths, cfg, dir_flag):
    """A run is never replaced silently, finished or not: starting afresh over one needs --overwrite
    (over an unfinished one, --resume is what was usually forgotten)."""
    if cfg.resume or cfg.overwrite:
        return
    for path in paths:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False) if os.path.exists(path) else None
        except Exception:  # an unreadable file holds no run worth keeping
            ckpt = None
        if not isinstance(ckpt, dict) or "step" not in ckpt:
            continue
        if ckpt.get("status") == "snapshot":
            raise UserError(f"{path} holds a --snapshots copy: --overwrite replaces it, or choose another {dir_flag}")
        what = "a finished run" if ckpt.get("final") else (f"an unfinished run ({ckpt.get('status', 'running')} at "
                                                           f"step {ckpt['step']:,} of {ckpt['max_steps']:,})")
        raise UserError(f"{path} holds {what}: --resume continues it, --overwrite replaces it, or choose another "
                        f"{dir_flag}")


def mark_crashed(paths, error, since):
    """After an exception in training: label the run's last checkpoint on disk "crashed", with the
    error, so its (good) weights are kept but no one takes it for a run still going. Only a
    checkpoint written since `since` (the run's start; 0 when resumed) is this run's to label."""
    for path in paths:
        try:
            if os.path.exists(path) and os.path.getmtime(path) >= since:
                ckpt = torch.load(path, map_location="cpu", weights_only=False)
                ckpt.update(status="crashed", error=f"{type(error).__name__}: {error}"[:300])
                atomic_save(ckpt, path)
        except Exception as e:  # an unlabelled checkpoint must not hide the error that stopped the run
            print(f"note: could not label {path} crashed ({e}); it still reads as running", file=sys.stderr)


def timed_steps(minutes, step, n=20, skip=3):
    """--max-minutes as a step count, fixed once before the run starts: time n calls of step() (after
    `skip` untimed ones, which pay for first allocations) and return how many fit in the minutes. The
    run then has a known length, as with a count, and its schedules never change under it."""
    for _ in range(skip):
        step()
    t = time.time()
    for _ in range(n):
        step()
    seconds = (time.time() - t) / n
    count = max(1, int(60 * minutes / seconds))
    print(f"timed start: {seconds * 1000:.0f} ms per step, so {minutes:g} minutes -> {count} steps", flush=True)
    return count


@contextlib.contextmanager
def labelled_crash(paths, since):
    """Around a training loop: an exception labels the run's last checkpoint "crashed" (mark_crashed)
    and goes on; Ctrl-C is no crash (the checkpoint stays resumable)."""
    try:
        yield
    except Exception as e:
        mark_crashed(paths, e, since)
        raise


class Stopwatch:
    """Seconds spent in each named phase of a run, `with watch("harvest"): ...`, so a run can say
    where its time went (the SAE stage: stepping, harvesting, evaluating, checkpointing)."""

    def __init__(self):
        self.t0, self.seconds = time.time(), {}

    @contextlib.contextmanager
    def __call__(self, phase):
        t = time.time()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.time() - t

    def split(self):
        """{phase: seconds}, the rest of the wall time since the start as "setup and the rest"."""
        total = time.time() - self.t0
        return {**self.seconds, "setup and the rest": total - sum(self.seconds.values())}

    def line(self):
        split = self.split()
        total = sum(split.values())
        return f"time: {fmt_eta(total)} in all: " + ", ".join(
            f"{phase} {100 * s / total:.0f}%" for phase, s in sorted(split.items(), key=lambda kv: -kv[1]))


class Progress:
    """Prints a line at most every `every` seconds and appends every record to log.jsonl."""

    def __init__(self, log_path, every=5.0, quiet=False, append=False):
        self.log_path, self.every, self.quiet = log_path, every, quiet
        self.t0 = time.time()
        self.last = 0.0
        if log_path:
            make_folder(os.path.dirname(log_path) or ".")
            if not append and os.path.exists(log_path):
                os.remove(log_path)

    def log(self, record):
        if self.log_path:
            try:
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:   # (a full disk): one line, and the last checkpoint stays good
                raise UserError(write_error(self.log_path, e)) from None

    def due(self, force=False):
        now = time.time()
        if force or now - self.last >= self.every:
            self.last = now
            return True
        return False

    def say(self, line):
        if not self.quiet:
            print(line, flush=True)


def fmt_eta(seconds):
    """Minutes and seconds; days, or years, for the runs no one should wait for."""
    seconds = max(0, int(seconds))
    if seconds >= 365 * 86400:
        return f"{seconds / (365 * 86400):,.0f} years"
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:,.0f} days"
    return f"{seconds // 60}m{seconds % 60:02d}s"
