"""The paper's interpretability protocol (analyze.score_paper), detection and the document resampling,
on constructed units whose answer is known."""
import numpy as np
import pytest
import torch

import analyze
from lab import explainer, measure, resampling, stats, top_random

VOCAB, EOT, CTX = 40, 40, 16


def corpus(n=32768, doc_len=512, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, n)
    tokens[::doc_len] = EOT   # documents of doc_len tokens
    return tokens


def paper_scores(acts, tokens, alone, max_entries=5, seed=0):
    """score_paper and score_units (top-and-random) on a constructed activation matrix acts (N, U); alone
    (vocab + 1, U): each token's activations read out of context."""
    N = len(tokens)
    halves = analyze.window_halves(N, 64)
    batches = [(s, {"u": acts[s:s + 512]}) for s in range(0, N, 512)]
    s = measure.measure(batches, N, halves, np.zeros((N, 1), bool), CTX, k=(40, 20))["u"]
    intervals = measure.interval_pass(batches, {"u": s.max_activation()}, halves, CTX, measure.INTERVALS,
                                      measure.PER_INTERVAL, seed)["u"]
    rng, pools = np.random.default_rng(1), []
    for half, q in ((measure.EXPLAIN, 50), (measure.SCORE, 200)):
        ids = np.sort(rng.choice(np.flatnonzero(halves[::CTX] == half), q, replace=False))
        pools.append(dict(ctx=ids, acts=acts.view(-1, CTX, acts.shape[1])[ids]))
    text = explainer.HeldOut(tokens, np.concatenate([[EOT], tokens[:-1]]), np.zeros((N, 0), bool), VOCAB + 1, CTX,
                             docs=np.cumsum(tokens == EOT), alone_labels=np.zeros((VOCAB + 1, 0), bool), eot=EOT)
    units = range(acts.shape[1])
    paper = analyze.score_paper(units, s, intervals, pools, alone, text, max_entries, seed=seed)
    old = top_random.score_units(units, s, pools[measure.SCORE], text, 20, 20, max_entries, seed=seed)
    return paper, old


def token_unit(tokens, token, value=2.0):
    return value * torch.from_numpy(tokens == token).float()


def alone_of(*token_values):
    """(vocab + 1, U): unit j reads token_values[j][0] alone at token_values[j][1], nothing else."""
    a = torch.zeros(VOCAB + 1, len(token_values))
    for j, (t, v) in enumerate(token_values):
        a[t, j] = v
    return a


def test_a_unit_wrong_in_its_middle_intervals_scores_lower_under_the_papers_sampling():
    """Perfect on its top interval (2.0 on token 7), unpredictable below it (random activations on 2% of
    the tokens): top-and-random scores it on top contexts and random ones, where the middle is rare, and
    rates it well; the paper's sampling scores 24 of its 60 examples in the middle intervals."""
    tokens = corpus()
    rng = np.random.default_rng(3)
    noise = torch.from_numpy(rng.uniform(0.2, 1.5, len(tokens)) * (rng.random(len(tokens)) < 0.02)).float()
    acts = torch.stack([torch.maximum(token_unit(tokens, 7), noise), token_unit(tokens, 7)], 1)
    (mixed, clean), (mixed_old, clean_old) = paper_scores(acts, tokens, alone_of((7, 2.0), (7, 2.0)))
    assert clean["score"] > 0.99 and clean_old["score"] > 0.99   # nothing in the middle: both see it all
    assert mixed_old["score"] > 0.7
    assert mixed["score"] < mixed_old["score"] - 0.15


def test_the_papers_examples_come_from_each_interval_and_the_tokens_alone():
    tokens = corpus()
    scale = torch.from_numpy(np.random.default_rng(4).uniform(0.1, 1, len(tokens))).float()
    acts = (token_unit(tokens, 7) * scale)[:, None]
    N = len(tokens)
    halves = analyze.window_halves(N, 64)
    batches = [(s, {"u": acts[s:s + 512]}) for s in range(0, N, 512)]
    s = measure.measure(batches, N, halves, np.zeros((N, 1), bool), CTX, k=(40, 20))["u"]
    mx = float(s.max_activation()[0])
    intervals = measure.interval_pass(batches, {"u": s.max_activation()}, halves, CTX, 13, 2, 0)["u"]
    ctx_peaks, ctx_half = acts.view(-1, CTX).amax(1), torch.from_numpy(halves[::CTX])
    for h in (measure.EXPLAIN, measure.SCORE):
        for i, t in enumerate(intervals[h]):
            inside = lambda p: (p > i / 13 * mx + 1e-6) & (p <= (i + 1) / 13 * mx + 1e-6)
            drawn = t.val[0] > -float("inf")
            assert drawn.sum() == min(2, int((inside(ctx_peaks) & (ctx_half == h)).sum()))   # 2 when it can
            assert inside(t.acts[0][drawn].amax(1)).all() and (ctx_half[t.ctx[0][drawn]] == h).all()
    alone = torch.arange(VOCAB + 1, dtype=torch.float32)[:, None]   # token t alone: activation t
    order = np.argsort(-alone.numpy(), axis=0, kind="stable")
    ids = np.flatnonzero(halves[::CTX] == measure.EXPLAIN)[:50]
    pool = dict(ctx=ids, acts=acts.view(-1, CTX, 1)[ids])
    ex = analyze.paper_examples(0, analyze.EXPLAIN_SET, s.top[0], measure.stack_intervals(intervals[0]), pool,
                                alone.numpy(), order,
                                np.random.default_rng(0))
    drawn = sum(int(((t.val[0] > -float("inf")) & ~torch.isin(t.ctx[0], s.top[0].ctx[0][:10])).sum())
                for t in intervals[0][:-1])   # the 12 intervals below the top one, none a top context again
    assert drawn >= 20 and len(ex.ctx) == 10 + drawn + 5 and len(np.unique(ex.ctx)) == len(ex.ctx)
    assert (ex.acts[:10 + drawn].max(1) > 0).all()   # the top and interval contexts all fire
    assert ex.alone.tolist() == list(range(VOCAB, VOCAB - 10, -1))   # the 10 top tokens alone, largest first


def test_detection_is_near_one_for_a_planted_explanation_and_one_half_for_another_units():
    tokens = corpus()
    acts = torch.stack([token_unit(tokens, t) for t in range(10)], 1)
    paper, _ = paper_scores(acts, tokens, alone_of(*[(t, 2.0) for t in range(10)]))
    for r in paper:
        assert r["detection"] == pytest.approx(1.0)
        assert r["detect"]["positive"].sum() >= 6 and (~r["detect"]["positive"]).sum() >= 30
    control = np.mean([stats.balanced_accuracy(r["detect_control"]) for r in paper])
    assert abs(control - 0.5) < 0.1
    assert abs(np.mean([r["control"] for r in paper])) < 0.1   # another unit's table predicts nothing


def test_a_resample_of_documents_reweights_each_units_correlation_exactly():
    """resampled() from the per-context sums equals the correlation recomputed on the resampled text
    itself (each context repeated as often as its document was drawn), tokens alone always once."""
    rng = np.random.default_rng(5)
    n_docs, units = 6, []
    for _ in range(3):
        ctx_docs = rng.integers(0, n_docs, 7)
        sim, truth = rng.random((8, 4)), rng.random((8, 4))   # row 0: the tokens alone; rows 1-7: contexts
        sums = np.stack([np.ones_like(sim).sum(1), sim.sum(1), truth.sum(1), (sim * sim).sum(1),
                         (truth * truth).sum(1), (sim * truth).sum(1)], 1)
        units.append(dict(sums={"score": sums}, docs=np.append(-1, ctx_docs), sim=sim, truth=truth))
    w = resampling.document_resamples(n_docs, 20, seed=0)
    assert (w[:, :-1].sum(1) == n_docs).all() and (w[:, -1] == 1).all()
    got = resampling.resampled(units, w, "score")
    for b in range(len(w)):
        for j, u in enumerate(units):
            reps = w[b, u["docs"]].astype(int)
            direct = stats.pearson(np.repeat(u["sim"], reps, 0).ravel(), np.repeat(u["truth"], reps, 0).ravel())
            assert got[b, j] == pytest.approx(direct, abs=1e-9)
    draws = np.array([[0, 0, 2], [1, 2, 2]])
    assert resampling.resampled_medians(got[:2], draws).tolist() == [np.median(got[0, [0, 0, 2]]),
                                                                  np.median(got[1, [1, 2, 2]])]


def test_spearman_ranks_ties_by_their_mean():
    assert stats.mean_ranks([3.0, 1.0, 1.0, 2.0]).tolist() == [4.0, 1.5, 1.5, 3.0]
    assert stats.spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert stats.pearson_from_sums([4, 10, 10, 30, 30, 30]) == pytest.approx(1.0)   # s = t = 1, 2, 3, 4
    assert stats.pearson_from_sums([3, 3, 6, 3, 14, 6]) == 0.0   # a constant simulation: no information


def test_a_unit_is_never_scored_on_the_half_it_was_explained_from():
    """Token 7 in the EXPLAIN half's windows, token 9 in the SCORE half's: the table read off one half
    (token 7) predicts nothing on the other, under either protocol."""
    tokens = corpus()
    score_half = torch.from_numpy(analyze.window_halves(len(tokens), 64) == measure.SCORE)
    acts = torch.where(score_half, token_unit(tokens, 9), token_unit(tokens, 7))[:, None]
    (paper,), (old,) = paper_scores(acts, tokens, alone_of((7, 2.0)))
    assert explainer.token_key(7, VOCAB + 1) in paper["explanation"]["keys"].tolist()
    assert paper["score"] < 0.3 and old["score"] < 0.3
