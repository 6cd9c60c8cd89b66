"""common.py: the small plumbing every script shares.

Flags generated from a config dataclass, one-line errors for bad input, atomic checkpoints,
device choice, and a progress printer that also appends to log.jsonl. Nothing here is about the
science; it lives here so the scripts can be about the science.
"""
import argparse
import dataclasses
import json
import os
import sys
import time

import torch
import torch.distributed


class UserError(Exception):
    """Bad input from the person running a script: printed as one line, no stack trace."""


def arg(default, help):
    """A config field with its --help text: `lr: float = arg(3e-4, "peak learning rate")`."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def parse_config(cls, argv=None, description=None):
    """Build an argparse parser from a dataclass's fields, parse argv, return an instance."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(cls):
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
    return cls(**vars(parser.parse_args(argv)))


def run_main(main):
    """Run a script's main(); turn a UserError into one line on stderr and exit code 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted: the last checkpoint is intact; rerun with --resume to continue", file=sys.stderr)
        sys.exit(130)


def atomic_save(obj, path):
    """torch.save to a temporary file, then os.replace: a crash never leaves a half-written file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text, path):
    """The same for a text file (reports, JSON, HTML)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def load_checkpoint(path, what, fix):
    """torch.load with a one-line error naming the file and the script that makes it."""
    if not os.path.exists(path):
        raise UserError(f"no {what} at {path}: {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"cannot read {what} {path} ({type(e).__name__}): {fix}") from None


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
    AVX512-BF16 (bench_sae.py: 8x on a 2-core Xeon with AMX); elsewhere bf16 is emulated, slower."""
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


class Progress:
    """Prints a line at most every `every` seconds and appends every record to log.jsonl."""

    def __init__(self, log_path, every=5.0, quiet=False, append=False):
        self.log_path, self.every, self.quiet = log_path, every, quiet
        self.t0 = time.time()
        self.last = 0.0
        if log_path:
            os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
            if not append and os.path.exists(log_path):
                os.remove(log_path)

    def log(self, record):
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

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
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"
