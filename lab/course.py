"""lab/course.py: the course's exercises (docs/course.md), checked against the reference.

A student copies exercises/sae.py (every function there is a stub) to a file of their own, writes the
paper's pieces in it as plain functions, and uses it three ways:

    python -m lab.course check --impl my_sae.py                # each exercise checked, mistakes named
    python -m lab.course run train_sae.py --impl my_sae.py     # a script of the pipeline on them
    python -m pytest tests --impl my_sae.py                    # the suite, run on them too

swap_in puts each written function where the reference's is (EXERCISES says where), so the scripts
and the tests run on the student's code unchanged. lab/course_checks.py's check_step checks a
student's functions as the pipeline uses them and names the usual mistake where a value differs. A
function that passes but is far slower than the reference gets a note (slower).
"""
import lab  # first, before torch loads: lab/__init__.py lets waiting OpenMP threads sleep

import argparse
import importlib.util
import math
import os
import sys
import time
import traceback

import numpy as np
import torch

import analyze
import sae as sae_lib
from lab import explainer
from lab.course_checks import CHECKS, EXERCISES, REF, STEPS, Mistake, check_step, is_stub, random_sae, written
from lab.plumbing import UserError, parse_config, run_main
from model import ModelConfig, Transformer

# ----------------------------------------------------------------------------------------------
# The student's file: loaded, its written functions found, swapped in


def load(path):
    """The student's file as a module. Every way it can fail to load is a UserError of one line that
    names the file and the problem (python -m lab.course prints it; conftest.py makes it pytest's)."""
    if not os.path.isfile(path):
        raise UserError(f"--impl {path}: " + ("a folder, not a file" if os.path.isdir(path) else "no such file"))
    if not path.endswith(".py"):
        raise UserError(f"--impl {path}: not a .py file: name your copy of exercises/sae.py something.py")
    source = open(path, encoding="utf-8", errors="replace").read()
    try:
        compile(source, path, "exec")
    except SyntaxError as e:
        raise UserError(f"--impl {path}: line {e.lineno}: {type(e).__name__}: {e.msg}") from None
    spec = importlib.util.spec_from_file_location("student_impl", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        lines = [f.lineno for f in traceback.extract_tb(e.__traceback__)
                 if os.path.abspath(f.filename) == os.path.abspath(path)]
        where = f"line {lines[-1]}: " if lines else ""
        raise UserError(f"--impl {path}: {where}loading it raised {type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0]}") from None
    methods = in_classes(module)
    if methods:
        raise UserError(f"--impl {path}: {', '.join(f'{c}.{n}' for c, n in methods)} written inside a class: write "
                        "each exercise as a function at the top level of the file, as exercises/sae.py has them "
                        "(encode, decode and loss take the SAE as their first argument, self), and the course "
                        "puts them into sae.SAE for you")
    return module


def in_classes(module):
    """(class, name) for each exercise written as a method of a class of the module and not at its
    top level: the course never finds those, so they must be named, not taken for unwritten."""
    top = written(module)
    return [(cls.__name__, name) for cls in vars(module).values()
            if isinstance(cls, type) and cls.__module__ == module.__name__
            for name, fn in vars(cls).items() if name in EXERCISES and name not in top
            and callable(fn) and not is_stub(fn)]


def swap_in(module, setattr=setattr):
    """Put the module's written exercises in place of the reference's, in the modules already loaded
    (a module nobody imported has no caller to change). Returns the names swapped in. setattr: where
    the swap is recorded (pytest's monkeypatch.setattr undoes it after a test)."""
    swapped = []
    for name, fn in written(module).items():
        _, module_name, attribute = EXERCISES[name]
        target = sys.modules.get(module_name)
        if target is None:
            continue
        *path, attr = attribute.split(".")
        for part in path:
            target = getattr(target, part)
        setattr(target, attr, fn)
        swapped.append(name)
    return swapped


# ----------------------------------------------------------------------------------------------
# Speed: a function that passes can still be too slow for the pipeline, which calls it many times

def bench_inputs(name):
    """(what the inputs are, the arguments) for timing name at about the pipeline's sizes."""
    torch.manual_seed(0)
    if name in ("encode", "decode", "loss"):
        sae = random_sae(n_features=1024, d_in=128)
        x = torch.randn(2048, 128)
        return "2,048 inputs, 1,024 features", (sae, REF.encode(sae, x) if name == "decode" else x)
    if name in ("remove_parallel_grad", "normalize_decoder"):
        sae = random_sae(n_features=4096, d_in=512)
        sae.W_dec.grad = torch.randn_like(sae.W_dec)
        return "4,096 features of 512", (sae,)
    if name == "geometric_median":
        return "8,192 points of 64", (torch.randn(8192, 64) + 1,)
    if name == "resample_dead":
        sae, dead = random_sae(n_features=4096, d_in=64), torch.rand(4096) < 0.5
        return "2,000 of 4,096 features dead, 8,192 inputs", (sae, sae_lib.make_optimizer(sae, 1e-3), dead,
                                                              torch.randn(8192, 64), torch.rand(8192))
    if name == "lm_loss":
        model = Transformer(ModelConfig(vocab_size=50, block_size=64, n_head=2, d_model=32, d_mlp=64)).eval()
        return "8 windows of 64 tokens", (model, torch.randint(0, 50, (8, 65)), lambda h: h)
    if name == "simulate":
        rng, vocab = np.random.default_rng(0), 100
        keys = np.array(sorted([3 * vocab + 4, vocab * vocab + 4, explainer.context_key(0, vocab)]))
        expl = dict(keys=keys, values=np.array([3.0, 2.0, 1.0]), counts=np.ones(3, int), default=0.5)
        return "20,000 tokens", (expl, rng.integers(0, vocab + 1, 20000), rng.integers(0, vocab, 20000),
                                 rng.random((20000, 3)) < 0.2, vocab)
    if name == "pearson":
        rng = np.random.default_rng(0)
        return "two arrays of 100,000", (rng.random(100000), rng.random(100000))
    if name == "sparse_grads":
        return "1,024 inputs, 1,024 features", (random_sae(n_features=1024, d_in=128), torch.randn(1024, 128))
    return None   # recovered: four numbers, nothing to time


def seconds(fn, args, repeat):
    best = math.inf
    with torch.no_grad():
        for _ in range(repeat):
            t = time.perf_counter()
            fn(*args)
            best = min(best, time.perf_counter() - t)
    return best


def slower(name, fn, ratio=5.0):
    """A line saying how much slower fn is than the reference on the pipeline's sizes, when it is at
    least ratio times (and 10 ms) slower; else None. The student's is timed once, and twice more
    only when it looks slow, so a very slow one costs one call."""
    inputs = bench_inputs(name)
    if inputs is None:
        return None
    what, args = inputs
    reference = seconds(getattr(REF, name), args, 3)
    mine = seconds(fn, args, 1)
    if mine >= ratio * reference and mine - reference > 0.01:
        mine = min(mine, seconds(fn, args, 2))
    if mine < ratio * reference or mine - reference <= 0.01:
        return None
    return (f"note: your {name} is right but took {mine:.3g} s where the reference takes {reference:.3g} s on "
            f"{what} ({mine / reference:.0f}x slower); the pipeline calls it many times: a loop in Python over "
            "rows or tokens is the usual cause, whole-array operations the cure")


# ----------------------------------------------------------------------------------------------
# The commands

# The scripts a student can run on their functions: python -m lab.course run SCRIPT --impl FILE [flags].
# The trainers are imported only to run them: checking needs none of them.
SCRIPTS = {"train_lm.py": lambda argv: (m := importlib.import_module("train_lm")).train(
               parse_config(m.TrainConfig, argv)),
           "train_sae.py": lambda argv: (m := importlib.import_module("train_sae")).train(
               parse_config(m.SAETrainConfig, argv)),
           "analyze.py": analyze.main}


def run(impl, script, argv):
    """A script of the pipeline on the student's functions. The SAE trains with sae.train_step's
    gradient, sae.reference_grads (--no-fused): autograd through the student's loss, or the student's
    sparse_grads where written; --fused would use lab/sae_fast.py's own gradient instead."""
    student = load(impl)
    swapped = swap_in(student)
    if script == "train_sae.py" and "--fused" not in argv:
        argv = [*argv, "--no-fused"]
    print(f"course: {script} with your {', '.join(swapped) or 'nothing (every exercise is still a stub)'}")
    SCRIPTS[script](argv)


def check(impl, steps):
    """Each step's checks on the student's file, one line a step (and a note for a slow function);
    returns whether all passed."""
    student, ok = load(impl), True
    for step in steps:
        try:
            done = check_step(step, student)
        except Mistake as e:
            ok = False
            print(f"step {step}, {STEPS[step]}: MISTAKE: {e}")
            continue
        print(f"step {step}, {STEPS[step]}: " + (f"{', '.join(done)}: as the reference" if done else "not written yet"))
        for name in done:
            note = slower(name, getattr(student, name))
            if note:
                print(f"    {note}")
    return ok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["check", "run"], help="check the exercises, or run a script on them")
    p.add_argument("script", nargs="?", choices=sorted(SCRIPTS), help="run: the script (its own flags follow)")
    p.add_argument("--impl", required=True, help="your file: a copy of exercises/sae.py, e.g. my_sae.py")
    p.add_argument("--step", type=int, choices=sorted(CHECKS), help="check: one step only (default: all)")
    args, rest = p.parse_known_args(argv)
    if args.action == "run":
        if args.script is None:
            p.error(f"run needs a script: one of {', '.join(sorted(SCRIPTS))}")
        run(args.impl, args.script, rest)
        return 0
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    return 0 if check(args.impl, [args.step] if args.step else list(CHECKS)) else 1


if __name__ == "__main__":
    run_main(lambda: sys.exit(main()))
