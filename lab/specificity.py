"""lab/specificity.py: which features and which neurons detect each context predicate (the paper's
activation specificity: its Arabic, base64 and DNA features against per-token proxies).

For each predicate of lab/predicates.py that holds on some held-out token, two views. The paper's:
precision (of the tokens where a unit fires, the share where the predicate holds) and recall (of
those where it holds, the share where the unit fires) of the best unit by F1, and of the union of
the specialists (units that fire mostly on it), as several features may split a property that one
broad neuron covers alone. And Pearson's: the unit whose activation correlates most with the
predicate, with the share of its activation where it holds. analyze.py calls specificity(); it
reads the streaming pass's sums (lab/measure.py) and runs a second pass over the specialists only.
"""
import os

import numpy as np
import torch
from matplotlib.figure import Figure

from lab import measure
from lab.measure import MIN_ACTIVE
from lab.plumbing import save_figure
from lab.predicates import PREDICATES
from lab.stats import document_weights, interval

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


@torch.no_grad()
def specificity(run, m, neurons):
    """For each context predicate (PREDICATES) that holds on some held-out token, which units
    detect it, in two views. The paper's: precision (of the tokens where a unit fires, the share where
    the predicate holds) and recall (of those where it holds, the share where the unit fires) of the
    best unit by F1, and of the union of the specialists (units that fire mostly on it: precision at
    least SPECIALIST, on at least MIN_ACTIVE tokens), as several features may split a property
    that one broad neuron covers alone. And Pearson's: the unit whose activation correlates most with
    the predicate, with the share of its activation where it holds. The union needs a second pass over
    the specialists (and the plotted units) only; writes specificity.png. neurons: analyze.neuron_kinds,
    the neurons as they are and sparsified."""
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
    union, acts, unions = {}, {}, {}
    if held:
        shown = {kind: best[kind]["units"][plotted] if kind in best else [] for kind in KINDS}
        columns = {kind: torch.from_numpy(np.concatenate([shown[kind], picked[kind]]).astype(np.int64))
                   for kind in KINDS}
        union, acts = second_pass(run, labels, columns, members, neurons["sparse_neurons"])
    for kind, counts in union.items():
        fired, hit = counts.double().numpy()
        unions[kind] = dict(count=members[kind].sum(0).numpy(), recall=hit / np.maximum(labels.sum(0), 1),
                                 precision=np.where(fired > 0, hit / np.maximum(fired, 1), np.nan))  # NaN: none fired
    out = dict(names=PREDICATES, base_rate=base_rate, held=held, plotted=plotted, best=best, f1=f1,
               specialists=unions, levels=None)
    if plotted:
        plot_specificity(acts, labels, best, plotted, os.path.join(run.dir, "specificity.png"))
    if rare:
        score = m.halves == measure.SCORE
        docs = np.cumsum(run.tokens == run.meta["eot"])[score]
        out["levels"] = precision_levels({k: a[score, len(shown[k]):] for k, a in acts.items()},
                                         labels[score][:, rare], docs, run.seed)
        out["levels"].update(rare=rare, units=picked)
        plot_levels(out["levels"], os.path.join(run.dir, "levels.png"))
    print(specificity_markdown(out))
    print(precision_recall_markdown(out))
    return out


def second_pass(run, labels, columns, members, sparsified):
    """Stream the held-out tokens through the units that specificity needs, and only them: per kind
    (KINDS), (2, P) union counts of its specialists (union_counts) and the activations (n_tokens,
    len(columns[kind])) of the units columns[kind]. sparsified: fn(neurons) -> the sparsified neurons."""
    need = {kind: torch.unique(torch.cat([columns[kind], members[kind].any(1).nonzero().squeeze(1)]))
            for kind in members}
    column = {kind: torch.searchsorted(need[kind], columns[kind]) for kind in need}
    sets = {kind: members[kind][need[kind]] for kind in need}      # each predicate's specialists among them
    neurons, sparse = need["neurons"].to(run.device), need["sparse_neurons"].to(run.device)
    chosen = {"neurons": lambda h: h[:, neurons], "features": measure.select_encoder(run.main_sae, need["features"]),
              "sparse_neurons": lambda h: sparsified(h)[:, sparse]}
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
    hit = s.proxy_fired_half[half][:, rare].double()                     # (U, R)
    count = torch.from_numpy(labels[halves == half][:, rare].sum(0)).double()
    precision, recall = hit / s.fired_half[half].double().clamp_min(1)[:, None], hit / count.clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-30)
    f1[s.fired < MIN_ACTIVE] = -1
    return f1.argmax(0).numpy()


def precision_levels(acts, labels, docs, seed=0, n=1000):
    """The paper's specificity plot as numbers. acts {kind: (N, R)}: each kind's best unit for each
    of R predicates, on N tokens; labels (N, R) bool; docs (N,) each token's document. For each unit:
    its firing tokens cut into LEVELS equal-width bins of activation (0 to its largest), and the
    share of each bin's tokens where its predicate holds (bins of at least MIN_BIN tokens); the area
    under that curve (activation as a fraction of the largest: the mean share over the bins that
    have one, 1 for a unit that fires only on its predicate whatever its activation); and the count
    of predicates where the feature's area beats the other kind's. 95% intervals: the documents
    resampled with replacement n times (tokens of one document are not independent)."""
    _, doc = np.unique(docs, return_inverse=True)
    D, R = doc.max() + 1, labels.shape[1]
    weights = np.vstack([np.ones(D), document_weights(np.random.default_rng(seed), D, n)])
    out = dict(curves={}, area={}, area_ci={}, wins={}, documents=int(D))
    draws = {}
    for kind, a in acts.items():
        counts, hits = np.zeros((R, D, LEVELS)), np.zeros((R, D, LEVELS))
        for j in range(R):
            on = a[:, j] > 0
            level = np.minimum((a[on, j] / max(a[on, j].max(initial=0), 1e-30) * LEVELS).astype(int), LEVELS - 1)
            cell = doc[on] * LEVELS + level
            counts[j] = np.bincount(cell, minlength=D * LEVELS).reshape(D, LEVELS)
            hits[j] = np.bincount(cell, labels[on, j], minlength=D * LEVELS).reshape(D, LEVELS)
        N, H = np.einsum("bd,rdl->brl", weights, counts), np.einsum("bd,rdl->brl", weights, hits)
        share = np.where(N >= MIN_BIN, H / np.maximum(N, 1), np.nan)          # (1 + n, R, LEVELS)
        with np.errstate(all="ignore"):
            area = np.nanmean(np.where(np.isnan(share).all(2, keepdims=True), 0, share), 2)   # none: area 0
        draws[kind] = area
        out["curves"][kind], out["area"][kind] = share[0], area[0]
        out["area_ci"][kind] = interval(area[1:], axis=0).T
    for other in acts:
        if other != "features":
            won = (draws["features"] > draws[other]).sum(1)
            ci = interval(won[1:])
            out["wins"][other] = dict(count=int(won[0]), ci=ci, of=R)
    return out


def plot_levels(lv, path):
    """One panel per rare predicate: the share of tokens where it holds, per activation level, of its
    best feature, neuron and sparsified neuron (the paper's Arabic-feature plot, as a line)."""
    R = len(lv["rare"])
    cols = min(R, 4)
    rows = -(-R // cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    x = (np.arange(LEVELS) + 0.5) / LEVELS
    style = dict(features=("tab:blue", "feature"), neurons=("tab:red", "neuron"),
                 sparse_neurons=("tab:orange", "sparsified neuron"))
    for i, j in enumerate(lv["rare"]):
        ax = axes[i]
        for kind, (color, label) in style.items():
            ax.plot(x, lv["curves"][kind][i], color=color, marker="o", markersize=3,
                    label=f"{label} #{lv['units'][kind][i]}: area {lv['area'][kind][i]:.2f}")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(PREDICATES[j], fontsize=9)
        ax.legend(fontsize=6, loc="lower right")
    for ax in axes[R:]:
        ax.set_visible(False)
    for ax in axes[(rows - 1) * cols:]:
        ax.set_xlabel("activation / the unit's largest", fontsize=8)
    w = lv["wins"]
    fig.suptitle(f"share of tokens where the predicate holds, per activation level; the best feature is more precise "
                 f"than the best neuron on {w['neurons']['count']} of {w['neurons']['of']} rare predicates "
                 f"[95% CI {w['neurons']['ci'][0]:.0f}, {w['neurons']['ci'][1]:.0f}], than the best sparsified neuron "
                 f"on {w['sparse_neurons']['count']} [{w['sparse_neurons']['ci'][0]:.0f}, "
                 f"{w['sparse_neurons']['ci'][1]:.0f}]", fontsize=9, wrap=True)
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
