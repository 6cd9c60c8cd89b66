"""lab/specificity.py: which features and which neurons detect each context predicate (the paper's
activation specificity: its Arabic, base64 and DNA features against per-token proxies).

For each predicate of lab/predicates.py that holds on some held-out token, two views. The paper's:
precision (of the tokens where a unit fires, the share where the predicate holds) and recall (of
those where it holds, the share where the unit fires) of the best unit by F1, and of the union of
the specialists (units that fire mostly on it), as several features may split a property that one
broad neuron covers alone. And Pearson's: the unit whose activation correlates most with the
predicate, with the share of its activation where it holds. analyze.py calls specificity(); it
reads the streaming pass's sums (lab/measure.py) and runs a second pass over the specialists only.

For the predicates rare enough to be specific about, the paper's plot as numbers: the best unit of
each kind, chosen on one half of the held-out tokens, measured on the other by its precision at
every level of activation (the area under that curve). Features against neurons is a paired
difference of areas per predicate, and its mean over the predicates, with 95% intervals that
resample the held-out documents. The best of 4,096 features has more chances than the best of 512
neurons, so beside it stands a null with as many candidates as the features and nothing learned:
random directions in the neurons' space, each firing as often as one feature (random_units), scored
the same way. Fixed before any result was seen.
"""
import os

import numpy as np
import torch
from matplotlib.figure import Figure

import data
from lab import measure
from lab.measure import MIN_ACTIVE
from lab.plumbing import save_figure
from lab.predicates import PREDICATES
from lab.stats import document_weights, fill_missing, interval

SPECIALIST = 0.5          # a specialist of a predicate fires mostly on it: this share of its firing tokens or more
# Specificity as the paper plots it (its Arabic feature: at each level of activation, the share of the
# tokens that are Arabic), for the predicates rare enough to be specific about. Fixed before any
# result was seen: a predicate qualifies when it holds on at most RARE of the held-out tokens (the
# paper's Arabic, base64 and DNA are each far rarer than that in its corpus; a predicate on a third
# of the tokens, like `string`, is a broad context that a dense unit covers by recall) and on at
# least MIN_HOLDS tokens of each half (one half picks the best unit, the other measures it).
RARE = 0.01
MIN_HOLDS = 50
LEVELS = 10               # equal-width activation bins, from 0 to the unit's largest activation
MIN_BIN = 5               # a bin with fewer tokens gives no share (a share of one token is 0 or 1)
KINDS = ("features", "neurons", "sparse_neurons")
NULL_SAMPLE = 2**13       # explain-half tokens the null's thresholds are set on (one in this many is its resolution)
# the paired differences of area reported: each kind against the neurons as they are and sparsified,
# the features beside the null (random directions, as many as the features), and the two directly
PAIRS = (("features", "neurons"), ("null", "neurons"), ("features", "sparse_neurons"),
         ("null", "sparse_neurons"), ("features", "null"))


@torch.no_grad()
def specificity(run, m, neurons):
    """For each context predicate (PREDICATES) that holds on some held-out token, which units
    detect it, in two views. The paper's: precision (of the tokens where a unit fires, the share where
    the predicate holds) and recall (of those where it holds, the share where the unit fires) of the
    best unit by F1, and of the union of the specialists (units that fire mostly on it: precision at
    least SPECIALIST, on at least MIN_ACTIVE tokens), as several features may split a property
    that one broad neuron covers alone. And Pearson's: the unit whose activation correlates most with
    the predicate, with the share of its activation where it holds. The union needs a second pass over
    the specialists (and the plotted and picked units) only; writes specificity.png; the rare
    predicates' levels (rare_levels), with the null (random_units). neurons: analyze.neuron_kinds."""
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
        r = proxy_correlations(s)
        idx = r.argmax(0)
        best[kind] = dict(units=idx.numpy(), r=r.max(0).values.numpy(),
                          mass=(s.proxy_sum[idx, torch.arange(P)] / s.sum[idx].clamp_min(1e-30)).numpy())
        f1[kind] = best_f1(s)
        members[kind] = specialists(s)
    members["sparse_neurons"] = torch.zeros_like(members["neurons"])   # (in the curves only)
    rare = rare_predicates(labels, m.halves)
    picked = {kind: best_on_half(m.stats[name], labels, m.halves, rare)
              for kind, name in zip(KINDS, (run.main_name, "neurons", "sparse_neurons"))}
    null = random_units(run, m, labels, rare) if rare else None
    if null:
        picked["null"], members["null"] = null["picked"], torch.zeros(len(null["t"]), P, dtype=torch.bool)
    union, acts = {}, {}
    if held:
        shown = {kind: best[kind]["units"][plotted] if kind in best else [] for kind in picked}
        columns = {kind: torch.from_numpy(np.concatenate([shown[kind], picked[kind]]).astype(np.int64))
                   for kind in picked}
        union, acts = second_pass(run, labels, columns, members, neurons["sparse_neurons"], null)
    out = dict(names=PREDICATES, base_rate=base_rate, held=held, plotted=plotted, best=best, f1=f1,
               specialists=union_summary(union, members, labels), levels=None)
    if plotted:
        plot_specificity(acts, labels, best, plotted, os.path.join(run.dir, "specificity.png"))
    if rare:
        out["levels"] = rare_levels(run, m, {k: a[:, len(shown[k]):] for k, a in acts.items()}, rare, picked)
    print(specificity_markdown(out))
    print(precision_recall_markdown(out))
    return out


def rare_levels(run, m, acts, rare, picked):
    """The activation-level view of the rare predicates on the score half (precision_levels; its
    documents: the end-of-text tokens separate them), with each kind's picked units and how many
    candidates they were picked from; writes levels.png. acts {kind: (n_tokens, len(rare))}: each
    kind's picked units on every held-out token."""
    score = m.halves == measure.SCORE
    docs = np.cumsum(run.tokens == run.meta["eot"])[score]
    lv = precision_levels({k: a[score] for k, a in acts.items()}, m.proxies[score][:, rare], docs, run.seed)
    lv.update(rare=rare, units=picked,
              candidates=dict(features=len(m.stats[run.main_name].fired), neurons=run.model.cfg.d_mlp))
    plot_levels(lv, os.path.join(run.dir, "levels.png"))
    return lv


def second_pass(run, labels, columns, members, sparsified, null=None):
    """Stream the held-out tokens through the units that specificity needs, and only them: per kind
    (KINDS, and "null" where null, random_units' result, is given), (2, P) union counts of its
    specialists (union_counts) and the activations (n_tokens, len(columns[kind])) of the units
    columns[kind]. sparsified: fn(neurons) -> the sparsified neurons."""
    need = {kind: torch.unique(torch.cat([columns[kind], members[kind].any(1).nonzero().squeeze(1)]))
            for kind in members}
    column = {kind: torch.searchsorted(need[kind], columns[kind]) for kind in need}
    sets = {kind: members[kind][need[kind]] for kind in need}      # each predicate's specialists among them
    neurons, sparse = need["neurons"].to(run.device), need["sparse_neurons"].to(run.device)
    chosen = {"neurons": lambda h: h[:, neurons], "features": measure.select_encoder(run.main_sae, need["features"]),
              "sparse_neurons": lambda h: sparsified(h)[:, sparse]}
    if null:
        chosen["null"] = null["encoder"](need["null"].to(run.device))
    union = {kind: torch.zeros(2, labels.shape[1], dtype=torch.long) for kind in chosen}
    acts = {kind: [] for kind in chosen}
    labels_t = torch.from_numpy(labels)
    for start, a in measure.stream(run.model, run.tokens, run.n_tokens, chosen, run.batch):
        for kind, x in a.items():
            x = x.float().cpu()
            union[kind] += union_counts(x, labels_t[start:start + len(x)], sets[kind])
            acts[kind].append(x[:, column[kind]])
    return union, {kind: torch.cat(v).numpy() for kind, v in acts.items()}


def rare_predicates(labels, halves):
    """The predicates specific enough for the activation-level view (RARE, MIN_HOLDS), as indices."""
    holds = [labels[halves == h].sum(0) for h in (measure.EXPLAIN, measure.SCORE)]
    return [j for j in range(labels.shape[1])
            if labels[:, j].mean() <= RARE and min(holds[0][j], holds[1][j]) >= MIN_HOLDS]


def best_on_half(s, labels, halves, rare, half=measure.EXPLAIN):
    """(len(rare),) for each rare predicate, the unit of s (UnitStats) with the best F1 on one half
    of the held-out tokens (the other half measures it, so the choice is not fitted to the noise it
    is judged on), among the units that fire on at least MIN_ACTIVE tokens."""
    holds = torch.from_numpy(labels[halves == half][:, rare].sum(0))
    return best_by_f1(s.proxy_fired_half[half][:, rare], s.fired_half[half], holds, s.fired >= MIN_ACTIVE)


def best_by_f1(hit, fired, holds, alive):
    """(R,) per predicate the unit with the best F1 among the alive ones. hit (U, R): tokens where
    the unit fires and the predicate holds; fired (U,): tokens where it fires; holds (R,): tokens
    where the predicate holds; alive (U,) bool."""
    hit = hit.double()
    precision, recall = hit / fired.double().clamp_min(1)[:, None], hit / holds.double().clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-30)
    f1[~alive] = -1
    return f1.argmax(0).numpy()


@torch.no_grad()
def random_units(run, m, labels, rare):
    """The null with as many candidates as the features: F random unit directions w_c in the neurons'
    space, each a unit ReLU(w_c . (h - mean h) - t_c) (an SAE encoder's unit with random weights)
    whose threshold t_c makes it fire as often as feature c does (thresholds(), set on NULL_SAMPLE
    tokens of explain windows drawn at random). Its best candidate per rare predicate, by F1 on the
    explain half as for the other kinds, with each candidate's firing count there taken as its rate
    on the sample times the half's tokens (its projections on every token would cost as much as the
    features' encoder); the hits are counted on every explain token where a rare predicate holds
    (in whole LM windows). Alive where feature c is. Returns dict(t, picked, encoder: fn(units) ->
    fn(neurons) -> those units' activations)."""
    T, s, explain = run.model.cfg.block_size, m.stats[run.main_name], m.halves == measure.EXPLAIN
    W = torch.randn(len(s.fired), run.model.cfg.d_mlp, generator=torch.Generator().manual_seed(run.seed))
    W, mean = W / W.norm(dim=1, keepdim=True), (m.stats["neurons"].sum / m.stats["neurons"].n_tokens).float()
    project = lambda h: (h - mean) @ W.T
    whole = run.n_tokens // T                                            # whole LM windows
    windows = np.flatnonzero(explain[:whole * T:T])
    sample = np.random.default_rng(run.seed).choice(windows, min(NULL_SAMPLE // T, len(windows)), replace=False)
    t, rate = thresholds(project(window_acts(run, sample)), s.fired.double().numpy() / s.n_tokens)
    holds = explain & labels[:, rare].any(1)
    holds[whole * T:] = False
    with_rare, hit = np.unique(np.flatnonzero(holds) // T), 0
    for i in range(0, len(with_rare), 256):
        tok = (with_rare[i:i + 256, None] * T + np.arange(T)).ravel()     # the windows' tokens
        h = window_acts(run, with_rare[i:i + 256])[torch.from_numpy(holds[tok])]
        hit = hit + (project(h) > t).double().T @ torch.from_numpy(labels[tok[holds[tok]]][:, rare]).double()
    picked = best_by_f1(hit, torch.from_numpy(rate) * explain.sum(), torch.from_numpy(labels[explain][:, rare].sum(0)),
                        s.fired >= MIN_ACTIVE)

    def encoder(units):
        w, b, mu = (x.to(run.device) for x in (W[units.cpu()], t[units.cpu()], mean))
        return lambda h: ((h.float() - mu) @ w.T - b).relu()
    return dict(t=t, picked=picked, encoder=encoder)


def window_acts(run, windows):
    """(len(windows) x T, d_mlp): the neurons' activations on the held-out LM windows given by index
    (each computed in its own window, as the streaming pass computes it), on the CPU."""
    T, device = run.model.cfg.block_size, run.model.unembed.weight.device
    return torch.cat([run.model.mlp_activations(data.windows(run.tokens, windows[i:i + 64] * T, T).to(device))
                      .flatten(0, 1).float().cpu() for i in range(0, len(windows), 64)])


def thresholds(proj, density):
    """proj (S, F): F candidates' projections on S sampled tokens; density (F,): how often each is to
    fire. Returns (t (F,), the rate at which each fires on the sample): t is the (k+1)-th largest
    projection, k = density x S rounded (at least 1: the sample's resolution), so that the
    projection is above t on k of the S tokens (ties aside). A candidate of density 0 never fires."""
    S, F = proj.shape
    k = np.clip(np.rint(density * S), 1, S - 1).astype(np.int64)
    top = np.sort(proj.numpy(), axis=0)[::-1]                              # (S, F), largest first
    t = np.where(density > 0, top[k, np.arange(F)], np.inf)
    return torch.from_numpy(t).float(), np.where(density > 0, k / S, 0.0)


def precision_levels(acts, labels, docs, seed=0, n=1000):
    """The paper's specificity plot as numbers. acts {kind: (N, R)}: each kind's best unit for each
    of R predicates, on N tokens; labels (N, R) bool; docs (N,) each token's document. For each unit:
    its firing tokens cut into LEVELS equal-width bins of activation (0 to its largest), and the
    share of each bin's tokens where its predicate holds (bins of at least MIN_BIN tokens); the area
    under that curve (level_area). Then, for each pair of PAIRS present, the paired difference of
    areas per predicate and its mean over the predicates (paired_difference). 95% intervals: the
    documents resampled with replacement n times, the same resamples for every kind (so paired)."""
    _, doc = np.unique(docs, return_inverse=True)
    D = doc.max() + 1
    weights = np.vstack([np.ones(D), document_weights(np.random.default_rng(seed), D, n)])
    rng = np.random.default_rng([seed, 1])
    out, areas = dict(curves={}, area={}, area_ci={}, difference={}, documents=int(D)), {}
    for kind, a in acts.items():
        share = level_shares(a, labels, doc, weights)                   # (1 + n, R, LEVELS)
        areas[kind] = level_area(share)
        out["curves"][kind], out["area"][kind] = share[0], areas[kind][0]
        out["area_ci"][kind] = interval(fill_missing(areas[kind][1:], rng), axis=0).T
    for x, y in PAIRS:
        if x in acts and y in acts:
            out["difference"][f"{x}_minus_{y}"] = paired_difference(areas[x], areas[y], rng)
    return out


def level_shares(a, labels, doc, weights):
    """(B, R, LEVELS) for each of B weightings of the documents (weights (B, D)), each unit's share of
    tokens where its predicate holds per level of activation (NaN below MIN_BIN tokens)."""
    D, R = weights.shape[1], labels.shape[1]
    counts, hits = np.zeros((R, D, LEVELS)), np.zeros((R, D, LEVELS))
    for j in range(R):
        on = a[:, j] > 0
        level = np.minimum((a[on, j] / max(a[on, j].max(initial=0), 1e-30) * LEVELS).astype(int), LEVELS - 1)
        cell = doc[on] * LEVELS + level
        counts[j] = np.bincount(cell, minlength=D * LEVELS).reshape(D, LEVELS)
        hits[j] = np.bincount(cell, labels[on, j], minlength=D * LEVELS).reshape(D, LEVELS)
    N, H = np.einsum("bd,rdl->brl", weights, counts), np.einsum("bd,rdl->brl", weights, hits)
    return np.where(N >= MIN_BIN, H / np.maximum(N, 1), np.nan)


def level_area(share):
    """(B, R) the area under each unit's curve (share (B, R, LEVELS), row 0 the data, then its
    resamples): the mean share over the bins that have one, activation as a fraction of the largest
    (1 for a unit that fires only on its predicate, whatever its activation). A unit with no such
    bin on the data has area 0 everywhere (it is precise nowhere); on a resample where it has none
    though the data has one (the documents where it fires were left out), the area is undefined."""
    has = ~np.isnan(share)
    area = np.where(has, share, 0).sum(2) / np.maximum(has.sum(2), 1)
    return np.where(~has.any(2) & has[:1].any(2), np.nan, area)


def paired_difference(x, y, rng):
    """x, y (B, R): two kinds' areas per predicate, row 0 on the data, then on resamples of its
    documents. dict(value: the mean over the predicates of x - y, ci, per_predicate (R,) x - y,
    per_predicate_ci (R, 2)). A resample where either area is undefined takes one of the same
    predicate's defined differences (lab/stats.fill_missing), so every resampled mean is over the
    same predicates."""
    d = x - y
    draws = fill_missing(d[1:], rng)
    return dict(value=float(d[0].mean()), ci=interval(draws.mean(1)), per_predicate=d[0],
                per_predicate_ci=interval(draws, axis=0).T)


def plot_levels(lv, path):
    """One panel per rare predicate: the share of tokens where it holds, per activation level, of its
    best feature, neuron, sparsified neuron and random direction (the null) (the paper's
    Arabic-feature plot, as a line)."""
    R = len(lv["rare"])
    cols = min(R, 4)
    rows = -(-R // cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    x = (np.arange(LEVELS) + 0.5) / LEVELS
    style = dict(features=("tab:blue", "feature"), neurons=("tab:red", "neuron"),
                 sparse_neurons=("tab:orange", "sparsified neuron"), null=("tab:gray", "random direction"))
    for i, j in enumerate(lv["rare"]):
        ax = axes[i]
        for kind, (color, label) in ((k, v) for k, v in style.items() if k in lv["curves"]):
            ax.plot(x, lv["curves"][kind][i], color=color, marker="o", markersize=3,
                    label=f"{label} #{lv['units'][kind][i]}: area {lv['area'][kind][i]:.2f}")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(PREDICATES[j], fontsize=9)
        ax.legend(fontsize=6, loc="lower right")
    for ax in axes[R:]:
        ax.set_visible(False)
    for ax in axes[(rows - 1) * cols:]:
        ax.set_xlabel("activation / the unit's largest", fontsize=8)
    d = lv["difference"]
    said = lambda key: (f"{d[key]['value']:+.2f} [95% CI {d[key]['ci'][0]:+.2f}, {d[key]['ci'][1]:+.2f}]"
                        if key in d else "-")
    fig.suptitle(f"share of tokens where the predicate holds, per activation level; mean area, the best feature minus "
                 f"the best neuron {said('features_minus_neurons')}, the best random direction (as many as the "
                 f"features) minus the best neuron {said('null_minus_neurons')}", fontsize=9, wrap=True)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def plot_specificity(acts, labels, best, plotted, path):
    """One row per plotted predicate: the activations of its best unit by Pearson r (acts: one column
    per plotted predicate) where the predicate holds and where it does not."""
    fig = Figure(figsize=(9, 2.4 * len(plotted)))
    axes = fig.subplots(len(plotted), 2, squeeze=False)
    for row, j in enumerate(plotted):
        name = PREDICATES[j]
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
    save_figure(fig, path, dpi=100)


def proxy_correlations(s):
    """(U, P) Pearson correlation of each unit's activation with each proxy's 0/1 indicator, from
    the streaming sums of s (UnitStats)."""
    n = s.n_tokens
    mean_a, mean_p = s.sum / n, s.proxy_count / n
    cov = s.proxy_sum / n - mean_a[:, None] * mean_p[None]
    var_a = (s.sumsq / n - mean_a ** 2).clamp_min(0)
    den = (var_a[:, None] * (mean_p * (1 - mean_p))[None]).sqrt()
    return torch.where(den > 0, cov / den.clamp_min(1e-30), torch.zeros_like(cov))


def precision_recall(s):
    """(U, P) precision and recall of each unit of s (UnitStats) as a detector of each proxy: of the
    tokens where the unit fires, the share where the proxy holds; of the tokens where the proxy
    holds, the share where the unit fires (0 where the unit never fires or the proxy never holds)."""
    hit = s.proxy_fired.double()
    return hit / s.fired.double().clamp_min(1)[:, None], hit / s.proxy_count.double().clamp_min(1)[None]


def best_f1(s):
    """Per proxy, the unit of s (UnitStats) with the best F1, the harmonic mean of its precision and
    recall: dict(units, f1, precision, recall) of (P,) arrays."""
    precision, recall = precision_recall(s)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-30)
    units, cols = f1.argmax(0), torch.arange(f1.shape[1])
    return dict(units=units.numpy(), f1=f1[units, cols].numpy(), precision=precision[units, cols].numpy(),
                recall=recall[units, cols].numpy())


def specialists(s):
    """(U, P) bool: the units of s that fire mostly on each proxy (precision at least SPECIALIST)
    and on at least MIN_ACTIVE tokens, so that one lucky token does not make a specialist."""
    return (precision_recall(s)[0] >= SPECIALIST) & (s.fired >= MIN_ACTIVE)[:, None]


def union_summary(union, members, labels):
    """{kind: dict(count, recall, precision)} per predicate: how many specialists, and their union's
    recall and precision (NaN where none fired), from second_pass's union counts."""
    out = {}
    for kind, counts in union.items():
        fired, hit = counts.double().numpy()
        out[kind] = dict(count=members[kind].sum(0).numpy(), recall=hit / np.maximum(labels.sum(0), 1),
                         precision=np.where(fired > 0, hit / np.maximum(fired, 1), np.nan))
    return out


def union_counts(acts, labels, members):
    """(2, P) long for one batch of activations acts (n, U): the tokens where any unit of each
    proxy's set fires, and those of them where the proxy holds. labels (n, P) bool; members (U, P)
    bool, each proxy's set of units (a column)."""
    fires = ((acts > 0).float() @ members.float()) > 0          # (n, P): some member fires
    return torch.stack([fires.sum(0), (fires & labels).sum(0)])


def precision_recall_markdown(s):
    """The precision/recall table of specificity(): per predicate that holds, the best unit
    by F1 and the specialists' union of each kind, as precision / recall."""
    lines = ["| predicate | tokens where it holds | best feature (F1): precision / recall | specialist features: "
             "count, their union's precision / recall | best neuron (F1): precision / recall | specialist neurons: "
             "count, their union's precision / recall |", "| --- | --- | --- | --- | --- | --- |"]
    pair = lambda p, r: f"{p:.2f} / {r:.2f}"
    for j in s["held"]:
        cells = []
        for kind in ("features", "neurons"):
            b, u = s["f1"][kind], s["specialists"][kind]
            cells += [f"#{b['units'][j]}: {pair(b['precision'][j], b['recall'][j])}",
                      f"{u['count'][j]}: {pair(u['precision'][j], u['recall'][j])}" if u["count"][j] else "none"]
        lines.append(f"| {s['names'][j]} | {100 * s['base_rate'][j]:.2g}% | " + " | ".join(cells) + " |")
    never = [name for j, name in enumerate(s["names"]) if j not in s["held"]]
    if never:
        verb = "holds" if len(never) == 1 else "hold"
        lines.append(f"\nLeft out: {', '.join(never)}, which {verb} on none of these tokens (no unit can match them).")
    return "\n".join(lines)


def specificity_markdown(s):
    """The Pearson table of specificity()'s results, for the predicates that hold."""
    lines = ["| predicate | tokens where it holds | best feature: r, activation on it | "
             "best neuron: r, activation on it |", "| --- | --- | --- | --- |"]
    f, nr = s["best"]["features"], s["best"]["neurons"]
    for j in s["held"]:
        name = s["names"][j]
        lines.append(f"| {name} | {100 * s['base_rate'][j]:.2g}% | "
                     f"#{f['units'][j]}: {f['r'][j]:.2f}, {100 * f['mass'][j]:.0f}% | "
                     f"#{nr['units'][j]}: {nr['r'][j]:.2f}, {100 * nr['mass'][j]:.0f}% |")
    return "\n".join(lines)
