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
"""
import warnings

import numpy as np

from lab.stats import (balanced_accuracy, bootstrap, document_weights, interval, median_difference,
                       pearson_from_sums)


def summarize(compare, n_docs, max_entries, sizes, n, seed):
    """Medians and means per kind with 95% intervals, and the medians' differences, features minus
    neurons (and minus sparsified neurons), overall, without single-token units and at every
    explanation length of sizes (compare: analyze.score_paper's results per kind, a
    sample of each; n_docs: the held-out documents; n resamples). Every interval resamples the held-out documents (one resample for
    every kind: paired) and the units of each kind. Beside them: detection's balanced accuracy, the
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


def defined_median(x, axis=None):
    """np.nanmedian, NaN without a warning where nothing is defined (a kind with no unit detected)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(x, axis)
