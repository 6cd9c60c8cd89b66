"""lab/stats.py: the analysis' statistics: the correlations, and the percentile bootstrap (every 95% interval).

Each interval says how much a number would move if the held-out sample were drawn again: resample
what was sampled (units, cards or documents) with replacement, recompute the number on each
resample, and keep the middle 95% of the recomputed values (Efron's percentile interval).

    interval(draws)                      # the 2.5th and 97.5th percentiles of the recomputed values
    bootstrap(stat, [x], n, rng)         # stat(x) recomputed on n resamples of x's elements
    bootstrap(stat, [a, b], n, rng)      # ... a and b resampled independently (two kinds of units)
    document_weights(rng, D, n)          # resampled documents, as weights (tokens of a document move together)
    fill_missing(draws, rng)             # a unit undefined on a resample (silent there) takes one of its own draws

The correlations: pearson (the explain-then-simulate score), spearman (the paper's statistic, on
ranks), pearson_from_sums (the same from sums, so a resample is a reweighting), balanced_accuracy
(detection's). One fit: two_gaussians, a two-component mixture fitted by EM (the density histogram's
ultralow cluster).

Every caller draws from a numpy Generator it owns, so a seed gives the same intervals on every run.
"""
import numpy as np


def interval(draws, axis=None):
    """The 95% percentile interval of bootstrap draws: (2.5th, 97.5th percentile), as two floats, or
    a (2, ...) array along axis. NaN draws (a resample where the statistic is undefined) are left out;
    NaN if all are. Each percentile is taken alone, so it is computed in the draws' own precision."""
    draws = np.asarray(draws)
    if axis is not None:
        return np.stack([np.percentile(draws, q, axis=axis) for q in (2.5, 97.5)])
    draws = draws[~np.isnan(draws)]
    if len(draws) == 0:
        return float("nan"), float("nan")
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def bootstrap(stat, samples, n, rng):
    """The 95% interval of stat(*samples), each sample resampled with replacement (its elements, along
    its first axis) n times, one sample after the other, all from the Generator rng."""
    samples = [np.asarray(s) for s in samples]
    return interval([stat(*(s[rng.integers(0, len(s), len(s))] for s in samples)) for _ in range(n)])


def median_difference(a, b, n, seed):
    """median(a) - median(b) and its 95% bootstrap interval, a and b resampled independently."""
    diff = lambda x, y: np.median(x) - np.median(y)
    return dict(value=float(diff(a, b)), ci=bootstrap(diff, [a, b], n, np.random.default_rng(seed)))


def document_weights(rng, n_documents, n):
    """(n, n_documents) how often each document is drawn in each of n resamples of the documents
    with replacement (each row sums to n_documents): tokens of one document are not independent,
    so an interval over tokens resamples whole documents."""
    return rng.multinomial(n_documents, np.full(n_documents, 1 / n_documents), size=n)


def fill_missing(draws, rng):
    """draws (R, U): a statistic of U units (or predicates) on R resamples, NaN where it is undefined
    on a resample (the unit is silent there: every document where it fires was left out). Each NaN
    becomes one of the same unit's defined draws, chosen at random from the Generator rng; a column
    with none stays NaN. Why not 0, or leave it out: a 0 (the correlation of a constant) pulls every
    resampled median of many units down, and leaving the unit out changes which units the median is
    over, always against the rare ones (a unit in one document of many is absent from a third of
    the resamples). Filled, every resample measures the same units, each as often as the text allows
    it to be measured: the interval conditions on the units measured, as the estimate does."""
    out = np.array(draws, dtype=np.float64)
    missing = np.isnan(out)
    for u in np.flatnonzero(missing.any(0) & ~missing.all(0)):
        out[missing[:, u], u] = rng.choice(out[~missing[:, u], u], missing[:, u].sum())
    return out


def two_gaussians(x, steps=300):
    """A mixture of two Gaussians fitted to the 1-D sample x by EM, started at its 10th and 90th
    percentiles: (mixture, mu, r): mixture(t) (len(t), 2) each component's weighted density at t
    (up to a shared constant), mu (2,) the means, r (len(x), 2) each point's responsibilities."""
    mu, sd, w = np.percentile(x, [10, 90]), np.full(2, x.std() / 2 + 1e-3), np.full(2, 0.5)
    mixture = lambda t: w / sd * np.exp(-0.5 * ((np.asarray(t)[:, None] - mu) / sd) ** 2)  # (len(t), 2)
    for _ in range(steps):
        p = mixture(x) + 1e-300
        r = p / p.sum(1, keepdims=True)
        w = r.mean(0)
        mu = (r * x[:, None]).sum(0) / r.sum(0)
        sd = np.sqrt((r * (x[:, None] - mu) ** 2).sum(0) / r.sum(0)).clip(min=0.05)
    return mixture, mu, r


def pearson(a, b):
    """Pearson correlation of two 1-D arrays; 0 where either is constant (no information)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2:
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def spearman(a, b):
    """Spearman's rank correlation (ties share their mean rank): the paper's statistic."""
    return pearson(mean_ranks(a), mean_ranks(b))


def mean_ranks(x):
    """The rank of each element of x, from 1; tied elements share their mean rank."""
    _, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2)[inverse]


def pearson_from_sums(S):
    """The Pearson correlation from sums (..., 6) of n, s, t, s^2, t^2, st; 0 where either is constant."""
    n, s, t, ss, tt, st = np.moveaxis(np.asarray(S, np.float64), -1, 0)
    n = np.maximum(n, 1e-12)
    cov, vs, vt = st - s * t / n, ss - s * s / n, tt - t * t / n
    den = np.sqrt(np.clip(vs, 0, None) * np.clip(vt, 0, None))
    ok = den > 1e-12 * np.maximum(n, 1)
    r = np.where(ok, cov / np.where(ok, den, 1), 0.0)
    return float(r) if r.ndim == 0 else r


def balanced_accuracy(d, w=None):
    """(TPR + TNR) / 2 of outcomes d = dict(positive, predicted, docs) per example (lab/detection.py's detect),
    each weighted by its document's weight in w (B, D + 1) (None: once each); NaN without both
    positive and negative examples."""
    once = w is None
    w = np.ones((1, 1)) if once else w[:, d["docs"]]
    pos, hit = d["positive"], d["positive"] == d["predicted"]
    with np.errstate(invalid="ignore", divide="ignore"):
        ba = ((w * (pos & hit)).sum(-1) / (w * pos).sum(-1) + (w * (~pos & hit)).sum(-1) / (w * ~pos).sum(-1)) / 2
    return float(ba[0]) if once else ba
