"""lab/course.py: the course's exercises (docs/course.md), checked against the reference.

A student writes the paper's pieces as plain functions in a file of their own (exercises/sae.py is
the starting point: every function there is a stub). Three things use that file:

    python -m lab.course check --impl exercises/sae.py                # each exercise checked, mistakes named
    python -m lab.course run train_sae.py --impl exercises/sae.py     # a script of the pipeline on them
    python -m pytest tests --impl exercises/sae.py                    # the suite, run on them too

swap_in puts each written function where the reference's is (EXERCISES says where), so the scripts
and the tests run on the student's code unchanged. check_step compares a student's functions with
the reference on fresh random inputs and, where they differ, tries the usual mistakes one by one
(the same computation with the mistake made) and names the one that matches.
"""
import lab  # first, before torch loads: lab/__init__.py lets waiting OpenMP threads sleep

import argparse
import ast
import importlib.util
import inspect
import math
import sys
import textwrap
import types

import numpy as np
import torch

import analyze
import sae as sae_lib
import train_lm
import train_sae
from lab import sae_fast
from lab.plumbing import parse_config, run_main
from model import ModelConfig, Transformer

# name: (step, the module and attribute it replaces; a method of sae.SAE where the name has a dot)
EXERCISES = {
    "encode": (1, "sae", "SAE.encode"), "decode": (1, "sae", "SAE.decode"), "loss": (1, "sae", "SAE.loss"),
    "remove_parallel_grad": (2, "sae", "remove_parallel_grad"), "normalize_decoder": (2, "sae", "normalize_decoder"),
    "geometric_median": (3, "sae", "geometric_median"),
    "resample_dead": (4, "sae", "resample_dead"),
    "lm_loss": (5, "analyze", "lm_loss"), "recovered": (5, "analyze", "recovered"),
    "simulate": (6, "analyze", "simulate"), "pearson": (6, "analyze", "pearson"),
    "sparse_grads": (7, "lab.sae_fast", "fused_grads"),
}
STEPS = {1: "the SAE: encode, decode, loss", 2: "the decoder-norm constraint", 3: "the geometric median",
         4: "dead-feature resampling", 5: "loss recovered", 6: "the explain-then-simulate score",
         7: "stretch: the sparse backward pass"}


class Mistake(AssertionError):
    """A check's failure: what differs from the reference, and the likely mistake."""


def load(path):
    """The student's file as a module."""
    spec = importlib.util.spec_from_file_location("student_impl", path)
    if spec is None:
        raise FileNotFoundError(f"--impl {path}: no such Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def written(module):
    """The exercises the module has written: every function of EXERCISES it defines whose body is
    more than a docstring and `raise NotImplementedError(...)` (a stub)."""
    out = {}
    for name in EXERCISES:
        fn = getattr(module, name, None)
        if callable(fn) and not is_stub(fn):
            out[name] = fn
    return out


def is_stub(fn):
    body = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0].body
    body = [node for node in body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
    return (len(body) == 1 and isinstance(body[0], ast.Raise) and body[0].exc is not None
            and "NotImplementedError" in ast.unparse(body[0].exc))


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


# The reference's exercises, taken before any swap: what every check compares with.
REF = types.SimpleNamespace(
    encode=sae_lib.SAE.encode, decode=sae_lib.SAE.decode, loss=sae_lib.SAE.loss,
    remove_parallel_grad=sae_lib.remove_parallel_grad, normalize_decoder=sae_lib.normalize_decoder,
    geometric_median=sae_lib.geometric_median, resample_dead=sae_lib.resample_dead, lm_loss=analyze.lm_loss,
    recovered=analyze.recovered, simulate=analyze.simulate, pearson=analyze.pearson,
    sparse_grads=sae_fast.fused_grads)


# ----------------------------------------------------------------------------------------------
# The checks: each compares with the reference, then names the mistake that reproduces the result


def close(a, b, tol=1e-4):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return a.shape == b.shape and torch.allclose(a, b, atol=tol, rtol=tol)


def diagnose(what, got, want, mistakes, tol=1e-4):
    """Raise Mistake unless got is want; name the first of mistakes ({description: what that mistake
    gives}) that got matches."""
    if close(got, want, tol):
        return
    for description, value in mistakes.items():
        if close(got, value, tol):
            raise Mistake(f"{what}: {description}")
    gap = (torch.as_tensor(got, dtype=torch.float64) - torch.as_tensor(want, dtype=torch.float64)).abs().max() \
        if torch.as_tensor(got).shape == torch.as_tensor(want).shape else f"shape {tuple(torch.as_tensor(got).shape)}"
    raise Mistake(f"{what}: differs from the reference (largest difference {gap}); none of the usual mistakes "
                  "matches, so compare your code with the step's equations line by line")


def random_sae(n_features=64, d_in=16, seed=0):
    """A ReLU SAE with every parameter non-trivial: b_dec and b_enc nonzero, act_scale not 1."""
    torch.manual_seed(seed)
    sae = sae_lib.SAE(sae_lib.SAEConfig(d_in=d_in, n_features=n_features, l1_coeff=3e-3))
    with torch.no_grad():
        REF.normalize_decoder(sae)
        sae.b_dec.copy_(torch.randn(d_in))
        sae.b_enc.copy_(0.1 * torch.randn(n_features))
        sae.act_scale.fill_(1.7)
    return sae


def check_sae(student):
    """Step 1: encode, decode and the loss, from the paper's equations (sae.py's docstring)."""
    sae, done = random_sae(), []
    x = 2 * torch.randn(32, 16) + 1
    x_n, W, b, s = x * sae.act_scale, sae.W_enc, sae.b_enc, sae.act_scale
    with torch.no_grad():
        if hasattr(student, "encode"):
            diagnose("encode", student.encode(sae, x), REF.encode(sae, x), {
                "forgot to subtract b_dec before the encoder (the pre-encoder bias: x_bar = x_n - b_dec)":
                    (x_n @ W.T + b).relu(),
                "forgot to scale x by act_scale first (the SAE works in normalised units)": ((x - sae.b_dec) @ W.T + b).relu(),
                "left out the ReLU": (x_n - sae.b_dec) @ W.T + b,
                "forgot the encoder bias b_enc": ((x_n - sae.b_dec) @ W.T).relu()})
            done.append("encode")
        f = REF.encode(sae, x)
        if hasattr(student, "decode"):
            diagnose("decode", student.decode(sae, f), REF.decode(sae, f), {
                "forgot to add b_dec after the decoder": (f @ sae.W_dec) / s,
                "forgot to divide by act_scale (x_hat must be in the original units of x)": f @ sae.W_dec + sae.b_dec,
                "subtracted b_dec instead of adding it": (f @ sae.W_dec - sae.b_dec) / s})
            done.append("decode")
        if hasattr(student, "loss"):
            got, want = student.loss(sae, x), REF.loss(sae, x)
            err = f @ sae.W_dec + sae.b_dec - x_n
            diagnose("loss: mse", got["mse"], want["mse"], {
                "the MSE is summed over the d_in dimensions: take the mean over the batch and the dimensions":
                    err.pow(2).sum(1).mean(),
                "the MSE is measured in the original units: measure it in the normalised ones (x_n = x * act_scale)":
                    (err / s).pow(2).mean()})
            diagnose("loss: l1", got["l1"], want["l1"], {
                "the L1 term is a mean over the features: sum over the features, then mean over the batch":
                    f.mean(), "the L1 term is summed over the batch too: mean over the batch": f.sum()})
            diagnose("loss", got["loss"], want["loss"], {
                "the loss leaves out the L1 penalty": want["mse"], "the L1 term is not multiplied by l1_coeff":
                    want["mse"] + want["l1"]})
            done.append("loss")
    return done


def check_constraint(student):
    """Step 2: the decoder's rows held at unit norm: the parallel part of each row's gradient removed
    before the step, the rows renormalised after it."""
    sae, done = random_sae(), []
    G = torch.randn_like(sae.W_dec)
    if hasattr(student, "remove_parallel_grad"):
        sae.W_dec.grad = G.clone()
        student.remove_parallel_grad(sae)
        W = sae.W_dec.detach()
        diagnose("remove_parallel_grad", sae.W_dec.grad, G - (G * W).sum(1, keepdim=True) * W, {
            "the gradient's parallel part is left in: from each feature's gradient row, remove its component "
            "along that feature's decoder row": G,
            "removed the component along the columns (dim 0) instead of each feature's row":
                G - (G * W).sum(0, keepdim=True) * W,
            "removed the whole gradient row instead of its parallel part": torch.zeros_like(G)})
        done.append("remove_parallel_grad")
    if hasattr(student, "normalize_decoder"):
        with torch.no_grad():
            sae.W_dec.mul_(3 * torch.rand(len(sae.W_dec), 1) + 0.5)
        W = sae.W_dec.detach().clone()
        with torch.no_grad():
            student.normalize_decoder(sae)
        diagnose("normalize_decoder", sae.W_dec.detach(), W / W.norm(dim=1, keepdim=True), {
            "the decoder is not renormalised: divide each feature's row by its norm after every step": W,
            "normalised each column (dim 0) instead of each feature's row": W / W.norm(dim=0, keepdim=True),
            "normalised the whole matrix at once instead of each row": W / W.norm()})
        done.append("normalize_decoder")
    return done


def check_median(student):
    """Step 3: the geometric median (Weiszfeld's algorithm) that starts b_dec."""
    if not hasattr(student, "geometric_median"):
        return []
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(200, 8, generator=g), 50 + torch.randn(20, 8, generator=g)])  # and far outliers
    want = REF.geometric_median(x)
    once = (x / (x - x.mean(0)).norm(dim=1, keepdim=True)).sum(0) / (1 / (x - x.mean(0)).norm(dim=1)).sum()
    distance = lambda y: ((x - y).norm(dim=1, keepdim=True) * x).sum(0) / (x - y).norm(dim=1).sum()
    diagnose("geometric_median", student.geometric_median(x), want, {
        "that is the mean: weight each point by 1 / its distance to the estimate, and repeat (Weiszfeld)": x.mean(0),
        "one Weiszfeld step from the mean: repeat it until the estimate stops moving": once,
        "weighted each point by its distance instead of 1 / its distance": distance(x.mean(0))}, tol=1e-3)
    return ["geometric_median"]


def check_resampling(student):
    """Step 4: the paper's resampling of dead features: each re-aimed at an input drawn with
    probability proportional to the square of its squared error, encoder row at 0.2x the alive
    rows' mean norm, encoder bias 0, the optimizer's moments of those rows reset."""
    if not hasattr(student, "resample_dead"):
        return []
    sae = random_sae(n_features=2048, d_in=16)
    opt = sae_lib.make_optimizer(sae, 1e-3)
    for p in sae.parameters():
        p.grad = torch.randn_like(p)
    opt.step()                                      # Adam moments to reset
    before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    moments = {n: opt.state[p]["exp_avg"].clone() for n, p in sae.named_parameters()}
    dead = torch.ones(2048, dtype=torch.bool)
    dead[:48] = False
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 16, generator=g)
    sq_errors = torch.cat([torch.ones(200), 2 * torch.ones(200)])   # the second half is reconstructed worse
    torch.manual_seed(2)
    n = student.resample_dead(sae, opt, dead, x, sq_errors)
    W_dec, W_enc = sae.W_dec.detach(), sae.W_enc.detach()
    if n != int(dead.sum()):
        raise Mistake(f"resample_dead: returned {n}, not the number of dead features {int(dead.sum())}")
    for name in ("W_enc", "W_dec", "b_enc"):
        if not torch.equal(getattr(sae, name).detach()[~dead], before[name][~dead]):
            raise Mistake(f"resample_dead: changed the alive features' {name}: touch the dead rows only")
    direction = x * sae.act_scale
    direction = direction / direction.norm(dim=1, keepdim=True)
    cos = W_dec[dead] @ direction.T                               # each dead row against every input
    picked = cos.argmax(1)
    if not torch.allclose(cos.max(1).values, torch.ones(int(dead.sum())), atol=1e-4):
        raise Mistake("resample_dead: a dead feature's decoder row is not an input normalised to unit norm")
    share = (picked >= 200).float().mean().item()                # the paper: 4 / (1 + 4) = 0.8 of them
    if abs(share - 2 / 3) < 0.05:
        raise Mistake("resample_dead: inputs were drawn with probability proportional to their squared error; "
                      "the paper squares it again (the squared error not squared again)")
    if abs(share - 0.5) < 0.05:
        raise Mistake("resample_dead: inputs were drawn uniformly; draw them with probability proportional to "
                      "the square of their squared error")
    if abs(share - 0.8) > 0.05:
        raise Mistake(f"resample_dead: {share:.0%} of the picks come from the inputs with twice the error; "
                      "with probabilities proportional to the squared error squared it should be 80%")
    scale = 0.2 * before["W_enc"][~dead].norm(dim=1).mean()
    diagnose("resample_dead: the encoder rows", W_enc[dead], scale * W_dec[dead], {
        "the encoder row is the unit direction: scale it by 0.2 x the alive encoder rows' mean norm": W_dec[dead],
        "the encoder row is scaled by the alive rows' mean norm alone: take 0.2 x the alive encoder rows' mean norm":
            scale / 0.2 * W_dec[dead],
        "the encoder row is left as it was: set it to the direction, scaled": before["W_enc"][dead]})
    if not (sae.b_enc.detach()[dead] == 0).all():
        raise Mistake("resample_dead: the encoder bias of a resampled feature must start at 0")
    for name, p in sae.named_parameters():
        if name == "b_dec":
            continue
        state = opt.state[p]["exp_avg"]
        if not (state[dead] == 0).all():
            raise Mistake(f"resample_dead: the Adam moments of the resampled rows of {name} are not reset to 0")
        if not torch.equal(state[~dead], moments[name][~dead]):
            raise Mistake(f"resample_dead: the Adam moments of the alive rows of {name} changed: reset only the dead")
    return ["resample_dead"]


def check_loss_recovered(student):
    """Step 5: loss recovered, by splicing a replacement of the MLP's activations into the model."""
    done = []
    if hasattr(student, "lm_loss"):
        torch.manual_seed(0)
        model = Transformer(ModelConfig(vocab_size=50, block_size=16, n_head=2, d_model=32, d_mlp=64)).eval()
        w = torch.randint(0, 50, (4, 17))
        zero = lambda h: torch.zeros_like(h)
        with torch.no_grad():
            for name, fn in (("the activations as they are", lambda h: h), ("zero-ablated activations", zero)):
                diagnose(f"lm_loss with {name}", student.lm_loss(model, w, fn), REF.lm_loss(model, w, fn), {
                    "the targets are not the next tokens: the model reads windows[:, :-1] and predicts "
                    "windows[:, 1:]": model(w[:, :-1], w[:, :-1], mlp_hook=lambda i, h: fn(h))[1],
                    "the replacement is not spliced in: pass it to the model as mlp_hook":
                        REF.lm_loss(model, w, lambda h: h)})
        done.append("lm_loss")
    if hasattr(student, "recovered"):
        ablated, replaced, clean = 5.0, 3.5, 3.0
        diagnose("recovered", student.recovered(ablated, replaced, clean), 0.75, {
            "that is the share of the loss lost, not recovered (wrong baseline: 1 at the clean loss, 0 at the ablated "
            "one)": 0.25,
            "wrong baseline: measure the loss against the ablated loss minus the clean one, not the ablated loss alone":
                (ablated - replaced) / ablated,
            "wrong baseline: divide by the gap between the ablated and the clean losses": ablated - replaced})
        done.append("recovered")
    return done


def check_simulation(student):
    """Step 6: the explanation table's simulation (a pair row beats a token row beats a predicate row;
    no row: the default) and the Pearson correlation that scores it."""
    done, vocab = [], 10
    if hasattr(student, "simulate"):
        rng = np.random.default_rng(0)
        prev, cur = rng.integers(0, vocab + 1, 400), rng.integers(0, vocab, 400)
        labels = rng.random((400, 3)) < 0.2
        keys = np.array(sorted([3 * vocab + 4, vocab * vocab + 4, vocab * vocab + 7, analyze.context_key(1, vocab)]))
        expl = dict(keys=keys, values=np.array([5.0, 4.0, 3.0, 2.0]), counts=np.ones(4, int), default=0.5)
        got = np.asarray(student.simulate(expl, prev, cur, labels, vocab), np.float64)
        want = REF.simulate(expl, prev, cur, labels, vocab)
        both = (prev == 3) & (cur == 4)                           # a pair row and a token row match
        if want.shape == got.shape and not np.allclose(got[both], want[both]):
            raise Mistake("simulate: a token matched by a (previous token, token) row and by a token row must take "
                          "the (previous token, token) row's value: the more specific row wins")
        nothing = want == 0.5
        if want.shape == got.shape and not np.allclose(got[nothing], 0.5):
            raise Mistake("simulate: a token no row matches must get the table's default (the mean activation of "
                          "the tokens no row explains), not 0")
        diagnose("simulate", got, want, {})
        done.append("simulate")
    if hasattr(student, "pearson"):
        a = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
        b = np.array([2.0, 1.0, 4.0, 3.0, 8.0])
        diagnose("pearson", student.pearson(a, b), REF.pearson(a, b), {
            "that is the cosine: subtract each array's mean first": a @ b / math.sqrt((a @ a) * (b @ b)),
            "that is the covariance: divide by both standard deviations": np.cov(a, b, bias=True)[0, 1]})
        if student.pearson([1, 1, 1], [1, 2, 3]) != 0:
            raise Mistake("pearson: a constant prediction carries no information: return 0 when either is constant")
        done.append("pearson")
    return done


def check_sparse_grads(student):
    """Step 7 (stretch): the gradient derived by hand, touching only the active features."""
    if not hasattr(student, "sparse_grads"):
        return []
    sae = random_sae(n_features=256, d_in=16)
    x = 2 * torch.randn(64, 16) + 1
    with torch.enable_grad():   # the reference's gradient, from the reference's pieces
        REF.loss(sae, x)["loss"].backward()
    REF.remove_parallel_grad(sae)
    want = {n: p.grad.clone() for n, p in sae.named_parameters()}
    for p in sae.parameters():
        p.grad = None
    student.sparse_grads(sae, x)
    for name, p in sae.named_parameters():
        mistakes = {}
        if name == "b_dec":   # b_dec enters twice: subtracted before the encoder, added after the decoder
            mistakes["b_dec enters twice: add the gradient through the encoder, -(db_enc @ W_enc)"] = \
                want["b_dec"] + want["b_enc"] @ sae.W_enc.detach()
        diagnose(f"sparse_grads: the gradient of {name}", p.grad, want[name], mistakes)
    return ["sparse_grads"]


CHECKS = {1: check_sae, 2: check_constraint, 3: check_median, 4: check_resampling, 5: check_loss_recovered,
          6: check_simulation, 7: check_sparse_grads}


def check_step(step, student):
    """Run one step's checks on the functions the student has written (a stub is skipped); returns
    the names checked. Raises Mistake at the first difference from the reference, or when the
    student's code raises."""
    try:
        return CHECKS[step](types.SimpleNamespace(**written(student)) if isinstance(student, types.ModuleType)
                            else student)
    except Mistake:
        raise
    except Exception as e:   # the student's code failed: say how, in one line
        hint = " (keep the stub's @torch.no_grad())" if "leaf Variable" in str(e) else ""
        raise Mistake(f"your code raised {type(e).__name__}: {(str(e).splitlines() or [''])[0]}{hint}") from e


# The scripts a student can run on their functions: python -m lab.course run SCRIPT --impl FILE [flags]
SCRIPTS = {"train_lm.py": lambda argv: train_lm.train(parse_config(train_lm.TrainConfig, argv)),
           "train_sae.py": lambda argv: train_sae.train(parse_config(train_sae.SAETrainConfig, argv)),
           "analyze.py": analyze.main}


def run(impl, script, argv):
    """A script of the pipeline on the student's functions. The SAE trains through the autograd
    reference (so through the student's loss) unless the student wrote the sparse step too."""
    student = load(impl)
    swapped = swap_in(student)
    if script == "train_sae.py" and "sparse_grads" not in swapped and "--fused" not in argv:
        argv = [*argv, "--no-fused"]
    print(f"course: {script} with your {', '.join(swapped) or 'nothing (every exercise is still a stub)'}")
    SCRIPTS[script](argv)


def check(impl, steps):
    """Each step's checks on the student's file, one line a step; returns whether all passed."""
    student, ok = load(impl), True
    for step in steps:
        try:
            done = check_step(step, student)
            print(f"step {step}, {STEPS[step]}: " + (f"{', '.join(done)}: as the reference" if done
                                                      else "not written yet"))
        except Mistake as e:
            ok = False
            print(f"step {step}, {STEPS[step]}: MISTAKE: {e}")
    return ok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["check", "run"], help="check the exercises, or run a script on them")
    p.add_argument("script", nargs="?", choices=sorted(SCRIPTS), help="run: the script (its own flags follow)")
    p.add_argument("--impl", default="exercises/sae.py", help="the student's file")
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
