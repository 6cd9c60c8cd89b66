"""lab/top_random.py: top-and-random, a simpler protocol reported beside the paper's, for comparison.

A unit is explained from all its kept top contexts in the EXPLAIN half (AnalyzeConfig.explain_contexts of them) and
scored (Pearson r) on its top contexts of the SCORE half and as many random ones. Scoring on top and
random contexts alone rewards a sparse unit mechanically (its random contexts are silent, so easy to
predict) and never looks at the middle of a unit's range: the paper's protocol (analyze.score_paper)
is the headline, this score stands beside it (lab/resampling.py's beside_summary, units.json).
"""
import numpy as np

from lab import explainer, stats
from lab.measure import EXPLAIN, SCORE


def score_units(units, unit_stats, pool, text, n_top, n_random, max_entries, sizes=(), seed=0):
    """Each unit explained from its top contexts in the EXPLAIN half and scored on its n_top top and
    n_random random contexts of the SCORE half, drawn from the pool (dict(ctx (Q,), acts (Q, ctx, U))),
    none among the top ones. Per unit: score, explanation, by_size {e: the score at e rows}, single_token."""
    top, scored, out = unit_stats.top[EXPLAIN], unit_stats.top[SCORE], []
    for u in units:
        keep, hit = top.val[u] > 0, scored.val[u] > 0
        prev, cur, labels = text.at(top.ctx[u][keep])
        acts = top.acts[u][keep].numpy().ravel()
        longest = explainer.explain(prev, cur, labels, acts, max([max_entries, *sizes]), text.vocab)
        cut = lambda e: explainer.table(longest["order"][:e], prev, cur, labels, acts, text.vocab)
        ids = scored.ctx[u][hit][:n_top].numpy()
        free = np.flatnonzero(~np.isin(pool["ctx"], ids))
        pick = np.random.default_rng([seed, int(u)]).choice(free, min(n_random, len(free)), replace=False)
        truth = np.concatenate([scored.acts[u][hit][:n_top].numpy().ravel(), pool["acts"][pick, :, u].numpy().ravel()])
        seen = text.at(np.concatenate([ids, pool["ctx"][pick]]))
        score = lambda expl: stats.pearson(explainer.simulate(expl, *seen, text.vocab), truth)
        out.append(dict(unit=int(u), score=score(cut(max_entries)), explanation=cut(max_entries),
                        by_size={e: score(cut(e)) for e in sizes}, single_token=explainer.single_token(top, u, text)))
    return out


def add_scores(compared, unit_stats, pool, kind, text, cfg):
    """Top-and-random's score as r["top_random"] of each unit compared by the paper's protocol (compared:
    analyze.score_paper's results for one kind); pool: measure.random_contexts of the SCORE half."""
    units = [r["unit"] for r in compared]
    scores = score_units(units, unit_stats, dict(ctx=pool["ctx"], acts=pool[kind]), text, cfg.score_top,
                         cfg.score_random, cfg.max_entries, seed=cfg.seed)
    for r, o in zip(compared, scores):
        r["top_random"] = o["score"]
