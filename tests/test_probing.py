"""k-sparse probing (lab/probing.py) on constructed text whose answer is known: a stand-in LM whose
MLP activations are a fixed row per token, so every unit is a function of the token, and predicates
planted on chosen tokens."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import analyze
from lab import probing
from lab.predicates import PREDICATES
from lab.stats import document_weights, interval
from sae import SAE, SAEConfig

V, EOT, T = 32, 31, 64     # vocabulary, end of text, LM window
N = 640 * T                # held-out tokens: 320 windows of each half


class TokenModel:
    """A stand-in LM: its MLP activations at a token are row `token` of E (V, d)."""

    def __init__(self, E):
        self.E, self.cfg, self.unembed = E, SimpleNamespace(block_size=T), SimpleNamespace(weight=E)

    def mlp_activations(self, idx):
        return self.E[idx]


def text(seed=0):
    """N tokens drawn uniformly from 0..29, a new document every 400 tokens."""
    tokens = np.random.default_rng(seed).integers(0, V - 2, N)
    tokens[::400] = EOT
    return tokens


def world(tokens, planted, E=None):
    """(run, m) for probing: neurons = E's rows (the identity: one neuron per token), features = an
    SAE whose encoder is the identity (a feature per neuron); planted {predicate column: (N,) bool}."""
    E = torch.eye(V) if E is None else E
    sae = SAE(SAEConfig(d_in=V, n_features=V))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(V))
        sae.b_enc.zero_()
    labels = np.zeros((N, len(PREDICATES)), bool)
    for j, y in planted.items():
        labels[:, j] = y
    run = SimpleNamespace(model=TokenModel(E), main_sae=sae, tokens=tokens, n_tokens=N, meta={"eot": EOT},
                          batch=16 * T, device="cpu")
    return run, SimpleNamespace(proxies=labels, halves=analyze.window_halves(N, T))


def probe(tokens, planted, E=None):
    run, m = world(tokens, planted, E)
    return probing.probing(run, m, analyze.neuron_kinds(1), seed=0, n_boot=200)


def test_a_planted_predicate_is_recovered_with_one_unit_and_an_unrelated_one_is_chance():
    """Predicates planted on token 3 (neuron 3 fires exactly there), at random (no unit knows it), on
    40% of token 7's places, and on too few tokens to probe."""
    tokens = text()
    coin = np.random.default_rng(1).random(N) < 0.3             # holds at random: no unit knows it
    part = (tokens == 7) & (np.random.default_rng(2).random(N) < 0.4)   # on 40% of token 7's places only
    rare = np.isin(np.arange(N), np.flatnonzero(tokens == 5)[:30])  # 30 tokens: fewer than 20 in some part
    out = probe(tokens, {0: tokens == 3, 1: coin, 2: part, 3: rare})
    a, b, c = PREDICATES[:3]
    assert out["names"] == [a, b, c] and PREDICATES[3] in out["skipped"]
    for kind in probing.KINDS:
        assert out["units"][kind][a][0] == 3 and out["units"][kind][c][0] == 7
        assert out["per_predicate"][kind][1][a]["value"] > 0.99
        assert abs(out["per_predicate"][kind][1][b]["value"] - 0.5) < 0.03
        # every token where it holds is found, 2% of the others are not: its base rate does not decide it
        assert out["per_predicate"][kind][1][c]["value"] > 0.95
    assert out["documents"]["test"] >= 40 and out["tokens"]["explain"] == N // 2
    assert "| k = 1 |" in "\n".join(probing.probing_markdown(out))
    assert probing.probing_summary(out)["per_predicate"][a]["neurons"]["k1"]["value"] > 0.99


def test_units_are_chosen_on_the_explain_half_only():
    """The predicate holds on token 3 in the explain half and on token 4 in the score half, where
    neuron 4 is ten times as large: over both halves, or on the score half, 4 would be chosen."""
    tokens = text()
    E = torch.eye(V)
    E[4, 4] = 10
    explain = analyze.window_halves(N, T) == probing.EXPLAIN
    out = probe(tokens, {0: np.where(explain, tokens == 3, tokens == 4)}, E)
    for kind in probing.KINDS:
        assert out["units"][kind][PREDICATES[0]][0] == 3
    assert out["per_predicate"]["neurons"][1][PREDICATES[0]]["value"] < 0.6   # token 3 says nothing on the score half


def test_the_ceiling_reads_every_neuron():
    """Each predicate holds on 10 tokens: one neuron finds a tenth of it (0.55), five half (0.75), all
    the neurons all of it."""
    tokens = text()
    out = probe(tokens, {0: np.isin(tokens, np.arange(10)), 1: np.isin(tokens, np.arange(10, 20))})
    for name in out["names"]:
        per = out["per_predicate"]
        assert 0.5 < per["neurons"][1][name]["value"] < 0.6
        assert 0.7 < per["neurons"][5][name]["value"] < 0.8
        assert per["ceiling"][name]["value"] > 0.97
    assert out["mean"]["ceiling"]["value"] > out["mean"]["neurons"][5]["value"] + 0.15


def balanced_accuracy(pred, y):
    return (pred[y].mean() + (~pred[~y]).mean()) / 2


def test_intervals_resample_documents_paired_across_kinds():
    """On 7 documents (odd ids, as the test part's), the intervals equal a direct computation: each
    resample's documents concatenated token by token, every probe scored on the same ones."""
    rng = np.random.default_rng(0)
    sizes = [30, 5, 60, 12, 40, 25, 8]
    docs = np.repeat(2 * np.arange(len(sizes)) + 1, sizes)
    labels = rng.random((len(docs), 2)) < 0.4
    keys = [(kind, k) for kind in probing.KINDS for k in probing.KS] + ["ceiling"]
    pred = {key: labels ^ (rng.random(labels.shape) < 0.1 + 0.1 * i) for i, key in enumerate(keys)}
    out = probing.summarize(pred, labels, docs, ["a", "b"], seed=3, n_boot=300)

    weights = document_weights(np.random.default_rng(3), len(sizes), 300)
    starts = np.r_[0, np.cumsum(sizes)]
    means, diffs, per_a = [], [], []
    for w in weights:
        idx = np.concatenate([np.tile(np.arange(starts[d], starts[d + 1]), c) for d, c in enumerate(w)])
        ba = {key: [balanced_accuracy(p[idx, j], labels[idx, j]) for j in range(2)] for key, p in pred.items()}
        means.append(np.nanmean(ba["features", 2]))
        diffs.append(np.nanmean(np.subtract(ba["features", 5], ba["sparse_neurons", 5])))
        per_a.append(ba["ceiling"][0])
    np.testing.assert_allclose(out["mean"]["features"][2]["ci"], interval(means))
    np.testing.assert_allclose(out["difference"]["sparse_neurons"][5]["ci"], interval(diffs))
    np.testing.assert_allclose(out["per_predicate"]["ceiling"]["a"]["ci"], interval(per_a))
    assert out["per_predicate"]["ceiling"]["a"]["value"] == pytest.approx(balanced_accuracy(pred["ceiling"][:, 0],
                                                                                          labels[:, 0]))


def test_a_predicate_missing_from_a_resample_still_counts_in_its_mean():
    """Predicate a, probed perfectly (1), holds in every document; b only in the first, where each
    probe misses it, and each is right on exactly half of every document's other tokens (0.25). On a
    third of the resamples b is undefined: left out, their mean would be 1; taken as 0, 0.5; filled
    with its own values, every mean is 0.625."""
    rng = np.random.default_rng(0)
    sizes = [30, 6, 60, 12, 40, 24, 8]
    docs = np.repeat(2 * np.arange(len(sizes)) + 1, sizes)
    a = rng.random(len(docs)) < 0.4
    b = np.zeros(len(docs), bool)
    b[:4] = True
    said_b = np.zeros(len(docs), bool)
    for d in np.unique(docs):
        others = np.flatnonzero((docs == d) & ~b)
        said_b[others[::2]] = True                              # half of each document's other tokens
    labels, said = np.stack([a, b], 1), np.stack([a, said_b], 1)
    keys = [(kind, k) for kind in probing.KINDS for k in probing.KS] + ["ceiling"]
    undefined = np.isnan(probing.document_draws({"ceiling": said}, labels, docs, 0, 300)["ceiling"][1, 1:])
    assert 0.2 < undefined.mean() < 0.5
    out = probing.summarize(dict.fromkeys(keys, said), labels, docs, ["a", "b"], seed=0, n_boot=300)
    assert out["mean"]["features"][1]["value"] == pytest.approx(0.625)
    np.testing.assert_allclose(out["mean"]["features"][1]["ci"], (0.625, 0.625))
    np.testing.assert_allclose(out["difference"]["neurons"][5]["ci"], (0, 0))
