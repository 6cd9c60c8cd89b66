"""lab/grounding.py: does what a unit does to the output agree with where it fires?

The lexical score and the predicates read only the text: they can rate a pattern of tokens that
means nothing to the model (the random-weights control's features score highest of all). The paper
argues from the model too: a feature's logit weights (its effect on the next-token logits) predict
the tokens that follow where it fires. Our offline score of that, per unit, compares two vectors
over the vocabulary of next tokens:

    effect(t) = how much one unit of its activation raises the logit of t (lab/steer.logit_effects:
                the model's own reading of the unit, its decoder direction through the MLP's output
                weights and the unembedding)
    lift(t)   = log P(t follows a token where the unit fires) / P(t follows one where it does not)
                (the text's view, counted by the streaming pass: lab/measure.py's next_counts)

and the unit's grounding is their Pearson correlation over the counted next tokens (measure.next_rows:
those following at least 10 held-out tokens). A unit whose output is unrelated to where it fires
scores near 0: any unit scored against another unit's effects (the null, the report's headline
control: it knows the corpus and the model, and says how far a score rises by chance), and every unit
of a model with random weights (a second control that cannot fail: random weights know nothing of
the corpus). Fixed before any result was seen; the same for features, neurons and sparsified
neurons (a sparsified neuron has its neuron's effects, and fires where the neuron is among the k
most active).

The intervals resample units, not the held-out documents as the other measures' do: a unit's score
reads its next-token counts pooled over every held-out token by the streaming pass (measure.pt).
Per group of documents they would be (K + 1) x U counts a group (U: the features, neurons and
sparsified neurons together; K: the counted next tokens, a few thousand), from a pass of their own
through the LM and the SAE, and each resample would recompute every unit's lift and correlation,
what most of this step's time goes to: 1,000 resamples would cost hundreds of times the step.
"""
import os

import numpy as np
import torch

from lab import measure
from lab.formatting import signed
from lab.plumbing import lm_fingerprint, load_checkpoint
from lab.stats import bootstrap, median_difference
from lab.steer import logit_effects, residual_scale
from lab.trained import load_sae
from model import ModelConfig, Transformer

ALPHA = 10.0            # pseudo-tokens drawn from "elsewhere": a unit seen on few tokens has its lift shrunk towards 0
CONTROL_TOKENS = 2**18  # held-out tokens the random-weights control is measured on (its neurons fire on half of them)


def lift(counts, total, n_tokens):
    """(U, K) log lift of each counted next token for each unit. counts (K + 1, U): how often each
    next token follows a token where the unit fires (row K: anything else); total (K + 1,): how often
    it follows any token. Both distributions are smoothed: "elsewhere" by one count per token, "where
    it fires" by ALPHA pseudo-tokens drawn from elsewhere, so a unit seen on few tokens (or on none)
    has a lift near 0 rather than a large noisy one."""
    c = counts.double()
    total = torch.as_tensor(total, dtype=torch.float64)[:, None]
    n_u = c.sum(0)
    elsewhere = (total - c + 1) / (n_tokens - n_u + len(total))
    where = (c + ALPHA * elsewhere) / (n_u + ALPHA)
    return (where.log() - elsewhere.log())[:-1].T


def row_pearson(a, b):
    """Pearson correlation of each row of a with the same row of b (U, K); 0 for a constant row."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    den = (a.square().sum(1) * b.square().sum(1)).sqrt()
    return torch.where(den > 0, (a * b).sum(1) / den.clamp_min(1e-300), torch.zeros_like(den))


def scores(counts, total, n_tokens, effects, chunk=512):
    """(U,) each unit's grounding: the correlation of its lift with its effects (U, K) over the K
    counted next tokens (in chunks of units: a (K, U) float64 lift of 4,096 units is 134 MB)."""
    return torch.cat([row_pearson(lift(counts[:, i:i + chunk], total, n_tokens), effects[i:i + chunk].double())
                      for i in range(0, counts.shape[1], chunk)]).float()


def directions(run, sae=None):
    """{kind: (U, d_mlp)}: each unit's direction in the MLP's activations (a neuron's is its own axis)."""
    eye = torch.eye(run.model.cfg.d_mlp)
    out = {"neurons": eye, "sparse_neurons": eye}
    if sae is not None:
        out["features"] = sae.directions().cpu()
    return out


def grounded(cfg, run, m, neurons):
    """analyze.py's step 4: per alive unit, the correlation of its logit effects with how much more
    often each token follows where it fires. Medians with 95% intervals (units resampled) for features,
    neurons and sparsified neurons, of this model and of the random-weights control, beside the null
    (each unit against another unit's effects). neurons: analyze.neuron_kinds."""
    g = measure_grounding(cfg.out, run, m, neurons)
    summary = summarize(g, cfg.bootstrap, cfg.seed)
    x = {kind: r["scores"] for kind, r in g["model"].items()}
    summary["diff"] = {other: median_difference(x["features"], x[other], cfg.bootstrap, cfg.seed)
                       for other in ("neurons", "sparse_neurons")}
    print(f"grounding: median correlation, features minus neurons {signed(summary['diff']['neurons'])}, "
          f"minus sparsified neurons {signed(summary['diff']['sparse_neurons'])}")
    return dict(summary=summary, units=g, control_from=g["control_from"], control_tokens=g["control_tokens"])


@torch.no_grad()
def measure_grounding(root, run, m, neurons):
    """{"model": per kind, "control": per kind}, per kind dict(units (alive), scores, null (each unit
    against another unit's effects, a fixed random permutation), density) for the features, the
    neurons and the sparsified neurons of the run, and of the random-weights control. neurons:
    analyze.neuron_kinds, the neurons as they are and sparsified (the control's are measured here)."""
    next_ids, counted = measure.next_rows(run.tokens, run.meta["eot"])
    assert np.array_equal(counted, m.next_tokens)
    total = np.bincount(next_ids, minlength=len(counted) + 1)
    stats = {"features": m.stats[run.main_name], "neurons": m.stats["neurons"],
             "sparse_neurons": m.stats["sparse_neurons"]}
    out = {"model": unit_grounding(run.model, directions(run, run.main_sae), stats, total, run.n_tokens, counted,
                                   run.tokens, run.seed)}
    control, control_sae, where = control_model(root, run)
    n = min(CONTROL_TOKENS, run.n_tokens)
    src = dict(neurons)
    if control_sae is not None:
        src["features"] = control_sae.encode
    cstats = measure.measure(measure.stream(control, run.tokens, n, src, run.batch), n, m.halves[:n],
                             np.zeros((n, 0), bool), run.context, (1, 1), next_ids=next_ids[:n], n_next=len(counted))
    ctotal = np.bincount(next_ids[:n], minlength=len(counted) + 1)
    out["control"] = unit_grounding(control, directions(run, control_sae), cstats, ctotal, n, counted,
                                    run.tokens[:n], run.seed)
    out.update(control_from=where, control_tokens=n)
    return out


def summarize(g, n_boot, seed):
    """{"model" and "control": {kind: dict(n, median, ci, null, null_ci)}}: per kind of unit, the
    median score and the null's (each unit against another unit's effects), each with its 95%
    interval (units resampled; None and NaN where no unit is alive)."""
    ci = lambda x: bootstrap(np.median, [x], n_boot, np.random.default_rng(seed)) if len(x) else (float("nan"),) * 2
    median = lambda x: float(np.median(x)) if len(x) else None
    return {part: {kind: dict(n=len(r["scores"]), median=median(r["scores"]), ci=ci(r["scores"]),
                              null=median(r["null"]), null_ci=ci(r["null"]))
                   for kind, r in g[part].items()} for part in ("model", "control")}


def unit_grounding(model, dirs, stats, total, n_tokens, counted, tokens, seed):
    """Per kind of unit of one model: its alive units' grounding and the null. dirs: directions();
    stats: {kind: UnitStats with next_counts}; total, n_tokens: the next-token counts of the tokens
    measured; counted: the next tokens counted (measure.next_rows); tokens: for the layer norm's scale."""
    scale = residual_scale(model, tokens)
    out = {}
    for kind, s in stats.items():
        effects = logit_effects(model, dirs[kind], scale)[:, torch.from_numpy(counted).to(model.unembed.weight.device)]
        effects = effects.float().cpu()
        alive = (s.fired >= measure.MIN_ACTIVE).nonzero().squeeze(1)
        counts = s.next_counts[:, alive]
        shuffled = effects[alive][torch.from_numpy(np.random.default_rng(seed).permutation(len(alive)))]
        out[kind] = dict(units=alive.numpy(), scores=scores(counts, total, n_tokens, effects[alive]).numpy(),
                         null=scores(counts, total, n_tokens, shuffled).numpy(),
                         density=(s.fired[alive].double() / n_tokens).numpy())
    return out


def control_model(out, run):
    """The random-weights control: <out>/lm_random (lab/compare.py trains nothing into it) and its SAE
    <out>/sae_random/F<n> when they are there; else the LM's own initial weights, rebuilt from its
    config and seed exactly as train_lm.py draws them (the same model), with no SAE.
    Returns (model, sae or None, where it came from)."""
    path = os.path.join(out, "lm_random", "ckpt.pt")
    if os.path.exists(path):
        ckpt = load_checkpoint(path, "random-weights LM", "delete it and rerun python -m lab.compare")
        model = Transformer(ModelConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
        sae_path, sae = os.path.join(out, "sae_random", f"F{run.n_features}", "ckpt.pt"), None
        if os.path.exists(sae_path):
            sae, sae_ckpt = load_sae(sae_path, run.device)
            sae = sae if sae_ckpt["lm_fingerprint"] == lm_fingerprint(ckpt) else None
        return model.to(run.device).eval(), sae, "lm_random" + (f" and sae_random/F{run.n_features}" if sae else "")
    with torch.random.fork_rng():   # (the global generator is left as it was)
        torch.manual_seed(run.lm_ckpt["config"]["seed"])
        model = Transformer(ModelConfig(**run.lm_ckpt["model_config"]))
    return model.to(run.device).eval(), None, "the LM's initial weights (its seed, never trained)"
