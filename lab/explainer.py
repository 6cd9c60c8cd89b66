"""lab/explainer.py: the offline explainer, our stand-in for the paper's Claude, which explains a unit
from its examples and simulates it from the explanation. analyze.py (section 3) says what an explanation
is (a lookup table of at most max_entries rows, plus an "anything else" value) and what it is read from.

A row is one integer key: a (previous token, token) pattern (pair_key), a token pattern (token_key) or a
context predicate of lab/predicates.py (context_key); labels (n, P) bool: the predicates on each token.
When several rows match a token, the most specific one explains it (match).

    expl = explain(prev, cur, labels, acts, max_entries, vocab)   # read a unit's examples: the table
    simulate(expl, prev, cur, labels, vocab)                      # its predicted activations elsewhere
    describe(expl, enc, vocab)                                    # the table in words

It reads the held-out text through HeldOut (held_out builds it for a run): position by position, the
token, the one before it and the predicates a row may name. single_token flags the units trivial to
explain, one token carrying their activation.
"""
import dataclasses

import numpy as np

from lab.formatting import token_text
from lab.predicates import PREDICATES, alone_labels

SINGLE_TOKEN_SHARE = 0.8      # a unit is "single-token" when one token carries this much of its activation


def pair_key(prev, token, vocab):
    """The key of the row "token after prev" (below vocab**2)."""
    return prev * vocab + token


def token_key(token, vocab):
    """The key of the row "token", whatever precedes it (after every pair key)."""
    return vocab * vocab + token


def context_key(p, vocab):
    """The key of the row "predicate p holds" (p: an index into PREDICATES; after every token key)."""
    return vocab * (vocab + 1) + p


def explain(prev, cur, labels, acts, max_entries, vocab):
    """Explain a unit from tokens (prev, cur) with predicate labels and activations acts. Rows are
    chosen greedily, each time the pattern that most reduces the squared error of the simulation
    (sum of residuals over the tokens it matches, squared, over their count), so a pattern that an
    earlier row already predicts well is not spent a row on. A token counts towards its pair key, its
    token key and every predicate that holds on it. Returns table()'s dict plus order, the patterns
    in the order chosen: table(order[:e], ...) is the best explanation of e rows."""
    acts = np.asarray(acts, np.float64)
    held, p = np.nonzero(labels)                                  # each (token, predicate) that holds
    owner = np.concatenate([np.arange(len(cur)), np.arange(len(cur)), held])   # the token behind each candidate
    keys, inverse = np.unique(np.concatenate([pair_key(prev, cur, vocab), token_key(cur, vocab),
                                              context_key(p, vocab)]), return_inverse=True)
    count, chosen = np.bincount(inverse), np.zeros(len(keys), bool)
    order = np.zeros(0, np.int64)
    expl, sim = fit(order, prev, cur, labels, acts, vocab)
    for _ in range(max_entries):
        gain = np.bincount(inverse, (acts - sim)[owner]) ** 2 / count
        gain[chosen] = -1
        if len(gain) == 0 or gain.max() <= 1e-12:
            break
        chosen[gain.argmax()] = True
        order = np.append(order, keys[gain.argmax()])
        expl, sim = fit(order, prev, cur, labels, acts, vocab)
    return dict(expl, order=order)


def table(keys, prev, cur, labels, acts, vocab):
    """The explanation with rows keys: each row's value is the mean activation of the tokens it
    explains (match); "anything else" the mean of the tokens no row explains. A row that explains
    nothing (every match taken by a row of higher precedence) is dropped."""
    return fit(keys, prev, cur, labels, acts, vocab)[0]


def fit(keys, prev, cur, labels, acts, vocab):
    """(table(keys, ...), its simulation of these very tokens), from one match."""
    keys = np.sort(keys)
    row = match(keys, prev, cur, labels, vocab)
    counts = np.bincount(row + 1, minlength=len(keys) + 1)      # slot 0: "anything else"
    sums = np.bincount(row + 1, acts, minlength=len(keys) + 1)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    kept = counts[1:] > 0
    return (dict(keys=keys[kept], values=means[1:][kept], counts=counts[1:][kept], default=float(means[0])),
            means[row + 1])


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
    for k in (token_key(cur, vocab), pair_key(prev, cur, vocab)):   # token rows, then (prev, token) rows win
        i = np.searchsorted(keys, k).clip(max=len(keys) - 1)
        hit = keys[i] == k
        row[hit] = i[hit]
    return row


def simulate(expl, prev, cur, labels, vocab):
    """The activations an explanation predicts for tokens (prev, cur) with predicate labels."""
    row = match(expl["keys"], prev, cur, labels, vocab)
    return np.append(expl["values"], expl["default"])[row]     # row -1: the "anything else" value


def describe(expl, enc, vocab):
    """An explanation table as rows of readable patterns, strongest first: a (previous token, token)
    pattern, a token pattern (prev None) or a context predicate (context: its name; prev and token None)."""
    text = lambda t: token_text(enc, t)
    rows = []
    for key, value, count in zip(expl["keys"].tolist(), expl["values"], expl["counts"]):
        if key >= context_key(0, vocab):
            row = dict(prev=None, token=None, context=PREDICATES[key - context_key(0, vocab)])
        else:
            prev, token = divmod(key, vocab)   # prev == vocab: a token key (token_key)
            row = dict(prev=text(prev) if prev < vocab else None, token=text(token), context=None)
        rows.append(dict(row, value=round(float(value), 4), count=int(count)))
    return sorted(rows, key=lambda r: -r["value"]), round(expl["default"], 4)


@dataclasses.dataclass
class HeldOut:
    """The held-out text as an explanation reads it, position by position."""
    tokens: np.ndarray   # (N,) each held-out token
    prev: np.ndarray     # (N,) the token before it (end of text before the first)
    labels: np.ndarray   # (N, P) bool: the predicates a row may name, the same for every unit (P = 0: none)
    vocab: int           # the vocabulary's size: the base of the explanation keys
    ctx: int             # tokens per context: context c is positions c*ctx to (c+1)*ctx - 1
    docs: np.ndarray = None          # (N,) each token's document, 0 to D - 1 (the intervals resample them)
    alone_labels: np.ndarray = None  # (vocab, P) the predicates on each token read alone, as a document of its own
    eot: int = 0                     # the end of text: the "previous token" of a token read alone

    def at(self, contexts):
        """(prev, tokens, labels) at every position of the given contexts, in order."""
        pos = (np.asarray(contexts)[:, None] * self.ctx + np.arange(self.ctx)).ravel()
        return self.prev[pos], self.tokens[pos], self.labels[pos]

    def alone(self, tokens):
        """(prev, tokens, labels) of tokens read out of context."""
        return np.full(len(tokens), self.eot), np.asarray(tokens), self.alone_labels[tokens]


def held_out(cfg, run, m):
    """The run's held-out text, each token's document, and the predicates a row may name: all of them
    (--explain contexts), or none (--explain tokens: token patterns only). m: analyze.measured's."""
    eot, vocab = run.meta["eot"], run.meta["vocab_size"]
    labels = m.proxies if cfg.explain == "contexts" else m.proxies[:, :0]
    alone = alone_labels(run.enc, vocab, eot)[:, :labels.shape[1]]
    docs = np.unique(np.cumsum(run.tokens == eot), return_inverse=True)[1]
    return HeldOut(run.tokens, np.concatenate([[eot], run.tokens[:-1]]), labels, vocab, cfg.context, docs=docs,
                   alone_labels=alone, eot=eot)


def single_token(top, u, text):
    """One token carries SINGLE_TOKEN_SHARE of unit u's activation in its top contexts (top: TopContexts):
    the paper reports those units apart, as they are trivial to simulate."""
    keep = top.val[u] > 0
    cur, acts = text.at(top.ctx[u][keep])[1], top.acts[u][keep].numpy().ravel()
    return bool(acts.sum() > 0 and np.bincount(cur, weights=acts).max() / acts.sum() >= SINGLE_TOKEN_SHARE)
