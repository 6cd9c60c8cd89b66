"""The course (docs/course.md): its checks pass on the reference and on a teacher's solutions, skip
the stubs, name every usual mistake in one line, note a slow function, refuse a file that cannot be
loaded in one line, and a student's functions swapped in train the reference's SAE."""
import os
import re
import subprocess
import sys
import types

import pytest
import torch

import analyze
import sae as sae_lib
import train_sae
from exercises import mistakes
from lab import course, stats
from lab.plumbing import UserError
from tests.test_train_sae import sae_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUBS, SOLUTIONS = (os.path.join(ROOT, "exercises", f) for f in ("sae.py", "solutions.py"))


@pytest.mark.parametrize("step", sorted(course.CHECKS))
def test_the_reference_and_the_solutions_pass_every_check(step, impl):
    assert course.check_step(step, course.REF)   # every step checks something on the reference
    solutions = course.load(SOLUTIONS)
    assert course.check_step(step, solutions) == ([] if step == 7 else
                                                  [n for n, (s, _, _) in course.EXERCISES.items() if s == step])
    if impl:   # python -m pytest --impl FILE: the student's file too
        course.check_step(step, course.load(impl))


def test_stubs_are_left_out_of_every_check_and_every_swap():
    stubs = course.load(STUBS)
    assert course.written(stubs) == {} and set(course.EXERCISES) <= set(vars(stubs))
    assert all(course.check_step(step, stubs) == [] for step in course.CHECKS)
    assert course.swap_in(stubs) == []


@pytest.mark.parametrize("name,wrong,words", mistakes.MISTAKES,
                         ids=[f"{m[0]}:{m[1].__name__}" for m in mistakes.MISTAKES])
def test_each_usual_mistake_is_caught_and_named(name, wrong, words):
    step = course.EXERCISES[name][0]
    with pytest.raises(course.Mistake, match=words) as caught:
        course.check_step(step, types.SimpleNamespace(**{name: wrong}))
    assert str(caught.value).startswith(name) and "\n" not in str(caught.value)


def test_a_mistake_no_usual_one_explains_is_located():
    """The fallback names the function, the element that differs most, and both values."""
    def pearson(a, b):
        return stats.pearson(a, b) + 0.1
    with pytest.raises(course.Mistake, match=r"^pearson: (\S+) where the reference gives (\S+) \(the largest") as e:
        course.check_step(6, types.SimpleNamespace(pearson=pearson))
    got, want = map(float, re.match(r"pearson: (\S+) where the reference gives (\S+) ", str(e.value)).groups())
    assert got == pytest.approx(want + 0.1, abs=1e-5)


@pytest.mark.parametrize("name,slow", mistakes.SLOW, ids=[m[0] for m in mistakes.SLOW])
def test_a_right_but_slow_function_passes_with_a_note_saying_how_much(name, slow):
    assert course.check_step(course.EXERCISES[name][0], types.SimpleNamespace(**{name: slow})) == [name]
    note = course.slower(name, slow)
    mine, reference, ratio = re.search(r"took (\S+) s where the reference takes (\S+) s .* \((\d+)x slower\)",
                                       note).groups()
    assert float(mine) / float(reference) >= 5 and int(ratio) >= 5
    assert course.slower(name, getattr(course.REF, name)) is None


BAD_FILES = {   # file name, its text, what the one line must say
    "syntax.py": ("def encode(self, x)\n    return x\n", "syntax.py: line 1: SyntaxError"),
    "imports.py": ("import torch\nimport no_such_module_here\n",
                   "imports.py: line 2: loading it raised ModuleNotFoundError: No module named 'no_such_module_here'"),
    "no_suffix": ("", "no_suffix: not a .py file"),
    "missing.py": (None, "missing.py: no such file"),
    "methods.py": ("class SAE:\n    def encode(self, x):\n        return x\n\n    def loss(self, x, l1_coeff=None):\n"
                   "        return x\n", "methods.py: SAE.encode, SAE.loss written inside a class: write each exercise "
                   "as a function at the top level"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_file_that_cannot_be_used_is_one_line_naming_it(name, tmp_path):
    text, words = BAD_FILES[name]
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(UserError) as e:
        course.load(str(tmp_path / name))
    assert str(e.value).startswith(f"--impl {tmp_path / name}:") and words in str(e.value)
    assert "\n" not in str(e.value)


def test_both_commands_say_it_in_one_line(tmp_path):
    """python -m lab.course check and python -m pytest --impl: one line, no traceback, not exit 0."""
    bad = tmp_path / "methods.py"
    bad.write_text(BAD_FILES["methods.py"][0])
    commands = ((["-m", "lab.course", "check", "--impl", str(bad)], 2, "error: "),
                (["-m", "pytest", "-q", "-p", "no:cacheprovider", "--impl", str(bad),
                  os.path.join(ROOT, "tests", "test_course.py")], 4, "ERROR: "))
    # both started at once (neither reads what the other writes): on two cores they run side by side
    started = [subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for argv, _, _ in commands]
    try:
        for (argv, rc, prefix), p in zip(commands, started):
            stdout, stderr = p.communicate(timeout=120)
            lines = (stdout + stderr).strip().splitlines()
            assert p.returncode == rc and len(lines) == 1, (rc, p.returncode, lines)
            assert lines[0].startswith(f"{prefix}--impl {bad}: SAE.encode, SAE.loss written inside a class")
    finally:
        for p in started:   # (one still running after a timeout or a failed assertion)
            if p.poll() is None:
                p.kill()
                p.communicate()


def test_code_that_raises_is_reported_in_one_line():
    def encode(self, x):   # W_enc not transposed
        return self.activate((x * self.act_scale - self.b_dec) @ self.W_enc + self.b_enc)
    with pytest.raises(course.Mistake, match="^your code raised RuntimeError: mat1 and mat2 shapes") as e:
        course.check_step(1, types.SimpleNamespace(encode=encode))
    line = encode.__code__.co_firstlineno + 1   # where it raised: the line of the product
    assert str(e.value).endswith(f"(in encode, line {line} of {__file__})") and "\n" not in str(e.value)


def test_a_students_functions_swapped_in_train_the_references_sae(tiny_lm, monkeypatch):
    """The solutions, swapped in where the reference's functions are, train an SAE (through the autograd
    path, so through the student's loss) to the reference's held-out metrics and loss recovered."""
    def run(sae_dir):
        # 16 steps of a 256-feature SAE, not sae_config's 24 of 1,024: the paper recipe's resampling schedule
        # is the same (steps 1 and 2), and every swapped-in function is used as often per step
        ckpt = train_sae.train(sae_config(tiny_lm, sae_dir=sae_dir, fused=False, recipe="paper",
                                          max_activations=16 * 1024, n_features=256))[0]
        cfg = analyze.AnalyzeConfig(out=tiny_lm, sae_dir=sae_dir, device="cpu", tokens=4096, bootstrap=10,
                                    analysis_dir=f"analysis_{sae_dir}")
        return ckpt, analyze.analyze(cfg, "losses")["losses"]["rows"][1]
    reference, ref_losses = run("sae_course_reference")
    swapped = course.swap_in(course.load(SOLUTIONS), monkeypatch.setattr)
    assert sae_lib.SAE.encode is not course.REF.encode and analyze.recovered is not course.REF.recovered
    assert swapped == [n for n, (s, _, _) in course.EXERCISES.items() if s <= 6]
    student, losses = run("sae_course_student")
    final = lambda c: c["history"][-1]
    for k in ("fvu", "l0", "dead_frac"):
        assert final(student)[k] == pytest.approx(final(reference)[k], rel=1e-3, abs=1e-4), k
    assert losses["rec_zero"] == pytest.approx(ref_losses["rec_zero"], abs=1e-3)
    for k, v in reference["sae"].items():
        torch.testing.assert_close(student["sae"][k], v, rtol=1e-3, atol=1e-4)



def test_a_sparse_step_swapped_in_is_the_gradient_train_step_takes(monkeypatch):
    """Step 7 replaces sae.reference_grads, which sae.train_step calls when no fast step is given, and
    `run train_sae.py` asks for exactly that (--no-fused) unless told --fused."""
    seen = []

    def sparse_grads(sae, x, l1_coeff=None):
        seen.append(l1_coeff)
        return course.REF.sparse_grads(sae, x, l1_coeff, bf16=False)
    student = types.ModuleType("student")
    student.sparse_grads = sparse_grads
    assert course.swap_in(student, monkeypatch.setattr) == ["sparse_grads"]
    s = course.random_sae()
    sae_lib.train_step(s, sae_lib.make_optimizer(s, 1e-3), torch.randn(8, 16), 0.01)
    assert seen == [0.01]
    argvs = []
    monkeypatch.setitem(course.SCRIPTS, "train_sae.py", argvs.append)
    course.run(STUBS, "train_sae.py", ["--sae-dir", "mine"])
    course.run(STUBS, "train_sae.py", ["--fused"])
    assert argvs == [["--sae-dir", "mine", "--no-fused"], ["--fused"]]


def test_the_course_points_at_the_code_of_each_exercise():
    """docs/course.md's table says where the reference of each step is: in sae.py by lines (that file
    keeps its lines), elsewhere by function names. Every name must be defined in its file, and each
    exercise of a row (steps 1-6) must lie in that row's lines or be named in it, so the pointers
    cannot go stale unnoticed."""
    text = open(os.path.join(ROOT, "docs", "course.md"), encoding="utf-8").read()
    rows = re.findall(r"^\| (\d) \| (.*?) \| .*? \| (.*?) \|$", text, re.M)
    assert [int(r[0]) for r in rows] == sorted(course.CHECKS)
    defined = lambda f, name: [i + 1 for i, line in enumerate(open(os.path.join(ROOT, f), encoding="utf-8"))
                               if re.match(rf"\s*(def|class) {name}\b", line)]
    for step, write, read in rows:
        spans = {f: [tuple(map(int, span.split("-"))) for span in spans.split(", ")]
                 for f, spans in re.findall(r"`([\w/]+\.py)` lines ([\d, -]+\d)", read)}
        names = {f: re.findall(r"`(\w+)`", listed) for f, listed in re.findall(r"`([\w/]+\.py)`: ([^;]*)", read)}
        assert spans or names, step
        for f, listed in names.items():
            assert listed and all(defined(f, name) for name in listed), (step, f, listed)
        exercises = [n for n in re.findall(r"`(\w+)`", write) if n in course.EXERCISES]
        assert exercises, step
        for name in exercises if int(step) < 7 else []:
            assert any(a <= line <= b for f, ranges in spans.items() for line in defined(f, name) for a, b in ranges) \
                or any(name in listed for listed in names.values()), (step, name)
