"""analyze.py: the paper's evidence, measured on held-out text: are features better units than neurons?

    python analyze.py                  # everything: writes out/analysis/report.md and its figures
    python analyze.py interp           # one step: losses, density, interp or specificity
    python analyze.py --out /tmp/run   # another run's outputs
    python analyze.py browse           # only the feature browser (lab/browser.py; its flags: browse --help)
    python analyze.py steer --feature N --value V --prompt "..."   # steering (lab/steer.py)

Reads the LM (<out>/<lm-dir>/), every SAE checkpoint (<out>/<sae-dir>/F<n>/ckpt.pt) and the held-out
tokens (<out>/data/val.bin), and measures, in the paper's terms:

  1. reconstruction: MSE, FVU, L0, dead and dense features, and the loss recovered when the SAE's
     reconstruction replaces the MLP activations, against zero- and mean-ablating them;
  2. feature density: the histogram of log10 firing frequencies, dead and ultralow features;
  3. interpretability, features versus neurons: a lexical explain-then-simulate score (lab/interp.py);
  4. activation specificity: the features and neurons that detect each context predicate (inside a
     comment, base64, a URL, ...): precision and recall, the specialists' union, Pearson r.

One streaming pass (interp.measure) reduces a million tokens of activations to counts, sums and
running top-k contexts; it is cached in analysis/measure.pt, so a single step reruns in seconds.
"""
import dataclasses
import os
import sys
import time

import numpy as np
import torch
from matplotlib.figure import Figure

from lab import browser
import data
from lab import interp
from lab import steer
from lab.plumbing import UserError, fmt_eta, parse_config, run_main
from lab.interp import MIN_ACTIVE, SIZES
from lab.measured import AnalyzeConfig, load_or_measure, load_run, save_units
from lab.report import (interp_markdown, losses_markdown, precision_recall_markdown, specificity_markdown,
                    write_report, write_summary)

STEPS = ["all", "losses", "density", "interp", "specificity", "browse", "steer"]


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    step = argv.pop(0) if argv and not argv[0].startswith("-") else "all"
    if step not in STEPS:
        raise UserError(f"unknown step {step!r}: use one of {', '.join(STEPS)} (or none: all)")
    if step in ("browse", "steer"):  # their own flags
        return (browser if step == "browse" else steer).main(argv)
    cfg = parse_config(AnalyzeConfig, argv, description=__doc__.split("\n\n")[0] + " Usage: python analyze.py "
                       f"[{'|'.join(STEPS)}] [flags]; no step: all of them and the report.")
    analyze(cfg, step)


def analyze(cfg, step="all"):
    """Run one step (or all and the report); returns the results dict."""
    t0 = time.time()
    run = load_run(cfg)
    os.makedirs(run.dir, exist_ok=True)
    res = {"measure": load_or_measure(cfg, run)}
    if step in ("all", "losses"):
        res["losses"] = reconstruction(cfg, run, res["measure"])
    if step in ("all", "density"):
        res["density"] = density(cfg, run, res["measure"])
    if step in ("all", "interp"):
        res["interp"] = interpretability(cfg, run, res["measure"], res.get("density"))
    if step in ("all", "specificity"):
        res["specificity"] = specificity(cfg, run, res["measure"])
    if step == "all":  # both read units.json, written by the interp step
        res["browser"] = browser.write_browser(browser.BrowseConfig(**dataclasses.asdict(cfg)), run, res["measure"])
        res["steering"] = steer.measure_steering(steer.SteerConfig(**dataclasses.asdict(cfg)), run, res["measure"])
    res["seconds"] = time.time() - t0
    if step == "all":
        path = write_report(cfg, run, res)
        write_summary(run, res)
        print(f"report: {path} ({fmt_eta(res['seconds'])})")
    return res


# ----------------------------------------------------------------------------------------------
# 1. Reconstruction and loss recovered (the paper: 79% for A/1, against zero ablation)


@torch.no_grad()
def lm_losses(model, tokens, n_tokens, replacements, batch=32):
    """Mean next-token loss on windows spread evenly over tokens, once per replacement of the last
    layer's MLP activations: {name: fn(acts (N, d_mlp)) -> acts (N, d_mlp)}."""
    T, last = model.cfg.block_size, len(model.blocks) - 1
    starts = np.linspace(0, len(tokens) - T - 1, max(1, n_tokens // T)).astype(np.int64)
    total = dict.fromkeys(replacements, 0.0)
    device = model.unembed.weight.device
    for i in range(0, len(starts), batch):
        w = data.windows(tokens, starts[i:i + batch], T + 1, device)
        for name, fn in replacements.items():
            hook = lambda layer, h, fn=fn: fn(h.flatten(0, 1)).view_as(h) if layer == last else h
            total[name] += model(w[:, :-1], w[:, 1:], mlp_hook=hook)[1].item() * len(w)
    return {name: t / len(starts) for name, t in total.items()}


def recovered(ablated, replaced, clean):
    """Loss recovered: 1 at the clean loss, 0 at the ablated one (the paper's definition)."""
    return (ablated - replaced) / (ablated - clean)


def reconstruction(cfg, run, m):
    """Per SAE: MSE and FVU (on the loss windows), L0, dead and dense fractions (all held-out tokens),
    losses with its reconstruction spliced in, and the loss recovered against both ablations."""
    n = run.n_tokens
    neurons = m.stats["neurons"]
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
        scale2 = s.sae.act_scale.item() ** 2
        rows.append(dict(name=f"F{k}", units=k, mse=errors[k] / (moments["n"] * d_mlp),
                         fvu=errors[k] / (scale2 * spread), loss=loss[k],
                         rec_zero=recovered(loss["zero"], loss[k], loss["clean"]),
                         rec_mean=recovered(loss["mean"], loss[k], loss["clean"]), **firing(m.stats[f"F{k}"], n)))
    out = dict(rows=rows, clean=loss["clean"], zero=loss["zero"], mean=loss["mean"], loss_tokens=moments["n"])
    print(losses_markdown(out))
    return out


def firing(s, n):
    density = s.fired.double() / n
    return dict(l0=float(s.fired.sum()) / n, dead=int((density == 0).sum()), dense=int((density > 0.1).sum()))


# ----------------------------------------------------------------------------------------------
# 2. Feature density (the paper's histogram of log10 densities; its ultralow-density cluster)


def density(cfg, run, m):
    """Per SAE: densities, dead count and the ultralow cluster; writes density.png."""
    n = run.n_tokens
    out = {}
    for k, s in run.saes.items():
        d = (m.stats[f"F{k}"].fired.double() / n).numpy()
        cluster = interp.ultralow_cluster(d)
        sae = s.sae
        cos = torch.nn.functional.cosine_similarity(sae.W_enc, sae.W_dec, dim=1).detach().cpu().numpy()
        members = cluster["members"] if cluster else np.zeros(len(d), bool)
        out[k] = dict(density=d, dead=int((d == 0).sum()), cluster=cluster,
                      cos_low=float(cos[members].mean()) if members.any() else None,
                      cos_high=float(cos[(d > 0) & ~members].mean()))
        note = (f"ultralow cluster of {members.sum()} below density {cluster['threshold']:.1e}"
                if cluster else "no separate ultralow-density cluster")
        print(f"F{k}: {out[k]['dead']} dead of {k} on {n:,} held-out tokens; {note}")
    plot_density(out, n, os.path.join(run.dir, "density.png"))
    return out


def plot_density(out, n, path):
    fig = Figure(figsize=(4.5 * len(out), 3.4))
    axes = fig.subplots(1, len(out), squeeze=False)
    bins = np.arange(np.floor(np.log10(1 / n)) - 0.25, 0.25, 0.125)
    for ax, (k, r) in zip(axes[0], out.items()):
        d = r["density"]
        ax.hist(np.log10(d[d > 0]), bins=bins, color="tab:blue")
        if r["cluster"]:
            ax.hist(np.log10(d[r["cluster"]["members"]]), bins=bins, color="tab:orange",
                    label=f"ultralow cluster: {r['cluster']['members'].sum()}")
            ax.legend(loc="upper left", fontsize=8)
        ax.set_title(f"F{k}: {k - r['dead']:,} alive, {r['dead']:,} dead (never fired)", fontsize=9)
        ax.set_xlabel(f"log10 feature density ({n:,} held-out tokens)")
    axes[0][0].set_ylabel("features")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------------------------------------
# 3. Features versus neurons on interpretability (the lexical explain-then-simulate score)


def interpretability(cfg, run, m, dens=None):
    """Score every alive neuron and feature of the main SAE; compare a random sample of the same
    size of each kind; writes interp.png and units.json (every unit's explanation and score)."""
    name = run.main_name
    stats = {"neurons": m.stats["neurons"], "features": m.stats[name]}
    ultralow = (dens or {}).get(run.main, {}).get("cluster") or interp.ultralow_cluster(
        (stats["features"].fired.double() / run.n_tokens).numpy())
    rng = np.random.default_rng(cfg.seed)
    # the random SCORE-half contexts every unit is also scored on, recomputed for all units at once
    ctx = cfg.context
    score_ctx = np.flatnonzero(m.halves[::ctx] == interp.SCORE)
    pool_ids = np.sort(rng.choice(score_ctx, min(len(score_ctx), 5 * cfg.score_random), replace=False))
    pool_acts = interp.context_acts(run.model, run.tokens, pool_ids, ctx,
                                    {"neurons": lambda h: h, "features": run.main_sae.encode})
    tokens = run.tokens
    prev = np.concatenate([[run.meta["eot"]], tokens[:-1]])
    # the predicates a row may name, the same for every unit ("tokens": none, token patterns only)
    labels = m.proxies if cfg.explain == "contexts" else m.proxies[:, :0]
    units, results = {}, {}
    for kind, s in stats.items():
        ok = (s.fired >= MIN_ACTIVE) & (s.fired_half > 0).all(0)
        if kind == "features" and ultralow:   # the paper leaves the ultralow cluster out of its analysis
            ok &= torch.from_numpy(~ultralow["members"])
        units[kind] = ok.nonzero().squeeze(1).numpy()
        t0 = time.time()
        results[kind] = interp.score_units(units[kind], s, dict(ctx=pool_ids, acts=pool_acts[kind]), tokens, prev,
                                           labels, run.meta["vocab_size"], ctx, cfg.score_top, cfg.score_random,
                                           cfg.max_entries, SIZES, cfg.seed)
        print(f"interp: scored {len(units[kind])} alive {kind} in {time.time() - t0:.1f}s")
    n = min(cfg.n_units, *(len(u) for u in units.values()))
    if n == 0:
        raise UserError("no alive unit fires in both halves of the held-out data: analyse more --tokens")
    sample = {kind: sorted(rng.choice(len(r), n, replace=False)) for kind, r in results.items()}
    compare = {kind: [results[kind][i] for i in idx] for kind, idx in sample.items()}
    summary = summarize(compare, cfg)
    summary["by_density"] = interp.by_density(results, stats, run.n_tokens)
    plot_interp(compare, summary, cfg.max_entries, os.path.join(run.dir, "interp.png"))
    save_units(run, stats, results)
    print(interp_markdown(summary))
    return dict(summary=summary, compare=compare, all=results, n=n, explain=cfg.explain)


def summarize(compare, cfg):
    """Means and medians with bootstrap intervals, overall and without single-token units."""
    out = {}
    for kind, rs in compare.items():
        scores = np.array([r["score"] for r in rs])
        single = np.array([r["single_token"] for r in rs])
        row = dict(n=len(scores), single=int(single.sum()))
        for part, x in (("all", scores), ("multi", scores[~single])):
            if len(x):
                row[part] = dict(mean=float(x.mean()), median=float(np.median(x)),
                                 mean_ci=interp.bootstrap(x, np.mean, cfg.bootstrap, cfg.seed),
                                 median_ci=interp.bootstrap(x, np.median, cfg.bootstrap, cfg.seed))
        out[kind] = row
    scores = lambda kind, e=None: np.array([r["score"] if e is None else r["by_size"][e] for r in compare[kind]])
    out["median_diff"] = interp.median_difference(scores("features"), scores("neurons"), cfg.bootstrap, cfg.seed)
    multi = {kind: np.array([r["score"] for r in rs if not r["single_token"]]) for kind, rs in compare.items()}
    out["median_diff_multi"] = (interp.median_difference(multi["features"], multi["neurons"], cfg.bootstrap, cfg.seed)
                                if len(multi["features"]) and len(multi["neurons"]) else None)
    # the same comparison with explanations of every length: a long enough table lists a
    # polysemantic unit's meanings one by one, so the gap should shrink as tables grow
    out["by_size"] = {e: {**{kind: float(np.median(scores(kind, e))) for kind in compare},
                          **{kind + "_ci": interp.bootstrap(scores(kind, e), np.median, cfg.bootstrap, cfg.seed)
                             for kind in compare},
                          "diff": interp.median_difference(scores("features", e), scores("neurons", e), cfg.bootstrap,
                                                           cfg.seed)} for e in SIZES}
    return out


def plot_interp(compare, summary, max_entries, path):
    fig = Figure(figsize=(11, 7.6))
    axes = fig.subplots(2, 2)
    axes = axes.ravel()
    bins = np.linspace(-0.2, 1, 25)
    for ax, part in zip(axes, ("all", "multi")):
        for kind, color in (("features", "tab:blue"), ("neurons", "tab:red")):
            x = [r["score"] for r in compare[kind] if part == "all" or not r["single_token"]]
            ax.hist(x, bins=bins, histtype="step", linewidth=2, color=color, label=f"{kind} (n={len(x)})")
            if x:
                ax.axvline(np.median(x), color=color, linestyle="--", linewidth=1)
        ax.set_title("all sampled units" if part == "all" else "without single-token units", fontsize=10)
        ax.set_xlabel(f"simulation score (Pearson r), {max_entries}-row explanations; dashed: median", fontsize=9)
        ax.legend(fontsize=8, loc="upper left")
        ax.set_ylabel("units")
    ax = axes[2]
    for kind, color in (("features", "tab:blue"), ("neurons", "tab:red")):
        med = np.array([summary["by_size"][e][kind] for e in SIZES])
        ci = np.array([summary["by_size"][e][kind + "_ci"] for e in SIZES]).T
        ax.errorbar(SIZES, med, yerr=[med - ci[0], ci[1] - med], color=color, marker="o", capsize=3, label=kind)
    ax.axvline(max_entries, color="gray", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xticks(SIZES, [str(e) for e in SIZES])
    ax.set_xlabel("rows in the explanation table")
    ax.set_ylabel("median score (95% CI)")
    ax.set_title("longer explanations: neurons catch up?", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[3]
    for kind, color in (("features", "tab:blue"), ("neurons", "tab:red")):
        rows = [r for r in summary["by_density"] if r[kind][0] >= 5]
        ax.plot([np.sqrt(r["lo"] * r["hi"]) for r in rows], [r[kind][1] for r in rows], color=color, marker="o",
                label=kind)
    ax.set_xscale("log")
    ax.set_xlabel("density (decade bins with at least 5 units)")
    ax.set_ylabel("median score, all scored units")
    ax.set_title("the same density, the same score?", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------------------------------------
# 4. Activation specificity (the paper: Arabic, base64, DNA features against per-token proxies)


@torch.no_grad()
def specificity(cfg, run, m):
    """For each context predicate (interp.PREDICATES) that holds on some held-out token, which units
    detect it, in two views. The paper's: precision (of the tokens where a unit fires, the share where
    the predicate holds) and recall (of those where it holds, the share where the unit fires) of the
    best unit by F1, and of the union of the specialists (units that fire mostly on it: precision at
    least interp.SPECIALIST, on at least MIN_ACTIVE tokens), as several features may split a property
    that one broad neuron covers alone. And Pearson's: the unit whose activation correlates most with
    the predicate, with the share of its activation where it holds. The union needs a second pass over
    the specialists (and the plotted units) only; writes specificity.png."""
    labels = m.proxies
    P = labels.shape[1]
    base_rate = labels.mean(0)
    held = [j for j in range(P) if base_rate[j] > 0]
    # a predicate that never holds (a corpus without Python has no docstrings) has no unit to show;
    # the figure keeps to the 6 commonest, one row each
    plotted = sorted(held, key=lambda j: -base_rate[j])[:6]
    best, f1, members = {}, {}, {}
    for kind, name in (("features", run.main_name), ("neurons", "neurons")):
        s = m.stats[name]
        r = interp.proxy_correlations(s)
        idx = r.argmax(0)
        best[kind] = dict(units=idx.numpy(), r=r.max(0).values.numpy(),
                          mass=(s.proxy_sum[idx, torch.arange(P)] / s.sum[idx].clamp_min(1e-30)).numpy())
        f1[kind] = interp.best_f1(s)
        members[kind] = interp.specialists(s)
    union, acts, specialists = {}, {}, {}
    if held:
        plotted_units = {kind: torch.from_numpy(b["units"][plotted]) for kind, b in best.items()}
        union, acts = second_pass(run, labels, plotted_units, members)
    for kind, counts in union.items():
        fired, hit = counts.double().numpy()
        specialists[kind] = dict(count=members[kind].sum(0).numpy(), recall=hit / np.maximum(labels.sum(0), 1),
                                 precision=np.where(fired > 0, hit / np.maximum(fired, 1), np.nan))  # NaN: none fired
    out = dict(names=interp.PREDICATES, base_rate=base_rate, held=held, plotted=plotted, best=best, f1=f1,
               specialists=specialists)
    if plotted:
        plot_specificity(acts, labels, best, plotted, os.path.join(run.dir, "specificity.png"))
    print(specificity_markdown(out))
    print(precision_recall_markdown(out))
    return out


def second_pass(run, labels, plotted_units, members):
    """Stream the held-out tokens through the units that specificity needs, and only them: per kind,
    (2, P) union counts of its specialists (interp.union_counts) and the activations (n_tokens,
    len(plotted)) of plotted_units, one unit per plotted predicate."""
    need = {kind: torch.unique(torch.cat([plotted_units[kind], members[kind].any(1).nonzero().squeeze(1)]))
            for kind in members}
    column = {kind: torch.searchsorted(need[kind], plotted_units[kind]) for kind in need}
    sets = {kind: members[kind][need[kind]] for kind in need}      # each predicate's specialists among them
    neurons = need["neurons"].to(run.device)
    chosen = {"neurons": lambda h: h[:, neurons], "features": interp.select_encoder(run.main_sae, need["features"])}
    union = {kind: torch.zeros(2, labels.shape[1], dtype=torch.long) for kind in chosen}
    acts = {kind: [] for kind in chosen}
    labels_t = torch.from_numpy(labels)
    for start, a in interp.stream(run.model, run.tokens, run.n_tokens, chosen, run.batch):
        for kind, x in a.items():
            x = x.float().cpu()
            union[kind] += interp.union_counts(x, labels_t[start:start + len(x)], sets[kind])
            acts[kind].append(x[:, column[kind]])
    return union, {kind: torch.cat(v).numpy() for kind, v in acts.items()}


def plot_specificity(acts, labels, best, plotted, path):
    """One row per plotted predicate: the activations of its best unit by Pearson r (acts: one column
    per plotted predicate) where the predicate holds and where it does not."""
    fig = Figure(figsize=(9, 2.4 * len(plotted)))
    axes = fig.subplots(len(plotted), 2, squeeze=False)
    for row, j in enumerate(plotted):
        name = interp.PREDICATES[j]
        for col, kind in enumerate(("features", "neurons")):
            ax, a = axes[row][col], acts[kind][:, row]
            bins = np.linspace(0, max(a.max(), 1e-6), 40)
            on = a > 0
            ax.hist([a[on & labels[:, j]], a[on & ~labels[:, j]]], bins=bins, histtype="step", linewidth=1.5,
                    color=["tab:green", "tab:gray"], label=[f"{name}", f"not {name}"])
            ax.set_yscale("log")
            b = best[kind]
            ax.set_title(f"{kind[:-1]} #{b['units'][j]}: r={b['r'][j]:.2f} with '{name}', "
                         f"{100 * b['mass'][j]:.0f}% of its activation there", fontsize=9)
            ax.legend(fontsize=7)
        axes[row][0].set_ylabel("tokens")
    for ax in axes[-1]:
        ax.set_xlabel("activation (tokens where > 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    run_main(main)
