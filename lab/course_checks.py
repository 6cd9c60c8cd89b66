"""lab/course_checks.py: what each step of the course (docs/course.md) is, and how it is checked.

check_step checks a student's functions as the pipeline uses them: values on fresh random inputs
against the reference (REF), then what the pipeline relies on beyond values (tensors of the
reference's dtype and shape, a graph to backward through, the same parameter objects, inputs left as
they were, edge cases); where a value differs it tries the usual mistakes one by one (the same
computation with the mistake made) and names the one that matches. lab/course.py loads the
student's file and runs these checks.
"""
import ast
import inspect
import math
import os
import textwrap
import traceback
import types

import numpy as np
import torch

import analyze
import sae as sae_lib
from lab import explainer, sae_fast, stats
from model import ModelConfig, Transformer

# name: (step, the module and attribute it replaces; a method of sae.SAE where the name has a dot).
# The sparse step replaces sae.reference_grads, the gradient sae.train_step takes when no fast one is
# given, so a run with --no-fused trains through it.
EXERCISES = {
    "encode": (1, "sae", "SAE.encode"), "decode": (1, "sae", "SAE.decode"), "loss": (1, "sae", "SAE.loss"),
    "remove_parallel_grad": (2, "sae", "remove_parallel_grad"), "normalize_decoder": (2, "sae", "normalize_decoder"),
    "geometric_median": (3, "sae", "geometric_median"),
    "resample_dead": (4, "sae", "resample_dead"),
    "lm_loss": (5, "analyze", "lm_loss"), "recovered": (5, "analyze", "recovered"),
    "simulate": (6, "lab.explainer", "simulate"), "pearson": (6, "lab.stats", "pearson"),
    "sparse_grads": (7, "sae", "reference_grads"),
}
STEPS = {1: "the SAE: encode, decode, loss", 2: "the decoder-norm constraint", 3: "the geometric median",
         4: "dead-feature resampling", 5: "loss recovered", 6: "the explain-then-simulate score",
         7: "stretch: the sparse backward pass"}


class Mistake(AssertionError):
    """A check's failure: what differs from the reference, and the likely mistake."""


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
    try:
        node = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    except (OSError, TypeError, SyntaxError):   # no source of its own (a builtin, a lambda mid-line)
        return False
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    body = [n for n in node.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    return (len(body) == 1 and isinstance(body[0], ast.Raise) and body[0].exc is not None
            and "NotImplementedError" in ast.unparse(body[0].exc))


# The reference's exercises, taken before any swap: what every check compares with.
REF = types.SimpleNamespace(
    encode=sae_lib.SAE.encode, decode=sae_lib.SAE.decode, loss=sae_lib.SAE.loss,
    remove_parallel_grad=sae_lib.remove_parallel_grad, normalize_decoder=sae_lib.normalize_decoder,
    geometric_median=sae_lib.geometric_median, resample_dead=sae_lib.resample_dead, lm_loss=analyze.lm_loss,
    recovered=analyze.recovered, simulate=explainer.simulate, pearson=stats.pearson,
    sparse_grads=sae_fast.fused_grads)


# ----------------------------------------------------------------------------------------------
# What every check uses: values compared and mistakes named, the kind of what is returned, the
# arguments left as they were


def close(a, b, tol=1e-4):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return a.shape == b.shape and torch.allclose(a, b, atol=tol, rtol=tol)


def diagnose(what, got, want, mistakes, tol=1e-4):
    """Raise Mistake unless got is want; name the first of mistakes ({description: what that mistake
    gives}) that got matches, else say where and by how much got differs."""
    returned(what, got)
    try:
        torch.as_tensor(got, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise Mistake(f"{what}: got a {type(got).__name__}, where the reference gives numbers") from None
    if close(got, want, tol):
        return
    named(what, got, mistakes, tol)
    got, want = torch.as_tensor(got, dtype=torch.float64), torch.as_tensor(want, dtype=torch.float64)
    if got.shape != want.shape:
        raise Mistake(f"{what}: shape {tuple(got.shape)}, the reference's {tuple(want.shape)}")
    gap = (got - want).abs().nan_to_num(math.inf)
    at = tuple(map(int, np.unravel_index(int(gap.argmax()), tuple(got.shape)))) if got.dim() else ()
    where = f" at {list(at)}" if at else ""
    raise Mistake(f"{what}: {got[at].item():.6g}{where} where the reference gives {want[at].item():.6g} (the "
                  f"largest of the differences); none of the usual mistakes matches: compare your code with the "
                  f"step's equations in docs/course.md line by line")


def named(what, got, mistakes, tol=1e-4):
    """Raise Mistake naming the first of mistakes that got matches."""
    for description, value in mistakes.items():
        if close(got, value, tol):
            raise Mistake(f"{what}: {description}")


def returned(what, got):
    if got is None:
        raise Mistake(f"{what}: got None: the function has no return statement (or returns nothing)")


def same_kind(what, got, want, why):
    """A tensor of want's dtype and shape (why: what in the pipeline needs it)."""
    returned(what, got)
    if not torch.is_tensor(got):
        raise Mistake(f"{what}: got a {type(got).__name__}, not a tensor: {why}")
    if got.dtype != want.dtype:
        raise Mistake(f"{what}: got {got.dtype} where the reference gives {want.dtype}: compute in float32, as the "
                      f"SAE does ({why})")
    if got.shape != want.shape:
        raise Mistake(f"{what}: got shape {tuple(got.shape)} where the reference gives {tuple(want.shape)}")


def snapshot(v):
    if torch.is_tensor(v):
        return v.detach().clone()
    if isinstance(v, np.ndarray):
        return v.copy()
    if isinstance(v, dict):
        return {k: snapshot(u) for k, u in v.items()}
    if isinstance(v, torch.nn.Module):
        return {k: t.clone() for k, t in v.state_dict().items()}
    return v


def equal(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if torch.is_tensor(a):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    return True


def call(name, fn, *args, changes=()):
    """fn(*args), after which every argument (but those named in changes) must be as it was: the
    pipeline reuses what it passes. Arguments are named as in the reference's signature."""
    names = list(inspect.signature(getattr(REF, name)).parameters)
    before = [snapshot(a) for a in args]
    out = fn(*args)
    for arg, a, b in zip(names, args, before):
        if arg not in changes and not equal(snapshot(a), b):
            what = "the SAE's parameters" if isinstance(a, torch.nn.Module) else f"its argument {arg}"
            raise Mistake(f"{name}: changed {what} in place: work on a copy (x = x * s, not x *= s; .clone() "
                          "where you write into it), the caller uses it again")
    return out


def random_sae(n_features=64, d_in=16, seed=0, **cfg):
    """An SAE with every parameter non-trivial: b_dec and b_enc nonzero, act_scale not 1."""
    torch.manual_seed(seed)
    sae = sae_lib.SAE(sae_lib.SAEConfig(d_in=d_in, n_features=n_features, l1_coeff=3e-3, **cfg))
    with torch.no_grad():
        REF.normalize_decoder(sae)
        sae.b_dec.copy_(torch.randn(d_in))
        sae.b_enc.copy_(0.1 * torch.randn(n_features))
        sae.act_scale.fill_(1.7)
    return sae


def gradients(sae, loss):
    """Every parameter's gradient of loss, the SAE's .grad left empty after."""
    for p in sae.parameters():
        p.grad = None
    loss.backward()
    out = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in sae.named_parameters()}
    for p in sae.parameters():
        p.grad = None
    return out


# ----------------------------------------------------------------------------------------------
# The checks: each uses the function as the pipeline does, and names the mistake that reproduces
# what it gives


def check_sae(student):
    """Step 1: encode, decode and the loss, from the paper's equations (sae.py's docstring), on a ReLU
    and a TopK SAE; the loss as train_sae.py uses it: backward() through it, an explicit l1_coeff."""
    sae, topk, done = random_sae(), random_sae(activation="topk", k=4), []
    x = 2 * torch.randn(32, 16) + 1
    x_n, W, b, s = x * sae.act_scale, sae.W_enc.detach(), sae.b_enc.detach(), sae.act_scale
    if hasattr(student, "encode"):
        with torch.no_grad():
            got, want = call("encode", student.encode, sae, x), REF.encode(sae, x)
            same_kind("encode", got, want, "f is (N, F) float32")
            diagnose("encode", got, want, {
                "forgot to subtract b_dec before the encoder (the pre-encoder bias: x_bar = x_n - b_dec)":
                    (x_n @ W.T + b).relu(),
                "forgot to scale x by act_scale first (the SAE works in normalised units)":
                    ((x - sae.b_dec) @ W.T + b).relu(),
                "left out the ReLU": (x_n - sae.b_dec) @ W.T + b,
                "forgot the encoder bias b_enc": ((x_n - sae.b_dec) @ W.T).relu()})
            diagnose("encode on a TopK SAE (k=4)", call("encode", student.encode, topk, x), REF.encode(topk, x), {
                "applied .relu() where the SAE's activation is self.activate(pre): a TopK SAE keeps only the "
                "k largest of each row": topk.pre_acts(x * topk.act_scale).relu()})
        done.append("encode")
    f = REF.encode(sae, x).detach()
    if hasattr(student, "decode"):
        with torch.no_grad():
            got, want = call("decode", student.decode, sae, f), REF.decode(sae, f)
            same_kind("decode", got, want, "x_hat is (N, d) float32")
            diagnose("decode", got, want, {
                "forgot to add b_dec after the decoder": (f @ sae.W_dec) / s,
                "forgot to divide by act_scale (x_hat must be in the original units of x)": f @ sae.W_dec + sae.b_dec,
                "subtracted b_dec instead of adding it": (f @ sae.W_dec - sae.b_dec) / s})
        done.append("decode")
    if hasattr(student, "loss"):
        check_loss(student.loss, sae, topk, x, f)
        done.append("loss")
    return done


def check_loss(loss, sae, topk, x, f):
    with torch.no_grad():
        want = REF.loss(sae, x)
    with torch.enable_grad():   # the loss as train_sae.py uses it: a graph to call backward() on
        got = call("loss", loss, sae, x)
    if not isinstance(got, dict) or not {"loss", "mse", "l1", "f"} <= set(got):
        raise Mistake("loss: return dict(loss=..., mse=..., l1=..., f=...), as the stub's docstring says: "
                      "train_sae.py reads each of them")
    why = "train_sae.py calls backward() on the loss and logs the others as tensors"
    for k in ("loss", "mse", "l1", "f"):
        same_kind(f"loss: {k}", got[k], want[k], why)
    err = f @ sae.W_dec.detach() + sae.b_dec.detach() - x * sae.act_scale
    diagnose("loss: mse", got["mse"].detach(), want["mse"], {
        "the MSE is summed over the d_in dimensions: take the mean over the batch and the dimensions":
            err.pow(2).sum(1).mean(),
        "the MSE is measured in the original units: measure it in the normalised ones (x_n = x * act_scale)":
            (err / sae.act_scale).pow(2).mean()})
    diagnose("loss: l1", got["l1"].detach(), want["l1"], {
        "the L1 term is a mean over the features: sum over the features, then mean over the batch": f.mean(),
        "the L1 term is summed over the batch too: mean over the batch": f.sum()})
    diagnose("loss", got["loss"].detach(), want["loss"], {
        "the loss leaves out the L1 penalty": want["mse"],
        "the L1 term is not multiplied by l1_coeff": want["mse"] + want["l1"]})
    if not got["loss"].requires_grad:
        raise Mistake("loss: the loss has no graph to backward through (made under torch.no_grad, detached, or "
                      "from .item()): train_sae.py trains by calling backward() on it")
    with torch.enable_grad():
        want_grads = gradients(sae, REF.loss(sae, x)["loss"])
        mse_grads = gradients(sae, REF.loss(sae, x)["mse"])
        got_grads = gradients(sae, got["loss"])
    for name in want_grads:
        diagnose(f"loss: the gradient of {name} (after backward())", got_grads[name], want_grads[name], {
            "the L1 term carries no gradient (detached, or a number from .item()): keep it a tensor of the "
            "graph so the penalty trains the encoder": mse_grads[name]})
    with torch.no_grad():
        diagnose("loss with l1_coeff=0.05 passed", call("loss", loss, sae, x, 0.05)["loss"],
                 REF.loss(sae, x, 0.05)["loss"], {
                     "ignored its l1_coeff argument: use it when given (train_sae.py passes each step's, warming it "
                     "up) and cfg.l1_coeff only when it is None": want["loss"]})
        want_k = REF.loss(topk, x)
        diagnose("loss on a TopK SAE (k=4)", call("loss", loss, topk, x)["loss"], want_k["loss"], {
            "with TopK the loss is the MSE alone (the k largest are the sparsity; no L1 term)":
                want_k["mse"] + topk.cfg.l1_coeff * want_k["l1"]})


def check_constraint(student):
    """Step 2: the decoder's rows held at unit norm: the parallel part of each row's gradient removed
    before the step, the rows renormalised after it, in the parameter the optimizer holds."""
    sae, done = random_sae(), []
    G = torch.randn_like(sae.W_dec)
    if hasattr(student, "remove_parallel_grad"):
        sae.W_dec.grad = G.clone()
        W = sae.W_dec.detach().clone()
        call("remove_parallel_grad", student.remove_parallel_grad, sae, changes=("sae",))
        if not torch.equal(sae.W_dec.detach(), W):
            raise Mistake("remove_parallel_grad: changed W_dec itself: change only its gradient, sae.W_dec.grad")
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
        W, param = sae.W_dec.detach().clone(), sae.W_dec
        with torch.no_grad():
            call("normalize_decoder", student.normalize_decoder, sae, changes=("sae",))
        if sae.W_dec is not param:
            raise Mistake("normalize_decoder: sae.W_dec is a new tensor afterwards, so the optimizer, which holds "
                          "the old parameter, would train one the SAE no longer uses: divide in place "
                          "(sae.W_dec /= ..., or .div_)")
        diagnose("normalize_decoder", sae.W_dec.detach(), W / W.norm(dim=1, keepdim=True), {
            "the decoder is not renormalised: divide each feature's row by its norm after every step": W,
            "normalised each column (dim 0) instead of each feature's row": W / W.norm(dim=0, keepdim=True),
            "normalised the whole matrix at once instead of each row": W / W.norm()})
        done.append("normalize_decoder")
    return done


def weiszfeld(x, y):
    """One step of Weiszfeld's algorithm from y."""
    w = 1 / (x - y).norm(dim=1).clamp_min(1e-8)
    return (w[:, None] * x).sum(0) / w.sum()


def check_median(student):
    """Step 3: the geometric median (Weiszfeld's algorithm) that starts b_dec: converged, and on the
    boundary where the estimate lands on a data point."""
    if not hasattr(student, "geometric_median"):
        return []
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(200, 8, generator=g), 50 + torch.randn(20, 8, generator=g)])  # and far outliers
    want = REF.geometric_median(x)
    got = call("geometric_median", student.geometric_median, x)
    same_kind("geometric_median", got, want, "it becomes b_dec, a (d,) float32 parameter")
    mean = x.mean(0)
    distance = lambda y: ((x - y).norm(dim=1, keepdim=True) * x).sum(0) / (x - y).norm(dim=1).sum()
    if not close(got, want):
        named("geometric_median", got, {
            "that is the mean: weight each point by 1 / its distance to the estimate, and repeat (Weiszfeld)": mean,
            "one Weiszfeld step from the mean: repeat it until the estimate stops moving": weiszfeld(x, mean),
            "weighted each point by its distance instead of 1 / its distance": distance(mean)})
    moved = (weiszfeld(x, got) - got).norm().item()
    if moved > 1e-5 * max(got.norm().item(), 1.0):
        raise Mistake(f"geometric_median: not converged: one more Weiszfeld step from your estimate moves it by "
                      f"{moved:.2g}: start at the mean and repeat until a step moves it less than tol (relative)")
    diagnose("geometric_median", got, want, {})
    centre = torch.cat([torch.zeros(1, 4), torch.eye(4), -torch.eye(4)])   # the mean is a data point
    got = call("geometric_median", student.geometric_median, centre)
    if not torch.isfinite(got).all():
        raise Mistake("geometric_median: NaN when the estimate lands on a data point (here the mean is one): its "
                      "distance is 0 and 1 / 0 is inf; keep the distances away from 0 (.clamp_min(1e-8))")
    diagnose("geometric_median on points whose mean is one of them", got, REF.geometric_median(centre), {})
    return ["geometric_median"]


def check_resampling(student):
    """Step 4: the paper's resampling of dead features: each re-aimed at an input drawn with
    probability proportional to the square of its squared error, encoder row at 0.2x the alive
    rows' mean norm, encoder bias 0, both Adam moments of those rows reset. With the errors given
    (as train_sae.py passes them) and without (computed from the SAE), and on an optimizer that has
    not stepped yet."""
    if not hasattr(student, "resample_dead"):
        return []
    g = torch.Generator().manual_seed(1)
    sae = random_sae(n_features=2048, d_in=16)
    x = torch.randn(400, 16, generator=g)
    sq_errors = torch.cat([torch.ones(200), 2 * torch.ones(200)])   # the second half is reconstructed worse
    resampling("resample_dead", student.resample_dead, sae, x, sq_errors)
    # An SAE that fires on nothing reconstructs every input as b_dec: inputs at distance 1 and sqrt(2)
    # from it (in normalised units) have the same squared errors, 1 and 2, as above.
    sae = random_sae(n_features=2048, d_in=16)
    with torch.no_grad():
        sae.b_enc.fill_(-1e3)
    u = torch.randn(400, 16, generator=g)
    u = u / u.norm(dim=1, keepdim=True) * sq_errors.sqrt()[:, None]
    resampling("resample_dead with sq_errors=None (the errors computed from the SAE)", student.resample_dead, sae,
               ((sae.b_dec.detach() + u) / sae.act_scale), None)
    sae, dead = random_sae(n_features=64), torch.zeros(64, dtype=torch.bool)
    dead[::2] = True
    try:
        call("resample_dead", student.resample_dead, sae, sae_lib.make_optimizer(sae, 1e-3), dead, x, sq_errors,
             changes=("sae", "opt"))
    except Mistake:
        raise
    except Exception as e:
        raise Mistake(f"resample_dead on an optimizer that has not stepped yet raised {type(e).__name__}: "
                      f"{(str(e).splitlines() or [''])[0]}: opt.state[p] is empty until the first step, so reset "
                      "the moments only where they exist") from e
    return ["resample_dead"]


def resampling(what, resample_dead, sae, x, sq_errors):
    """One resampling of 2,000 of the 2,048 features of sae, on an Adam that has stepped, checked."""
    opt = sae_lib.make_optimizer(sae, 1e-3)
    for p in sae.parameters():
        p.grad = torch.randn_like(p)
    opt.step()                                      # Adam moments to reset
    before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    moments = {(n, m): opt.state[p][m].clone() for n, p in sae.named_parameters() for m in ("exp_avg", "exp_avg_sq")}
    dead = torch.ones(2048, dtype=torch.bool)
    dead[:48] = False
    torch.manual_seed(2)
    n = call("resample_dead", resample_dead, sae, opt, dead, x, sq_errors, changes=("sae", "opt"))
    W_dec, W_enc = sae.W_dec.detach(), sae.W_enc.detach()
    if n != int(dead.sum()):
        raise Mistake(f"{what}: returned {n}, not the number of dead features {int(dead.sum())}")
    for name in ("W_enc", "W_dec", "b_enc"):
        if not torch.equal(getattr(sae, name).detach()[~dead], before[name][~dead]):
            raise Mistake(f"{what}: changed the alive features' {name}: touch the dead rows only")
    direction = x * sae.act_scale
    direction = direction / direction.norm(dim=1, keepdim=True)
    cos = W_dec[dead] @ direction.T                               # each dead row against every input
    picked = cos.argmax(1)
    if not torch.allclose(cos.max(1).values, torch.ones(int(dead.sum())), atol=1e-4):
        raise Mistake(f"{what}: a dead feature's decoder row is not an input normalised to unit norm")
    share = (picked >= 200).float().mean().item()                # the paper: 4 / (1 + 4) = 0.8 of them
    if abs(share - 2 / 3) < 0.05:
        raise Mistake(f"{what}: inputs were drawn with probability proportional to their squared error; the paper "
                      "squares it again (the squared error not squared again)")
    if abs(share - 0.5) < 0.05:
        raise Mistake(f"{what}: inputs were drawn uniformly; draw them with probability proportional to the "
                      "square of their squared error")
    if abs(share - 0.8) > 0.05:
        raise Mistake(f"{what}: {share:.0%} of the picks come from the inputs with twice the squared error; with "
                      "probabilities proportional to the squared error squared it should be 80% (each input's "
                      "squared error: ((sae(x)[0] - x) * act_scale)^2 summed over the dims)")
    scale = 0.2 * before["W_enc"][~dead].norm(dim=1).mean()
    diagnose(f"{what}: the encoder rows", W_enc[dead], scale * W_dec[dead], {
        "the encoder row is the unit direction: scale it by 0.2 x the alive encoder rows' mean norm": W_dec[dead],
        "the encoder row is scaled by the alive rows' mean norm alone: take 0.2 x the alive encoder rows' mean norm":
            scale / 0.2 * W_dec[dead],
        "the encoder row is left as it was: set it to the direction, scaled": before["W_enc"][dead]})
    if not (sae.b_enc.detach()[dead] == 0).all():
        raise Mistake(f"{what}: the encoder bias of a resampled feature must start at 0")
    for (name, moment), old in moments.items():
        if name == "b_dec":
            continue
        state = opt.state[getattr(sae, name)][moment]
        if not (state[dead] == 0).all():
            raise Mistake(f"{what}: Adam's {moment} of the resampled rows of {name} is not reset to 0 (both "
                          "moments, exp_avg and exp_avg_sq, of W_enc, W_dec and b_enc)")
        if not torch.equal(state[~dead], old[~dead]):
            raise Mistake(f"{what}: the Adam moments of the alive rows of {name} changed: reset only the dead")


def check_loss_recovered(student):
    """Step 5: loss recovered, by splicing a replacement of the MLP's activations into the model; the
    replacement an SAE, which reads one activation a row."""
    done = []
    if hasattr(student, "lm_loss"):
        torch.manual_seed(0)
        model = Transformer(ModelConfig(vocab_size=50, block_size=16, n_head=2, d_model=32, d_mlp=64)).eval()
        w = torch.randint(0, 50, (4, 17))
        sae = random_sae(n_features=128, d_in=64)

        def spliced(h):
            if h.dim() != 2:
                raise Mistake(f"lm_loss: the replacement got activations of shape {tuple(h.shape)}: flatten them to "
                              "(B*T, d_mlp) for it (an SAE reads one activation a row) and view its result back")
            return sae(h)[0]
        with torch.no_grad():
            for name, fn in (("the activations as they are", lambda h: h),
                             ("zero-ablated activations", lambda h: torch.zeros_like(h)),
                             ("an SAE's reconstruction", spliced)):
                got, want = call("lm_loss", student.lm_loss, model, w, fn), REF.lm_loss(model, w, fn)
                same_kind(f"lm_loss with {name}", got, want, "return the loss tensor (analyze.py's lm_losses calls "
                          ".item() on it)")
                diagnose(f"lm_loss with {name}", got, want, {
                    "the targets are not the next tokens: the model reads windows[:, :-1] and predicts "
                    "windows[:, 1:]":
                        model(w[:, :-1], w[:, :-1], mlp_hook=lambda i, h: fn(h.flatten(0, 1)).view_as(h))[1],
                    "the replacement is not spliced in: pass it to the model as mlp_hook":
                        REF.lm_loss(model, w, lambda h: h)})
        done.append("lm_loss")
    if hasattr(student, "recovered"):
        for ablated, replaced, clean in ((5.0, 3.5, 3.0), (4.0, 3.9, 2.0)):
            diagnose(f"recovered({ablated}, {replaced}, {clean})", student.recovered(ablated, replaced, clean),
                     (ablated - replaced) / (ablated - clean), {
                "that is the share of the loss lost, not recovered (wrong baseline: 1 at the clean loss, 0 at the "
                "ablated one)": (replaced - clean) / (ablated - clean),
                "wrong baseline: measure the loss against the ablated loss minus the clean one, not the ablated loss "
                "alone": (ablated - replaced) / ablated,
                "wrong baseline: divide by the gap between the ablated and the clean losses": ablated - replaced})
        done.append("recovered")
    return done


def check_simulation(student):
    """Step 6: the explanation table's simulation (a pair row beats a token row beats a predicate row,
    the first predicate beats a later one; no row: the default) and the Pearson correlation that
    scores it, on positive, negative and zero correlations."""
    done, vocab = [], 10
    if hasattr(student, "simulate"):
        rng = np.random.default_rng(0)
        prev, cur = rng.integers(0, vocab + 1, 400), rng.integers(0, vocab, 400)
        labels = rng.random((400, 3)) < 0.3
        keys = np.array(sorted([3 * vocab + 4, vocab * vocab + 4, vocab * vocab + 7, explainer.context_key(0, vocab),
                                explainer.context_key(2, vocab)]))
        expl = dict(keys=keys, values=np.array([5.0, 4.0, 3.0, 2.0, 1.0]), counts=np.ones(5, int), default=0.5)
        want = REF.simulate(expl, prev, cur, labels, vocab)
        got = call("simulate", student.simulate, expl, prev, cur, labels, vocab)
        returned("simulate", got)
        got = np.asarray(got, np.float64)
        if got.shape != want.shape:
            raise Mistake(f"simulate: shape {got.shape}, the reference's {want.shape}: one value per token")
        both = (prev == 3) & (cur == 4)                           # a pair row and a token row match
        if not np.allclose(got[both], want[both]):
            raise Mistake("simulate: a token matched by a (previous token, token) row and by a token row must take "
                          "the (previous token, token) row's value: the more specific row wins")
        nothing = want == 0.5
        if not np.allclose(got[nothing], 0.5):
            raise Mistake("simulate: a token no row matches must get the table's default (the mean activation of "
                          "the tokens no row explains), not 0")
        two = labels[:, 0] & labels[:, 2] & ~np.isin(cur, [4, 7])  # two predicate rows match, no token row
        if np.allclose(got[two], 1.0) and not np.allclose(want[two], 1.0):
            raise Mistake("simulate: a token on which two predicates hold must take the first one's row (the lowest "
                          "p: PREDICATES is in order of precedence), not the last one's")
        diagnose("simulate", got, want, {})
        done.append("simulate")
    if hasattr(student, "pearson"):
        a = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
        b = np.array([2.0, 1.0, 4.0, 3.0, 8.0])
        got = call("pearson", student.pearson, a, b)
        diagnose("pearson", got, REF.pearson(a, b), {
            "that is the cosine: subtract each array's mean first": a @ b / math.sqrt((a @ a) * (b @ b)),
            "that is the covariance: divide by both standard deviations": np.cov(a, b, bias=True)[0, 1]})
        diagnose("pearson of a negative correlation", call("pearson", student.pearson, a, -b), REF.pearson(a, -b), {
            "lost the sign (|r|, or r squared): a unit predicted backwards must score below 0":
                abs(REF.pearson(a, -b))})
        c, d = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, -1.0, -1.0, 1.0])
        diagnose("pearson of uncorrelated arrays", call("pearson", student.pearson, c, d), 0.0, {})
        if student.pearson(np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0])) != 0:
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
    call("sparse_grads", student.sparse_grads, sae, x, changes=("sae",))
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
    functions = written(student) if isinstance(student, types.ModuleType) else vars(student)
    try:
        return CHECKS[step](types.SimpleNamespace(**functions))
    except Mistake:
        raise
    except Exception as e:   # the student's code failed: say how and where, in one line
        hint = " (keep the stub's @torch.no_grad())" if "leaf Variable" in str(e) else ""
        theirs = {os.path.abspath(fn.__code__.co_filename) for fn in functions.values() if hasattr(fn, "__code__")}
        frames = [f for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) in theirs]
        where = f" (in {frames[-1].name}, line {frames[-1].lineno} of {frames[-1].filename})" if frames else ""
        raise Mistake(f"your code raised {type(e).__name__}: {(str(e).splitlines() or [''])[0]}{hint}{where}") from e
