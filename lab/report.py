"""lab/report.py: report.md, the analysis written out beside the paper's numbers, and summary.json.

analyze.py measures; this file writes what it measured. report.md is, in order: a one-screen summary
(the run, then our numbers beside the paper's: here), one section per measurement in the paper's
order, each a function returning its lines (lab/report_sections.py; k-sparse probing, the browser and
steering write their own), the sections that later steps add (add_section), and the settings; finish
runs a full analysis' last steps: the browser, the steering table, then the report.
summary.json holds the headline numbers for programs (lab/summary.py, which writes units.json too).
Tokens and intervals are written by lab/formatting.py, the figures drawn by lab/figures.py.
"""
import dataclasses
import json
import os
import time

from lab import probing
from lab.formatting import signed
from lab.measure import FEW_TOKENS
from lab.plumbing import atomic_write_text, fmt_eta
from lab.report_sections import density_section, grounding_section, interp_section, losses_section, specificity_section
from lab.summary import headline

# The paper's numbers (docs/paper.md) that ours are printed beside.
PAPER = {"dead": "168 / 4,096 (4.1%)", "ultralow": "292 of 4,096 (density < 1e-6)",
         "recovered": "79% (A/1, zero ablation); 94.5% (A/5)",
         "interp": "human rubric (0-14): median feature 12, neuron 0; logit prediction 74% vs 58%",
         "specificity": "Arabic feature A/1/3450: Pearson 0.74 with its proxy"}

# Sections written after the report, by steps of their own (python analyze.py ratings): each is kept
# as <name>.md and <name>.json in the analysis folder, so that a later report includes it again.
KEPT = ("ratings",)


def finish(cfg, run, res, t0):
    """A full analysis' last step, once the browser and the steering table are in res: report.md and
    summary.json, and the line that says where they are. res: analyze.analyze's results; t0: its start."""
    res["seconds"] = time.time() - t0
    print(f"report: {write_report(cfg, run, res)} ({fmt_eta(res['seconds'])})")


def write_report(cfg, run, res):
    """report.md and summary.json. run: lab/measure.py's Run; res: analyze.analyze's results."""
    kept = kept_sections(run.dir)
    sections = [summary_section(cfg, run, res), losses_section(run, res), density_section(res),
                interp_section(cfg, run, res), specificity_section(res["specificity"]),
                probing.probing_markdown(res["probing"]), res["browser"]["report"],
                res["steering"]["report"], grounding_section(res.get("grounding")),
                *(lines for lines, _ in kept.values()), ["## Settings", "", f"`{json.dumps(dataclasses.asdict(cfg))}`"]]
    path = write_markdown(os.path.join(run.dir, "report.md"), sections)
    write_json(os.path.join(run.dir, "summary.json"),
               headline(run, res, {name: numbers for name, (_, numbers) in kept.items()}))
    return path


def write_markdown(path, sections):
    """A report: its sections (each a list of markdown lines) in order, written at once. Returns path."""
    atomic_write_text("\n".join(line for section in sections for line in section) + "\n", path)
    return path


def write_json(path, numbers):
    atomic_write_text(json.dumps(numbers, indent=2) + "\n", path)


def add_section(folder, name, lines, numbers):
    """Put a section into report.md (before its settings, replacing its older version) and its numbers
    under name in summary.json, and keep both for the next report. lines: the section, its heading first."""
    atomic_write_text("\n".join(lines), os.path.join(folder, f"{name}.md"))
    write_json(os.path.join(folder, f"{name}.json"), numbers)
    path = os.path.join(folder, "report.md")
    if os.path.exists(path):
        atomic_write_text(with_section(open(path, encoding="utf-8").read(), lines), path)
    path = os.path.join(folder, "summary.json")
    if os.path.exists(path):
        write_json(path, {**json.load(open(path)), name: numbers})


def with_section(text, lines):
    """report.md's text with the section put before its settings, its older version taken out."""
    start = text.find(lines[0] + "\n")
    if start >= 0:   # the older version: up to the next section
        end = text.find("\n## ", start + len(lines[0]))
        text = text[:start] + (text[end + 1:] if end >= 0 else "")
    at = text.rfind("## Settings")
    at = len(text) if at < 0 else at
    return text[:at] + "\n".join(lines) + "\n" + text[at:]


def kept_sections(folder):
    """{name: (its lines, its numbers)} for every section that add_section kept in folder."""
    kept = {}
    for name in KEPT:
        path = os.path.join(folder, name)
        if os.path.exists(path + ".md") and os.path.exists(path + ".json"):
            kept[name] = (open(path + ".md", encoding="utf-8").read().split("\n"), json.load(open(path + ".json")))
    return kept


# ----------------------------------------------------------------------------------------------
# The one-screen summary


def summary_section(cfg, run, res):
    """The one-screen summary: the run, then our numbers beside the paper's."""
    return [f"# Towards Monosemanticity, reproduced: analysis of `{cfg.out}`", "",
            "## Summary", "", *run_lines(cfg, run, res), "", *summary_table(cfg, run, res),
            "", "Our interpretability score is a lexical stand-in for the paper's human and Claude raters (section 3): "
            "compare the sign of the difference, not the scale.", ""]


def run_lines(cfg, run, res):
    """What was analysed: the LM, the SAE and the held-out tokens, with how long each took."""
    n, main = run.n_tokens, run.n_features
    lm, sae_ckpt = run.lm_ckpt, run.saes[main].ckpt
    lm_tokens = lm["step"] * lm["config"]["batch_size"] * lm["config"]["block_size"]
    took = fmt_eta(res["measure"].seconds)
    pass_note = (f"reusing the streaming pass cached in {cfg.analysis_dir}/measure.pt, {took} when it ran"
                 if res["measure"].reused else f"the streaming pass: {took}")
    return [f"- **LM** (`{cfg.lm_dir}`): {sum(p.numel() for p in run.model.parameters()) / 1e6:.2f}M parameters, "
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
               "above 100% or a correlation of exactly 1 is noise)." if n < FEW_TOKENS else "")]


def summary_table(cfg, run, res):
    """Ours beside the paper's: the SAE, the controlled comparisons, then features against neurons."""
    n, main = run.n_tokens, run.n_features
    row = next(r for r in res["losses"]["rows"] if r["name"] == f"F{main}")
    dens, top_random = res["density"][main], res["interp"]["summary"]["beside"]["top_random"]
    cluster = dens["cluster"]
    ultralow = f"{cluster['members'].sum():,} features" if cluster else "none found"
    return ["| | ours | paper (A/1 unless noted) |", "| --- | --- | --- |",
            f"| dead features (never active) | {dens['dead']:,} of {main:,} ({100 * dens['dead'] / main:.1f}%) "
            f"on {n / 1e6:.2f}M tokens | {PAPER['dead']} on 100M |",
            f"| ultralow-density cluster | {ultralow} | {PAPER['ultralow']} |",
            f"| loss recovered, MLP zero-ablated | {100 * row['rec_zero']:.1f}% | {PAPER['recovered']} |",
            f"| loss recovered, MLP mean-ablated ({mean_ablation_word(res['losses'])}) | {100 * row['rec_mean']:.1f}% "
            "| not given |",
            f"| L0 (active features per token), FVU | {row['l0']:.1f}, {row['fvu']:.3f} | not given here |",
            *evidence_rows(res), *interp_rows(cfg, res), *probing_rows(res["probing"]),
            f"| the old top-and-random score, features vs neurons | {top_random['features']['median']:.2f} vs "
            f"{top_random['neurons']['median']:.2f} ({signed(top_random['diff']['neurons'])}) | - |",
            f"| best proxy match (Pearson r) | {best_proxy(res['specificity'])} | {PAPER['specificity']} |"]


def interp_rows(cfg, res):
    """The summary table's rows for section 3: the median score, with short and long tables, and detection."""
    it = res["interp"]["summary"]
    f_med, n_med = it["features"]["all"]["median"], it["neurons"]["all"]["median"]
    longest = max(it["by_size"])
    return [f"| interpretability (lexical, the paper's sampling): median score, features vs neurons "
            f"({cfg.max_entries}-row explanations, "
            f"`--explain {res['interp']['explain']}`; a sparser unit scores higher, so this mixes meaning and "
            "density) | "
            f"{f_med:.2f} vs {n_med:.2f} (difference {signed(it['median_diff'])}) | {PAPER['interp']} |",
            f"| the same with 1-row / {longest}-row explanations | " + " / ".join(
                f"{it['by_size'][e]['features']:.2f} vs {it['by_size'][e]['neurons']:.2f} "
                f"({signed(it['by_size'][e]['diff'])})" for e in (1, longest))
            + " | (the paper's explanations are a sentence) |",
            f"| detection, balanced accuracy, features vs neurons | {it['detection']['features']['median']:.2f} vs "
            f"{it['detection']['neurons']['median']:.2f} ({signed(it['detection']['diff']['neurons'])}); another "
            f"unit's table: {it['detection']['features']['control']:.2f} vs {it['detection']['neurons']['control']:.2f}"
            " | not measured |"]


def evidence_rows(res):
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


def probing_rows(p):
    """The summary table's row for k-sparse probing at k = 1 (the verdict's comparison D)."""
    if not p["names"]:
        return []
    m, d = p["mean"], p["difference"]
    return [f"| k-sparse probing of {len(p['names'])} context predicates, k = 1: mean balanced accuracy, features / "
            f"neurons / sparsified neurons | {m['features'][1]['value']:.2f} / {m['neurons'][1]['value']:.2f} / "
            f"{m['sparse_neurons'][1]['value']:.2f}; features minus sparsified neurons {signed(d['sparse_neurons'][1])};"
            f" all 512 neurons (the ceiling) {m['ceiling']['value']:.2f} | not measured (SAEBench's measure) |"]


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
