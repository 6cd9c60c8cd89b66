"""analyze.py: the paper's evidence, measured on held-out text: are features better units than neurons?

    python analyze.py                  # everything: out/analysis/report.md, its figures, the feature browser
    python analyze.py interp           # one step: losses, density, interp, specificity or grounding
    python analyze.py browse|steer|rate|ratings ...   # the lab's tools (lab/tools.py; each takes --help)

Reads the LM, every SAE (<out>/<sae-dir>/F<n>/ckpt.pt) and the held-out tokens, and measures, in the
paper's order:
  1. reconstruction, and the loss recovered when the SAE's reconstruction replaces the MLP's activations;
  2. feature density: how often each feature fires, the dead ones and an ultralow-density cluster;
  3. features versus neurons: an explain-then-simulate score, the same for both, also at matched density;
  4. grounded in the model: does a unit's effect on the logits agree with what follows where it fires?

A "unit" is one column of an activation matrix (tokens, units): a neuron, a feature, or a neuron
sparsified to the features' density (sparsify). The held-out tokens are cut into contexts of 32 tokens,
in LM windows that alternate between two halves (window_halves): a unit is explained from the EXPLAIN
half and scored on the SCORE half. One streaming pass (lab/measure.py, cached) reduces every held-out
token to per-unit counts, sums and top contexts (measured); the lab adds one call each around the
evidence: specificity, grounding's machinery, the browser, steering and the report.
"""
import lab  # first, before torch loads: lab/__init__.py lets waiting OpenMP threads sleep

import dataclasses
import os
import sys
import time

import numpy as np
import torch

import data
from lab import (browser, figures, grounding, measure, predicates, probing, report, resampling, specificity, steer,
                 tools)
from lab.measure import EXPLAIN, MIN_ACTIVE, SCORE, load_run
from lab.plumbing import UserError, arg, fmt_eta, parse_config, require, run_main
from lab.predicates import PREDICATES
from lab.stats import (balanced_accuracy, bootstrap, interval, median_difference, other_matchings, pearson_from_sums,
                       two_gaussians)

SINGLE_TOKEN_SHARE = 0.8      # a unit is "single-token" when one token carries this much of its activation
SIZES = (1, 2, 3, 5, 10, 20)  # explanation lengths (table rows) the interpretability curve is drawn at
STEPS = ["all", "losses", "density", "interp", "specificity", "grounding"]


@dataclasses.dataclass
class AnalyzeConfig:
    out: str = arg("out", "artifact root: reads data/, <lm-dir>/, <sae-dir>/F*/; writes <analysis-dir>/")
    lm_dir: str = arg("lm", "the LM whose neurons the SAEs decomposed")
    sae_dir: str = arg("sae", "folder of SAE checkpoints under --out (every F<n>/ckpt.pt is analysed)")
    analysis_dir: str = arg("analysis", "this analysis' folder under --out (e.g. analysis_b for model B)")
    n_features: int = arg(0, "the dictionary analysed in detail (steps 3-4); 0: the largest found")
    device: str = arg("auto", "auto, cpu, cuda or cuda:N")
    seed: int = arg(0, "seed for the sampled units, the random contexts and the bootstrap")
    tokens: int = arg(0, "held-out tokens to analyse (0: the whole validation split)")
    n_units: int = arg(512, "units of each kind compared on interpretability (at most the alive ones)")
    max_entries: int = arg(5, "rows in an explanation table, the same for features and neurons: a "
                           "handful of patterns, about what a one-sentence explanation names")
    explain: str = arg("contexts", "what an explanation row may name: tokens (token patterns only) or contexts "
                       "(token patterns and the context predicates of lab/predicates.py)")
    remeasure: bool = arg(False, "redo the streaming pass even when analysis/measure.pt matches")
    # set by programs (the tests, lab/compare.py), not on the command line
    loss_tokens: int = arg(2**17, "held-out tokens for the losses and the reconstruction error", flag=False)
    context: int = arg(32, "tokens per context (must divide the LM's context length)", flag=False)
    explain_contexts: int = arg(40, "top contexts (explain half) an explanation is read from", flag=False)
    score_top: int = arg(20, "top contexts (score half) an explanation is scored on", flag=False)
    score_random: int = arg(20, "random contexts (score half) it is also scored on", flag=False)
    bootstrap: int = arg(1000, "bootstrap resamples for the 95 percent intervals", flag=False)

    def __post_init__(self):
        require(self.explain in ("tokens", "contexts"), f"--explain {self.explain}:", "use tokens or contexts")
        for name in ("n_units", "explain_contexts", "score_top", "max_entries", "bootstrap", "loss_tokens"):
            require(getattr(self, name) >= 1, f"--{name.replace('_', '-')}", "must be at least 1")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    step, argv = tools.split_step(argv, STEPS)
    if step in tools.TOOLS:   # the lab's tools, with flags of their own beside ours
        return tools.run(step, argv, AnalyzeConfig, measured)
    cfg = parse_config(AnalyzeConfig, argv, description=__doc__.split("\n\n")[0] + " Usage: python analyze.py "
                       f"[{'|'.join(STEPS + list(tools.TOOLS))}] [flags]; no step: all of them and the report.")
    analyze(cfg, step)


def analyze(cfg, step="all"):
    """Run one step (or all of them and the report); returns the results dict."""
    t0 = time.time()
    run = load_run(cfg)
    m = measured(cfg, run)
    res = {"measure": m}
    if step in ("all", "losses"):
        res["losses"] = reconstruction(cfg, run, m)
    if step in ("all", "density"):
        res["density"] = density(run, m)
    if step in ("all", "interp"):
        res["interp"] = interpretability(cfg, run, m, res.get("density"))
    if step in ("all", "specificity"):
        res["specificity"] = specificity.specificity(run, m, neuron_kinds(m.sparse_k))
        res["probing"] = probing.probing(run, m, neuron_kinds(m.sparse_k), cfg.seed, cfg.bootstrap)
    if step in ("all", "grounding"):
        res["grounding"] = grounded(cfg, run, m)
    if step == "all":  # the lab's edges: the browser and the steering table read the interp step's units
        units = report.load_units(cfg, run)
        res["browser"] = browser.write_browser(browser.Config(), run, m, units)
        res["steering"] = steer.measure_steering(steer.Config(), run, m, units)
        res["seconds"] = time.time() - t0
        print(f"report: {report.write_report(cfg, run, res)} ({fmt_eta(res['seconds'])})")
    return res


# ----------------------------------------------------------------------------------------------
# What is measured: the halves, the kinds of units, the density-matched baseline


def window_halves(n_tokens, block_size):
    """(n_tokens,) each held-out token's half: EXPLAIN in even LM windows, SCORE in odd ones. An
    explanation is never scored on the tokens it was read from, yet both halves come from the same
    documents, as the paper draws its explaining and scoring examples from one distribution
    (splitting by document instead leaves a feature for a token that one file uses unscoreable)."""
    return (np.arange(n_tokens) // block_size % 2).astype(np.int64)


# The density-matched baseline. A feature fires on about 1% of the tokens, a neuron on about 4%, and a
# rare unit is easier to describe with a short table: "features beat neurons" may only say "sparse beats
# dense". So, chosen before any result was seen, the neurons made as sparse as the features: on each
# token only the k most active, k = d_mlp x the features' mean density. Per token, not a threshold per
# neuron: a sparse code of the same activations built like the SAE's (a TopK SAE whose dictionary is the
# neurons), as Paulo et al. (2024) asked it; a threshold would keep each neuron's most specific part.


def sparsify(h, k):
    """h (n, d) with all but the k largest activations of each row set to 0."""
    top = h.topk(min(k, h.shape[1]), dim=1)
    return torch.zeros_like(h).scatter_(1, top.indices, top.values.clamp_min(0))


@torch.no_grad()
def matched_k(run, n_tokens=2**14):
    """k of sparsify: d_mlp x the main SAE's mean feature density (its L0 / n_features, rounded, at
    least 1), read on the first n_tokens held-out tokens (the mean settles within a few thousand)."""
    n = min(n_tokens, run.n_tokens)
    batches = measure.stream(run.model, run.tokens, n, {"f": run.main_sae.encode}, run.batch)
    active = sum(int((a["f"] > 0).sum()) for _, a in batches)
    return max(1, round(run.model.cfg.d_mlp * active / n / run.main))


def neuron_kinds(k):
    """The neurons as units, of any model: as they are, and sparsified to k per token."""
    return {"neurons": lambda h: h, "sparse_neurons": lambda h: sparsify(h, k)}


def measured(cfg, run):
    """Every held-out token reduced to per-unit statistics of the neurons, the sparsified neurons and
    each SAE's features (lab/measure.py's streaming pass; reused from analysis/measure.pt while its
    inputs are the same)."""
    def units():   # on a cache miss only: matched_k reads a few thousand tokens
        k = matched_k(run)
        return k, {**neuron_kinds(k), **{f"F{n}": s.sae.encode for n, s in run.saes.items()}}
    return measure.load_or_measure(cfg, run, window_halves(run.n_tokens, run.model.cfg.block_size), units)


# ----------------------------------------------------------------------------------------------
# 1. Reconstruction and loss recovered (the paper: 79% for A/1, against zero ablation)


@torch.no_grad()
def lm_losses(model, tokens, n_tokens, replacements, batch=32):
    """Mean next-token loss on windows spread evenly over tokens, once per replacement of the last
    layer's MLP activations: {name: fn(acts (N, d_mlp)) -> acts (N, d_mlp)}."""
    T = model.cfg.block_size
    starts = np.linspace(0, len(tokens) - T - 1, max(1, n_tokens // T)).astype(np.int64)
    total = dict.fromkeys(replacements, 0.0)
    for i in range(0, len(starts), batch):
        w = data.windows(tokens, starts[i:i + batch], T + 1, model.unembed.weight.device)
        for name, fn in replacements.items():
            total[name] += lm_loss(model, w, fn).item() * len(w)
    return {name: t / len(starts) for name, t in total.items()}


def lm_loss(model, windows, replace):
    """The mean next-token loss on windows (B, T + 1) with the last layer's MLP activations replaced
    by replace(acts (B*T, d_mlp)), through the model's MLP hook: the model reads windows[:, :-1]
    and predicts windows[:, 1:]."""
    last = len(model.blocks) - 1
    hook = lambda layer, h: replace(h.flatten(0, 1)).view_as(h) if layer == last else h
    return model(windows[:, :-1], windows[:, 1:], mlp_hook=hook)[1]


def recovered(ablated, replaced, clean):
    """Loss recovered: 1 at the clean loss, 0 at the ablated one (the paper's definition)."""
    return (ablated - replaced) / (ablated - clean)


def reconstruction(cfg, run, m):
    """Per SAE: MSE and FVU (on the loss windows), L0, dead and dense fractions (all held-out tokens),
    the loss with its reconstruction spliced in, and the loss recovered against both ablations: the
    MLP zero-ablated (the paper's) and mean-ablated (every neuron at its held-out mean).
        FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2"""
    n, d_mlp = run.n_tokens, run.model.cfg.d_mlp
    mean = (m.stats["neurons"].sum / n).float().to(run.device)
    moments, errors = {"n": 0, "sum": 0.0, "sumsq": 0.0}, dict.fromkeys(run.saes, 0.0)
    replacements = {"clean": reading(moments), "zero": lambda h: torch.zeros_like(h),
                    "mean": lambda h: mean.expand_as(h), **{k: spliced(s.sae, errors, k) for k, s in run.saes.items()}}
    loss = lm_losses(run.model, run.tokens, min(cfg.loss_tokens, n - 1), replacements)
    spread = (moments["sumsq"] - moments["sum"] ** 2 / moments["n"]).sum().item()   # FVU's denominator
    rows = [dict(name="neurons", units=d_mlp, mse=0.0, fvu=0.0, loss=loss["clean"], rec_zero=1.0, rec_mean=1.0,
                 **firing(m.stats["neurons"], n))]
    for k, s in run.saes.items():
        rows.append(dict(name=f"F{k}", units=k, mse=errors[k] / (moments["n"] * d_mlp),
                         fvu=errors[k] / (s.sae.act_scale.item() ** 2 * spread), loss=loss[k],
                         rec_zero=recovered(loss["zero"], loss[k], loss["clean"]),
                         rec_mean=recovered(loss["mean"], loss[k], loss["clean"]), **firing(m.stats[f"F{k}"], n)))
        print(f"losses: F{k}: {100 * rows[-1]['rec_zero']:.1f}% of the loss recovered (zero ablation), "
              f"{100 * rows[-1]['rec_mean']:.1f}% (mean ablation); FVU {rows[-1]['fvu']:.3f}, L0 {rows[-1]['l0']:.1f}")
    return dict(rows=rows, clean=loss["clean"], zero=loss["zero"], mean=loss["mean"], loss_tokens=moments["n"])


def reading(moments):
    """The clean replacement: the activations as they are, their first two moments summed on the way."""
    def fn(h):
        moments["n"] += len(h)
        moments["sum"] = moments["sum"] + h.double().sum(0)
        moments["sumsq"] = moments["sumsq"] + h.double().square().sum(0)
        return h
    return fn


def spliced(sae, errors, k):
    """The SAE's reconstruction in place of the activations, its squared error (in the activations'
    own units) summed into errors[k]."""
    def fn(h):
        x_hat = sae(h)[0]
        errors[k] += ((x_hat - h) * sae.act_scale).double().square().sum().item()
        return x_hat
    return fn


def firing(s, n):
    """L0 (active units per token), and the dead (never active) and dense (on over 10% of tokens) units."""
    density = s.fired.double() / n
    return dict(l0=float(s.fired.sum()) / n, dead=int((density == 0).sum()), dense=int((density > 0.1).sum()))


# ----------------------------------------------------------------------------------------------
# 2. Feature density (the paper's histogram of log10 densities; its ultralow-density cluster)


def density(run, m):
    """Per SAE: densities, dead count and the ultralow cluster; writes density.png."""
    out = {}
    for k, s in run.saes.items():
        d = (m.stats[f"F{k}"].fired.double() / run.n_tokens).numpy()
        cluster = ultralow_cluster(d)
        cos = torch.nn.functional.cosine_similarity(s.sae.W_enc, s.sae.W_dec, dim=1).detach().cpu().numpy()
        members = cluster["members"] if cluster else np.zeros(len(d), bool)
        out[k] = dict(density=d, dead=int((d == 0).sum()), cluster=cluster,
                      cos_low=float(cos[members].mean()) if members.any() else None,
                      cos_high=float(cos[(d > 0) & ~members].mean()))
        note = f"ultralow cluster of {members.sum()}" if cluster else "no separate ultralow-density cluster"
        print(f"density: F{k}: {out[k]['dead']} dead of {k} on {run.n_tokens:,} held-out tokens; {note}")
    figures.plot_density(out, run.n_tokens, os.path.join(run.dir, "density.png"))
    return out


def ultralow_cluster(density, min_share=0.01, min_gap=1.5):
    """The paper's ultralow-density cluster, if the alive features' log10 densities are bimodal: a
    mixture of two Gaussians fitted by EM, accepted when the mixture really has two modes (between
    the two means it dips below half the lower mode's height: a skewed single mode fits two
    Gaussians too, but without a dip), the modes are at least min_gap decades apart (the paper's
    cluster sits orders of magnitude below the rest) and the lower one holds at least min_share of
    the features. Returns dict(threshold, members, dip) or None."""
    alive = density > 0
    x = np.log10(density[alive])
    if len(x) < 20:
        return None
    mixture, mu, r = two_gaussians(x)
    low = int(np.argmin(mu))
    pdf = mixture(np.linspace(mu.min(), mu.max(), 200)).sum(1)
    dip = pdf.min() / pdf[:pdf.argmin() + 1].max()   # 1: no valley between the means
    members_alive = r[:, low] > 0.5
    if dip > 0.5 or mu.max() - mu.min() < min_gap or members_alive.mean() < min_share:
        return None
    members = np.zeros(len(density), bool)
    members[np.flatnonzero(alive)[members_alive]] = True
    return dict(threshold=float(10 ** x[members_alive].max()), members=members, dip=float(dip))


# ----------------------------------------------------------------------------------------------
# 3. Features versus neurons: the explain-then-simulate score (the paper's automated interpretability,
# made offline). The paper asks Claude to explain a unit from its activating examples, to predict its
# activations on other examples from the explanation alone, and correlates prediction and truth.
# Offline, an explanation is the most a short lookup table can say: up to max_entries rows, each a
# (previous token, token) pattern, a token pattern or a context predicate (PREDICATES: "inside a
# comment", "base64", ...: the paper's explanations are sentences about contexts), with the mean
# activation of the tokens it matches, plus one "anything else" value. The same size for every kind of
# unit, so a polysemantic unit is penalised exactly as much as it is hard to summarise. A row is one
# integer key (pair_key, token_key, context_key); labels (n, P) bool: the predicates on each token.


def pair_key(prev, token, vocab):
    """The key of the row "token after prev" (below vocab**2)."""
    return prev * vocab + token


def token_key(token, vocab):
    """The key of the row "token", whatever precedes it (after every pair key)."""
    return vocab * vocab + token


def context_key(p, vocab):
    """The key of the row "predicate p holds" (p: an index into PREDICATES; after every token key)."""
    return vocab * (vocab + 1) + p


def explain(prev, cur, labels, acts, max_entries, vocab):
    """Explain a unit from tokens (prev, cur) with predicate labels and activations acts. Rows are
    chosen greedily, each time the pattern that most reduces the squared error of the simulation
    (sum of residuals over the tokens it matches, squared, over their count), so a pattern that an
    earlier row already predicts well is not spent a row on. A token counts towards its pair key, its
    token key and every predicate that holds on it. Returns table()'s dict plus order, the patterns
    in the order chosen: table(order[:e], ...) is the best explanation of e rows."""
    acts = np.asarray(acts, np.float64)
    held, p = np.nonzero(labels)                                  # each (token, predicate) that holds
    owner = np.concatenate([np.arange(len(cur)), np.arange(len(cur)), held])   # the token behind each candidate
    keys, inverse = np.unique(np.concatenate([pair_key(prev, cur, vocab), token_key(cur, vocab),
                                              context_key(p, vocab)]), return_inverse=True)
    count, chosen = np.bincount(inverse), np.zeros(len(keys), bool)
    order = np.zeros(0, np.int64)
    expl, sim = fit(order, prev, cur, labels, acts, vocab)
    for _ in range(max_entries):
        gain = np.bincount(inverse, (acts - sim)[owner]) ** 2 / count
        gain[chosen] = -1
        if len(gain) == 0 or gain.max() <= 1e-12:
            break
        chosen[gain.argmax()] = True
        order = np.append(order, keys[gain.argmax()])
        expl, sim = fit(order, prev, cur, labels, acts, vocab)
    return dict(expl, order=order)


def table(keys, prev, cur, labels, acts, vocab):
    """The explanation with rows keys: each row's value is the mean activation of the tokens it
    explains (match); "anything else" the mean of the tokens no row explains. A row that explains
    nothing (every match taken by a row of higher precedence) is dropped."""
    return fit(keys, prev, cur, labels, acts, vocab)[0]


def fit(keys, prev, cur, labels, acts, vocab):
    """(table(keys, ...), its simulation of these very tokens), from one match."""
    keys = np.sort(keys)
    row = match(keys, prev, cur, labels, vocab)
    counts = np.bincount(row + 1, minlength=len(keys) + 1)      # slot 0: "anything else"
    sums = np.bincount(row + 1, acts, minlength=len(keys) + 1)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    kept = counts[1:] > 0
    return (dict(keys=keys[kept], values=means[1:][kept], counts=counts[1:][kept], default=float(means[0])),
            means[row + 1])


def match(keys, prev, cur, labels, vocab):
    """For each token, the index into sorted keys of the row that explains it, or -1. When several
    rows match, the most specific wins: a (prev, token) row, then a token row, then a predicate row,
    and among predicates the one earlier in PREDICATES (so the order of PREDICATES is part of the
    explanation's meaning: "inside a comment" before "a URL")."""
    row = np.full(len(cur), -1)
    if len(keys) == 0:
        return row
    base = context_key(0, vocab)
    for i in np.flatnonzero(keys >= base)[::-1]:                 # predicate rows, the earliest written last
        row[labels[:, keys[i] - base]] = i
    for k in (token_key(cur, vocab), pair_key(prev, cur, vocab)):   # token rows, then (prev, token) rows win
        i = np.searchsorted(keys, k).clip(max=len(keys) - 1)
        hit = keys[i] == k
        row[hit] = i[hit]
    return row


def simulate(expl, prev, cur, labels, vocab):
    """The activations an explanation predicts for tokens (prev, cur) with predicate labels."""
    row = match(expl["keys"], prev, cur, labels, vocab)
    return np.append(expl["values"], expl["default"])[row]     # row -1: the "anything else" value


def pearson(a, b):
    """Pearson correlation of two 1-D arrays; 0 where either is constant (no information)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2:
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


@dataclasses.dataclass
class HeldOut:
    """The held-out text as an explanation reads it, position by position."""
    tokens: np.ndarray   # (N,) each held-out token
    prev: np.ndarray     # (N,) the token before it (end of text before the first)
    labels: np.ndarray   # (N, P) bool: the predicates a row may name, the same for every unit (P = 0: none)
    vocab: int           # the vocabulary's size: the base of the explanation keys
    ctx: int             # tokens per context: context c is positions c*ctx to (c+1)*ctx - 1
    docs: np.ndarray = None          # (N,) each token's document, 0 to D - 1 (the intervals resample them)
    alone_labels: np.ndarray = None  # (vocab, P) the predicates on each token read alone, as a document of its own
    eot: int = 0                     # the end of text: the "previous token" of a token read alone

    def at(self, contexts):
        """(prev, tokens, labels) at every position of the given contexts, in order."""
        pos = (np.asarray(contexts)[:, None] * self.ctx + np.arange(self.ctx)).ravel()
        return self.prev[pos], self.tokens[pos], self.labels[pos]

    def alone(self, tokens):
        """(prev, tokens, labels) of tokens read out of context."""
        return np.full(len(tokens), self.eot), np.asarray(tokens), self.alone_labels[tokens]


def score_units(units, stats, pool, text, n_top, n_random, max_entries, sizes=(), seed=0):
    """Top-and-random, the protocol before the paper's (kept beside it for one release): each unit
    explained from its top contexts in the EXPLAIN half and scored (Pearson r) on its n_top top and
    n_random random contexts of the SCORE half, the random ones drawn from the pool (dict(ctx (Q,),
    acts (Q, ctx, U))), none among the top ones. Per unit: score, explanation (at most max_entries
    rows), by_size {e: the score of the table cut to e rows, for e in sizes}, single_token."""
    top, scored, out = stats.top[EXPLAIN], stats.top[SCORE], []
    for u in units:
        keep, hit = top.val[u] > 0, scored.val[u] > 0
        prev, cur, labels = text.at(top.ctx[u][keep])
        acts = top.acts[u][keep].numpy().ravel()
        longest = explain(prev, cur, labels, acts, max([max_entries, *sizes]), text.vocab)
        cut = lambda e: table(longest["order"][:e], prev, cur, labels, acts, text.vocab)
        ids = scored.ctx[u][hit][:n_top].numpy()
        free = np.flatnonzero(~np.isin(pool["ctx"], ids))
        pick = np.random.default_rng([seed, int(u)]).choice(free, min(n_random, len(free)), replace=False)
        truth = np.concatenate([scored.acts[u][hit][:n_top].numpy().ravel(), pool["acts"][pick, :, u].numpy().ravel()])
        seen = text.at(np.concatenate([ids, pool["ctx"][pick]]))
        score = lambda expl: pearson(simulate(expl, *seen, text.vocab), truth)
        out.append(dict(unit=int(u), score=score(cut(max_entries)), explanation=cut(max_entries),
                        by_size={e: score(cut(e)) for e in sizes}, single_token=single_token(top, u, text)))
    return out


# The paper's protocol (Bricken et al. 2023): a unit is explained from 49 examples and scored on 60,
# drawn the same way in the two halves: its top contexts, 2 from each of the 12 activation intervals
# below the top one (lab/measure.py's sample_intervals, the rating cards' sampler too), random
# contexts, and its top tokens read out of context. Scoring on top and random contexts alone rewards a
# sparse unit mechanically and never looks at the middle of its range, where a polysemantic unit shows
# its other meanings. The 20 tokens scored alone are the next 20 after the 10 it was explained from.
EXPLAIN_SET = dict(top=10, random=5, tokens=(0, 10))     # + 2 x 12 from the intervals: 49
SCORE_SET = dict(top=6, random=10, tokens=(10, 30))      # + 2 x 12 from the intervals: 60
DETECT_SILENT = 30   # silent contexts a unit's detection is tested on, beside its firing ones


@dataclasses.dataclass
class Examples:
    """A unit's examples in one half: contexts, and tokens read alone, with its activations there."""
    ctx: np.ndarray          # (C,) context ids
    acts: np.ndarray         # (C, ctx)
    alone: np.ndarray        # (A,) token ids
    alone_acts: np.ndarray   # (A,)


def paper_examples(u, n, top, intervals, pool, alone, order, rng):
    """Unit u's examples in one half, the paper's way (n: EXPLAIN_SET or SCORE_SET). top: the half's
    TopContexts; intervals: the contexts drawn from its 12 intervals below the top one (stack_intervals);
    pool: dict(ctx (Q,), acts (Q, ctx, U)) random contexts of the half; alone (vocab, U) every token's
    activations out of context, order (vocab, U) the tokens by them, largest first."""
    keep = top.val[u] > 0
    ids, acts = top.ctx[u][keep][:n["top"]].numpy(), top.acts[u][keep][:n["top"]].numpy()
    drawn = (intervals.val[u] > -float("inf")).numpy() & ~np.isin(intervals.ctx[u].numpy(), ids)
    ids, acts = np.append(ids, intervals.ctx[u].numpy()[drawn]), np.concatenate([acts, intervals.acts[u].numpy()[drawn]])
    free = np.flatnonzero(~np.isin(pool["ctx"], ids))
    pick = rng.choice(free, min(n["random"], len(free)), replace=False)
    tokens = order[n["tokens"][0]:n["tokens"][1], u]
    return Examples(np.append(ids, pool["ctx"][pick]), np.concatenate([acts, pool["acts"][pick, :, u]]),
                    tokens, alone[tokens, u])


def stack_intervals(tops):
    """A half's per-interval samples below the top interval (the top one is the top contexts'), as one
    TopContexts with val, ctx (U, 12 x 2) and acts (U, 12 x 2, ctx)."""
    return measure.TopContexts(*(torch.cat([getattr(t, f) for t in tops[:-1]], 1) for f in ("val", "ctx", "acts")))


def positions(ex, text):
    """(prev, tokens, labels, activations, context of each position (-1: a token alone)) of examples."""
    prev, cur, labels = (np.concatenate(parts) for parts in zip(text.at(ex.ctx), text.alone(ex.alone)))
    where = np.append(np.repeat(np.arange(len(ex.ctx)), text.ctx), np.full(len(ex.alone), -1))
    return prev, cur, labels, np.append(ex.acts.ravel(), ex.alone_acts).astype(np.float64), where


def score_paper(units, stats, intervals, pools, alone, text, max_entries, sizes=(), seed=0):
    """The paper's protocol, per unit: explained from its EXPLAIN-half examples, scored on its SCORE-half
    ones by the Pearson correlation of simulated and true activations (and Spearman's, the paper's
    statistic, beside) and detected (detect), both also with another unit's explanation (the control:
    the previous unit's). Per explanation length, sums (C + 1, 6) of simulation and truth per scored
    context (row 0: the tokens alone) and their documents (docs), for document_resamples. stats:
    UnitStats; intervals: [half][interval] TopContexts; pools: [half] dict(ctx, acts (Q, ctx, U));
    alone (vocab, U): every token's activations out of context; text: HeldOut."""
    alone = alone.clone().numpy()
    alone[text.eot] = -np.inf                       # the end of text is no token to read alone
    order = np.argsort(-alone, axis=0, kind="stable")
    alone[text.eot] = 0
    lengths, intervals = sorted({max_entries, *sizes}), [stack_intervals(half) for half in intervals]
    out = [score_one(u, stats, intervals, pools, alone, order, text, lengths, max_entries, seed) for u in units]
    for r, other in zip(out, out[-1:] + out[:-1]):
        scored, silent = r.pop("examples")
        r["control"] = pearson_from_sums(context_sums(other["explanation"], positions(scored, text), text).sum(0))
        r["detect_control"] = detect(other["explanation"], scored, silent, text)
        r["detection"] = balanced_accuracy(r["detect"])
    return out


def score_one(u, stats, intervals, pools, alone, order, text, lengths, max_entries, seed):
    """score_paper for one unit, without the control (its examples are kept for it)."""
    rng = np.random.default_rng([seed, int(u)])
    ex, sc = (paper_examples(u, n, stats.top[h], intervals[h], pools[h], alone, order, rng)
              for n, h in ((EXPLAIN_SET, EXPLAIN), (SCORE_SET, SCORE)))
    prev, cur, labels, acts, _ = positions(ex, text)
    longest = explain(prev, cur, labels, acts, lengths[-1], text.vocab)
    tables = {e: table(longest["order"][:e], prev, cur, labels, acts, text.vocab) for e in lengths}
    scored_at = positions(sc, text)   # read once: every length's sums, Spearman's
    sums = {e: context_sums(t, scored_at, text) for e, t in tables.items()}
    silent = silent_contexts(u, pools[SCORE], rng)
    sums["score"] = sums[max_entries]
    return dict(unit=int(u), explanation=tables[max_entries], score=pearson_from_sums(sums[max_entries].sum(0)),
                by_size={e: pearson_from_sums(sums[e].sum(0)) for e in lengths},
                spearman=spearman(simulate(tables[max_entries], *scored_at[:3], text.vocab), scored_at[3]),
                sums=sums, docs=np.append(-1, text.docs[sc.ctx * text.ctx]),
                detect=detect(tables[max_entries], sc, silent, text), examples=(sc, silent),
                single_token=single_token(stats.top[EXPLAIN], u, text))


def context_sums(expl, at, text):
    """(C + 1, 6): per context of the examples (row 0: the tokens alone), the sums n, s, t, s^2, t^2, st
    of the simulation s and the truth t: a correlation over any reweighting of the contexts follows.
    at: the examples' positions()."""
    prev, cur, labels, t, where = at
    sim = simulate(expl, prev, cur, labels, text.vocab)
    cols = (np.ones_like(t), sim, t, sim * sim, t * t, sim * t)
    return np.stack([np.bincount(where + 1, c, minlength=int(where.max(initial=-1)) + 2) for c in cols], 1)


def spearman(a, b):
    """Spearman's rank correlation (ties share their mean rank): the paper's statistic."""
    return pearson(mean_ranks(a), mean_ranks(b))


def mean_ranks(x):
    _, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2)[inverse]


def silent_contexts(u, pool, rng):
    """Up to DETECT_SILENT contexts of the pool where unit u never fires, drawn at random."""
    silent = np.flatnonzero(pool["acts"][:, :, u].amax(1).numpy() <= 0)
    return pool["ctx"][rng.choice(silent, min(DETECT_SILENT, len(silent)), replace=False)]


def detect(expl, ex, silent, text):
    """Detection (the field's current automated interpretability, e.g. EleutherAI's delphi): from the
    explanation alone, tell the contexts where the unit fires from those where it is silent: ex's
    contexts (its scoring ones, drawn across its activation range), and the silent ones. The table says
    "fires" where some token matches a row whose value exceeds its "anything else" value. Returns
    dict(positive, predicted, docs) per context (balanced_accuracy reads it: a unit's base rate does
    not decide it)."""
    ids = np.concatenate([ex.ctx, silent])
    peak = simulate(expl, *text.at(ids), text.vocab).reshape(len(ids), text.ctx).max(1)
    return dict(positive=np.append(ex.acts.max(1) > 0, np.zeros(len(silent), bool)),
                predicted=peak > expl["default"] + 1e-9, docs=text.docs[ids * text.ctx])


def single_token(top, u, text):
    """One token carries SINGLE_TOKEN_SHARE of the unit's activation in its top contexts of the EXPLAIN
    half: the paper reports those units apart, as they are trivial to simulate."""
    keep = top.val[u] > 0
    cur, acts = text.at(top.ctx[u][keep])[1], top.acts[u][keep].numpy().ravel()
    return bool(acts.sum() > 0 and np.bincount(cur, weights=acts).max() / acts.sum() >= SINGLE_TOKEN_SHARE)


def interpretability(cfg, run, m, dens=None):
    """Score every alive neuron, feature and sparsified neuron of the main SAE by the paper's protocol
    (score_paper) and by top-and-random (score_units, kept beside it); compare a random sample of each
    kind, of the same size; writes interp.png and units.json (every unit's explanation and scores)."""
    stats = {"neurons": m.stats["neurons"], "features": m.stats[run.main_name],
             "sparse_neurons": m.stats["sparse_neurons"]}
    intervals = {"neurons": m.intervals["neurons"], "features": m.intervals[run.main_name],
                 "sparse_neurons": m.intervals["sparse_neurons"]}
    ultralow = (dens or {}).get(run.main, {}).get("cluster") or ultralow_cluster(
        (stats["features"].fired.double() / run.n_tokens).numpy())
    rng = np.random.default_rng(cfg.seed)
    pool = score_pool(cfg, run, m, rng)
    text, pools, alone = paper_inputs(cfg, run, m)
    units = {kind: alive(s, ultralow if kind == "features" else None) for kind, s in stats.items()}
    n, drawn = sample(cfg, units, rng)
    results, compare = {}, {}
    for kind, s in stats.items():   # the sample at every explanation length of SIZES, the others at max_entries
        t0, picked = time.time(), units[kind][drawn[kind]]
        score = lambda us, sizes: score_paper(us, s, intervals[kind], [{**p, "acts": p[kind]} for p in pools],
                                              alone[kind], text, cfg.max_entries, sizes, cfg.seed)
        compare[kind], rest = score(picked, SIZES), score(np.setdiff1d(units[kind], picked), ())
        old = score_units(picked, s, dict(ctx=pool["ctx"], acts=pool[kind]), text, cfg.score_top, cfg.score_random,
                          cfg.max_entries, seed=cfg.seed)
        for r, o in zip(compare[kind], old):
            r["top_random"] = o["score"]
        results[kind] = sorted(compare[kind] + rest, key=lambda r: r["unit"])
        for r in results[kind]:  # the table in words, for the report, the browser and units.json
            r["rows"], r["otherwise"] = describe(r["explanation"], run.enc, run.meta["vocab_size"])
        print(f"interp: scored {len(units[kind])} alive {kind} in {time.time() - t0:.1f}s")
    summary = dict(resampling.summarize(compare, int(text.docs.max()) + 1, cfg.max_entries, SIZES, cfg.bootstrap,
                                        cfg.seed),
                   by_density=report.by_density(results, stats, run.n_tokens))
    d = {kind: stats[kind].fired.double().numpy() / run.n_tokens for kind in stats}
    summary["matched"] = {other: matched_difference(results["features"], results[other], d["features"], d[other],
                                                    cfg.bootstrap, cfg.seed, n_docs=int(text.docs.max()) + 1)
                          for other in ("neurons", "sparse_neurons")}
    figures.plot_interp(compare, summary, cfg.max_entries, os.path.join(run.dir, "interp.png"))
    report.save_units(run, stats, results)
    print(f"interp: median score, features minus neurons {report.signed(summary['median_diff'])}")
    return dict(summary=summary, compare=compare, all=results, n=n, explain=cfg.explain,
                single_token_share=SINGLE_TOKEN_SHARE)


def paper_inputs(cfg, run, m):
    """What the paper's protocol reads beyond the streaming pass: the held-out text (HeldOut, with each
    token's document and the predicates on every token read alone), random contexts of each half (50
    EXPLAIN, 200 SCORE: 10 random and up to DETECT_SILENT silent ones per unit) with every kind's
    activations, and every token's activations out of context."""
    eot, vocab = run.meta["eot"], run.meta["vocab_size"]
    labels = m.proxies if cfg.explain == "contexts" else m.proxies[:, :0]   # "tokens": token patterns only
    alone_labels = predicates.alone_labels(run.enc, vocab, eot)[:, :labels.shape[1]]
    text = HeldOut(run.tokens, np.concatenate([[eot], run.tokens[:-1]]), labels, vocab, cfg.context,
                   docs=np.unique(np.cumsum(run.tokens == eot), return_inverse=True)[1], alone_labels=alone_labels,
                   eot=eot)
    kinds = {**neuron_kinds(m.sparse_k), "features": run.main_sae.encode}
    rng, pools = np.random.default_rng([cfg.seed, 1]), []
    for half, q in ((EXPLAIN, 50), (SCORE, 200)):
        ctx = np.flatnonzero(m.halves[::cfg.context] == half)
        ids = np.sort(rng.choice(ctx, min(len(ctx), q), replace=False))
        pools.append(dict(ctx=ids, **measure.context_acts(run.model, run.tokens, ids, cfg.context, kinds)))
    return text, pools, measure.alone_acts(run.model, vocab, kinds)


def alive(s, ultralow=None):
    """The units explained and scored: active on at least MIN_ACTIVE held-out tokens and in both
    halves; the paper leaves its ultralow-density cluster out of its analysis."""
    ok = (s.fired >= MIN_ACTIVE) & (s.fired_half > 0).all(0)
    if ultralow:
        ok &= torch.from_numpy(~ultralow["members"])
    return ok.nonzero().squeeze(1).numpy()


def score_pool(cfg, run, m, rng):
    """The random SCORE-half contexts every unit is also scored on: dict(ctx (Q,), and per kind its
    activations there (Q, ctx, U)), recomputed for all units at once."""
    score_ctx = np.flatnonzero(m.halves[::cfg.context] == SCORE)
    ids = np.sort(rng.choice(score_ctx, min(len(score_ctx), 5 * cfg.score_random), replace=False))
    kinds = {**neuron_kinds(m.sparse_k), "features": run.main_sae.encode}
    return dict(ctx=ids, **measure.context_acts(run.model, run.tokens, ids, cfg.context, kinds))


def sample(cfg, units, rng):
    """(n, {kind: indices into units[kind]}): the comparison's sample, n units of each kind drawn at random
    among the alive ones (the sparsified neurons, drawn last, may have fewer alive: a neuron rarely among
    the top k)."""
    n = min(cfg.n_units, len(units["features"]), len(units["neurons"]))
    if n == 0:
        raise UserError("no alive unit fires in both halves of the held-out data: analyse more --tokens")
    sizes = dict(features=n, neurons=n, sparse_neurons=min(cfg.n_units, len(units["sparse_neurons"])))
    return n, {kind: np.sort(rng.choice(len(u), sizes[kind], replace=False)) for kind, u in units.items()}


def matched_difference(a, b, density_a, density_b, n=1000, seed=0, min_units=10, n_docs=0):
    """Features (a) minus another kind (b) at matched density, a protocol fixed before any result was
    seen: every scored unit falls in a bin of half a decade of density (a unit's score falls with its
    density, and within a whole decade density still varies tenfold); in every bin with at least
    min_units of each kind, the difference of the two medians; those averaged, each bin weighted by
    the smaller of its two counts (the units that can be matched there). a, b: score_paper's (or
    score_units') results; density_*: (U,) each unit's density. Returns dict(value, ci (95%: the units of
    each kind resampled with replacement and, given n_docs, the held-out documents too, as in
    summarize), bins: [(lo, n_a, n_b, diff)], others: the same difference weighted by a's counts and by
    b's, and the regression's, each with its interval, units resampled: see other_matchings)."""
    def weighted(xa, ba, xb, bb, weight=min):   # scores and bins of each kind -> (the weighted difference, its bins)
        rows = []
        for k in np.intersect1d(ba, bb):
            x, y = xa[ba == k], xb[bb == k]
            if min(len(x), len(y)) >= min_units:
                rows.append((10 ** (k / 2), len(x), len(y), float(np.median(x) - np.median(y))))
        if not rows:
            return float("nan"), rows
        return float(np.average([r[3] for r in rows], weights=[weight(r[1], r[2]) for r in rows])), rows

    (xa, ba), (xb, bb) = density_bins(a, density_a), density_bins(b, density_b)
    value, bins = weighted(xa, ba, xb, bb)
    if n_docs:   # each resample: the documents, and the units of each kind
        w, rng = resampling.document_resamples(n_docs, n, seed), np.random.default_rng([seed, 3])
        xa_w, xb_w = resampling.resampled(a, w, "score"), resampling.resampled(b, w, "score")
        ia, ib = rng.integers(0, len(xa), (n, len(xa))), rng.integers(0, len(xb), (n, len(xb)))
        ci = interval([weighted(xa_w[k, ia[k]], ba[ia[k]], xb_w[k, ib[k]], bb[ib[k]])[0] for k in range(n)])
    else:
        units = lambda i, j: weighted(xa[i], ba[i], xb[j], bb[j])[0]   # i, j: the units drawn of each kind
        ci = bootstrap(units, [np.arange(len(xa)), np.arange(len(xb))], n, np.random.default_rng(seed))
    others = other_matchings(weighted, (xa, ba, xb, bb), (log_density(a, density_a), log_density(b, density_b)),
                             n, seed)
    return dict(value=value, ci=(value, value) if np.isnan(ci[0]) else ci, bins=bins, others=others)


def log_density(results, density):
    return np.log10(np.maximum(density[np.array([r["unit"] for r in results], dtype=np.int64)], 1e-12))


def density_bins(results, density):
    """(scores, bins): each scored unit's score and its bin of half a decade of density."""
    units = np.array([r["unit"] for r in results], dtype=np.int64)
    return (np.array([r["score"] for r in results]),
            np.floor(2 * np.log10(np.maximum(density[units], 1e-12))).astype(int))


def describe(expl, enc, vocab):
    """An explanation table as rows of readable patterns, strongest first: a (previous token, token)
    pattern, a token pattern (prev None) or a context predicate (context: its name; prev and token None)."""
    text = lambda t: report.token_text(enc, t)
    rows = []
    for key, value, count in zip(expl["keys"].tolist(), expl["values"], expl["counts"]):
        if key >= context_key(0, vocab):
            row = dict(prev=None, token=None, context=PREDICATES[key - context_key(0, vocab)])
        else:
            prev, token = divmod(key, vocab)   # prev == vocab: a token key (token_key)
            row = dict(prev=text(prev) if prev < vocab else None, token=text(token), context=None)
        rows.append(dict(row, value=round(float(value), 4), count=int(count)))
    return sorted(rows, key=lambda r: -r["value"]), round(expl["default"], 4)


# ----------------------------------------------------------------------------------------------
# 4. Grounded in the model: does a unit's effect on the output agree with where it fires?


def grounded(cfg, run, m):
    """The paper's logit-weight argument as a score (lab/grounding.py): per alive unit, the correlation
    of its logit effects with how much more often each token follows where it fires. Medians with
    95% intervals (units resampled) for features, neurons and sparsified neurons, of this model and
    of the random-weights control, beside the null (each unit against another unit's effects)."""
    g = grounding.measure_grounding(cfg.out, run, m, neuron_kinds(m.sparse_k))
    summary = grounding.summarize(g, cfg.bootstrap, cfg.seed)
    x = {kind: r["scores"] for kind, r in g["model"].items()}
    summary["diff"] = {other: median_difference(x["features"], x[other], cfg.bootstrap, cfg.seed)
                       for other in ("neurons", "sparse_neurons")}
    print(f"grounding: median correlation, features minus neurons {report.signed(summary['diff']['neurons'])}, "
          f"minus sparsified neurons {report.signed(summary['diff']['sparse_neurons'])}")
    return dict(summary=summary, units=g, control_from=g["control_from"], control_tokens=g["control_tokens"])


if __name__ == "__main__":
    run_main(main)
