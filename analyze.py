"""analyze.py: the paper's evidence, measured on held-out text: are features better units than neurons?

    python analyze.py                  # everything: out/analysis/report.md, its figures, the feature browser
    python analyze.py interp           # one step: losses, density, interp, specificity (+ probing), grounding
    python analyze.py browse|steer|rate|ratings ...   # the lab's tools (lab/tools.py; each takes --help)

Reads the LM, every SAE (<out>/<sae-dir>/F<n>/ckpt.pt) and the held-out tokens, and measures, in the
paper's order (the sections below): 1. reconstruction and loss recovered; 2. feature density; 3. features
versus neurons on an explain-then-simulate score; 4. grounding: does a unit's effect on the logits agree with
what follows where it fires? A "unit" is one column of an activation matrix (tokens, units): a neuron, a
feature, or a neuron sparsified to the features' density (sparsify). A unit is explained from the EXPLAIN
half of the held-out tokens and scored on the SCORE half (window_halves). One streaming pass (lab/measure.py,
cached) reduces every held-out token to per-unit statistics (measured); the lab adds the measures beside the
evidence (detection, top-and-random, specificity, probing), grounding's machinery, the browser and the report.
"""
import lab  # first, before torch loads: lab/__init__.py lets waiting OpenMP threads sleep

import dataclasses
import os
import time

import numpy as np
import torch

import data
from lab import (browser, detection, explainer, figures, formatting, grounding, measure, probing, report, resampling,
                 specificity, stats, steer, summary, tools, top_random)
from lab.measure import EXPLAIN, SCORE, load_run
from lab.plumbing import UserError, arg, flags, parse_config, run_main

SIZES = (1, 2, 3, 5, 10, 20)  # explanation lengths (table rows) the interpretability curve is drawn at
STEPS = ["all", "losses", "density", "interp", "specificity", "grounding"]


@flags
class AnalyzeConfig:
    out: str = arg("out", "artifact root: reads data/, <lm-dir>/, <sae-dir>/F*/; writes <analysis-dir>/")
    lm_dir: str = arg("lm", "the LM whose neurons the SAEs decomposed")
    sae_dir: str = arg("sae", "folder of SAE checkpoints under --out (every F<n>/ckpt.pt is analysed)")
    analysis_dir: str = arg("analysis", "this analysis' folder under --out (e.g. analysis_b for model B)")
    n_features: int = arg(0, "the dictionary analysed in detail (steps 3-4); 0: the largest found")
    device: str = arg("auto", "auto, cpu, cuda or cuda:N")
    seed: int = arg(0, "seed for the sampled units, the random contexts and the bootstrap")
    tokens: int = arg(0, "held-out tokens to analyse (0: the whole validation split)")
    n_units: int = arg(512, "units of each kind compared on interpretability (at most the alive ones)", at_least=1)
    max_entries: int = arg(5, "rows in any unit's explanation table: about what one sentence names", at_least=1)
    explain: str = arg("contexts", "what a table row names: tokens, or contexts too", one_of=("tokens", "contexts"))
    remeasure: bool = arg(False, "redo the streaming pass even when analysis/measure.pt matches")
    # set by programs (the tests, lab/compare.py), not on the command line
    loss_tokens: int = arg(2**17, "held-out tokens for the losses and the reconstruction error", flag=False, at_least=1)
    context: int = arg(32, "tokens per context (must divide the LM's context length)", flag=False)
    explain_contexts: int = arg(40, "EXPLAIN-half top contexts kept per unit (the paper's: 10)", flag=False, at_least=1)
    score_top: int = arg(20, "SCORE-half top contexts kept per unit (the paper's: 6)", flag=False, at_least=1)
    score_random: int = arg(20, "random contexts (SCORE half) top-and-random also scores on", flag=False)
    bootstrap: int = arg(1000, "bootstrap resamples for the 95 percent intervals", flag=False, at_least=1)


def main(argv=None):
    step, argv = tools.split_step(argv, STEPS)
    if step in tools.TOOLS:   # the lab's tools, with flags of their own beside ours
        return tools.run(step, argv, AnalyzeConfig, measured)
    analyze(parse_config(AnalyzeConfig, argv, description=tools.usage(__doc__, STEPS)), step)


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
    if step in ("all", "grounding"):   # 4. does a unit's effect on the logits agree with what follows where it fires?
        res["grounding"] = grounding.grounded(cfg, run, m, neuron_kinds(m.sparse_k))
    if step == "all":   # the lab's edges, one call each, on the scored units: the browser, steering, the report
        scored = summary.load_units(cfg, run)
        res["browser"] = browser.write_browser(browser.Config(), run, m, scored)
        res["steering"] = steer.measure_steering(steer.Config(), run, m, scored)
        report.finish(cfg, run, res, t0)
    return res


# ----------------------------------------------------------------------------------------------
# What is measured: the halves, the kinds of units, the density-matched baseline

def window_halves(n_tokens, block_size):
    """(n_tokens,) each held-out token's half: EXPLAIN in even LM windows, SCORE in odd ones. An explanation
    is never scored on the tokens it was read from, yet both halves come from the same documents, as the paper
    draws its explaining and scoring examples from one distribution (by document, a feature for a token that
    one file uses would be unscoreable)."""
    return (np.arange(n_tokens) // block_size % 2).astype(np.int64)


def sparsify(h, k):
    """h (n, d) with all but the k largest activations of each row set to 0: the density-matched baseline.
    A feature fires on about 1% of the tokens, a neuron on about 4%, and a rare unit is easier to describe
    with a short table: "features beat neurons" may only say "sparse beats dense". So, chosen before any
    result was seen, the neurons made as sparse as the features: on each token only the k most active,
    k = d_mlp x the features' mean density (matched_k). Per token, not a threshold per neuron: a sparse code
    of the same activations built like the SAE's (a TopK SAE whose dictionary is the neurons), as Paulo et
    al. (2024) asked it; a threshold would keep each neuron's most specific part."""
    top = h.topk(min(k, h.shape[1]), dim=1)
    return torch.zeros_like(h).scatter_(1, top.indices, top.values.clamp_min(0))


@torch.no_grad()
def matched_k(run):
    """k of sparsify: d_mlp x the main SAE's mean feature density (its L0 / n_features, rounded, at
    least 1), read on the first 2**14 held-out tokens (the mean settles within a few thousand)."""
    n = min(2**14, run.n_tokens)
    batches = measure.stream(run.model, run.tokens, n, {"f": run.main_sae.encode}, run.batch)
    active = sum(int((a["f"] > 0).sum()) for _, a in batches)
    return max(1, round(run.model.cfg.d_mlp * active / n / run.n_features))


def neuron_kinds(k):
    """The neurons as units, of any model: as they are, and sparsified to k per token."""
    return {"neurons": lambda h: h, "sparse_neurons": lambda h: sparsify(h, k)}


def measured(cfg, run):
    """Every held-out token reduced, by one streaming pass (lab/measure.py, cached in analysis/measure.pt), to
    what the steps below read, per source of units ("neurons", "sparse_neurons", "F<n>") and per unit:
        m.stats[source].fired (U,), .fired_half (2, U)  tokens on which the unit is > 0 (in each half)
        m.stats[source].sum (U,)    the sum of its activations
        m.stats[source].top[half]   its top contexts in that half: val (U, k) each context's largest activation,
                                    ctx (U, k) the context's id, acts (U, k, context) its activations there
        m.intervals[source][half]   [i]: contexts drawn at random from activation interval i (the same fields,
                                    val a draw's priority); for the neurons, sparse neurons and main SAE only
        m.sparse_k                  the k of the sparsified neurons (matched_k)
        m.proxies (n_tokens, P)     which context predicates (lab/predicates.py) hold on each token"""
    def kinds():   # on a cache miss only: matched_k reads a few thousand tokens
        k = matched_k(run)
        return k, {**neuron_kinds(k), **{f"F{n}": s.sae.encode for n, s in run.saes.items()}}
    return measure.load_or_measure(cfg, run, window_halves(run.n_tokens, run.model.cfg.block_size), kinds)


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
    """The mean next-token loss on windows (B, T + 1) (reading windows[:, :-1], predicting windows[:, 1:]),
    the last layer's MLP activations replaced by replace(acts (B*T, d_mlp)) through the model's MLP hook."""
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
    """The SAE's reconstruction in place of the activations; its squared error, in the SAE's normalised
    units (as sae.py's metrics), into errors[k]."""
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
    """The paper's ultralow-density cluster, if the alive features' log10 densities are bimodal: two
    Gaussians fitted by EM, accepted when between their means the mixture dips below half the lower
    mode's height (a skewed single mode fits two Gaussians too, without a dip), the modes are min_gap
    decades apart (the paper's cluster sits orders of magnitude below the rest) and the lower one holds
    min_share of the features. Returns dict(threshold, members, dip) or None."""
    alive = density > 0
    x = np.log10(density[alive])
    if len(x) < 20:
        return None
    mixture, mu, r = stats.two_gaussians(x)
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
# 3. Features versus neurons: the paper's automated interpretability, made offline. The paper asks Claude to
# explain a unit from its activating examples, to predict its activations on other examples from the
# explanation alone, and correlates prediction and truth. lab/explainer.py stands in for Claude: an
# explanation is the most a lookup table of at most max_entries rows can say, each row a (previous token,
# token) pattern, a token pattern or a context predicate (lab/predicates.py: "inside a comment", "base64",
# ...: the paper's explanations are sentences about contexts) with the mean activation of the tokens it
# matches, plus one "anything else" value: the same size for every kind of unit, so a polysemantic unit is
# penalised exactly as much as it is hard to summarise.

def interpretability(cfg, run, m, dens=None):
    """Score every alive neuron, feature and sparsified neuron of the main SAE by the paper's protocol
    (score_paper). A random sample of each kind, of one size, also scored at every explanation length of SIZES
    and by top-and-random (lab/top_random.py), is what the kinds are compared on: medians and differences with
    95% intervals, per density bin and at matched density (lab/resampling.py). Writes interp.png, units.json."""
    names = {"neurons": "neurons", "features": run.main_name, "sparse_neurons": "sparse_neurons"}
    unit_stats = {kind: m.stats[name] for kind, name in names.items()}
    ultralow = dens[run.n_features]["cluster"] if dens else ultralow_cluster(
        (unit_stats["features"].fired.double() / run.n_tokens).numpy())   # the density step's, when it ran
    kinds = {**neuron_kinds(m.sparse_k), "features": run.main_sae.encode}   # as functions of the MLP's activations
    rng = np.random.default_rng(cfg.seed)         # top-and-random's contexts, then the sample of units
    top_random_pool = measure.random_contexts(run, m, kinds, SCORE, 5 * cfg.score_random, rng, cfg.context)
    protocol_rng = np.random.default_rng([cfg.seed, 1])   # the paper's protocol's random contexts, in each half
    random_pools = [measure.random_contexts(run, m, kinds, half, n, protocol_rng, cfg.context)
                    for half, n in ((EXPLAIN, 50), (SCORE, 200))]   # each: dict(ctx (C,), kind: acts (C, ctx, U))
    text = explainer.held_out(cfg, run, m)
    alone = measure.alone_acts(run.model, text.vocab, kinds)   # every token read alone
    alive_units = {kind: alive(s, ultralow if kind == "features" else None) for kind, s in unit_stats.items()}
    n, sampled = sample(cfg, alive_units, rng)
    results, compare = {}, {}
    for kind, s in unit_stats.items():   # the sample at every explanation length of SIZES, the others at max_entries
        t0, picked = time.time(), alive_units[kind][sampled[kind]]
        intervals = m.intervals[names[kind]]
        score = lambda us, sizes: score_paper(us, s, intervals, [{**p, "acts": p[kind]} for p in random_pools],
                                              alone[kind], text, cfg.max_entries, sizes, cfg.seed)
        compare[kind], rest = score(picked, SIZES), score(np.setdiff1d(alive_units[kind], picked), ())
        top_random.add_scores(compare[kind], s, top_random_pool, kind, text, cfg)
        results[kind] = sorted(compare[kind] + rest, key=lambda r: r["unit"])
        for r in results[kind]:  # the table in words, for the report, the browser and units.json
            r["rows"], r["otherwise"] = explainer.describe(r["explanation"], run.enc, text.vocab)
        print(f"interp: scored {len(alive_units[kind])} alive {kind} in {time.time() - t0:.1f}s")
    d = {kind: s.fired.double().numpy() / run.n_tokens for kind, s in unit_stats.items()}
    comparison = resampling.comparison(compare, results, d, int(text.docs.max()) + 1, cfg.max_entries, SIZES,
                                       cfg.bootstrap, cfg.seed)
    figures.plot_interp(compare, comparison, cfg.max_entries, os.path.join(run.dir, "interp.png"))
    summary.save_units(run, unit_stats, results)
    print(f"interp: median score, features minus neurons {formatting.signed(comparison['median_diff'])}")
    return dict(summary=comparison, compare=compare, all=results, explain=cfg.explain,
                single_token_share=explainer.SINGLE_TOKEN_SHARE, n=n)


def alive(s, ultralow=None):
    """The units explained and scored: active on at least measure.MIN_ACTIVE held-out tokens and in both
    halves; the paper leaves its ultralow-density cluster out of its analysis."""
    ok = (s.fired >= measure.MIN_ACTIVE) & (s.fired_half > 0).all(0)
    if ultralow:
        ok &= torch.from_numpy(~ultralow["members"])
    return ok.nonzero().squeeze(1).numpy()


def sample(cfg, alive_units, rng):
    """(n, {kind: indices into alive_units[kind]}): n alive units of each kind drawn at random (the sparsified
    neurons, drawn last, may have fewer alive: a neuron is rarely among the top k)."""
    n = min(cfg.n_units, len(alive_units["features"]), len(alive_units["neurons"]))
    if n == 0:
        raise UserError("no alive unit fires in both halves of the held-out data: analyse more --tokens")
    sizes = dict(features=n, neurons=n, sparse_neurons=min(cfg.n_units, len(alive_units["sparse_neurons"])))
    return n, {kind: np.sort(rng.choice(len(u), sizes[kind], replace=False)) for kind, u in alive_units.items()}


# The paper's protocol (Bricken et al. 2023): a unit is explained from 49 examples and scored on 60,
# drawn the same way in the two halves: its top contexts, 2 from each of the 12 activation intervals
# below the top one (lab/measure.py's sample_intervals, the rating cards' sampler too), random
# contexts, and its top tokens read out of context. Scoring on top and random contexts alone rewards a
# sparse unit mechanically and never looks at the middle of its range, where a polysemantic unit shows
# its other meanings. The 20 tokens scored alone are the next 20 after the 10 it was explained from.
EXPLAIN_SET = dict(top=10, random=5, tokens=(0, 10))     # + 2 x 12 from the intervals: 49
SCORE_SET = dict(top=6, random=10, tokens=(10, 30))      # + 2 x 12 from the intervals: 60


@dataclasses.dataclass
class Examples:
    """A unit's examples in one half: contexts, and tokens read alone, with its activations there."""
    ctx: np.ndarray          # (C,) context ids
    acts: np.ndarray         # (C, ctx)
    alone: np.ndarray        # (A,) token ids
    alone_acts: np.ndarray   # (A,)


def paper_examples(u, counts, top, intervals, pool, alone, order, rng):
    """Unit u's examples in one half (counts: EXPLAIN_SET or SCORE_SET), from the half's top contexts, its
    intervals' samples (measure.stack_intervals), a pool of random contexts (measure.random_contexts) and every
    token's activations alone (alone (vocab, U); order: the tokens by them, largest first)."""
    keep = top.val[u] > 0
    ids, acts = top.ctx[u][keep][:counts["top"]].numpy(), top.acts[u][keep][:counts["top"]].numpy()
    # an interval's slot holds a draw where its priority (val) is finite; an empty interval leaves it at -inf
    filled = (intervals.val[u] > -float("inf")).numpy() & ~np.isin(intervals.ctx[u].numpy(), ids)
    ids = np.append(ids, intervals.ctx[u].numpy()[filled])
    acts = np.concatenate([acts, intervals.acts[u].numpy()[filled]])
    free = np.flatnonzero(~np.isin(pool["ctx"], ids))
    pick = rng.choice(free, min(counts["random"], len(free)), replace=False)
    tokens = order[counts["tokens"][0]:counts["tokens"][1], u]
    return Examples(np.append(ids, pool["ctx"][pick]), np.concatenate([acts, pool["acts"][pick, :, u]]),
                    tokens, alone[tokens, u])


def positions(ex, text):
    """(prev, tokens, labels, activations, context of each position (-1: a token alone)) of examples."""
    prev, cur, labels = (np.concatenate(parts) for parts in zip(text.at(ex.ctx), text.alone(ex.alone)))
    where = np.append(np.repeat(np.arange(len(ex.ctx)), text.ctx), np.full(len(ex.alone), -1))
    return prev, cur, labels, np.append(ex.acts.ravel(), ex.alone_acts).astype(np.float64), where


def score_paper(units, unit_stats, intervals, pools, alone, text, max_entries, sizes=(), seed=0):
    """The paper's protocol, per unit: explained from its EXPLAIN-half examples, scored on its SCORE-half
    ones by the Pearson correlation of simulated and true activations (and detected, lab/detection.py),
    also with another unit's explanation (the control: the previous unit's). The paper correlates ranks
    (Spearman's, reported beside); Pearson's follows from per-context sums, so the intervals can resample
    documents (lab/resampling.py). intervals, pools: per half; alone (vocab, U): every token read alone."""
    alone = alone.clone().numpy()
    alone[text.eot] = -np.inf                       # the end of text is no token to read alone
    order = np.argsort(-alone, axis=0, kind="stable")
    alone[text.eot] = 0
    lengths, intervals = sorted({max_entries, *sizes}), [measure.stack_intervals(half) for half in intervals]
    out = [score_one(u, unit_stats, intervals, pools, alone, order, text, lengths, max_entries, seed) for u in units]
    for r, other in zip(out, out[-1:] + out[:-1]):
        scored, silent = r.pop("examples")
        sums = context_sums(other["explanation"], positions(scored, text), text)
        r["control"] = stats.pearson_from_sums(sums.sum(0))
        r["detect_control"] = detection.detect(other["explanation"], scored, silent, text)
        r["detection"] = stats.balanced_accuracy(r["detect"])
    return out


def score_one(u, unit_stats, intervals, pools, alone, order, text, lengths, max_entries, seed):
    """score_paper for one unit, without the control (its examples are kept for it); per explanation length,
    the context_sums of the scored contexts, whose documents (docs) lab/resampling.py resamples."""
    rng = np.random.default_rng([seed, int(u)])
    ex, sc = (paper_examples(u, counts, unit_stats.top[h], intervals[h], pools[h], alone, order, rng)
              for counts, h in ((EXPLAIN_SET, EXPLAIN), (SCORE_SET, SCORE)))
    silent = detection.silent_contexts(u, pools[SCORE], rng)
    prev, cur, labels, acts, _ = positions(ex, text)
    longest = explainer.explain(prev, cur, labels, acts, lengths[-1], text.vocab)
    tables = {e: explainer.table(longest["order"][:e], prev, cur, labels, acts, text.vocab) for e in lengths}
    expl, scored_at = tables[max_entries], positions(sc, text)   # read once: every length's sums, Spearman's
    sums = {e: context_sums(t, scored_at, text) for e, t in tables.items()}
    sums["score"] = sums[max_entries]
    simulated = explainer.simulate(expl, *scored_at[:3], text.vocab)
    return dict(unit=int(u), explanation=expl, score=stats.pearson_from_sums(sums["score"].sum(0)),
                by_size={e: stats.pearson_from_sums(sums[e].sum(0)) for e in lengths},
                spearman=stats.spearman(simulated, scored_at[3]), sums=sums,
                docs=np.append(-1, text.docs[sc.ctx * text.ctx]), detect=detection.detect(expl, sc, silent, text),
                examples=(sc, silent), single_token=explainer.single_token(unit_stats.top[EXPLAIN], u, text))


def context_sums(expl, at, text):
    """(C + 1, 6): per context of the examples (at: their positions(); row 0: the tokens alone), the sums
    n, s, t, s^2, t^2, st of the simulation s and truth t: a correlation over any reweighting follows."""
    prev, cur, labels, t, where = at
    sim = explainer.simulate(expl, prev, cur, labels, text.vocab)
    cols = (np.ones_like(t), sim, t, sim * sim, t * t, sim * t)
    return np.stack([np.bincount(where + 1, c, minlength=int(where.max(initial=-1)) + 2) for c in cols], 1)


if __name__ == "__main__":
    run_main(main)
