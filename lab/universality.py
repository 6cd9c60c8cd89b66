"""lab/universality.py: the paper's universality, measured so a reader can judge it (lab/compare.py
runs it and reports it).

For each alive unit of model A, its best Pearson correlation with any unit of model B, a transformer
that differs only in its seed: A's features against B's, A's neurons against B's, and, as a
yardstick, A's features against a second SAE trained on model A itself. Over random windows of the
whole corpus, the training split too: the held-out split is 215 documents (on the default corpus),
too few to resample, and whether two LMs learn the same features needs no unseen text. Documents
are dealt at random into groups, and every 95% interval resamples the groups (tokens of one
document are not independent). A resample that leaves out every group where a rare unit fires
leaves its correlation undefined (a constant's): it takes one of the unit's own resampled values
instead of 0 (lab/stats.fill_missing says why), so the silent do not pull the resampled medians
down, most for the rarer kind, the features. (More groups would not help a unit of one document,
absent from a third of the resamples however many groups there are; a jackknife of a median is
inconsistent.) Medians overall and per decade of density (a feature
fires far more rarely than a neuron), beside chance (the same units on other tokens). The rule for
"a clear margin" was fixed here before any number was seen. The sums are lab/matching.py's.
"""
import time

import numpy as np
import torch

import analyze
import data
from lab import sae_fast
from lab.matching import Acts, Correlator
from lab.measure import MIN_ACTIVE
from lab.plumbing import Progress, UserError, fast_bf16, fmt_eta, require_memory
from lab.stats import document_weights, fill_missing, interval


DENSITY_BINS = (0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)   # the universality table's columns, fixed before its numbers were seen
MIN_UNITS = 10                                     # a median of fewer units is not shown
CLEAR_MARGIN = 0.1                                 # features beat neurons clearly if their difference's interval is above


def universality_windows(data_dir, T, n_tokens, groups, seed):
    """Windows of T tokens drawn at random, without replacement, from both splits (n_tokens of them;
    0: all), each with the group of the document it starts in (documents dealt at random into
    `groups`). Returns batches [(split's tokens, starts, group)], group after group, so that the pass
    feeds each group's sums in turn."""
    eot, rng = data.load_meta(data_dir)["eot"], np.random.default_rng(seed)
    splits, starts, docs = [], [], []
    for i, split in enumerate(("train", "val")):
        tokens = data.load_tokens(data_dir, split)
        s = np.arange(len(tokens) // T) * T
        d = np.cumsum(np.asarray(tokens) == eot)[s]                  # each window's document, counted from 0
        splits.append(tokens)
        starts.append(np.stack([np.full(len(s), i), s]))
        docs.append(d + (docs[-1].max() + 1 if docs else 0))         # numbered across both splits
    starts, docs = np.concatenate(starts, 1), np.concatenate(docs)
    n_windows = min(n_tokens // T if n_tokens else len(docs), len(docs))
    if n_windows < 2:
        raise UserError(f"--universality-tokens {n_tokens}: need at least two windows of {T} tokens")
    pick = rng.choice(len(docs), n_windows, replace=False)
    group = (rng.permutation(docs.max() + 1) % groups)[docs[pick]]    # the documents dealt into groups
    batches, per_batch = [], max(1, 4096 // T)
    for g in range(groups):
        for i, tokens in enumerate(splits):
            mine = np.sort(starts[1, pick[(group == g) & (starts[0, pick] == i)]])
            batches += [(tokens, mine[j:j + per_batch], g) for j in range(0, len(mine), per_batch)]
    return batches


@torch.no_grad()
def universality_pass(lm_a, lm_b, sae_a, sae_b, sae_same, batches, groups, vocab):
    """One pass over the windows through both LMs, A's and B's SAEs and a second SAE on A, reduced
    to the sums (per group of documents) of three correlations: A's features with B's, A's neurons
    with B's, and A's features with the second SAE's (the yardstick: how far two SAE runs on one LM
    agree); A's features and neurons with B's on other tokens (chance); firing counts; and each
    token's activation mass on A's and B's features (the report's examples). The sums stay on the
    models' device."""
    device = lm_a.unembed.weight.device
    Fa, Fb, Fs, d = sae_a.cfg.n_features, sae_b.cfg.n_features, sae_same.cfg.n_features, lm_a.cfg.d_mlp
    require_memory(4 * groups * (Fa * Fb + Fa * Fs + d * d) + 4 * (Fa * Fb + d * d + vocab * (Fa + Fb)),
                   "the universality pass", "lower --groups", device)
    corr = {"features": Correlator(Fa, Fb, groups, device), "neurons": Correlator(d, d, groups, device),
            "same LM": Correlator(Fa, Fs, groups, device),
            # chance: the best of thousands of correlations is above 0 even between unrelated units, so A's
            # units are also correlated with B's on other tokens (another window's, half a window apart in position)
            "features, other tokens": Correlator(Fa, Fb, 1, device), "neurons, other tokens": Correlator(d, d, 1, device)}
    fired = {k: torch.zeros(u, device=device) for k, u in
             {"A": Fa, "B": Fb, "same LM": Fs, "neurons A": d, "neurons B": d}.items()}
    mass = {"A": torch.zeros(vocab, Fa, device=device), "B": torch.zeros(vocab, Fb, device=device)}
    n, total = 0, sum(len(starts) for _, starts, _ in batches) * lm_a.cfg.block_size
    progress, t0 = Progress(None), time.time()
    for tokens, starts, group in batches:
        w = data.windows(tokens, starts, lm_a.cfg.block_size, device)
        a, b = (lm.mlp_activations(w).flatten(0, 1).float() for lm in (lm_a, lm_b))
        f = {"A": features(sae_a, a), "B": features(sae_b, b), "same LM": features(sae_same, a),
             "neurons A": Acts(a), "neurons B": Acts(b)}
        corr["features"].add(f["A"], f["B"], group)
        corr["neurons"].add(f["neurons A"], f["neurons B"], group)
        corr["same LM"].add(f["A"], f["same LM"], group)
        if len(starts) > 1:
            shift = lm_a.cfg.block_size * 3 // 2
            corr["features, other tokens"].add(f["A"], f["B"].rolled(shift))
            corr["neurons, other tokens"].add(f["neurons A"], f["neurons B"].rolled(shift))
        ids = w.flatten()
        for k, x in f.items():
            fired[k] += x.fired
            if k in mass:
                tok, unit, val = x.nonzeros
                mass[k].index_put_((ids[tok], unit), val, accumulate=True)
        n += len(a)
        if progress.due() or n == total:
            rate = n / (time.time() - t0)
            progress.say(f"universality: {n:,}/{total:,} tokens | {rate:,.0f} tok/s | ETA {fmt_eta((total - n) / rate)}")
    return dict(corr=corr, fired={k: v.cpu() for k, v in fired.items()}, mass={k: v.cpu() for k, v in mass.items()},
                n_tokens=n, groups=groups, seconds=time.time() - t0)


def features(sae, h):
    """An SAE's features on activations h (N, d) as Acts. On a CPU they come from the fused training
    step's encoder (lab/sae_fast.py: bf16 finds the active features where that is fast, their values
    are recomputed in float32), which never writes out the dense (N, F) array, most of it zeros."""
    if h.device.type != "cpu":
        return Acts(sae.encode(h))
    rows, _, cols, vals = sae_fast.encode_sparse(sae, h.float() * sae.act_scale - sae.b_dec, fast_bf16(h.device),
                                                 chunk=1024, dense_above=1.0)
    return Acts.from_nonzeros(rows.long(), cols.long(), vals, (len(h), sae.cfg.n_features))


def universality(p, seed, n_resamples=1000):
    """For each alive unit of model A (fired on at least MIN_ACTIVE tokens; the paper's ultralow-density
    cluster left out of the features, where there is one), its best-correlated alive unit of the
    other set: B's features, B's neurons, or the second SAE's features on A. Beside each best
    correlation, the same on n_resamples resamples of the groups of documents (the same resamples
    for every kind, so that differences between kinds are paired; a unit silent in a resample
    filled, resampled_best), and the share of the units' resamples that were silent. p:
    universality_pass's result."""
    n, G = p["n_tokens"], p["groups"]
    draws = torch.from_numpy(document_weights(np.random.default_rng(seed), G, n_resamples))
    out = {}
    for i, (kind, a, b) in enumerate((("features", "A", "B"), ("neurons", "neurons A", "neurons B"),
                                      ("same LM", "A", "same LM"))):
        density = p["fired"][a].double().numpy() / n
        keep = p["fired"][a] >= MIN_ACTIVE
        cluster = analyze.ultralow_cluster(density) if kind != "neurons" else None
        if cluster:
            keep &= ~torch.from_numpy(cluster["members"])
        rows, cols = keep.nonzero().squeeze(1), (p["fired"][b] >= MIN_ACTIVE).nonzero().squeeze(1)
        best, match, resampled, silent = resampled_best(p["corr"][kind], rows, cols, draws,
                                                        np.random.default_rng([seed, i]))
        out[kind] = dict(units=rows, best=best.numpy(), match=match, total=len(density), density=density[rows.numpy()],
                         resampled=resampled, silent=float(silent.mean()),
                         ultralow=int(cluster["members"].sum()) if cluster else 0)
        if f"{kind}, other tokens" in p["corr"]:
            out[kind]["chance"] = float(p["corr"][f"{kind}, other tokens"].correlations()[rows][:, cols].max(1).values.median())
    return out


def resampled_best(corr, rows, cols, draws, rng):
    """corr.best_matches (lab/matching.py) on the resamples draws (R, groups), with a row unit that is
    0 on every token of a resample (its sum of squares over the drawn groups is 0; a ReLU feature
    whose documents were all left out) filled from its own resamples (lab/stats.fill_missing), not
    scored 0. Returns (best, match, resampled (R, len(rows)) numpy, silent (R, len(rows)) bool)."""
    best, match, resampled = corr.best_matches(rows, cols, draws)
    silent = (draws.double() @ corr.sa2[:, rows.to(corr.sa2.device)].double().cpu() == 0).numpy()
    return best, match, fill_missing(np.where(silent, np.nan, resampled.numpy()), rng), silent


def median_ci(r, lo=0.0, hi=1.0):
    """The median best correlation of r's units with a density in [lo, hi), the 95% interval of the
    resampled medians and the count; None below MIN_UNITS units."""
    sel = in_bin(r, lo, hi)
    if sel.sum() < MIN_UNITS:
        return None
    resampled = np.nanmedian(r["resampled"][:, sel], axis=1)   # (NaN: a unit silent on every resample)
    return dict(median=float(np.median(r["best"][sel])), ci=list(interval(resampled)),
                n=int(sel.sum()))


def clear_margin(u):
    """Whether features beat neurons by a clear margin: the 95% interval of their difference above
    CLEAR_MARGIN overall, and above 0 in every density bin where both kinds have MIN_UNITS units."""
    bins = [difference_ci(u["features"], u["neurons"], lo, hi) for lo, hi in zip(DENSITY_BINS, DENSITY_BINS[1:])]
    overall = difference_ci(u["features"], u["neurons"])
    return bool(overall and overall["ci"][0] > CLEAR_MARGIN and all(b["ci"][0] > 0 for b in bins if b))


def in_bin(r, lo, hi):
    """Which of r's units have a density in [lo, hi) (in [lo, 1] for the last bin)."""
    return (r["density"] >= lo) & ((r["density"] < hi) | (hi >= 1))


def difference_ci(a, b, lo=0.0, hi=1.0):
    """median(a) - median(b) over the units with a density in [lo, hi), with the 95% interval of the
    paired resamples; None where either kind has fewer than MIN_UNITS units."""
    sa, sb = in_bin(a, lo, hi), in_bin(b, lo, hi)
    if min(sa.sum(), sb.sum()) < MIN_UNITS:
        return None
    diffs = np.nanmedian(a["resampled"][:, sa], axis=1) - np.nanmedian(b["resampled"][:, sb], axis=1)
    return dict(value=float(np.median(a["best"][sa]) - np.median(b["best"][sb])),
                ci=list(interval(diffs)))
