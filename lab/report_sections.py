"""lab/report_sections.py: report.md's sections on the measurements, in the paper's order, each a function
returning its lines: what was measured and how, beside the paper's protocol, then its tables.

    losses_section       1. reconstruction and loss recovered
    density_section      2. feature density and the ultralow-density cluster
    interp_section       3. features versus neurons: interpretability, then at matched density
    specificity_section  4. activation specificity, then at every activation level
    grounding_section    7. a unit's logit effects against the tokens that follow where it fires

The summary above them is lab/report.py's; k-sparse probing's lines are lab/probing.py's, the browser's
(5) lab/browser_page.py's, steering's (6) lab/steer.py's.
"""
import numpy as np

from lab.formatting import pattern, shown, signed
from lab.measure import MIN_ACTIVE
from lab.predicates import PREDICATE_HELP
from lab.specificity import SPECIALIST, precision_recall_markdown, specificity_markdown

# What a row of an explanation table may name, for each value of --explain.
EXPLAINS = {"tokens": "a (previous token, token) pattern or a token pattern",
            "contexts": "a (previous token, token) pattern, a token pattern or a context predicate"}


def losses_section(run, res):
    return ["## 1. Reconstruction and loss recovered", "",
            "The SAE's reconstruction replaces the MLP activations on held-out text; the loss it recovers is "
            "(L_ablated - L_SAE) / (L_ablated - L_clean), against zero-ablating the MLP (the paper's lenient "
            "baseline) and mean-ablating it (every neuron at its held-out mean). MSE is in the SAE's normalised "
            "units (predicting 0 scores about 1) and, like FVU, is measured on the loss windows; L0, dead (never "
            f"active) and dense (active on more than 10% of tokens) on all {run.n_tokens:,} held-out tokens. The "
            "neuron row is the basis the SAE competes with.", "", losses_markdown(res["losses"]), ""]


def losses_markdown(r):
    lines = [f"Next-token loss on {r['loss_tokens']:,} held-out tokens: clean {r['clean']:.4f}, "
             f"MLP zero-ablated {r['zero']:.4f}, mean-ablated {r['mean']:.4f}.", "",
             "| units | MSE | FVU | L0 | dead | dense (>10%) | loss | recovered (zero abl.) | recovered (mean abl.) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in r["rows"]:
        lines.append(f"| {row['name']} ({row['units']:,}) | {row['mse']:.4f} | {row['fvu']:.3f} | {row['l0']:.1f} | "
                     f"{row['dead']:,} ({100 * row['dead'] / row['units']:.1f}%) | {row['dense']:,} | "
                     f"{row['loss']:.4f} | {100 * row['rec_zero']:.1f}% | {100 * row['rec_mean']:.1f}% |")
    return "\n".join(lines)


def density_section(res):
    lines = ["## 2. Feature density", "",
             "The fraction of held-out tokens on which each feature fires, as in the paper's histograms. The paper "
             "finds a bimodal picture: real features, plus an ultralow-density cluster that is an artifact of training "
             "(it counts 292 of them in A/1 and leaves them out of its analysis). We look for one with a two-Gaussian "
             "fit of the alive features' log densities, accepted when the fit has two modes at least 1.5 decades apart "
             "with a clear valley between them.", "",
             "![feature density](density.png)", ""]
    for k, d in res["density"].items():
        c = d["cluster"]
        lines.append(f"- F{k}: {d['dead']:,} dead; " + (
            f"ultralow cluster of {c['members'].sum():,} features below density {c['threshold']:.1e} (valley at "
            f"{100 * c['dip']:.0f}% of its peak); encoder-decoder cosine {d['cos_low']:.2f} in it vs "
            f"{d['cos_high']:.2f} for the "
            "others (the paper: the cluster is separable by it)" if c else "no separate ultralow cluster") + ".")
    return lines + [""]


def interp_section(cfg, run, res):
    it, cluster = res["interp"]["summary"], res["density"][run.n_features]["cluster"]
    lines = ["## 3. Features versus neurons: interpretability", "",
             f"The paper's automated interpretability asks a language model to explain a unit from its activating "
             f"examples, then to predict its activations on other examples from the explanation alone. Offline, our "
             f"explanation is a lookup table of at most {cfg.max_entries} rows, each naming "
             f"{EXPLAINS[res['interp']['explain']]} (`--explain {res['interp']['explain']}`), "
             "each with the mean activation of the tokens it matches. The examples are the paper's, drawn the same "
             "way in two halves of the held-out windows: the table is read off 49 in one half (the unit's 10 "
             "top-activating contexts, 2 drawn at random from each of the 12 activation intervals below the top "
             "one, 5 random contexts, its 10 top tokens read out of context) and scored on 60 in the other (6 top, 2 "
             f"per interval, 10 random, the next 20 tokens out of context), contexts of {cfg.context} tokens; the "
             "score is the Pearson correlation of the simulated and the true activations (the paper's Spearman "
             "beside it). Beside them: **detection**, from the table alone telling the contexts where the unit fires "
             "(its top and interval ones) from up to 30 where it is silent (balanced accuracy: 0.5 is chance, "
             "whatever the unit's density); the **control**, each unit scored with another unit's table; and the "
             f"old **top-and-random** score (read off the {cfg.explain_contexts} top contexts, scored on "
             f"{cfg.score_top} top and {cfg.score_random} random ones), which rewards a sparse unit mechanically and "
             f"never scores the middle of its range. {res['interp']['n']} units of each kind, drawn at random among "
             f"the alive ones (active on at least {MIN_ACTIVE} tokens, in both halves"
             f"{', outside the ultralow cluster' if cluster else ''}), "
             f"same table size for both. The 95% intervals resample the held-out documents (the same resample for "
             "every kind: paired) and the units of each kind; those of the control, Spearman and top-and-random "
             "resample units only. Single-token units (one token carries "
             f"{100 * res['interp']['single_token_share']:.0f}% of the activation in their top contexts) are "
             "trivial to simulate; the paper reports them separately, and so do we.", "",
             *(["The paper's explanations are sentences about contexts (\"inside a docstring\", \"base64\"); a "
                "table of tokens alone would favour single-token detectors. So a row may also name one of the context "
                "predicates "
                "of section 4, declared before any score was seen and the same for features and neurons. The rows are "
                "chosen greedily by how much each reduces the simulation's squared error; when several rows match a "
                "token, the most specific explains it: a (previous token, token) row, then a token row, then a "
                "predicate row, and among predicates the one listed first in section 4.", ""]
               if res["interp"]["explain"] == "contexts" else []),
             interp_markdown(it), "", beside_markdown(it), "",
             "The figure: the score distributions of the two samples (all units, then without single-token ones); the "
             "median score as the explanation grows from 1 to 20 rows (a long enough table lists a polysemantic unit's "
             "meanings one by one, so the gap should narrow); and the median score of every scored unit per decade of "
             "density (a unit that fires rarely leaves few examples to explain from and to score on).", "",
             "![interpretability](interp.png)", "",
             "Examples (the best, a median and the worst scored of each kind in the sample); "
             "`a → b` is the pattern 'token b after token a', ⟨comment⟩ a context predicate:", ""]
    lines += examples_markdown(res["interp"]["compare"])
    return lines + ["", "Every alive unit's explanation and score: `units.json`.", ""] + matched_section(run, res)


def matched_section(run, res):
    """Section 3 at matched density: the two controls for density, fixed before any result was seen."""
    it = res["interp"]["summary"]
    return ["### At matched density", "",
            "A feature fires on fewer tokens than a neuron, and a rare unit is easier to describe with a short "
            "table, so the difference above mixes meaning with density. Two controls, fixed before any result "
            "was seen: the neurons sparsified to the features' density (on each token only the "
            f"{res['measure'].sparse_k} most active neurons are kept, {res['measure'].sparse_k} = "
            f"{run.model.cfg.d_mlp} x the features' mean density; scored by the same measure), and the "
            "comparison within bins of half a decade of density (the difference of medians in every bin "
            "with at least 10 units of each kind, averaged with weights the smaller count; all scored units; "
            "95% intervals with the documents and the units resampled):", "",
            matched_markdown(it), "", *other_matchings_markdown(it), ""]


def interp_markdown(s):
    sizes = list(s["by_size"])
    lines = ["| units | n | single-token | mean score [95% CI] | median score [95% CI] | "
             "median, without single-token |", "| --- | --- | --- | --- | --- | --- |"]
    for kind in ("features", "neurons"):
        r = s[kind]
        multi = f"{r['multi']['median']:.3f}" if "multi" in r else "-"
        lines.append(f"| {kind} | {r['n']} | {r['single']} | {r['all']['mean']:.3f} [{r['all']['mean_ci'][0]:.3f}, "
                     f"{r['all']['mean_ci'][1]:.3f}] | {r['all']['median']:.3f} [{r['all']['median_ci'][0]:.3f}, "
                     f"{r['all']['median_ci'][1]:.3f}] | {multi} |")
    d, multi = s["median_diff"], s["median_diff_multi"]
    lines += [f"\nMedian score, features minus neurons: {signed(d)}; without single-token units: "
              + (signed(multi) if multi else "- (one kind has none left)") + ".",
              "", "| explanation rows |" + "".join(f" {e} |" for e in sizes),
              "| --- |" + " --- |" * len(sizes)]
    for kind in ("features", "neurons"):
        lines.append(f"| median score, {kind} |" + "".join(f" {s['by_size'][e][kind]:.3f} |" for e in sizes))
    lines.append("| features minus neurons [95% CI] |" + "".join(
        f" {s['by_size'][e]['diff']['value']:+.3f} [{s['by_size'][e]['diff']['ci'][0]:+.2f}, "
        f"{s['by_size'][e]['diff']['ci'][1]:+.2f}] |" for e in sizes))
    cell = lambda c: f"{c[1]:.3f} (n={c[0]})" if c[0] else "-"
    lines += ["", "| density (all scored units) | features: median score | neurons: median score | sparsified "
              "neurons: median score |", "| --- | --- | --- | --- |"]
    lines += [f"| {row['lo']:g} to {row['hi']:g} | {cell(row['features'])} | {cell(row['neurons'])} | "
              f"{cell(row.get('sparse_neurons', (0, None)))} |" for row in s["by_density"]]
    return "\n".join(lines)


def beside_markdown(s):
    """Detection, the control, Spearman's and top-and-random's medians, per kind, beside the score."""
    kinds = [k for k in ("features", "neurons", "sparse_neurons") if k in s["detection"]]
    d, b = s["detection"], s["beside"]
    cell = lambda x: f"{x['median']:.2f} [{x['ci'][0]:.2f}, {x['ci'][1]:.2f}]"
    lines = ["| | " + " | ".join(k.replace("_", " ") for k in kinds) + " | features minus neurons | "
             "features minus sparsified neurons |", "|---" * (3 + len(kinds)) + "|",
             "| detection, balanced accuracy (units with both kinds of context) | "
             + " | ".join(f"{cell(d[k])} (n={d[k]['n']})" for k in kinds) + " | "
             + " | ".join(signed(d["diff"][k]) if k in d["diff"] else "-" for k in ("neurons", "sparse_neurons")) + " |",
             "| detection with another unit's table (control) | " + " | ".join(f"{d[k]['control']:.2f}" for k in kinds)
             + " | | |"]
    for key, label in (("control", "score with another unit's table (control)"),
                       ("spearman", "Spearman's correlation (the paper's statistic)"),
                       ("top_random", "top-and-random score (the old protocol)")):
        lines.append(f"| {label} | " + " | ".join(cell(b[key][k]) for k in kinds) + " | "
                     + " | ".join(signed(b[key]["diff"][k]) if k in b[key]["diff"] else "-"
                                  for k in ("neurons", "sparse_neurons")) + " |")
    return "\n".join(lines)


def matched_markdown(s):
    """The density-matched comparison: features against the neurons and the sparsified neurons."""
    lines = ["| features against | its median score [95% CI] | features' median minus it [95% CI] | "
             "the same at matched density [95% CI] | density bins compared (lower edge: units of each, the "
             "difference of medians) |",
             "| --- | --- | --- | --- | --- |"]
    for kind, diff in (("neurons", s["median_diff"]), ("sparse_neurons", s.get("median_diff_sparse"))):
        r, m = s.get(kind, {}).get("all"), s["matched"][kind]
        if r is None:
            lines.append(f"| {kind.replace('_', ' ')} | none alive | - | - | - |")
            continue
        bins = ", ".join(f"{lo:.0e}: {na} vs {nb} ({d:+.2f})" for lo, na, nb, d in m["bins"]) or "none"
        lines.append(f"| {kind.replace('_', ' ')} | {r['median']:.3f} [{r['median_ci'][0]:.3f}, "
                     f"{r['median_ci'][1]:.3f}]"
                     f" | {signed(diff)} | {signed(m)} | {bins} |")
    return "\n".join(lines)


def other_matchings_markdown(it):
    """The matched difference measured otherwise, beside the reported weighting (the smaller count of
    each bin, which lets the bins where both kinds are many decide): weighted by the features' counts,
    by the other kind's, and a regression of score on kind plus a cubic in log10 density."""
    lines = []
    for kind in ("neurons", "sparse_neurons"):
        o = it["matched"][kind].get("others")
        if o and not np.isnan(o["regression"]["value"]):
            lines.append(f"Features minus {kind.replace('_', ' ')}, measured otherwise: bins weighted by the "
                         f"features' counts {signed(o['by_features_counts'])}, by the {kind.replace('_', ' ')}' "
                         f"counts {signed(o['by_other_counts'])}; a regression on kind and a cubic in log density "
                         f"{signed(o['regression'])}.")
    return lines


def examples_markdown(compare):
    lines = []
    for kind, rs in compare.items():
        ranked = sorted(rs, key=lambda r: -r["score"])
        for label, r in (("best", ranked[0]), ("median", ranked[len(ranked) // 2]), ("worst", ranked[-1])):
            rows, default = r["rows"], r["otherwise"]
            table = "; ".join(f"{pattern(x, shown)}: {x['value']:.2f}" for x in rows[:5])
            lines.append(f"- {kind[:-1]} #{r['unit']} ({label}, score {r['score']:.2f}"
                         f"{', single-token' if r['single_token'] else ''}): {table}; otherwise {default:.2f}")
    return lines


def specificity_section(sp):
    return [
        "## 4. Activation specificity", "",
        "The paper checks single features against programmatic per-token proxies (Arabic script, base64, DNA). Ours "
        "are a fixed vocabulary of context predicates (`lab/predicates.py`), declared before any score was seen and "
        "not tuned to the results: the Python ones come from Python's own tokenizer run on every held-out document "
        "that parses (so on a corpus without Python they hold nowhere), the others from a regular expression over "
        "any document. A token is labelled when any character it covers is inside the predicate's span.", "",
        *predicates_markdown(), "",
        "Precision and recall, as the paper measures specificity and sensitivity: of the tokens where a unit fires "
        "(activation > 0), the share where the predicate holds (precision), and of the tokens where the predicate "
        "holds, the share where the unit fires (recall). For each predicate, the best feature and the best neuron by "
        "F1 (the harmonic mean of the two); then the specialists, every unit that fires mostly on the predicate "
        f"(precision at least {SPECIALIST:g}, on at least {MIN_ACTIVE} held-out tokens), counted, and the "
        "precision and recall of their union (a token counts when any specialist fires on it). Several features "
        "that split a property between them each have a low recall, their union a high one; a neuron that fires on "
        "a predicate and on much else is no specialist at all.", "",
        precision_recall_markdown(sp), "",
        "Pearson's view: the feature and the neuron whose activation correlates most with each predicate over all "
        "held-out tokens, and the share of their activation that falls where it holds. Pearson r rewards covering "
        "all of a broad predicate, which one dense neuron does more easily than each of the several features that "
        "split it; the share of activation on the predicate is the paper's point, specificity.", "",
        specificity_markdown(sp), "",
        *(["![specificity](specificity.png)", "",
           "The figure: the activations of the best unit by Pearson r where the predicate holds and where it does "
           f"not, for the {len(sp['plotted'])} predicates that hold on the most tokens (6 at most, one row each, to "
           "keep the figure readable).", ""] if sp["plotted"] else []),
        *levels_markdown(sp.get("levels"), sp["names"])]


def predicates_markdown():
    """The context predicates and their definitions, in their order of precedence."""
    return [f"- `{name}`: {help}" for name, help in PREDICATE_HELP.items()]


def levels_markdown(lv, names):
    """Section 4's second view: the paper's plot of precision per activation level, as areas per rare
    predicate and paired differences of them, beside the null; one figure."""
    if not lv:
        return ["### At every activation level", "", "No predicate is rare enough (at most 1% of the tokens, on at "
                "least 50 tokens of each half) on these tokens.", ""]
    d, kinds = lv["difference"], [k for k in ("features", "neurons", "sparse_neurons", "null") if k in lv["area"]]
    ci = lambda x, c: f"{x:+.2f} [{c[0]:+.2f}, {c[1]:+.2f}]"
    L = ["### At every activation level", "",
         "The paper shows a feature's specificity as a histogram of its activations, coloured by whether its "
         "predicate holds: at every level but the lowest, nearly all of its tokens are Arabic. For every predicate "
         "rare enough to be specific about (fixed before looking: at most 1% of the held-out tokens, at least 50 of "
         "each half), the best unit of each kind by F1 on the explain half, measured on the score half: its firing "
         "tokens in 10 equal bins of activation, the share of each bin's tokens where the predicate holds (bins of 5 "
         "tokens or more), and its area (the mean share over the bins; 1 for a unit precise at every level). The best "
         f"of {lv['candidates']['features']:,} features has more chances than the best of "
         f"{lv['candidates']['neurons']:,} neurons, so beside them stands a null with as many candidates as features "
         "and nothing learned: random directions in the neurons' space, each firing as often "
         "as one feature, chosen and measured the same way. Differences are paired per predicate, then averaged; "
         f"95% intervals resample the score half's {lv['documents']} documents (a resample where a unit has no "
         "level, its documents left out, takes one of that predicate's own resampled differences).", "",
         "| predicate | " + " | ".join(f"best {k.replace('_', ' ')}: area" for k in kinds)
         + " | feature minus neuron [95% CI] | null minus neuron [95% CI] |", "| --- " * (len(kinds) + 3) + "|"]
    for i, j in enumerate(lv["rare"]):
        pair = lambda key: ci(d[key]["per_predicate"][i], d[key]["per_predicate_ci"][i]) if key in d else "-"
        L.append(f"| {names[j]} | " + " | ".join(f"#{lv['units'][k][i]}: {lv['area'][k][i]:.2f}" for k in kinds)
                 + f" | {pair('features_minus_neurons')} | {pair('null_minus_neurons')} |")
    said = {"features_minus_neurons": "features minus neurons", "null_minus_neurons": "the null minus neurons",
            "features_minus_sparse_neurons": "features minus sparsified neurons",
            "null_minus_sparse_neurons": "the null minus sparsified neurons",
            "features_minus_null": "features minus the null"}
    L += ["", "Mean over the predicates: " + "; ".join(f"{said[k]} {signed(v)}" for k, v in d.items()) + ".", "",
          "![precision per activation level](levels.png)", ""]
    return L


def grounding_section(g):
    if not g:
        return []
    s = g["summary"]
    ci = lambda m, c: f"{m:.3f} [{c[0]:.3f}, {c[1]:.3f}]"
    lines = ["## 7. Grounded in the model: logit effects against what follows", "",
             "The paper argues from the model as well as the text: a feature's logit weights predict the tokens that "
             "follow where it fires. Per unit that fires on 10 tokens or more: the Pearson correlation, over the next "
             "tokens that follow 10 held-out tokens or more, of its logit effects (section 6) with its lift, the log "
             "of how much more often each token follows the tokens where it fires than the others (smoothed, so a "
             "unit seen on few tokens has a lift near 0). The control: each unit scored against another unit's "
             "effects (the same model, the same text), which says how far a score rises by chance. A second one "
             "that cannot fail: the random-weights model (" + g["control_from"] + f", on the first "
             f"{g['control_tokens']:,} tokens), which knows nothing of the corpus. The 95% intervals resample the "
             "units, not the documents: a unit's score reads next-token counts pooled over all the held-out text, "
             "and recomputing every unit's score on each resample of the documents would cost hundreds of times "
             "this step (`lab/grounding.py`).", "",
             "| units | n | median [95% CI] | control: against another unit's effects, median [95% CI] | "
             "random-weights model: n, median [95% CI] |", "| --- | --- | --- | --- | --- |"]
    for kind in ("features", "neurons", "sparse_neurons"):
        r, c = s["model"][kind], s["control"].get(kind)
        control = f"{c['n']}, {ci(c['median'], c['ci'])}" if c and c["n"] else "-"
        cell = (ci(r["median"], r["ci"]), ci(r["null"], r["null_ci"])) if r["n"] else ("-", "-")
        lines.append(f"| {kind.replace('_', ' ')} | {r['n']} | {cell[0]} | {cell[1]} | {control} |")
    d = s["diff"]
    lines += ["", f"Features minus neurons: {signed(d['neurons'])}; features minus sparsified neurons: "
              f"{signed(d['sparse_neurons'])} (units resampled).", ""]
    return lines
