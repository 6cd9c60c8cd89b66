"""lab/probing.py: k-sparse probing on the context predicates (SAEBench's measure, offline): how well do
the k units of a kind that best separate a predicate ("inside a comment", "base64", ...) predict it, on
text that neither the choice of the units nor the fit saw?

    out = probing(run, m, analyze.neuron_kinds(m.sparse_k), seed, n_boot)
    out["mean"]["features"][5]         # dict(value, ci): mean balanced accuracy over the predicates, k = 5
    out["difference"]["neurons"][1]    # features minus neurons, k = 1, the same documents resampled for both
    probing_markdown(out), probing_summary(out)   # the report's lines, summary.json's entry

The protocol, fixed in code before its result on a real run was seen:
  1. A seeded sample of whole LM windows of each half (analyze.window_halves), up to SAMPLE tokens.
  2. Per kind and predicate, the max(KS) units whose mean activation differs most between the tokens
     where it holds and the others, on the EXPLAIN sample (SAEBench's selection).
  3. The SCORE sample split by documents (end-of-text separated): even-numbered documents fit, odd ones
     test. A logistic regression on the k chosen units (k in KS), fitted on the fit part; the same on
     all the neurons at once, the ceiling a sparse probe could reach from the neurons.
  4. Balanced accuracy on the test part: the mean of the rates of true positives and true negatives at
     the fit's own threshold (probability 1/2, the classes weighted equally in the fit). A predicate may
     hold on a third of the tokens or on one in ten thousand: plain accuracy would reward saying "no",
     while balanced accuracy is 0.5 for a guess whatever the base rate (the detection score's measure,
     and SAEBench's accuracy on its balanced probing sets). 95% intervals: the test documents resampled,
     the same draws for every kind, k and predicate, so differences between kinds are paired.
"""
import time

import numpy as np
import torch

from lab import measure
from lab.measure import EXPLAIN, SCORE
from lab.predicates import PREDICATES
from lab.stats import document_weights, fill_missing, interval

KS = (1, 2, 5)            # units per probe (SAEBench's k)
KINDS = ("features", "neurons", "sparse_neurons")
# tokens sampled, in whole LM windows, of the explain half (every feature encoded: the cost) and of the score half
# (only the chosen ones: cheap, and the rare predicates need its documents); the default run holds ~500k per half
SAMPLE = (2**16, 2**18)
MIN_TOKENS = 20           # a predicate is probed when it holds, and fails, on this many tokens of the explain
                          # sample, of the fit part and of the test part; rarer ones are listed as skipped
L2 = 1e-3                 # penalty on the standardised weights: a unit that separates perfectly keeps a finite weight
STEPS = 50                # L-BFGS iterations per fit: the loss is convex, and the ceiling (most inputs) settles first


@torch.no_grad()
def probing(run, m, neurons, seed=0, n_boot=1000):
    """k-sparse probes of the main SAE's features, the neurons and the sparsified neurons for each
    context predicate frequent enough (MIN_TOKENS), and the all-neuron ceiling. run: lab/measure.py's Run
    (its LM, main SAE, held-out tokens, end-of-text token); m: its Measurement (proxies, halves);
    neurons: analyze.neuron_kinds, {"neurons": fn, "sparse_neurons": fn} of the MLP activations."""
    t0 = time.time()
    explain, score = sample_windows(m.halves, run.model.cfg.block_size, SAMPLE, seed)
    docs = np.cumsum(run.tokens[:run.n_tokens] == run.meta["eot"])[score]
    fit = docs % 2 == 0
    probed = probed_predicates(m.proxies[explain], m.proxies[score], fit)
    out = dict(names=[PREDICATES[j] for j in probed], skipped=[p for j, p in enumerate(PREDICATES) if j not in probed],
               tokens=dict(explain=len(explain), fit=int(fit.sum()), test=int((~fit).sum())),
               documents=dict(fit=len(np.unique(docs[fit])), test=len(np.unique(docs[~fit]))))
    if probed:
        chosen = choose_units(sampled(run, explain, {"features": run.main_sae.encode, **neurons}),
                              m.proxies[explain][:, probed])
        labels = m.proxies[score][:, probed]
        pred = predictions(score_inputs(run, score, chosen, neurons), labels, fit)
        out.update(summarize(pred, labels[~fit], docs[~fit], out["names"], seed, n_boot),
                   units={kind: dict(zip(out["names"], c.tolist())) for kind, c in chosen.items()})
    out["seconds"] = time.time() - t0
    print(f"probing: {len(probed)} of {len(PREDICATES)} predicates probed" + (
        f", features minus neurons at k = {max(KS)}: {fmt(out['difference']['neurons'][max(KS)])}" if probed else "")
        + f" ({out['seconds']:.1f}s)")
    return out


def sample_windows(halves, T, sizes, seed):
    """(explain, score): the positions of a seeded sample of whole LM windows of T tokens, up to
    sizes[h] tokens of half h, in order (whole windows: each token keeps the context the LM saw)."""
    rng = np.random.default_rng(seed)
    window_half = halves[::T]
    out = []
    for h in (EXPLAIN, SCORE):
        windows = np.flatnonzero(window_half == h)
        pick = np.sort(rng.choice(windows, min(len(windows), sizes[h] // T), replace=False))
        out.append((pick[:, None] * T + np.arange(T)).ravel())
    return out


def probed_predicates(explain_labels, score_labels, fit):
    """The predicates that hold, and fail, on at least MIN_TOKENS tokens of each part: the explain
    sample (to choose units), the fit part and the test part of the score sample, as indices."""
    parts = (explain_labels, score_labels[fit], score_labels[~fit])
    enough = [np.minimum(p.sum(0), len(p) - p.sum(0)) >= MIN_TOKENS for p in parts]
    return np.flatnonzero(np.logical_and.reduce(enough)).tolist()


def sampled(run, positions, sources):
    """lab/measure.py's stream over the sampled tokens: its consecutive windows are the sampled ones."""
    return measure.stream(run.model, run.tokens[positions], len(positions), sources, run.batch)


def choose_units(batches, labels):
    """{kind: (P, max(KS)) long}: per predicate, the units with the largest difference of mean
    activation where it holds minus where it does not, largest first. batches: stream's (start,
    {kind: acts (n, U)}); labels (N, P) bool, the streamed tokens' predicates."""
    y = torch.from_numpy(labels).float()
    sums, n_true = {}, y.sum(0)
    for start, acts in batches:
        yb = y[start:start + len(next(iter(acts.values())))]
        for kind, a in acts.items():
            a = a.float().cpu()
            s = torch.cat([yb.T @ a, a.sum(0, keepdim=True)])            # (P + 1, U): where each holds; all
            sums[kind] = s if kind not in sums else sums[kind] + s
    out = {}
    for kind, s in sums.items():
        diff = s[:-1] / n_true[:, None] - (s[-1] - s[:-1]) / (len(y) - n_true)[:, None]
        out[kind] = diff.topk(min(max(KS), diff.shape[1]), dim=1).indices
    return out


def score_inputs(run, positions, chosen, neurons):
    """{kind: (N, P, max(KS))}: each predicate's chosen units on the sampled score tokens, and
    "ceiling": (N, d_mlp) every neuron. Only the chosen features are encoded (measure.select_encoder)."""
    units = {kind: torch.unique(c) for kind, c in chosen.items()}
    on = {kind: u.to(run.device) for kind, u in units.items()}
    sources = {"features": measure.select_encoder(run.main_sae, units["features"]),
               "neurons": lambda h: neurons["neurons"](h)[:, on["neurons"]],
               "sparse_neurons": lambda h: neurons["sparse_neurons"](h)[:, on["sparse_neurons"]],
               "ceiling": neurons["neurons"]}
    acts = {}
    for start, a in sampled(run, positions, sources):
        for kind, x in a.items():   # (filled in place: the ceiling's neurons are the largest thing held)
            acts.setdefault(kind, torch.empty(len(positions), x.shape[1]))[start:start + len(x)] = x.float().cpu()
    return {"ceiling": acts["ceiling"],
            **{kind: acts[kind][:, torch.searchsorted(units[kind], c)] for kind, c in chosen.items()}}


def predictions(inputs, labels, fit):
    """{(kind, k) or "ceiling": (N_test, P) bool}: each fitted probe's answer on each test token.
    inputs: score_inputs'; labels (N, P) bool; fit (N,) bool, the fit part (the rest is the test part)."""
    y, fit = torch.from_numpy(labels), torch.from_numpy(fit)
    out = {}
    for kind in KINDS:
        x = inputs[kind]                                           # (N, P, max(KS))
        P = x.shape[1]
        for k in KS:   # a block-diagonal mask: predicate p's regression reads its own k units only
            out[kind, k] = predict(x[:, :, :k].reshape(len(x), P * k), y, torch.block_diag(*[torch.ones(k, 1)] * P),
                                   fit)
    out["ceiling"] = predict(inputs["ceiling"], y, torch.ones(inputs["ceiling"].shape[1], P), fit)
    return {key: pred.numpy() for key, pred in out.items()}


def predict(x, y, mask, fit):
    """(N_test, P) bool: a logistic regression per predicate, fitted on the fit tokens, predicting
    the others. x (N, D); y (N, P) bool; mask (D, P): the inputs each predicate's regression reads."""
    W, b = fit_logistic(x[fit], y[fit].float(), mask)
    return (x @ W + b)[~fit] > 0


def fit_logistic(x, y, mask):
    """W (D, P), b (P,): P logistic regressions at once on the inputs standardised (to mean 0 and
    variance 1 on these tokens; a constant input reads as 0), each minimising its class-balanced cross
    entropy (the tokens where its predicate holds weigh as much in all as those where it does not)
    plus L2/2 |W|^2, by full-batch L-BFGS; returned for the inputs as they are. x (n, D); y (n, P)
    float 0/1; mask (D, P) which inputs each may use. The P losses are independent: their sum is
    minimised at each one's minimum. The standardisation is folded into the weights, never copying x."""
    mean, scale = x.mean(0), 1 / x.std(0).clamp_min(1e-6)
    pos = y.sum(0)
    weight = torch.where(y > 0, 0.5 / pos, 0.5 / (len(y) - pos))
    W = torch.zeros(mask.shape, requires_grad=True)
    b = torch.zeros(y.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=STEPS, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)
    as_is = lambda: (W * mask * scale[:, None], b - (mean * scale) @ (W * mask))   # (x - mean) * scale @ W + b

    def loss():
        opt.zero_grad()
        w, c = as_is()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + c, y, reduction="none")
        total = (weight * bce).sum() + L2 / 2 * (W * mask).square().sum()
        total.backward()
        return total

    with torch.enable_grad():
        opt.step(loss)
    return tuple(t.detach() for t in as_is())


def summarize(pred, labels, docs, names, seed, n_boot):
    """Balanced accuracy per probe and predicate, its mean over the predicates, and the features'
    mean minus the other kinds', each dict(value, ci), the 95% interval from the test documents
    resampled n_boot times, the same draws for every probe (paired). pred: predictions'; labels
    (N_test, P) bool; docs (N_test,) each test token's document; names: the probed predicates."""
    draws = document_draws(pred, labels, docs, seed, n_boot)          # {key: (P, 1 + n_boot)}
    rng = np.random.default_rng([seed, 1])                            # (predicate_mean's fills)
    point = lambda d: dict(value=float(d[0]), ci=interval(d[1:]))
    mean = lambda d: point(predicate_mean(d, rng))
    by_name = lambda d: {name: point(d[j]) for j, name in enumerate(names)}
    out = dict(names=names, ks=KS, n_boot=n_boot,
               mean={kind: {k: mean(draws[kind, k]) for k in KS} for kind in KINDS},
               per_predicate={kind: {k: by_name(draws[kind, k]) for k in KS} for kind in KINDS},
               difference={other: {k: mean(draws["features", k] - draws[other, k]) for k in KS} for other in KINDS[1:]})
    out["mean"]["ceiling"], out["per_predicate"]["ceiling"] = mean(draws["ceiling"]), by_name(draws["ceiling"])
    return out


def document_draws(pred, labels, docs, seed, n_boot):
    """{key: (P, 1 + n_boot)} each probe's balanced accuracy on the test tokens (column 0) and on
    n_boot resamples of the test documents (lab.stats.document_weights), NaN where a resample holds
    no token where the predicate holds, or none where it fails. pred {key: (N, P) bool}."""
    _, doc = np.unique(docs, return_inverse=True)
    D = int(doc.max()) + 1
    weights = np.vstack([np.ones(D), document_weights(np.random.default_rng(seed), D, n_boot)])   # (1 + B, D)
    per_doc = lambda x: np.stack([np.bincount(doc, x[:, j], minlength=D) for j in range(x.shape[1])])   # (P, D)
    drawn = lambda x: per_doc(x) @ weights.T                             # (P, 1 + B): tokens counted per draw
    holds, fails = drawn(labels), drawn(~labels)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = lambda hit, of: np.where(of > 0, hit / of, np.nan)
        return {key: (rate(drawn(p & labels), holds) + rate(drawn(~p & ~labels), fails)) / 2 for key, p in pred.items()}


def predicate_mean(draws, rng):
    """(1 + B,) the mean over the predicates (rows of draws (P, 1 + B)) of the estimate and of each
    resample. A predicate undefined on a resample (every test document where it holds, or where it
    fails, left out) takes one of its own resampled values there (lab.stats.fill_missing, from rng):
    every resample averages the same predicates, the rare ones too, as the estimate does."""
    return np.hstack([draws[:, :1], fill_missing(draws[:, 1:].T, rng).T]).mean(0)


# ----------------------------------------------------------------------------------------------
# The report's lines and summary.json's entry


def probing_markdown(out):
    """The report's subsection: k rows, the kinds as columns, the differences and the ceiling beside."""
    lines = ["### k-sparse probing", "",
             "How well do the k units of a kind that best separate a predicate predict it on text they were not "
             f"chosen or fitted on (SAEBench's k-sparse probing)? Per predicate, the {max(KS)} units whose mean "
             "activation differs most between the tokens where it holds and the others, chosen on the explain half; "
             "a logistic regression on k of them, fitted on the score half's even-numbered documents and measured on "
             "its odd-numbered ones, by balanced accuracy (0.5 is chance, 1 is every token right; a predicate's base "
             "rate cannot raise it); the same regression on all the neurons at once is the ceiling. Means over the "
             f"predicates probed; 95% intervals resample the {out['documents']['test']} test documents, the same "
             f"draws for every kind ({out['tokens']['explain']:,} explain, {out['tokens']['fit']:,} fit and "
             f"{out['tokens']['test']:,} test tokens, whole LM windows sampled with the run's seed).", ""]
    if not out["names"]:
        return lines + [f"No predicate holds, and fails, on {MIN_TOKENS} tokens of each part of this sample.", ""]
    m, d = out["mean"], out["difference"]
    lines += ["| units per probe | features | neurons | sparsified neurons | features minus neurons | "
              "features minus sparsified neurons |", "| --- | --- | --- | --- | --- | --- |"]
    for k in KS:
        lines.append(f"| k = {k} | " + " | ".join([fmt(m[kind][k], "") for kind in KINDS] +
                                                  [fmt(d[other][k]) for other in KINDS[1:]]) + " |")
    lines += [f"| all the neurons (the ceiling) | - | {fmt(m['ceiling'], '')} | - | - | - |", "",
              f"Probed: {', '.join(out['names'])}." + (f" Skipped, holding or failing on fewer than {MIN_TOKENS} "
                                                       f"tokens of a part: {', '.join(out['skipped'])}."
                                                       if out["skipped"] else ""), ""]
    return lines


def probing_summary(out):
    """summary.json's entry: the means, the differences and every predicate's accuracy, each with its
    interval; the units chosen; what was sampled."""
    number = lambda d: dict(value=d["value"], ci=list(d["ci"]))
    per_k = lambda by_k: {f"k{k}": number(by_k[k]) for k in KS}
    entry = dict(metric="balanced accuracy on the test documents", ks=list(KS), min_tokens=MIN_TOKENS,
                 predicates=out["names"], skipped=out["skipped"], tokens=out["tokens"], documents=out["documents"])
    if out["names"]:
        p = out["per_predicate"]
        entry.update(mean={**{kind: per_k(out["mean"][kind]) for kind in KINDS},
                           "ceiling": number(out["mean"]["ceiling"])},
                     features_minus={other: per_k(out["difference"][other]) for other in KINDS[1:]},
                     per_predicate={name: {**{kind: {f"k{k}": number(p[kind][k][name]) for k in KS} for kind in KINDS},
                                           "ceiling": number(p["ceiling"][name])} for name in out["names"]},
                     units=out["units"])
    return entry


def fmt(d, sign="+"):
    """0.812 [0.790, 0.833], or with a sign for a difference."""
    f = f"{{:{sign}.3f}}"
    return f"{f.format(d['value'])} [{f.format(d['ci'][0])}, {f.format(d['ci'][1])}]"
