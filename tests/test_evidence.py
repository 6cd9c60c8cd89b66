"""The controlled comparisons, on a constructed text where the answer is known: some units are
monosemantic by construction, others mixtures of several meanings at the same density, and the
three measures (the lexical score at matched density, precision per activation level, grounding in
the model's logit effects) must rank the first above the second."""
import os
import shutil

import numpy as np
import pytest
import torch

import analyze
from lab import explainer, grounding, measure, resampling, specificity, top_random

N_UNITS = 12          # of each kind
MIX = 8               # meanings per mixture unit: more than an explanation's 5 rows can list
EOT = 300


def constructed(n=48000, q=0.15, seed=0):
    """Tokens: 12 + 12 x 8 trigger tokens, each always followed by its own successor token, among
    filler; a document every 300 tokens. Unit u < 12 (monosemantic) fires on trigger u; unit 12 + m
    (a mixture) on any of its 8 triggers, each 1/8 as common, so every unit fires equally often.
    Returns tokens, acts (n, 24), the triggers of each unit and the successor of each trigger."""
    rng = np.random.default_rng(seed)
    n_trig = N_UNITS * (1 + MIX)
    weights = np.r_[np.ones(N_UNITS), np.full(N_UNITS * MIX, 1 / MIX)]
    successor = n_trig + np.arange(n_trig)
    tokens, prev_trigger = np.empty(n, np.int64), -1
    for i in range(n):
        if i % 300 == 0:
            tokens[i], prev_trigger = EOT, -1
        elif prev_trigger >= 0:
            tokens[i], prev_trigger = successor[prev_trigger], -1
        elif rng.random() < q:
            tokens[i] = prev_trigger = rng.choice(n_trig, p=weights / weights.sum())
        else:
            tokens[i] = rng.integers(2 * n_trig, EOT)
    triggers = [[u] for u in range(N_UNITS)] + [list(N_UNITS + m * MIX + np.arange(MIX)) for m in range(N_UNITS)]
    strength = 1 + 0.5 * rng.random((n, 1))
    acts = np.stack([np.isin(tokens, t) for t in triggers], 1) * strength
    return tokens, torch.from_numpy(acts).float(), triggers, successor


@pytest.fixture(scope="module")
def world():
    tokens, acts, triggers, successor = constructed()
    n = len(tokens)
    halves = analyze.window_halves(n, 64)
    next_ids, counted = measure.next_rows(tokens, EOT)
    s = measure.measure([(i, {"u": acts[i:i + 512]}) for i in range(0, n, 512)], n, halves, np.zeros((n, 0), bool),
                        16, (40, 20), next_ids=next_ids, n_next=len(counted))["u"]
    return dict(tokens=tokens, acts=acts, triggers=triggers, successor=successor, stats=s, halves=halves,
                next_ids=next_ids, counted=counted)


def test_the_construction_has_equal_densities(world):
    d = world["stats"].fired.double() / len(world["tokens"])
    assert (d / d.mean() - 1).abs().max() < 0.2 and d.mean() > 0.005    # equal in expectation, up to sampling


def test_sparsify_keeps_each_tokens_k_largest():
    h = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 4.0]])
    assert torch.equal(analyze.sparsify(h, 2), torch.tensor([[0.0, 3.0, 0.0, 2.0], [5.0, 0.0, 0.0, 4.0]]))
    assert torch.equal(analyze.sparsify(h, 1), torch.tensor([[0.0, 3.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0]]))
    # a zero among the k largest stays zero (a ReLU's silence is not made to fire)
    assert (analyze.sparsify(h, 4) > 0).sum() == (h > 0).sum()


def test_lexical_score_at_matched_density_ranks_monosemantic_units_first(world):
    tokens, acts, s = world["tokens"], world["acts"], world["stats"]
    ctx = 16
    score_ctx = np.flatnonzero(world["halves"][::ctx] == measure.SCORE)
    pool = dict(ctx=score_ctx[:100], acts=acts.view(-1, ctx, acts.shape[1])[score_ctx[:100]])
    prev = np.concatenate([[EOT], tokens[:-1]])
    text = explainer.HeldOut(tokens, prev, np.zeros((len(tokens), 0), bool), EOT + 1, ctx)
    res = top_random.score_units(range(2 * N_UNITS), s, pool, text, 20, 20, 5)
    mono, mixed = res[:N_UNITS], res[N_UNITS:]
    best_mixed = max(r["score"] for r in mixed)
    assert min(r["score"] for r in mono) > 0.95 and best_mixed < min(r["score"] for r in mono) - 0.05
    density = (s.fired.double() / len(tokens)).numpy()
    d = resampling.matched_difference(mono, mixed, density, density, n=200, min_units=10)
    assert len(d["bins"]) == 1 and d["ci"][0] > 0.1       # one shared bin, features clearly ahead
    assert d["value"] == pytest.approx(np.median([r["score"] for r in mono]) - np.median([r["score"] for r in mixed]))
    # swapped, the sign follows; with too few units in a bin there is no comparison
    assert resampling.matched_difference(mixed, mono, density, density, n=50)["value"] == pytest.approx(-d["value"])
    assert np.isnan(resampling.matched_difference(mono[:3], mixed[:3], density, density, n=10)["value"])


def test_precision_per_activation_level_ranks_monosemantic_units_first(world):
    """Predicate r holds on unit r's trigger and on the first trigger of mixture r: the monosemantic
    unit fires only where it holds, at every level; the mixture on it an eighth of the time."""
    tokens, acts, triggers = world["tokens"], world["acts"].numpy(), world["triggers"]
    labels = np.stack([np.isin(tokens, [triggers[r][0], triggers[N_UNITS + r][0]]) for r in range(N_UNITS)], 1)
    docs = np.cumsum(tokens == EOT)
    mono, mixed = acts[:, :N_UNITS], acts[:, N_UNITS:]
    lv = specificity.precision_levels(dict(features=mono, neurons=mixed, sparse_neurons=mixed[:, ::-1]), labels, docs,
                                      n=200)
    assert np.allclose(lv["area"]["features"], 1.0) and (lv["area"]["neurons"] < 0.2).all()
    assert abs(np.nanmean(lv["curves"]["neurons"]) - 1 / MIX) < 0.05
    assert (lv["area"]["sparse_neurons"] == 0).all()     # another mixture's unit: never where the predicate holds
    d = lv["difference"]["features_minus_neurons"]      # paired per predicate, and their mean
    assert np.allclose(d["per_predicate"], 1 - lv["area"]["neurons"])
    assert d["value"] == pytest.approx(d["per_predicate"].mean())
    assert 0.75 < d["ci"][0] <= d["value"] <= d["ci"][1] < 0.95 and (d["per_predicate_ci"][:, 0] > 0.6).all()
    assert lv["difference"]["features_minus_sparse_neurons"]["value"] == 1 and set(lv["difference"]) == {
        "features_minus_neurons", "features_minus_sparse_neurons"}          # no null given: no null's pairs
    # a unit that never fires has no level at all: area 0 on the data and on every resample, and it loses
    lv = specificity.precision_levels(dict(features=mono, neurons=0 * mixed), labels, docs, n=20)
    assert (lv["area"]["neurons"] == 0).all() and lv["difference"]["features_minus_neurons"]["ci"] == (1, 1)
    # the predicates: rare enough and on enough tokens of each half
    halves = world["halves"]
    rare = np.zeros((len(tokens), 3), bool)
    rare[:80, 0] = rare[::150, 1] = rare[::2, 2] = True        # too few in the score half; rare; too common
    assert specificity.rare_predicates(rare, halves) == [1]


def test_a_predicate_left_out_of_a_resample_does_not_pull_the_difference_down():
    """20 documents. Each of 4 predicates holds in one document only, where its feature fires on it
    alone (area 1) and its neuron on it and on much else (area ~0.14); 4 more hold in every document,
    where feature and neuron are the same unit (difference 0). A resample leaves out a one-document
    predicate's document a third of the time: there the feature fires nowhere. Scored 0 (the old
    rule), the lower ends fall to 0; left out, the mean is over the predicates that are left, most of
    them the 4 at 0; filled from the predicate's own resamples, the interval stays near the estimate
    (its width: a document drawn twice or thrice makes the neuron more precise)."""
    rng, n = np.random.default_rng(0), 20 * 500
    docs = np.arange(n) // 500
    labels = np.stack([(docs == 3 * r) & (rng.random(n) < 0.2) for r in range(4)]
                      + [rng.random(n) < 0.02 for _ in range(4)], 1)
    feature = labels * (1 + rng.random(labels.shape))
    elsewhere = (~labels & (rng.random(labels.shape) < 0.06)) * (1 + rng.random(labels.shape))
    neuron = feature + elsewhere * (np.arange(8) < 4)
    lv = specificity.precision_levels(dict(features=feature, neurons=neuron), labels, docs, n=300)
    d = lv["difference"]["features_minus_neurons"]
    assert np.allclose(lv["area"]["features"], 1) and 0.35 < d["value"] < 0.45 and (d["per_predicate"][4:] == 0).all()
    assert d["ci"][0] > d["value"] - 0.1 and (d["per_predicate_ci"][:4, 0] > 0.5).all()
    # the old rule, by hand: area 0 where the feature has no level on a resample
    weights = np.vstack([np.ones(20), specificity.document_weights(np.random.default_rng(0), 20, 300)])
    area = lambda a: specificity.level_area(specificity.level_shares(a, labels, docs, weights))
    old = (np.nan_to_num(area(feature)) - area(neuron))[1:]
    assert np.percentile(old[:, 0], 2.5) < 0.05 and np.percentile(old.mean(1), 2.5) < d["value"] - 0.15
    left_out = np.nanmean((area(feature) - area(neuron))[1:], 1)        # the mean over the predicates left
    assert np.percentile(left_out, 2.5) < d["value"] - 0.15


def test_the_null_fires_as_often_as_each_feature_and_is_picked_by_f1():
    """thresholds: each random direction fires on density x S of the S sampled tokens; best_by_f1
    picks the unit with the best F1 among the alive ones."""
    proj = torch.randn(1000, 5, generator=torch.Generator().manual_seed(0))
    density = np.array([0.1, 0.02, 0.5, 0, 1e-5])
    t, rate = specificity.thresholds(proj, density)
    assert (proj > t).sum(0).tolist() == [100, 20, 500, 0, 1] and rate.tolist() == [0.1, 0.02, 0.5, 0, 0.001]
    hit, fired = torch.tensor([[10, 0], [10, 5], [40, 5]]), torch.tensor([10, 100, 400])
    holds = torch.tensor([40, 10])
    # F1: unit 0 (precision 1, recall 1/4) 0.4 and unit 2 (1/10, 1) 0.18 on the first; unit 0 is dead
    assert specificity.best_by_f1(hit, fired, holds, torch.tensor([True, True, True])).tolist() == [0, 1]
    assert specificity.best_by_f1(hit, fired, holds, torch.tensor([False, True, True])).tolist() == [2, 1]


def test_grounding_ranks_monosemantic_units_first_and_random_effects_score_zero(world):
    """Logit effects: one unit of activation raises the successors of the unit's triggers, a mixture's
    each an eighth as much (its output serves 8 meanings), against the same background of unrelated
    effects. Where a unit fires, its successors follow: that is what the lift reads off the text."""
    s, counted, successor = world["stats"], world["counted"], world["successor"]
    rng = np.random.default_rng(1)
    effects = 0.03 * rng.standard_normal((2 * N_UNITS, len(counted)))
    for u, trig in enumerate(world["triggers"]):
        effects[u, np.searchsorted(counted, successor[trig])] += 1 / len(trig)
    total = np.bincount(world["next_ids"], minlength=len(counted) + 1)
    n = len(world["tokens"])
    r = grounding.scores(s.next_counts, total, n, torch.from_numpy(effects)).numpy()
    assert r[:N_UNITS].min() > 0.8 and r[:N_UNITS].min() > r[N_UNITS:].max() + 0.2     # (0.87-0.91 vs 0.51-0.59)
    noise = grounding.scores(s.next_counts, total, n, torch.from_numpy(rng.standard_normal(effects.shape))).numpy()
    assert abs(np.median(noise)) < 0.05 and np.abs(noise).max() < 0.2
    # the counts: how often each counted token follows where each unit fires, exactly
    nxt = np.append(world["tokens"][1:], EOT)
    fires = world["acts"].numpy() > 0
    j = np.searchsorted(counted, successor[0])
    assert s.next_counts[j, 0] == (fires[:, 0] & (nxt == successor[0])).sum() >= 0.99 * s.fired[0]
    assert s.next_counts.sum(0).tolist() == s.fired.float().tolist()   # every firing token counted once
    # a unit seen nowhere, or with a flat lift, scores 0 rather than noise
    assert grounding.scores(torch.zeros(len(counted) + 1, 1), total, n, torch.ones(1, len(counted)))[0] == 0


def test_the_control_is_compare_pys_random_model_and_its_sae_when_they_are_there(tiny_sae, tmp_path):
    """Without lab/compare.py's runs the control is the LM's own initial weights; with them, its
    lm_random and sae_random (here copies of the trained model and SAE, so the control must agree
    with the model instead of scoring 0: proof that those are the files read)."""
    out = str(tmp_path / "out")
    for folder in ("data", "lm", "sae"):
        shutil.copytree(os.path.join(tiny_sae, folder), os.path.join(out, folder))
    cfg = analyze.AnalyzeConfig(out=out, device="cpu", tokens=8192, bootstrap=20)
    run = analyze.load_run(cfg)
    m = analyze.measured(cfg, run)
    _, sae, where = grounding.control_model(out, run)
    assert sae is None and where.startswith("the LM's initial weights")
    shutil.copytree(os.path.join(out, "lm"), os.path.join(out, "lm_random"))
    shutil.copytree(os.path.join(out, "sae"), os.path.join(out, "sae_random"))
    g = grounding.measure_grounding(out, run, m, analyze.neuron_kinds(m.sparse_k))
    assert g["control_from"] == "lm_random and sae_random/F1024"
    median = lambda part, kind: np.median(g[part][kind]["scores"])
    assert median("control", "features") == pytest.approx(median("model", "features"), abs=0.02)
    assert median("model", "features") > 0.1


def test_matched_density_reports_its_weighting_beside_the_others_and_a_regression():
    """Bins of one density each, so every estimate is known by hand: the features ahead by 0.1 at every
    density gives 0.1 however the bins are weighted and by the regression (score linear in log
    density); ahead by 0.2 in one bin and behind by 0.1 in the other, each weighting gives its own
    weighted mean of the two."""
    values = (1e-4, 1e-2)
    def kind(counts, shift):   # units of each density, their scores falling with log density
        d = np.repeat(values, counts)
        return [dict(unit=i, score=0.5 - 0.1 * np.log10(d[i]) + shift(d[i])) for i in range(len(d))], d
    neurons, dn = kind((10, 40), lambda d: 0.0)
    features, df = kind((30, 20), lambda d: 0.1)
    m = resampling.matched_difference(features, neurons, df, dn, n=50)
    assert m["value"] == pytest.approx(0.1)
    assert {k: round(o["value"], 9) for k, o in m["others"].items()} == {
        "by_features_counts": 0.1, "by_other_counts": 0.1, "regression": 0.1}
    features, df = kind((30, 20), lambda d: 0.2 if d < 1e-3 else -0.1)
    m = resampling.matched_difference(features, neurons, df, dn, n=50)
    assert m["value"] == pytest.approx((10 * 0.2 + 20 * -0.1) / 30)            # the smaller count of each bin
    assert m["others"]["by_features_counts"]["value"] == pytest.approx((30 * 0.2 + 20 * -0.1) / 50)
    assert m["others"]["by_other_counts"]["value"] == pytest.approx((10 * 0.2 + 40 * -0.1) / 50)
    assert all(o["ci"][0] <= o["value"] + 1e-9 and o["value"] - 1e-9 <= o["ci"][1] for o in m["others"].values())
