"""The course (docs/course.md): its checks pass on the reference and on a teacher's solutions, skip
the stubs, name every usual mistake, and a student's functions swapped in train the reference's SAE."""
import os
import re
import types

import pytest
import torch

import analyze
import sae as sae_lib
import train_sae
from exercises import mistakes
from lab import course
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


@pytest.mark.parametrize("name,wrong,words", mistakes.MISTAKES, ids=[f"{m[0]}:{m[1].__name__}" for m in mistakes.MISTAKES])
def test_each_usual_mistake_is_caught_and_named(name, wrong, words):
    step = course.EXERCISES[name][0]
    with pytest.raises(course.Mistake, match=words):
        course.check_step(step, types.SimpleNamespace(**{name: wrong}))


def test_code_that_raises_is_reported_in_one_line():
    def encode(self, x):   # W_enc not transposed
        return self.activate((x * self.act_scale - self.b_dec) @ self.W_enc + self.b_enc)
    with pytest.raises(course.Mistake, match="^your code raised RuntimeError: mat1 and mat2 shapes"):
        course.check_step(1, types.SimpleNamespace(encode=encode))


def test_a_students_functions_swapped_in_train_the_references_sae(tiny_lm, monkeypatch):
    """The solutions, swapped in where the reference's functions are, train an SAE (through the autograd
    path, so through the student's loss) to the reference's held-out metrics and loss recovered."""
    def run(sae_dir):
        ckpt = train_sae.train(sae_config(tiny_lm, sae_dir=sae_dir, fused=False, recipe="paper"))[0]
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


def test_the_course_points_at_the_lines_that_hold_each_exercise():
    """docs/course.md's table says where to read for each step: the reference's function for every
    exercise named in a row must lie in that row's lines, so the pointers cannot go stale unnoticed."""
    text = open(os.path.join(ROOT, "docs", "course.md"), encoding="utf-8").read()
    rows = re.findall(r"^\| (\d) \| (.*?) \| (.*?) \| .*? \|$", text, re.M)
    assert [int(r[0]) for r in rows] == sorted(course.CHECKS)
    for step, write, read in rows:
        names = [n for n in re.findall(r"`(\w+)`", write) if n in course.EXERCISES]
        places = [(f, [tuple(map(int, span.split("-"))) for span in spans.split(", ")])
                  for f, spans in re.findall(r"`([\w/]+\.py)` lines ([\d, -]+\d)", read)]
        assert names and places, step
        for name in names if int(step) < 7 else []:
            defined = [(f, i + 1) for f, _ in places for i, line in
                       enumerate(open(os.path.join(ROOT, f), encoding="utf-8").read().splitlines())
                       if re.match(rf"\s*def {name}\(", line)]
            assert any(a <= line <= b for f, line in defined for g, spans in places if g == f for a, b in spans), \
                (step, name, defined)
