"""lab/detection.py: detection, the field's current automated interpretability (e.g. EleutherAI's delphi),
measured beside the paper's score: from its explanation alone, tell the contexts where a unit fires from
those where it is silent.

analyze.score_one detects each unit on its SCORE-half examples (drawn across its activation range) and
on up to DETECT_SILENT silent contexts; analyze.score_paper detects it again with another unit's
explanation (the control); lab/resampling.py's detection_summary gives the balanced accuracies' medians.
"""
import numpy as np

from lab import explainer

DETECT_SILENT = 30   # silent contexts a unit's detection is tested on, beside its firing ones


def silent_contexts(u, pool, rng):
    """Up to DETECT_SILENT contexts of the pool (measure.random_contexts) where unit u never fires, drawn
    at random."""
    silent = np.flatnonzero(pool["acts"][:, :, u].amax(1).numpy() <= 0)
    return pool["ctx"][rng.choice(silent, min(DETECT_SILENT, len(silent)), replace=False)]


def detect(expl, ex, silent, text):
    """Tell ex's contexts (analyze.Examples) from the silent ones by explanation expl: the table says
    "fires" where some token matches a row whose value exceeds its "anything else" value. Returns
    dict(positive, predicted, docs) per context, for stats.balanced_accuracy (so a unit's base rate
    does not decide it)."""
    ids = np.concatenate([ex.ctx, silent])
    peak = explainer.simulate(expl, *text.at(ids), text.vocab).reshape(len(ids), text.ctx).max(1)
    return dict(positive=np.append(ex.acts.max(1) > 0, np.zeros(len(silent), bool)),
                predicted=peak > expl["default"] + 1e-9, docs=text.docs[ids * text.ctx])
