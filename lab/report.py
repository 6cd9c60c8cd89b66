"""lab/report.py: report.md, the analysis written out beside the paper's numbers.

analyze.py measures; this file only formats: a one-screen summary table (ours beside the paper's),
then one section per measurement with its table and figure (drawn here too), and summary.json.
Token text is made visible (whitespace spelled out) and safe inside markdown tables.
"""
import dataclasses
import json
import os

import numpy as np

from lab import probing
from lab.measure import FEW_TOKENS, MIN_ACTIVE
from lab.plumbing import UserError, atomic_write_text, fmt_eta
from lab.predicates import PREDICATE_HELP
from lab.specificity import SPECIALIST, precision_recall_markdown, specificity_markdown

# The paper's numbers (docs/paper.md) that ours are printed beside.
PAPER = {"dead": "168 / 4,096 (4.1%)", "ultralow": "292 of 4,096 (density < 1e-6)",
         "recovered": "79% (A/1, zero ablation); 94.5% (A/5)",
         "interp": "human rubric (0-14): median feature 12, neuron 0; logit prediction 74% vs 58%",
         "specificity": "Arabic feature A/1/3450: Pearson 0.74 with its proxy"}

# What a row of an explanation table may name, for each value of --explain.
EXPLAINS = {"tokens": "a (previous token, token) pattern or a token pattern",
            "contexts": "a (previous token, token) pattern, a token pattern or a context predicate"}


def write_report(cfg, run, res):
    """report.md: a one-screen summary beside the paper's numbers, then one section per measurement in
    the paper's order (each a function returning its lines), and summary.json beside it.
    run: lab/measure.py's Run; res: analyze.analyze's results."""
    sections = [summary_section(cfg, run, res), losses_section(run, res), density_section(res),
                interp_section(cfg, run, res), specificity_section(res["specificity"]),
                probing.probing_markdown(res["probing"]), res["browser"]["report"],
                res["steering"]["report"], grounding_markdown(res.get("grounding")), saved_sections(run.dir),
                ["## Settings", "", f"`{json.dumps(dataclasses.asdict(cfg))}`"]]
    path = write_markdown(os.path.join(run.dir, "report.md"), sections)
    write_summary(run, res)
    return path


def write_markdown(path, sections):
    """A report: its sections (each a list of markdown lines) in order, written at once. Returns path."""
    atomic_write_text("\n".join(line for section in sections for line in section) + "\n", path)
    return path


def summary_section(cfg, run, res):
    """The one-screen summary: the run, then our numbers beside the paper's."""
    n, main = run.n_tokens, run.main
    lm, sae_ckpt = run.lm_ckpt, run.saes[main].ckpt
    row = next(r for r in res["losses"]["rows"] if r["name"] == f"F{main}")
    dens, it, sp = res["density"][main], res["interp"]["summary"], res["specificity"]
    cluster = dens["cluster"]
    lm_tokens = lm["step"] * lm["config"]["batch_size"] * lm["config"]["block_size"]
    took = fmt_eta(res["measure"].seconds)
    pass_note = (f"reusing the streaming pass cached in {cfg.analysis_dir}/measure.pt, {took} when it ran"
                 if res["measure"].reused else f"the streaming pass: {took}")
    f_med, n_med = it["features"]["all"]["median"], it["neurons"]["all"]["median"]
    longest = max(it["by_size"])
    diff = it["median_diff"]
    ultralow = f"{cluster['members'].sum():,} features" if cluster else "none found"
    return [f"# Towards Monosemanticity, reproduced: analysis of `{cfg.out}`", "",
            "## Summary", "",
            f"- **LM** (`{cfg.lm_dir}`): {sum(p.numel() for p in run.model.parameters()) / 1e6:.2f}M parameters, "
            f"{run.model.cfg.d_mlp} neurons, trained {lm['step']:,} steps on {lm_tokens / 1e6:.1f}M tokens in "
            f"{fmt_eta(lm['elapsed'])}; validation loss {lm.get('val_loss', float('nan')):.3f} "
            f"(count-based bigram model: {lm.get('bigram_loss', float('nan')):.3f}).",
            f"- **SAE** F{main} (`{cfg.sae_dir}`): {main:,} features, trained on "
            f"{sae_ckpt['seen'] / 1e6:.1f}M activations in {fmt_eta(sae_ckpt['elapsed'])} "
            f"(L1 coefficient {sae_ckpt['config'].get('l1_coeff', '?')})"
            + sae_state_note(sae_ckpt) + ".",
            f"- **Analysis**: {n:,} held-out tokens ({run.meta['documents']['val']} validation documents), "
            f"{fmt_eta(res['seconds'])} ({pass_note})."
            + (f" **Too few tokens for the numbers below to mean much** (fewer than {FEW_TOKENS:,}: a loss recovered "
               "above 100% or a correlation of exactly 1 is noise)." if n < FEW_TOKENS else ""), "",
            "| | ours | paper (A/1 unless noted) |", "| --- | --- | --- |",
            f"| dead features (never active) | {dens['dead']:,} of {main:,} ({100 * dens['dead'] / main:.1f}%) "
            f"on {n / 1e6:.2f}M tokens | {PAPER['dead']} on 100M |",
            f"| ultralow-density cluster | {ultralow} | {PAPER['ultralow']} |",
            f"| loss recovered, MLP zero-ablated | {100 * row['rec_zero']:.1f}% | {PAPER['recovered']} |",
            f"| loss recovered, MLP mean-ablated ({mean_ablation_word(res['losses'])}) | {100 * row['rec_mean']:.1f}% "
            "| not given |",
            f"| L0 (active features per token), FVU | {row['l0']:.1f}, {row['fvu']:.3f} | not given here |",
            *evidence_rows(res, run),
            f"| interpretability (lexical, the paper's sampling): median score, features vs neurons "
            f"({cfg.max_entries}-row explanations, "
            f"`--explain {res['interp']['explain']}`; a sparser unit scores higher, so this mixes meaning and "
            "density) | "
            f"{f_med:.2f} vs {n_med:.2f} (difference {signed(diff)}) | {PAPER['interp']} |",
            f"| the same with 1-row / {longest}-row explanations | " + " / ".join(
                f"{it['by_size'][e]['features']:.2f} vs {it['by_size'][e]['neurons']:.2f} "
                f"({signed(it['by_size'][e]['diff'])})" for e in (1, longest))
            + " | (the paper's explanations are a sentence) |",
            f"| detection, balanced accuracy, features vs neurons | {it['detection']['features']['median']:.2f} vs "
            f"{it['detection']['neurons']['median']:.2f} ({signed(it['detection']['diff']['neurons'])}); another "
            f"unit's table: {it['detection']['features']['control']:.2f} vs {it['detection']['neurons']['control']:.2f}"
            " | not measured |",
            *probing_rows(res["probing"]),
            f"| the old top-and-random score, features vs neurons | {it['beside']['top_random']['features']['median']:.2f}"
            f" vs {it['beside']['top_random']['neurons']['median']:.2f} "
            f"({signed(it['beside']['top_random']['diff']['neurons'])}) | - |",
            f"| best proxy match (Pearson r) | {best_proxy(sp)} | {PAPER['specificity']} |",
            "", "Our interpretability score is a lexical stand-in for the paper's human and Claude raters (section 3): "
            "compare the sign of the difference, not the scale.", ""]


def probing_rows(p):
    """The summary table's row for k-sparse probing at k = 1 (the verdict's comparison D)."""
    if not p["names"]:
        return []
    m, d = p["mean"], p["difference"]
    return [f"| k-sparse probing of {len(p['names'])} context predicates, k = 1: mean balanced accuracy, features / "
            f"neurons / sparsified neurons | {m['features'][1]['value']:.2f} / {m['neurons'][1]['value']:.2f} / "
            f"{m['sparse_neurons'][1]['value']:.2f}; features minus sparsified neurons {signed(d['sparse_neurons'][1])};"
            f" all 512 neurons (the ceiling) {m['ceiling']['value']:.2f} | not measured (SAEBench's measure) |"]


def losses_section(run, res):
    return ["## 1. Reconstruction and loss recovered", "",
            "The SAE's reconstruction replaces the MLP activations on held-out text; the loss it recovers is "
            "(L_ablated - L_SAE) / (L_ablated - L_clean), against zero-ablating the MLP (the paper's lenient "
            "baseline) and mean-ablating it (every neuron at its held-out mean). MSE is in the SAE's normalised "
            "units (predicting 0 scores about 1) and, like FVU, is measured on the loss windows; L0, dead (never "
            f"active) and dense (active on more than 10% of tokens) on all {run.n_tokens:,} held-out tokens. The "
            "neuron row is the basis the SAE competes with.", "", losses_markdown(res["losses"]), ""]


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
    it, cluster = res["interp"]["summary"], res["density"][run.main]["cluster"]
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
    return lines + ["", "Every alive unit's explanation and score: `units.json`.", "",
                    "### At matched density", "",
                    "A feature fires on fewer tokens than a neuron, and a rare unit is easier to describe with a short "
                    "table, so the difference above mixes meaning with density. Two controls, fixed before any result "
                    "was seen: the neurons sparsified to the features' density (on each token only the "
                    f"{res['measure'].sparse_k} most active neurons are kept, {res['measure'].sparse_k} = "
                    f"{run.model.cfg.d_mlp} x the features' mean density; scored by the same measure), and the "
                    "comparison within bins of half a decade of density (the difference of medians in every bin "
                    "with at least 10 units of each kind, averaged with weights the smaller count; all scored units; "
                    "95% intervals with the documents and the units resampled):", "",
                    matched_markdown(it), "", *other_matchings_markdown(it), ""]


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


def specificity_section(sp):
    L = ["## 4. Activation specificity", "",
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
    return L


def by_density(results, stats, n_tokens, edges=(1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)):
    """Section 3's table and figure: the median score of every scored unit per decade of density. Units
    that fire rarely leave few examples to explain from, so density alone moves the score; comparing
    kinds within a decade takes that out."""
    out = []
    for lo, hi in zip(edges, edges[1:]):
        row = dict(lo=lo, hi=hi)
        for kind, rs in results.items():
            d = stats[kind].fired.double().numpy() / n_tokens
            x = [r["score"] for r in rs if lo <= d[r["unit"]] < hi]
            row[kind] = (len(x), float(np.median(x)) if x else None)
        out.append(row)
    return out


def write_summary(run, res):
    """summary.json beside report.md: its headline numbers, for programs. Returns them."""
    row = next(r for r in res["losses"]["rows"] if r["name"] == run.main_name)
    it = res["interp"]["summary"]

    def versus(part, diff):  # features against neurons, on all sampled units or the multi-token ones
        return dict(features_median=it["features"].get(part, {}).get("median"),
                    neurons_median=it["neurons"].get(part, {}).get("median"),
                    difference=diff["value"] if diff else None, difference_ci=list(diff["ci"]) if diff else None)

    out = dict(sae=run.main_name, n_tokens=run.n_tokens,
               loss_recovered=dict(zero_ablation=row["rec_zero"], mean_ablation=row["rec_mean"]),
               dead_fraction=row["dead"] / row["units"], l0=row["l0"], fvu=row["fvu"],
               interpretability=dict(protocol="the paper's sampling: explained from 49 examples, scored on 60",
                                     intervals="held-out documents and units resampled, paired across kinds",
                                     explain=res["interp"]["explain"], units_per_kind=res["interp"]["n"],
                                     all=versus("all", it["median_diff"]),
                                     without_single_token=versus("multi", it["median_diff_multi"]),
                                     detection=plain(it["detection"]), beside=plain(it["beside"])),
               specificity=specificity_summary(res["specificity"]), probing=probing.probing_summary(res["probing"]),
               **saved_summaries(run.dir))
    sparse = it.get("sparse_neurons", {})
    interval = lambda d: dict(value=d["value"], ci=list(d["ci"])) if d else None
    out["matched_density"] = dict(
        sparse_k=res["measure"].sparse_k,
        sparse_neurons=dict(median=sparse.get("all", {}).get("median"), n=sparse.get("n", 0),
                            difference=interval(it.get("median_diff_sparse"))),
        weighting="each density bin by the smaller of its two counts",
        features_minus_neurons=interval(it["matched"]["neurons"]),
        features_minus_sparse_neurons=interval(it["matched"]["sparse_neurons"]),
        otherwise={kind: {name: interval(o) for name, o in it["matched"][kind].get("others", {}).items()}
                   for kind in ("neurons", "sparse_neurons")})
    if res["specificity"].get("levels"):
        out["specificity_levels"] = levels_summary(res["specificity"])
    if res.get("grounding"):
        g = res["grounding"]["summary"]
        out["grounding"] = dict(**{part: {k: dict(v, ci=list(v["ci"]), null_ci=list(v["null_ci"]))
                                          for k, v in g[part].items()} for part in ("model", "control")},
                                features_minus={k: interval(v) for k, v in g["diff"].items()},
                                headline_control="each unit against another unit's effects (null)",
                                intervals="units resampled (lab/grounding.py says why not documents)",
                                control_from=res["grounding"]["control_from"])
    atomic_write_text(json.dumps(out, indent=2) + "\n", os.path.join(run.dir, "summary.json"))
    return out


# Sections written after the report, by steps of their own (python analyze.py ratings): each is kept
# as <name>.md and <name>.json in the analysis folder, so that a later report includes it again.


def add_section(folder, name, lines, summary):
    """Put a section into report.md (before its settings, replacing its older version) and its numbers
    under name in summary.json, and keep both for the next report. lines: the section, its heading first."""
    atomic_write_text("\n".join(lines), os.path.join(folder, f"{name}.md"))
    atomic_write_text(json.dumps(summary, indent=2) + "\n", os.path.join(folder, f"{name}.json"))
    path = os.path.join(folder, "report.md")
    if os.path.exists(path):
        text = open(path, encoding="utf-8").read()
        start = text.find(lines[0] + "\n")
        if start >= 0:   # the older version: up to the next section
            end = text.find("\n## ", start + len(lines[0]))
            text = text[:start] + (text[end + 1:] if end >= 0 else "")
        at = text.rfind("## Settings")
        at = len(text) if at < 0 else at
        atomic_write_text(text[:at] + "\n".join(lines) + "\n" + text[at:], path)
    summary_path = os.path.join(folder, "summary.json")
    if os.path.exists(summary_path):
        atomic_write_text(json.dumps({**json.load(open(summary_path)), name: summary}, indent=2) + "\n",
                          summary_path)


def saved_sections(folder, names=("ratings",)):
    """The lines of every section add_section kept, for the report."""
    return [line for name in names if os.path.exists(os.path.join(folder, f"{name}.md"))
            for line in open(os.path.join(folder, f"{name}.md"), encoding="utf-8").read().split("\n")]


def saved_summaries(folder, names=("ratings",)):
    return {name: json.load(open(os.path.join(folder, f"{name}.json"))) for name in names
            if os.path.exists(os.path.join(folder, f"{name}.json"))}
def evidence_rows(res, run):
    """The summary table's rows for the three controlled comparisons (matched density, specificity
    at every activation level, grounding in the model), each with its 95% interval."""
    it, lv, g = res["interp"]["summary"], res["specificity"].get("levels"), res.get("grounding")
    rows = []
    sparse = it.get("sparse_neurons", {}).get("all")
    if sparse:
        m = it["matched"]
        rows += [f"| **features vs neurons at matched density** (lexical score, the paper's sampling, within "
                 "half-decade density bins) | "
                 f"{signed(m['neurons'])} | - |",
                 f"| **features vs neurons sparsified to the features' density** ({res['measure'].sparse_k} per token; "
                 f"lexical median; within density bins) | {it['features']['all']['median']:.2f} vs "
                 f"{sparse['median']:.2f} "
                 f"({signed(it['median_diff_sparse'])}); {signed(m['sparse_neurons'])} | - |"]
    if lv:
        d = lv["difference"]
        rows.append(f"| **specificity**: rare predicates (at most 1% of tokens), mean area of precision across "
                    f"activation levels, the best feature minus the best neuron / sparsified neuron; beside it the "
                    f"null, the best of as many random directions as features | {area_cell(d, 'features')}; null: "
                    f"{area_cell(d, 'null')} | Arabic, base64, DNA features: precise at every level |")
    if g:
        m, c = g["summary"]["model"], g["summary"]["control"]
        rows.append(f"| **grounded in the model**: median correlation of a unit's logit effects with how much more "
                    f"often each token follows where it fires, features / neurons / sparsified neurons (units "
                    f"resampled) | {grounding_cell(m)}; against another unit's effects (the control): "
                    f"{grounding_cell(m, 'null')}; random weights: {grounding_cell(c)} | logit weights agree with "
                    "where features fire |")
    return rows


def area_cell(d, kind):
    """kind's paired differences of mean area against the neurons and the sparsified neurons."""
    return " / ".join(signed(d[f"{kind}_minus_{other}"]) if f"{kind}_minus_{other}" in d else "-"
                      for other in ("neurons", "sparse_neurons"))


def grounding_cell(part, key="median"):
    return " / ".join(f"{part[k][key]:.2f}" if part.get(k, {}).get(key) is not None else "-"
                      for k in ("features", "neurons", "sparse_neurons"))


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


def levels_summary(sp):
    """summary.json's specificity_levels: the paired differences of area (mean over the rare predicates
    and per predicate, with 95% intervals, documents resampled) and each kind's unit and area."""
    lv, names = sp["levels"], [sp["names"][j] for j in sp["levels"]["rare"]]
    pair = lambda v: dict(value=v["value"], ci=list(v["ci"]), per_predicate={
        name: dict(value=float(x), ci=[float(c) for c in ci]) for name, x, ci in zip(names, v["per_predicate"],
                                                                                  v["per_predicate_ci"])})
    return dict(documents=lv["documents"], null="random directions in the neurons' space, as many as the features, "
                "each firing as often as one feature", difference={k: pair(v) for k, v in lv["difference"].items()},
                predicates={name: {kind: dict(unit=int(lv["units"][kind][i]), area=float(lv["area"][kind][i]),
                                              ci=[float(x) for x in lv["area_ci"][kind][i]]) for kind in lv["area"]}
                            for i, name in enumerate(names)})


def grounding_markdown(g):
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


def specificity_summary(s):
    """{predicate: its base rate, best feature and neuron by F1, and specialists' union} for each
    predicate that holds; a union's precision is null where there is no specialist."""
    number = lambda x: None if x != x else float(x)   # x != x: NaN
    out = {}
    for j in s["held"]:
        row = dict(base_rate=float(s["base_rate"][j]))
        for kind in ("features", "neurons"):
            b, u = s["f1"][kind], s["specialists"][kind]
            row[f"best_{kind[:-1]}"] = dict(unit=int(b["units"][j]), precision=float(b["precision"][j]),
                                            recall=float(b["recall"][j]), f1=float(b["f1"][j]))
            row[f"specialist_{kind}"] = dict(count=int(u["count"][j]), precision=number(u["precision"][j]),
                                             recall=float(u["recall"][j]))
        out[s["names"][j]] = row
    return out


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


def predicates_markdown():
    """The context predicates and their definitions, in their order of precedence."""
    return [f"- `{name}`: {help}" for name, help in PREDICATE_HELP.items()]


def best_proxy(s):
    """The summary's cell: the best feature-proxy correlation among the proxies that hold."""
    if not s["held"]:
        return "none of the predicates holds on these tokens"
    r = s["best"]["features"]["r"]
    j = max(s["held"], key=lambda j: r[j])
    return (f"feature #{s['best']['features']['units'][j]} with '{s['names'][j]}': {r[j]:.2f} "
            f"(best neuron: {s['best']['neurons']['r'][j]:.2f})")


def mean_ablation_word(losses):
    """Which baseline is stricter is measured, not assumed: the one with the lower ablated loss
    leaves less to recover, so the same SAE recovers a smaller share of it."""
    if losses["mean"] < losses["zero"]:
        return "the stricter baseline here: mean-ablating costs less loss than zero-ablating"
    return "the more lenient baseline here: mean-ablating costs more loss than zero-ablating"


def sae_state_note(ckpt):
    """'' for a finished SAE, else what happened to its training (train_sae.py's status, or the
    final flag of older checkpoints)."""
    if ckpt.get("status") == "crashed":
        return "; **not final: training crashed**"
    if ckpt.get("status") == "snapshot":
        return "; a `--snapshots` copy of the run at this point of its training"
    if ckpt.get("status", "final" if ckpt.get("final", True) else "running") != "final":
        return "; **not final: training was still running**"
    return ""


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


def pattern(row, token, arrow=" → "):
    """One row of describe() as text: ⟨predicate⟩, or its tokens written by token(text), `a → b` being
    token b after token a. (Rows of a units.json from before context rows have no "context" key.)"""
    if row.get("context"):
        return f"⟨{row['context']}⟩"
    return (token(row["prev"]) + arrow if row["prev"] is not None else "") + token(row["token"])


def token_text(enc, t):
    return enc.decode_single_token_bytes(int(t)).decode("utf-8", "replace")


# Line breaks, tabs and other control characters drawn as symbols, so a context stays on one line
# and no token is invisible (the browser's pages, the steering table).
VISIBLE = {**{c: 0x2400 + c for c in range(32)}, 0x7F: 0x2421, ord("\n"): "↵", ord("\t"): "⇥"}


def visible(text):
    return text.translate(VISIBLE)


def signed(d):
    return f"{d['value']:+.2f}, 95% CI [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]"


def shown(text):
    """A token's text, visible in markdown: whitespace spelled out, backticks kept inside code."""
    text = text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t").replace("`", "'")
    return "`" + text.replace("|", "\\|") + "`"  # a bare | would end a markdown table cell


# ----------------------------------------------------------------------------------------------
# The figures


# ----------------------------------------------------------------------------------------------
# units.json: every scored unit's explanation, for the browser, the steering table and readers


def plain(d):
    """A summary's nested dicts with tuples as lists and numpy numbers as floats, for json."""
    if isinstance(d, dict):
        return {str(k): plain(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [plain(v) for v in d]
    if isinstance(d, (float, np.floating, np.integer)):
        return None if np.isnan(d) else float(d)   # json has no NaN
    return d


def save_units(run, stats, results):
    """units.json: every scored unit's density, score, single-token flag and explanation in words (for
    the browser, the steering table and readers). stats: {kind: UnitStats}; results: score_units'."""
    out = {"n_tokens": run.n_tokens, "sae": run.main_name}
    for kind, rs in results.items():
        out[kind] = [dict(unit=r["unit"], density=float(stats[kind].fired[r["unit"]]) / run.n_tokens,
                          score=round(r["score"], 4), top_random=round(r["top_random"], 4) if "top_random" in r else None,
                          detection=plain(round(r["detection"], 4)),
                          single_token=r["single_token"], explanation=r["rows"],
                          otherwise=r["otherwise"]) for r in rs]
    atomic_write_text(json.dumps(out), os.path.join(run.dir, "units.json"))


def load_units(cfg, run):
    """units.json, checked to describe this run's main SAE on these tokens."""
    path = os.path.join(run.dir, "units.json")
    if not os.path.exists(path):
        raise UserError(f"no {path}: run python analyze.py interp --out {cfg.out} first")
    units = json.load(open(path))
    if units["sae"] != run.main_name or units["n_tokens"] != run.n_tokens:
        raise UserError(f"{path} describes {units['sae']} on {units['n_tokens']:,} tokens, not {run.main_name} on "
                        f"{run.n_tokens:,}: rerun python analyze.py interp with the same flags")
    return units
