"""lab/interp.py: measuring units (MLP neurons or SAE features) on held-out text.

A "unit" is one column of an activation matrix (tokens, units): one of the 512 neurons, one SAE
feature, or a neuron of another model. Everything here takes activations in token order from any
such source, so neurons and features (and model B's or a random model's units) go through the
same code:

    measure         one streaming pass: each unit's density, its top-activating contexts in each
                    half of the held-out data, its sums and firing counts where each predicate holds
    explain         a unit's explanation: a small table of (previous token, token) patterns, token
                    patterns and context predicates with their mean activation, read off its top
                    contexts in one half
    simulate        the activations an explanation predicts; score_units correlates them with the
                    true ones in the other half (the paper's explain-then-simulate, made lexical)
    context_labels  which context predicates (PREDICATES: inside a comment, base64, a URL, ...) hold
                    on each token, read from the decoded text

and helpers around them: context_acts (recompute activations at chosen contexts), select_encoder
(a few features only), ultralow_cluster (the paper's ultralow-density features), precision_recall,
best_f1, specialists and union_counts (activation specificity), bootstrap.

Contexts are the held-out tokens cut into pieces of `ctx` tokens inside the LM's windows (harvest's
consecutive windows): context c covers positions [c*ctx, (c+1)*ctx). The LM's windows alternate
between two halves (even windows: "explain", odd: "score"), so an explanation is never scored on
the tokens it was read from, yet both halves come from the same documents, as the paper draws its
explaining and scoring examples from one distribution. (Splitting by document instead leaves a
feature for a token that only one file uses unscoreable: the file lands in one half.)
"""
import ast
import dataclasses
import io
import keyword
import re
import tokenize
import warnings

import numpy as np
import torch

from model import harvest

EXPLAIN, SCORE = 0, 1     # the two halves of the held-out windows
MEASURE_FORMAT = 5        # bump when what measure() computes or stores changes: measure.pt is keyed on it
SINGLE_TOKEN_SHARE = 0.8  # a unit is "single-token" when one token carries this much of its activation
MIN_ACTIVE = 10           # a unit must fire on this many held-out tokens to be explained and scored
SPECIALIST = 0.5          # a specialist of a predicate fires mostly on it: this share of its firing tokens or more
SIZES = (1, 2, 3, 5, 10, 20)  # explanation lengths (table rows) the interpretability curve is drawn at


# ----------------------------------------------------------------------------------------------
# The streaming pass: a million tokens of 4,096 features do not fit in memory as a dense matrix,
# so each batch of windows is reduced to counts, sums and a running top-k, then thrown away.

@torch.no_grad()
def stream(model, tokens, n_tokens, sources, batch_tokens=1024):
    """Yield (start, {name: acts (n, U)}) for the first n_tokens of tokens, batch by batch, in
    harvest's consecutive windows. sources: {name: fn(neurons (n, d_mlp)) -> acts (n, U)}."""
    for start in range(0, n_tokens, batch_tokens):
        n = min(batch_tokens, n_tokens - start)
        h = harvest(model, tokens[start:start + n], n, device=model.unembed.weight.device)[0]
        yield start, {name: fn(h) for name, fn in sources.items()}


def window_halves(n_tokens, block_size):
    """(n_tokens,) 0 or 1: the half of each token, the parity of its LM window."""
    return (np.arange(n_tokens) // block_size % 2).astype(np.int64)


@dataclasses.dataclass
class TopContexts:
    """A running top-k of contexts per unit: val (U, k) each context's max activation, ctx (U, k)
    its context id, acts (U, k, ctx) its activations. Unordered while streaming; sort_top orders it."""
    val: torch.Tensor
    ctx: torch.Tensor
    acts: torch.Tensor


def new_top(U, k, ctx):
    return TopContexts(val=torch.full((U, k), -float("inf")), ctx=torch.full((U, k), -1, dtype=torch.long),
                       acts=torch.zeros(U, k, ctx))


@dataclasses.dataclass
class UnitStats:
    """What the streaming pass keeps of one source's units (all on the CPU):
        fired_half (2, U)  tokens of each half on which the unit is > 0; fired (U,) their sum
        sum, sumsq (U,)    sums of the activation and of its square
        proxy_sum (U, P)   sums of the activation over the tokens where each proxy holds
        proxy_fired (U, P) tokens where the unit is > 0 and each proxy holds
        top[h]             TopContexts: the contexts of half h with the largest activation
        proxy_count (P,)   tokens where each proxy holds; n_tokens: tokens measured"""
    fired_half: torch.Tensor
    sum: torch.Tensor
    sumsq: torch.Tensor
    proxy_sum: torch.Tensor
    proxy_fired: torch.Tensor
    top: list
    fired: torch.Tensor = None
    proxy_count: torch.Tensor = None
    n_tokens: int = 0

    def max_activation(self):
        """(U,) each unit's largest activation: the first of its sorted top contexts, either half."""
        return torch.maximum(self.top[0].val[:, 0], self.top[1].val[:, 0]).clamp_min(0)

    @staticmethod
    def from_dict(d):
        """The inverse of dataclasses.asdict (measure.pt stores plain dicts and tensors)."""
        return UnitStats(**{**d, "top": [TopContexts(**t) for t in d["top"]]})


@torch.no_grad()
def measure(batches, n_tokens, halves, proxies, ctx=32, k=(40, 20), progress=None):
    """Reduce a stream of (start, {name: acts}) batches to {name: UnitStats}, the top contexts
    keeping k[h] contexts of half h per unit. halves: (n_tokens,) the half of each token (constant
    within a context); proxies: (n_tokens, P) bool. Every statistic is a reduction over tokens (a
    matmul or a sum), so the (tokens, U) matrix of a batch is read a few times and dropped; a batch
    of ~1,000 tokens keeps it in cache. The activations may come from any device; the statistics
    are kept on the CPU."""
    halves_t = torch.from_numpy(halves)
    proxies_t = torch.from_numpy(np.asarray(proxies, dtype=np.float32))
    stats = {}
    for start, acts in batches:
        n = next(iter(acts.values())).shape[0]
        half = halves_t[start:start + n]
        which = torch.nn.functional.one_hot(half, 2).T.float()                  # (2, n)
        where = torch.cat([which, proxies_t[start:start + n].T])                 # (2 + P, n)
        weights = torch.cat([torch.ones(1, n), proxies_t[start:start + n].T])    # (1 + P, n)
        ctx_ids = torch.arange(start // ctx, (start + n) // ctx)
        ctx_half = half[::ctx]                                  # a context's half: its first token's
        for name, a in acts.items():
            a = a.float().cpu()
            if name not in stats:
                stats[name] = new_stats(a.shape[1], proxies_t.shape[1], ctx, k)
            s = stats[name]
            # (rows, n) @ (n, U) products: the fastest reductions over tokens here (bench: 4x (a > 0).sum(0))
            counts = (where @ a.sign().clamp_(min=0)).long()   # exact: a batch's counts are far below 2**24
            s.fired_half += counts[:2]
            s.proxy_fired += counts[2:].T
            sums = (weights @ a).double()
            s.sum += sums[0]
            s.proxy_sum += sums[1:].T
            s.sumsq += torch.linalg.vecdot(a, a, dim=0).double()
            cacts = a.view(-1, ctx, a.shape[1])                 # (contexts, ctx, U)
            cmax = cacts.amax(1)
            for h in (EXPLAIN, SCORE):
                update_top(s.top[h], cmax.masked_fill((ctx_half != h)[:, None], -float("inf")), ctx_ids, cacts)
        if progress is not None:
            progress(start + n)
    for s in stats.values():
        for top in s.top:
            sort_top(top)
        s.fired = s.fired_half.sum(0)
        s.n_tokens = n_tokens
        s.proxy_count = proxies_t.sum(0).double()
    return stats


def new_stats(U, P, ctx, k):
    return UnitStats(fired_half=torch.zeros(2, U, dtype=torch.long), sum=torch.zeros(U, dtype=torch.float64),
                     sumsq=torch.zeros(U, dtype=torch.float64), proxy_sum=torch.zeros(U, P, dtype=torch.float64),
                     proxy_fired=torch.zeros(U, P, dtype=torch.long), top=[new_top(U, kh, ctx) for kh in k])


def update_top(top, cmax, ids, cacts):
    """Merge a batch's contexts into a running top-k per unit (TopContexts). cmax (n, U) each
    context's max activation; ids (n,) their ids; cacts (n, ctx, U) their activations. The k slots
    of a unit are kept unordered (sort_top orders them at the end): a context that makes the cut
    takes the slot of one it pushes out, so only new entries are ever copied, and only units with
    one are touched."""
    k = top.val.shape[1]
    units = (cmax > top.val.amin(1)).any(0).nonzero().squeeze(1)
    if len(units) == 0:
        return
    val = torch.cat([top.val[units], cmax[:, units].T], 1)            # (m, k + n)
    chosen = torch.zeros(val.shape, dtype=torch.bool).scatter_(1, val.topk(k, dim=1).indices, True)
    out_u, slot = (~chosen[:, :k]).nonzero().unbind(1)   # old entries pushed out, row by row ...
    _, new = chosen[:, k:].nonzero().unbind(1)            # ... and as many new contexts let in, in the same rows
    u = units[out_u]
    top.val[u, slot] = cmax[new, u]
    top.ctx[u, slot] = ids[new]
    top.acts[u, slot] = cacts[new, :, u]


def sort_top(top):
    """Order each unit's slots by activation, largest first."""
    order = top.val.argsort(1, descending=True)
    top.val, top.ctx = top.val.gather(1, order), top.ctx.gather(1, order)
    top.acts = top.acts.gather(1, order[..., None].expand_as(top.acts))


def select_encoder(sae, units):
    """An encoder computing only some features: a ReLU SAE needs only their encoder rows; TopK
    needs every pre-activation to know which k win."""
    units = units.to(sae.W_enc.device)   # (unit indices come from the CPU statistics)
    if sae.cfg.activation == "topk":
        return lambda h: sae.encode(h)[:, units]
    W, b = sae.W_enc[units], sae.b_enc[units]
    return lambda h: ((h * sae.act_scale - sae.b_dec) @ W.T + b).relu()


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
# What the statistics say about units


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


def pearson(a, b):
    """Pearson correlation of two 1-D arrays; 0 where either is constant (no information)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2:
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


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


def bootstrap(x, stat, n=1000, seed=0):
    """95% percentile interval of stat(x) over n resamples of x with replacement."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x)
    vals = [stat(x[rng.integers(0, len(x), len(x))]) for _ in range(n)]
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def median_difference(a, b, n=1000, seed=0):
    """median(a) - median(b) and its 95% bootstrap interval (a and b resampled independently)."""
    rng = np.random.default_rng(seed)
    diffs = [np.median(rng.choice(a, len(a))) - np.median(rng.choice(b, len(b))) for _ in range(n)]
    return dict(value=float(np.median(a) - np.median(b)),
                ci=(float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))))


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


# ----------------------------------------------------------------------------------------------
# Context predicates: a fixed vocabulary of per-token properties, read by a program from the decoded
# text of each held-out document. They serve twice: as the contexts an explanation row may name, and
# as the proxies of activation specificity (the paper's Arabic, base64 and DNA features). The list
# and its definitions were declared before any score was seen and are not tuned to the results.
# Python's own tokenizer reads the code of each document that parses; documents that are not valid
# Python (test data, text files) get no Python labels rather than wrong ones. Every other predicate
# is a regular expression over any document. The order matters in one place: when several chosen
# predicates hold on a token, the first in this list explains it (match).

PREDICATE_HELP = {
    "comment": "inside a Python # comment",
    "docstring": "inside a docstring (a Python string that is a statement of its own)",
    "string": "inside any other Python string literal",
    "number": "part of a number literal (any document)",
    "identifier": "a Python name that is not a keyword",
    "keyword": "a Python keyword or soft keyword (def, return, None, match, _)",
    "url": "http://, https:// or www. and the non-space characters after it",
    "email_header": "a line that starts with an email header name and ':' (From:, Subject:, Content-Type:, X-...:)",
    "hexadecimal": r"\x escapes, 0x literals, runs of 8+ hex digits with a digit and a letter a-f",
    "base64": "a run of 24+ characters of A-Z a-z 0-9 + / (= padded) with a digit, an upper- and a lower-case letter",
    "unicode_name": r"a \N{...} escape or a Unicode character name (LATIN SMALL LETTER A, GREEK CAPITAL LETTER OMEGA)",
    "latin_extended": "a non-ASCII Latin character (U+0080-U+024F, U+1E00-U+1EFF: é, ß, ő)",
    "greek": "a Greek character (U+0370-U+03FF)",
    "cyrillic": "a Cyrillic character (U+0400-U+04FF)",
    "hebrew_arabic": "a Hebrew or Arabic character (U+0590-U+06FF)",
    "cjk": "a kana, CJK ideograph, hangul or fullwidth character (U+3040-U+30FF, U+3400-U+9FFF, U+AC00-U+D7AF, "
           "U+FF00-U+FFEF)",
    "other_non_ascii": "any other non-ASCII character (symbols, dashes, emoji, other scripts)",
    "rest_markup": "reST markup: a :role:`text`, a .. directive::, a ``literal``, a section underline (a line of "
                   "3+ of one of = - ~ ^ \" ' * + #)",
    "html_markup": "an HTML/XML tag <...> or an entity (&amp;, &#39;)",
    "license": "a line mentioning a copyright, a licence, a warranty, all rights reserved, permission is hereby "
               "granted or redistribution and use",
    "doctest": "a doctest line: a >>> or ... prompt and the rest of its line",
}
PREDICATES = list(PREDICATE_HELP)

NUMBER = re.compile(r"(?<![\w.])(?:0[xXoObB][0-9a-fA-F_]+|\d[\d_]*(?:\.\d*)?(?:[eE][-+]?\d+)?)")
BLOCKS = {"latin_extended": r"\u0080-\u024f\u1e00-\u1eff", "greek": r"\u0370-\u03ff", "cyrillic": r"\u0400-\u04ff",
          "hebrew_arabic": r"\u0590-\u06ff", "cjk": r"\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uff00-\uffef"}
HEADERS = ("From|To|Cc|Subject|Date|Message-ID|MIME-Version|Received|Return-Path|Reply-To|References|In-Reply-To"
           r"|Content-[\w-]+|X-[\w-]+")
SCRIPTS = "LATIN|GREEK|CYRILLIC|ARABIC|HEBREW|CJK|HANGUL|HIRAGANA|KATAKANA|DIGIT|FULLWIDTH|COMBINING"
# a pattern with a group labels only the group (a doctest's prompt and line, not its indentation)
TEXT_PATTERNS = {
    "number": NUMBER,
    "url": re.compile(r"(?:https?://|www\.)\S+"),
    "email_header": re.compile(rf"^(?:{HEADERS}):.*", re.M | re.I),   # header names are case-insensitive
    "hexadecimal": re.compile(r"(?:\\x[0-9a-fA-F]{2})+|(?<![\w.])0[xX][0-9a-fA-F_]+"
                              r"|(?<![0-9A-Za-z])(?=[0-9a-fA-F]*[0-9])(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}"
                              r"(?![0-9A-Za-z])"),
    "base64": re.compile(r"(?<![A-Za-z0-9+/])(?=[A-Za-z0-9+/]*[0-9])(?=[A-Za-z0-9+/]*[A-Z])(?=[A-Za-z0-9+/]*[a-z])"
                         r"[A-Za-z0-9+/]{24,}={0,2}(?![A-Za-z0-9+/])"),
    "unicode_name": re.compile(rf"\\N\{{[^}}\n]*\}}|\b(?:{SCRIPTS})(?: [A-Z][A-Z0-9-]*){{2,}}\b"),
    **{name: re.compile(f"[{chars}]+") for name, chars in BLOCKS.items()},
    "other_non_ascii": re.compile(r"[^\x00-\x7f" + "".join(BLOCKS.values()) + "]+"),
    "rest_markup": re.compile(r":[A-Za-z][\w.+:-]*:`[^`\n]+`|(?<!\S)\.\. [A-Za-z][\w.+:-]*::|``[^`\n]+``|^(?:"
                              + "|".join(re.escape(c) + "{3,}" for c in "=-~^\"'*+#") + r")[ \t]*$", re.M),
    "html_markup": re.compile(r"<[A-Za-z/!?][^<>\n]*>|&[A-Za-z]+;|&#[0-9]+;"),
    "license": re.compile(r"^.*(?:copyright|licen[cs]e|warrant(?:y|ies)|permission is hereby granted"
                          r"|redistribution and use|all rights reserved).*", re.M | re.I),
    "doctest": re.compile(r"^[ \t]*((?:>>>|\.\.\.) .*)", re.M),
}


def context_labels(tokens, n_tokens, enc, eot):
    """(n_tokens, len(PREDICATES)) bool: which predicates hold on each of the first n_tokens
    held-out tokens. A token is labelled when any character it covers is inside a predicate's span."""
    tokens = np.asarray(tokens[:n_tokens])
    labels = np.zeros((n_tokens, len(PREDICATES)), dtype=bool)
    starts = np.flatnonzero(tokens == eot).tolist() + [n_tokens]
    for s, e in zip(starts[:-1], starts[1:]):
        text, offsets = enc.decode_with_offsets(tokens[s + 1:e].tolist())
        spans = python_spans(text)
        for name, pattern in TEXT_PATTERNS.items():
            spans[name] = [m.span(1 if pattern.groups else 0) for m in pattern.finditer(text)]
        # a token covers [its offset, the next one's), at least the character its bytes are part of
        begin = np.asarray(offsets, dtype=np.int64)
        end = np.minimum(np.maximum(np.append(begin[1:], len(text)), begin + 1), len(text))
        for j, name in enumerate(PREDICATES):
            if spans.get(name):
                inside = np.concatenate([[0], np.cumsum(char_mask(spans[name], len(text)))])
                labels[s + 1:e, j] = inside[end] > inside[begin]    # some character of the token is inside
    return labels


def char_mask(spans, length):
    """(length,) bool: characters inside any of the [start, end) spans."""
    depth = np.zeros(length + 1, dtype=np.int64)
    for a, b in spans:
        depth[a] += 1
        depth[b] -= 1
    return np.cumsum(depth[:length]) > 0


def python_spans(text):
    """{comment, docstring, string, identifier, keyword: [(start, end) character spans]} of a Python
    source, or {} if the text is not Python (ast.parse fails)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # old escape sequences in test files warn
        try:
            ast.parse(text)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return {}
    lines = io.StringIO(text, newline="").readlines()  # split exactly as tokenize will read them
    line_start = np.cumsum([0] + [len(line) for line in lines])
    spans = {"comment": [], "docstring": [], "string": [], "identifier": [], "keyword": []}
    previous = tokenize.NEWLINE
    try:
        for tok in tokenize.generate_tokens(iter(lines).__next__):
            a = line_start[tok.start[0] - 1] + tok.start[1]
            b = line_start[tok.end[0] - 1] + tok.end[1]
            if tok.type == tokenize.COMMENT:
                spans["comment"].append((a, b))
            elif tok.type == tokenize.STRING:
                statement = previous in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
                spans["docstring" if statement else "string"].append((a, b))
            elif tok.type == tokenize.NAME:
                word = keyword.iskeyword(tok.string) or keyword.issoftkeyword(tok.string)
                spans["keyword" if word else "identifier"].append((a, b))
            if tok.type not in (tokenize.COMMENT, tokenize.NL):
                previous = tok.type
    except (tokenize.TokenError, SyntaxError):
        pass  # keep the spans read so far
    return spans
