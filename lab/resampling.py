"""lab/resampling.py: how sure the features-versus-neurons comparison is.

analyze.py scores every unit (score_paper) and draws a sample of each kind; this turns the sample into
medians, means and differences, features minus neurons (and minus the sparsified neurons), each with a
95% interval that resamples what varies: the held-out documents (one resample for every kind, so the
differences are paired) and the units of each kind. A unit's score is a correlation over its scored
contexts, so a resample of documents is a reweighting of its per-context sums (analyze.context_sums):
no unit is explained or simulated again.

    summary = resampling.summarize(compare, n_docs, max_entries, sizes, n, seed)
    summary["median_diff"]            # dict(value, ci): features' median minus the neurons'
    summary["detection"]["features"]  # detection's balanced accuracy, median [95% CI], and its control
    resampling.matched_difference(features, neurons, density_f, density_n, n, seed, n_docs=n_docs)
    resampling.comparison(compare, results, density, n_docs, ...)   # analyze.py's: summarize, by_density, matched

matched_difference is the same difference at matched density: within bins of density, so that "features
beat neurons" cannot merely say "sparse beats dense"; other_matchings measures it otherwise beside it.
"""
import warnings

import numpy as np

from lab.stats import (balanced_accuracy, bootstrap, document_weights, interval, median_difference,
                       pearson_from_sums)


def summarize(compare, n_docs, max_entries, sizes, n, seed):
    """Medians and means per kind with 95% intervals, and the medians' differences, features minus
    neurons (and minus sparsified neurons), overall, without single-token units and at every
    explanation length of sizes (compare: analyze.score_paper's results per kind, a sample of each;
    n_docs: the held-out documents; n resamples). Every interval resamples the held-out documents (one
    resample for every kind: paired) and the units of each kind. Beside them: detection's balanced accuracy, the
    control (another unit's explanation), Spearman's correlation, and top-and-random's score."""
    w, rng = document_resamples(n_docs, n, seed), np.random.default_rng([seed, 3])
    kinds = [kind for kind in compare if compare[kind]]
    single = {kind: np.array([r["single_token"] for r in compare[kind]]) for kind in kinds}
    picks = {(kind, part): np.flatnonzero(~single[kind] if part == "multi" else np.ones(len(single[kind]), bool))
             for kind in kinds for part in ("all", "multi")}
    draws = {key: idx[rng.integers(0, len(idx), (len(w), len(idx)))] for key, idx in picks.items() if len(idx)}
    under = {kind: {e: resampled(compare[kind], w, e) for e in sorted({max_entries, *sizes})} for kind in kinds}
    point = {kind: {e: np.array([r["by_size"][e] for r in compare[kind]]) for e in under[kind]} for kind in kinds}
    med = lambda kind, part, e=max_entries: (float(np.median(point[kind][e][picks[kind, part]])),
                                                 resampled_medians(under[kind][e], draws[kind, part]))
    out = {}
    for kind in kinds:
        out[kind] = dict(n=len(compare[kind]), single=int(single[kind].sum()))
        for part in ("all", "multi"):
            if (kind, part) in draws:
                x, (m, ms) = point[kind][max_entries][picks[kind, part]], med(kind, part)
                means = np.take_along_axis(under[kind][max_entries], draws[kind, part], 1).mean(1)
                out[kind][part] = dict(mean=float(x.mean()), median=m, mean_ci=interval(means), median_ci=interval(ms))
    def diff(a, b, part="all", e=max_entries):   # each kind's medians computed once
        if (a, part) not in draws or (b, part) not in draws:
            return None
        (ma, da), (mb, db) = med(a, part, e), med(b, part, e)
        return dict(value=ma - mb, ci=interval(da - db))
    out.update(median_diff=diff("features", "neurons"), median_diff_sparse=diff("features", "sparse_neurons"),
               median_diff_multi=diff("features", "neurons", "multi"))
    out["by_size"] = {e: {**{kind: med(kind, "all", e)[0] for kind in kinds},
                          **{kind + "_ci": interval(med(kind, "all", e)[1]) for kind in kinds},
                          "diff": diff("features", "neurons", "all", e)} for e in sizes}
    out["detection"] = detection_summary(compare, kinds, w, draws)
    out["beside"] = beside_summary(compare, kinds, n, seed)
    return out


def comparison(compare, results, density, n_docs, max_entries, sizes, n, seed):
    """summarize's dict, with by_density (results: every scored unit per kind; density: {kind: (U,)}) and
    matched: matched_difference, features minus neurons and minus sparsified neurons, at matched density."""
    return dict(summarize(compare, n_docs, max_entries, sizes, n, seed), by_density=by_density(results, density),
                matched={other: matched_difference(results["features"], results[other], density["features"],
                                                   density[other], n, seed, n_docs=n_docs)
                         for other in ("neurons", "sparse_neurons")})


def document_resamples(n_docs, n, seed):
    """(n, n_docs + 1): n resamples of the held-out documents (lab/stats.py's document_weights); the
    last column, 1, weighs the tokens read alone (no document's)."""
    return np.hstack([document_weights(np.random.default_rng([seed, 2]), n_docs, n), np.ones((n, 1))])


def resampled(rs, w, e):
    """(B, units): each unit's score (its explanation of e rows) with the documents weighted by w."""
    return np.stack([pearson_from_sums(w[:, r["docs"]] @ r["sums"][e]) for r in rs], 1)


def resampled_medians(x, draws):
    """(B,) the median of each resample: x (B, units) under each document resample, draws the units drawn."""
    return defined_median(np.take_along_axis(x, draws, 1), 1)


def detection_summary(compare, kinds, w, draws):
    """Detection's balanced accuracy: the median per kind (units with firing and silent contexts),
    features minus each other kind, with the intervals of summarize; the control (another unit's
    explanation) beside."""
    ba = {kind: np.stack([balanced_accuracy(r["detect"], w) for r in compare[kind]], 1) for kind in kinds}
    point = {kind: np.array([balanced_accuracy(r["detect"]) for r in compare[kind]]) for kind in kinds}
    control = {kind: np.array([balanced_accuracy(r["detect_control"]) for r in compare[kind]]) for kind in kinds}
    meds = {kind: resampled_medians(ba[kind], draws[kind, "all"]) for kind in kinds}
    out = {kind: dict(n=int((~np.isnan(point[kind])).sum()), median=float(defined_median(point[kind])),
                      ci=interval(meds[kind]), control=float(defined_median(control[kind]))) for kind in kinds}
    out["diff"] = {other: dict(value=out["features"]["median"] - out[other]["median"],
                               ci=interval(meds["features"] - meds[other]))
                   for other in kinds if other != "features"}
    return out


def beside_summary(compare, kinds, n, seed):
    """The scores beside the paper protocol's Pearson, per kind (median, units resampled): the control
    (another unit's explanation), Spearman's correlation (the paper's statistic), and the top-and-random
    score; and each one's median difference, features minus the other kinds."""
    out = {}
    for key in ("control", "spearman", "top_random"):
        x = {kind: np.array([r[key] for r in compare[kind]]) for kind in kinds}
        ci = lambda v: bootstrap(np.median, [v], n, np.random.default_rng(seed))
        out[key] = {**{kind: dict(median=float(np.median(x[kind])), ci=ci(x[kind])) for kind in kinds},
                    "diff": {other: median_difference(x["features"], x[other], n, seed)
                             for other in kinds if other != "features"}}
    return out


def by_density(results, density, edges=(1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)):
    """Section 3's table and figure: the median score of every scored unit per decade of density. Units
    that fire rarely leave few examples to explain from, so density alone moves the score; comparing
    kinds within a decade takes that out. density: {kind: (U,) each unit's density}."""
    out = []
    for lo, hi in zip(edges, edges[1:]):
        row = dict(lo=lo, hi=hi)
        for kind, rs in results.items():
            x = [r["score"] for r in rs if lo <= density[kind][r["unit"]] < hi]
            row[kind] = (len(x), float(np.median(x)) if x else None)
        out.append(row)
    return out


def matched_difference(a, b, density_a, density_b, n=1000, seed=0, min_units=10, n_docs=0):
    """Features (a) minus another kind (b) at matched density, a protocol fixed before any result was
    seen: every scored unit falls in a bin of half a decade of density (a unit's score falls with its
    density, and within a whole decade density still varies tenfold); in every bin with at least
    min_units of each kind, the difference of the two medians; those averaged, each bin weighted by
    the smaller of its two counts (the units that can be matched there). a, b: analyze.score_paper's
    (or lab/top_random.py's) results; density_*: (U,) each unit's density. Returns dict(value, ci (95%: the units of
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
        w, rng = document_resamples(n_docs, n, seed), np.random.default_rng([seed, 3])
        xa_w, xb_w = resampled(a, w, "score"), resampled(b, w, "score")
        ia, ib = rng.integers(0, len(xa), (n, len(xa))), rng.integers(0, len(xb), (n, len(xb)))
        ci = interval([weighted(xa_w[k, ia[k]], ba[ia[k]], xb_w[k, ib[k]], bb[ib[k]])[0] for k in range(n)])
    else:
        units = lambda i, j: weighted(xa[i], ba[i], xb[j], bb[j])[0]   # i, j: the units drawn of each kind
        ci = bootstrap(units, [np.arange(len(xa)), np.arange(len(xb))], n, np.random.default_rng(seed))
    others = other_matchings(weighted, (xa, ba, xb, bb), (log_density(a, density_a), log_density(b, density_b)),
                             n, seed)
    return dict(value=value, ci=(value, value) if np.isnan(ci[0]) else ci, bins=bins, others=others)


def log_density(results, density):
    """Each scored unit's log10 density (a silent unit's: -12)."""
    units = np.array([r["unit"] for r in results], dtype=np.int64)
    return np.log10(np.maximum(density[units], 1e-12))


def density_bins(results, density):
    """(scores, bins): each scored unit's score and its bin of half a decade of density."""
    return np.array([r["score"] for r in results]), np.floor(2 * log_density(results, density)).astype(int)


def other_matchings(weighted, binned, logd, n, seed):
    """The matched difference measured otherwise, beside the one reported (a protocol fixed before
    looking): the bins weighted by the features' counts, or by the other kind's, and a regression of
    score on kind plus a cubic in log10 density over every scored unit, whose kind coefficient is
    the difference at equal density. Each with its 95% interval (units resampled, its own draws)."""
    xa, ba, xb, bb = binned
    regression = lambda i, j: kind_coefficient(xa[i], logd[0][i], xb[j], logd[1][j])
    ways = {"by_features_counts": lambda i, j: weighted(xa[i], ba[i], xb[j], bb[j], lambda na, nb: na)[0],
            "by_other_counts": lambda i, j: weighted(xa[i], ba[i], xb[j], bb[j], lambda na, nb: nb)[0],
            "regression": regression}
    whole = [np.arange(len(xa)), np.arange(len(xb))]
    return {name: dict(value=float(f(*whole)), ci=bootstrap(f, whole, n, np.random.default_rng([seed, k])))
            for k, (name, f) in enumerate(ways.items())}


def kind_coefficient(xa, da, xb, db):
    """Least squares of score on [1, kind (1: a), d, d^2, d^3] (d: log10 density): kind's coefficient."""
    d, kind = np.concatenate([da, db]), np.concatenate([np.ones(len(da)), np.zeros(len(db))])
    X = np.stack([np.ones_like(d), kind, d, d ** 2, d ** 3], 1)
    return float(np.linalg.lstsq(X, np.concatenate([xa, xb]), rcond=None)[0][1])


def defined_median(x, axis=None):
    """np.nanmedian, NaN without a warning where nothing is defined (a kind with no unit detected)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(x, axis)
