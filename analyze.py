"""analyze.py: the paper's evidence, measured on held-out text: are features better units than neurons?

    python analyze.py                  # everything: out/analysis/report.md, its figures, the feature browser
    python analyze.py interp           # one step: losses, density, interp or specificity
    python analyze.py browse --features 12 40    # the feature browser for some units (lab/browser.py)
    python analyze.py steer --feature N --value V --prompt "..."   # steer the model (lab/steer.py)
    python analyze.py rate             # a deck of units to rate blind (lab/rate.py); then, with the files it gives:
    python analyze.py ratings FILE...  # unblind: features against neurons, by people (lab/ratings.py)

Reads the LM, every SAE (<out>/<sae-dir>/F<n>/ckpt.pt) and the held-out tokens, and measures, in the
paper's terms:

  1. reconstruction, and the loss recovered when the SAE's reconstruction replaces the MLP's activations;
  2. feature density: how often each feature fires, the dead ones and an ultralow-density cluster;
  3. features versus neurons: a lexical explain-then-simulate interpretability score, the same for both,
     and the same at matched density: against the neurons sparsified to the features' density
     (lab/measure.py's sparsify) and within bins of density (matched_difference);
  4. grounded in the model: does a unit's effect on the logits agree with what follows where it fires?

First, one streaming pass (lab/measure.py) reduces every held-out token's activations to per-unit
counts, sums and top-activating contexts (cached in analysis/measure.pt). Around the evidence, the lab
adds one call each: activation specificity (with the paper's precision per activation level), the
feature browser, the steering table, the grounding score's machinery (lab/grounding.py) and the report.
"""
import lab  # first, before torch loads: lab/__init__.py lets waiting OpenMP threads sleep

import dataclasses
import os
import sys
import time

import numpy as np
import torch

import data
from lab import browser, grounding, rate, ratings, report, specificity, steer
from lab.measure import EXPLAIN, MIN_ACTIVE, SCORE, load_or_measure, load_run, sparsify
from lab.predicates import PREDICATES
from lab.stats import bootstrap, median_difference
from lab.plumbing import UserError, arg, fmt_eta, parse_config, parse_configs, run_main
from model import harvest

SINGLE_TOKEN_SHARE = 0.8      # a unit is "single-token" when one token carries this much of its activation
SIZES = (1, 2, 3, 5, 10, 20)  # explanation lengths (table rows) the interpretability curve is drawn at
STEPS = ["all", "losses", "density", "interp", "specificity", "grounding"]
TOOLS = {"browse": browser, "steer": steer}
RATING = {"rate": rate, "ratings": ratings}   # the blind rating: its deck, then its unblinding (given this config)


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
        if self.explain not in ("tokens", "contexts"):
            raise UserError(f"--explain {self.explain}: use tokens or contexts")
        for name in ("n_units", "explain_contexts", "score_top", "max_entries", "bootstrap", "loss_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    steps = STEPS + list(TOOLS) + list(RATING)
    if len(argv) > 1 and argv[0].startswith("-") and argv[-1] in steps:
        argv.insert(0, argv.pop())   # the step after the flags (python analyze.py --out X density)
    step = argv.pop(0) if argv and not argv[0].startswith("-") else "all"
    if step in TOOLS:  # the lab's two tools, with flags of their own (python analyze.py browse --help)
        tool = TOOLS[step]
        cfg, tool_cfg = parse_configs([AnalyzeConfig, tool.Config], argv, tool.__doc__.split("\n\n")[0])
        run = load_run(cfg)
        return tool.main(tool_cfg, run, lambda: (load_or_measure(cfg, run), report.load_units(cfg, run)))
    if step in RATING:   # (ratings FILE... [flags]: the files are the --files flag's)
        cfg, tool_cfg = parse_configs([AnalyzeConfig, RATING[step].Config], ["--files", *argv] if step == "ratings"
                                      else argv, RATING[step].__doc__.split("\n\n")[0])
        return RATING[step].main(tool_cfg, cfg)
    if step not in STEPS:
        raise UserError(f"unknown step {step!r}: use one of {', '.join(steps)} (or none: all)")
    cfg = parse_config(AnalyzeConfig, argv, description=__doc__.split("\n\n")[0] + " Usage: python analyze.py "
                       f"[{'|'.join(steps)}] [flags]; no step: all of them and the report.")
    analyze(cfg, step)


def analyze(cfg, step="all"):
    """Run one step (or all of them and the report); returns the results dict."""
    t0 = time.time()
    run = load_run(cfg)
    m = load_or_measure(cfg, run)
    res = {"measure": m}
    if step in ("all", "losses"):
        res["losses"] = reconstruction(cfg, run, m)
    if step in ("all", "density"):
        res["density"] = density(run, m)
    if step in ("all", "interp"):
        res["interp"] = interpretability(cfg, run, m, res.get("density"))
    if step in ("all", "specificity"):
        res["specificity"] = specificity.specificity(run, m)
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
    MLP zero-ablated (the paper's) and mean-ablated (every neuron at its held-out mean)."""
    n, neurons = run.n_tokens, m.stats["neurons"]
    mean = (neurons.sum / n).float().to(run.device)
    moments = {"n": 0, "sum": 0.0, "sumsq": 0.0}
    errors = {k: 0.0 for k in run.saes}

    def clean(h):  # reads the activations: their spread is FVU's denominator
        moments["n"] += len(h)
        moments["sum"] = moments["sum"] + h.double().sum(0)
        moments["sumsq"] = moments["sumsq"] + h.double().square().sum(0)
        return h

    def spliced(k, sae):
        def fn(h):
            x_hat = sae(h)[0]
            errors[k] += ((x_hat - h) * sae.act_scale).double().square().sum().item()
            return x_hat
        return fn

    replacements = {"clean": clean, "zero": lambda h: torch.zeros_like(h), "mean": lambda h: mean.expand_as(h),
                    **{k: spliced(k, s.sae) for k, s in run.saes.items()}}
    loss = lm_losses(run.model, run.tokens, min(cfg.loss_tokens, n - 1), replacements)
    spread = (moments["sumsq"] - moments["sum"] ** 2 / moments["n"]).sum().item()
    d_mlp = run.model.cfg.d_mlp
    rows = [dict(name="neurons", units=d_mlp, mse=0.0, fvu=0.0, loss=loss["clean"], rec_zero=1.0, rec_mean=1.0,
                 **firing(neurons, n))]
    for k, s in run.saes.items():
        rows.append(dict(name=f"F{k}", units=k, mse=errors[k] / (moments["n"] * d_mlp),
                         fvu=errors[k] / (s.sae.act_scale.item() ** 2 * spread), loss=loss[k],
                         rec_zero=recovered(loss["zero"], loss[k], loss["clean"]),
                         rec_mean=recovered(loss["mean"], loss[k], loss["clean"]), **firing(m.stats[f"F{k}"], n)))
        print(f"losses: F{k} spliced in: {loss[k]:.4f} (clean {loss['clean']:.4f}, MLP zero-ablated "
              f"{loss['zero']:.4f}, mean-ablated {loss['mean']:.4f}): {100 * rows[-1]['rec_zero']:.1f}% of the loss "
              f"recovered ({100 * rows[-1]['rec_mean']:.1f}% against mean ablation); FVU {rows[-1]['fvu']:.3f}, "
              f"L0 {rows[-1]['l0']:.1f}")
    return dict(rows=rows, clean=loss["clean"], zero=loss["zero"], mean=loss["mean"], loss_tokens=moments["n"])


def firing(s, n):
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
        note = (f"ultralow cluster of {members.sum()} below density {cluster['threshold']:.1e}"
                if cluster else "no separate ultralow-density cluster")
        print(f"density: F{k}: {out[k]['dead']} dead of {k} on {run.n_tokens:,} held-out tokens; {note}")
    report.plot_density(out, run.n_tokens, os.path.join(run.dir, "density.png"))
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
    mu, sd, w = np.percentile(x, [10, 90]), np.full(2, x.std() / 2 + 1e-3), np.full(2, 0.5)
    mixture = lambda t: w / sd * np.exp(-0.5 * ((np.asarray(t)[:, None] - mu) / sd) ** 2)  # (len(t), 2)
    for _ in range(300):
        p = mixture(x) + 1e-300
        r = p / p.sum(1, keepdims=True)
        w = r.mean(0)
        mu = (r * x[:, None]).sum(0) / r.sum(0)
        sd = np.sqrt((r * (x[:, None] - mu) ** 2).sum(0) / r.sum(0)).clip(min=0.05)
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
# 3. Features versus neurons on interpretability (the lexical explain-then-simulate score)


def interpretability(cfg, run, m, dens=None):
    """Score every alive neuron and feature of the main SAE; compare a random sample of the same
    size of each kind; writes interp.png and units.json (every unit's explanation and score)."""
    stats = {"neurons": m.stats["neurons"], "features": m.stats[run.main_name],
             "sparse_neurons": m.stats["sparse_neurons"]}
    ultralow = (dens or {}).get(run.main, {}).get("cluster") or ultralow_cluster(
        (stats["features"].fired.double() / run.n_tokens).numpy())
    rng = np.random.default_rng(cfg.seed)
    # the random SCORE-half contexts every unit is also scored on, recomputed for all units at once
    ctx = cfg.context
    score_ctx = np.flatnonzero(m.halves[::ctx] == SCORE)
    pool_ids = np.sort(rng.choice(score_ctx, min(len(score_ctx), 5 * cfg.score_random), replace=False))
    pool_acts = context_acts(run.model, run.tokens, pool_ids, ctx, {
        "neurons": lambda h: h, "features": run.main_sae.encode, "sparse_neurons": lambda h: sparsify(h, m.sparse_k)})
    prev = np.concatenate([[run.meta["eot"]], run.tokens[:-1]])
    # the predicates a row may name, the same for every unit ("tokens": none, token patterns only)
    labels = m.proxies if cfg.explain == "contexts" else m.proxies[:, :0]
    units, results = {}, {}
    for kind, s in stats.items():
        ok = (s.fired >= MIN_ACTIVE) & (s.fired_half > 0).all(0)
        if kind == "features" and ultralow:   # the paper leaves the ultralow cluster out of its analysis
            ok &= torch.from_numpy(~ultralow["members"])
        units[kind] = ok.nonzero().squeeze(1).numpy()
        t0 = time.time()
        results[kind] = score_units(units[kind], s, dict(ctx=pool_ids, acts=pool_acts[kind]), run.tokens, prev,
                                    labels, run.meta["vocab_size"], ctx, cfg.score_top, cfg.score_random,
                                    cfg.max_entries, SIZES, cfg.seed)
        for r in results[kind]:  # the table in words, for the report, the browser and units.json
            r["rows"], r["otherwise"] = describe(r["explanation"], run.enc, run.meta["vocab_size"])
        print(f"interp: scored {len(units[kind])} alive {kind} in {time.time() - t0:.1f}s")
    n = min(cfg.n_units, len(units["features"]), len(units["neurons"]))
    if n == 0:
        raise UserError("no alive unit fires in both halves of the held-out data: analyse more --tokens")
    # the sparsified neurons are drawn after the two kinds the comparison has always drawn, so adding
    # them changed neither sample; fewer of them may be alive (a neuron rarely among the top k)
    sizes = dict(features=n, neurons=n, sparse_neurons=min(cfg.n_units, len(units["sparse_neurons"])))
    sample = {kind: sorted(rng.choice(len(r), sizes[kind], replace=False)) for kind, r in results.items()}
    compare = {kind: [results[kind][i] for i in idx] for kind, idx in sample.items()}
    summary = summarize(compare, cfg)
    summary["by_density"] = by_density(results, stats, run.n_tokens)
    density = {kind: stats[kind].fired.double().numpy() / run.n_tokens for kind in stats}
    summary["matched"] = {other: matched_difference(results["features"], results[other], density["features"],
                                                    density[other], cfg.bootstrap, cfg.seed)
                          for other in ("neurons", "sparse_neurons")}
    report.plot_interp(compare, summary, cfg.max_entries, os.path.join(run.dir, "interp.png"))
    report.save_units(run, stats, results)
    d = summary["median_diff"]
    print(f"interp: median score, features {summary['features']['all']['median']:.3f} vs neurons "
          f"{summary['neurons']['all']['median']:.3f}: {d['value']:+.3f} [95% CI {d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"
          f" ({n} of each, {cfg.max_entries}-row explanations)")
    return dict(summary=summary, compare=compare, all=results, n=n, explain=cfg.explain,
                single_token_share=SINGLE_TOKEN_SHARE)


def summarize(compare, cfg):
    """Means and medians with bootstrap intervals, overall and without single-token units, and the
    medians' difference, features minus neurons, at every explanation length."""
    ci = lambda x, stat=np.median: bootstrap(stat, [x], cfg.bootstrap, np.random.default_rng(cfg.seed))
    diff = lambda a, b: median_difference(a, b, cfg.bootstrap, cfg.seed)
    out = {}
    for kind, rs in compare.items():
        scores = np.array([r["score"] for r in rs])
        single = np.array([r["single_token"] for r in rs])
        row = dict(n=len(scores), single=int(single.sum()))
        for part, x in (("all", scores), ("multi", scores[~single])):
            if len(x):
                row[part] = dict(mean=float(x.mean()), median=float(np.median(x)), mean_ci=ci(x, np.mean),
                                 median_ci=ci(x))
        out[kind] = row
    scores = lambda kind, e=None: np.array([r["score"] if e is None else r["by_size"][e] for r in compare[kind]])
    out["median_diff"] = diff(scores("features"), scores("neurons"))
    out["median_diff_sparse"] = (diff(scores("features"), scores("sparse_neurons")) if compare.get("sparse_neurons")
                                 else None)
    multi = {kind: np.array([r["score"] for r in rs if not r["single_token"]]) for kind, rs in compare.items()}
    out["median_diff_multi"] = diff(multi["features"], multi["neurons"]) if all(map(len, multi.values())) else None
    # the same comparison with explanations of every length: a long enough table lists a
    # polysemantic unit's meanings one by one, so the gap should shrink as tables grow
    out["by_size"] = {e: {**{kind: float(np.median(scores(kind, e))) for kind in compare if compare[kind]},
                          **{kind + "_ci": ci(scores(kind, e)) for kind in compare if compare[kind]},
                          "diff": diff(scores("features", e), scores("neurons", e))} for e in SIZES}
    return out


@torch.no_grad()
def context_acts(model, tokens, ids, ctx, sources):
    """{name: (len(ids), ctx, U)}: the activations at the given contexts, each recomputed inside
    its own LM window (the same numbers the streaming pass saw)."""
    T = model.cfg.block_size
    windows = np.unique(ids * ctx // T)
    h = torch.cat([harvest(model, tokens[w * T:(w + 1) * T], T, device=model.unembed.weight.device)[0]
                   for w in windows])
    rows = torch.from_numpy((np.searchsorted(windows, ids * ctx // T) * T + ids * ctx % T)[:, None]
                            + np.arange(ctx))
    return {name: fn(h)[rows.to(h.device)].float().cpu() for name, fn in sources.items()}


# ----------------------------------------------------------------------------------------------
# The lexical explain-then-simulate score (the paper's automated interpretability, made offline).
# The paper asks Claude to explain a unit from its activating examples and to predict activations
# on other examples from the explanation alone, then correlates prediction and truth. With no
# language model at hand, an "explanation" is the most a short lookup table can say: up to
# max_entries rows, each a (previous token, token) pattern, a token pattern or a context predicate
# (PREDICATES: "inside a comment", "base64", ...; the paper's explanations are sentences about
# contexts, and a table of tokens alone would favour single-token detectors), with the mean
# activation of the tokens it matches, plus one "anything else" value. The table's size is the same
# for every kind of unit, so a polysemantic unit is penalised exactly as much as it is hard to
# summarise. Rows are keys: prev * vocab + token for a pair (below vocab**2), vocab**2 + token for a
# token, context_key(p) for predicate p (after both). labels: (m, P) bool, which predicates hold on
# each token; with P = 0 columns, rows are token patterns only (AnalyzeConfig.explain = "tokens").


def context_key(p, vocab):
    """The explanation key of predicate p (an index into PREDICATES)."""
    return vocab * (vocab + 1) + p


def explain(prev, cur, labels, acts, max_entries, vocab):
    """Explain a unit from tokens (prev, cur) with predicate labels and activations acts. Rows are
    chosen greedily, each time the pattern that most reduces the squared error of the simulation
    (sum of residuals over the tokens it matches, squared, over their count), so a pattern that an
    earlier row already predicts well is not spent a row on. A token counts towards its pair key, its
    token key and every predicate that holds on it. A row's value is the mean activation of the tokens
    it explains (match's precedence); everything else gets the mean of the tokens no row matches.
    Returns table()'s dict plus order, the patterns in the order chosen: table(order[:e], ...) is the
    best explanation of e rows."""
    acts = np.asarray(acts, np.float64)
    held, p = np.nonzero(labels)                                  # each (token, predicate) that holds
    owner = np.concatenate([np.arange(len(cur)), np.arange(len(cur)), held])   # the token behind each candidate
    keys, inverse = np.unique(np.concatenate([prev * vocab + cur, vocab * vocab + cur, context_key(p, vocab)]),
                              return_inverse=True)
    count = np.bincount(inverse)
    order = np.zeros(0, np.int64)
    expl = table(order, prev, cur, labels, acts, vocab)
    for _ in range(max_entries):
        residual = (acts - simulate(expl, prev, cur, labels, vocab))[owner]
        gain = np.bincount(inverse, residual) ** 2 / count
        gain[np.isin(keys, order)] = -1
        if len(gain) == 0 or gain.max() <= 1e-12:
            break
        order = np.append(order, keys[gain.argmax()])
        expl = table(order, prev, cur, labels, acts, vocab)
    return dict(expl, order=order)


def table(keys, prev, cur, labels, acts, vocab):
    """The explanation with rows keys: each row's value is the mean activation of the tokens it
    matches; a row that matches nothing (every match taken by a row of higher precedence) is dropped."""
    keys = np.sort(keys)
    row = match(keys, prev, cur, labels, vocab)
    counts = np.bincount(row + 1, minlength=len(keys) + 1)      # slot 0: "anything else"
    sums = np.bincount(row + 1, acts, minlength=len(keys) + 1)
    kept = counts[1:] > 0
    default = sums[0] / counts[0] if counts[0] else 0.0
    return dict(keys=keys[kept], values=sums[1:][kept] / counts[1:][kept], counts=counts[1:][kept],
                default=float(default))


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
    for k in (vocab * vocab + cur, prev * vocab + cur):          # token rows, then (prev, token) rows win
        i = np.searchsorted(keys, k).clip(max=len(keys) - 1)
        hit = keys[i] == k
        row[hit] = i[hit]
    return row


def simulate(expl, prev, cur, labels, vocab):
    """The activations an explanation predicts for tokens (prev, cur) with predicate labels."""
    row = match(expl["keys"], prev, cur, labels, vocab)
    return np.append(expl["values"], expl["default"])[row]     # row -1: the "anything else" value


def score_units(units, stats, pool, tokens, prev_tokens, labels, vocab, ctx, n_top, n_random, max_entries,
                sizes=(), seed=0):
    """Explain each unit from its top contexts in the EXPLAIN half, simulate it on n_top top
    contexts and n_random random contexts of the SCORE half (the paper's "top-and-random"
    scoring), and return per unit: score (Pearson r), explanation (at most max_entries rows),
    by_size {e: r with the explanation cut to e rows, for e in sizes}, and single_token (one
    token carries SINGLE_TOKEN_SHARE of the activation in the explanation contexts: the paper
    reports those separately, as a random-weights model has many and they are trivial to simulate).
    stats: the units' UnitStats; pool: dict(ctx (Q,) ids of random SCORE-half contexts, acts (Q, ctx,
    U)); tokens and prev_tokens: numpy arrays of each held-out token and of the one before it;
    labels: (n_tokens, P) bool, the predicates an explanation may name on each held-out token (P = 0:
    token patterns only). Every unit, feature or neuron, is explained from the same labels."""
    top_e, top_s = stats.top[EXPLAIN], stats.top[SCORE]
    positions = lambda ids: (np.asarray(ids)[:, None] * ctx + np.arange(ctx)).ravel()
    out = []
    for u in units:
        keep = top_e.val[u] > 0
        pos = positions(top_e.ctx[u][keep])
        prev_e, cur_e, lab_e, a_e = prev_tokens[pos], tokens[pos], labels[pos], top_e.acts[u][keep].numpy().ravel()
        longest = explain(prev_e, cur_e, lab_e, a_e, max([max_entries, *sizes]), vocab)
        cut = lambda e: table(longest["order"][:e], prev_e, cur_e, lab_e, a_e, vocab)
        share = np.bincount(cur_e, weights=a_e).max() / a_e.sum() if a_e.sum() > 0 else 0.0
        keep = top_s.val[u] > 0
        ids_top = top_s.ctx[u][keep][:n_top].numpy()
        free = np.flatnonzero(~np.isin(pool["ctx"], ids_top))       # random contexts not in the top ones
        pick = np.random.default_rng([seed, int(u)]).choice(free, min(n_random, len(free)), replace=False)
        truth = np.concatenate([top_s.acts[u][keep][:n_top].numpy().ravel(),
                                pool["acts"][pick, :, u].numpy().ravel()])
        pos = positions(np.concatenate([ids_top, pool["ctx"][pick]]))
        score = lambda expl: pearson(simulate(expl, prev_tokens[pos], tokens[pos], labels[pos], vocab), truth)
        expl = cut(max_entries)
        out.append(dict(unit=int(u), score=score(expl), explanation=expl, by_size={e: score(cut(e)) for e in sizes},
                        single_token=bool(share >= SINGLE_TOKEN_SHARE)))
    return out


def by_density(results, stats, n_tokens, edges=(1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)):
    """Median score of every scored unit per decade of density: units that fire rarely leave few
    examples to explain from, so density alone moves the score; comparing kinds within a decade
    takes that out."""
    out = []
    for lo, hi in zip(edges, edges[1:]):
        row = dict(lo=lo, hi=hi)
        for kind, rs in results.items():
            d = stats[kind].fired.double().numpy() / n_tokens
            x = [r["score"] for r in rs if lo <= d[r["unit"]] < hi]
            row[kind] = (len(x), float(np.median(x)) if x else None)
        out.append(row)
    return out


def matched_difference(a, b, density_a, density_b, n=1000, seed=0, min_units=10):
    """Features (a) minus another kind (b) at matched density, a protocol fixed before any result
    was seen: every scored unit falls in a bin of half a decade of density (a unit's score falls
    with its density, and within a whole decade density still varies tenfold); in every bin with at
    least min_units of each kind (so that a median is not one unit's), the difference of the two
    medians; those averaged, each bin weighted by the smaller of its two counts (the units that
    can be matched there). a, b: score_units' results; density_*: (U,) each unit's density. Returns
    dict(value, ci (95%, units of each kind resampled with replacement), bins: [(lo, n_a, n_b, diff)])."""
    def parts(rs, d):
        units = np.array([r["unit"] for r in rs], dtype=np.int64)
        return np.array([r["score"] for r in rs]), np.floor(2 * np.log10(np.maximum(d[units], 1e-12))).astype(int)

    def weighted(xa, ba, xb, bb):   # -> (the weighted difference, its bins)
        rows = []
        for b in np.intersect1d(ba, bb):
            x, y = xa[ba == b], xb[bb == b]
            if min(len(x), len(y)) >= min_units:
                rows.append((10 ** (b / 2), len(x), len(y), float(np.median(x) - np.median(y))))
        if not rows:
            return float("nan"), rows
        return float(np.average([r[3] for r in rows], weights=[min(r[1], r[2]) for r in rows])), rows

    (xa, ba), (xb, bb) = parts(a, density_a), parts(b, density_b)
    value, bins = weighted(xa, ba, xb, bb)
    resampled = lambda i, j: weighted(xa[i], ba[i], xb[j], bb[j])[0]   # i, j: the units drawn of each kind
    ci = bootstrap(resampled, [np.arange(len(xa)), np.arange(len(xb))], n, np.random.default_rng(seed))
    return dict(value=value, ci=(value, value) if np.isnan(ci[0]) else ci, bins=bins)


def pearson(a, b):
    """Pearson correlation of two 1-D arrays; 0 where either is constant (no information)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2:
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def describe(expl, enc, vocab):
    """An explanation table as rows of readable patterns, strongest first: a (previous token, token)
    pattern, a token pattern (prev None) or a context predicate (context: its name; prev and token None)."""
    text = lambda t: enc.decode_single_token_bytes(int(t)).decode("utf-8", "replace")
    rows = []
    for key, value, count in zip(expl["keys"].tolist(), expl["values"], expl["counts"]):
        if key >= context_key(0, vocab):
            row = dict(prev=None, token=None, context=PREDICATES[key - context_key(0, vocab)])
        else:
            prev, cur = divmod(key, vocab)
            row = dict(prev=None if prev == vocab else text(prev), token=text(cur), context=None)
        rows.append(dict(row, value=round(float(value), 4), count=int(count)))
    return sorted(rows, key=lambda r: -r["value"]), round(expl["default"], 4)


# ----------------------------------------------------------------------------------------------
# 4. Grounded in the model: does a unit's effect on the output agree with where it fires?


def grounded(cfg, run, m):
    """The paper's logit-weight argument as a score (lab/grounding.py): per alive unit, the correlation
    of its logit effects with how much more often each token follows where it fires. Medians with
    95% intervals (units resampled) for features, neurons and sparsified neurons, of this model and
    of the random-weights control, beside the null (each unit against another unit's effects)."""
    t0 = time.time()
    g = grounding.measure_grounding(cfg.out, run, m)
    ci = lambda x: bootstrap(np.median, [x], cfg.bootstrap, np.random.default_rng(cfg.seed)) if len(x) else (
        float("nan"),) * 2
    summary = {part: {kind: dict(n=len(r["scores"]), median=float(np.median(r["scores"])) if len(r["scores"]) else None,
                                 ci=ci(r["scores"]), null=float(np.median(r["null"])) if len(r["null"]) else None)
                      for kind, r in g[part].items()} for part in ("model", "control")}
    x = {kind: r["scores"] for kind, r in g["model"].items()}
    summary["diff"] = {other: median_difference(x["features"], x[other], cfg.bootstrap, cfg.seed)
                       for other in ("neurons", "sparse_neurons")}
    s = summary["model"]
    print(f"grounding: median correlation of logit effects with next-token lift: features {s['features']['median']:.3f}"
          f", neurons {s['neurons']['median']:.3f}, sparsified neurons {s['sparse_neurons']['median']:.3f}; random-"
          f"weights control's neurons {summary['control']['neurons']['median']:.3f} ({time.time() - t0:.1f}s)")
    return dict(summary=summary, units=g, control_from=g["control_from"], control_tokens=g["control_tokens"])



if __name__ == "__main__":
    run_main(main)
