"""lab/summary.py: the analysis' numbers for programs, beside report.md.

    summary.json   the report's headline numbers, each with its 95% interval (lab/report.py writes it)
    units.json     every scored unit's density, score and explanation, read by the browser, the
                   steering table and the rating deck (save_units, load_units)
"""
import json
import os

import numpy as np

from lab import probing
from lab.plumbing import UserError, atomic_write_text


def headline(run, res, kept):
    """summary.json: the report's headline numbers, with their intervals. run: lab/measure.py's Run;
    res: analyze.analyze's results; kept: {name: numbers} of the sections added by steps of their own."""
    row = next(r for r in res["losses"]["rows"] if r["name"] == run.main_name)
    out = dict(sae=run.main_name, n_tokens=run.n_tokens,
               loss_recovered=dict(zero_ablation=row["rec_zero"], mean_ablation=row["rec_mean"]),
               dead_fraction=row["dead"] / row["units"], l0=row["l0"], fvu=row["fvu"],
               interpretability=interpretability_summary(res["interp"]),
               specificity=specificity_summary(res["specificity"]), probing=probing.probing_summary(res["probing"]),
               **kept, matched_density=matched_summary(res["interp"]["summary"], res["measure"].sparse_k))
    if res["specificity"].get("levels"):
        out["specificity_levels"] = levels_summary(res["specificity"])
    if res.get("grounding"):
        out["grounding"] = grounding_summary(res["grounding"])
    return out


def interpretability_summary(interp):
    it = interp["summary"]
    return dict(protocol="the paper's sampling: explained from 49 examples, scored on 60",
                intervals="held-out documents and units resampled, paired across kinds",
                explain=interp["explain"], units_per_kind=interp["n"],
                all=versus(it, "all", it["median_diff"]),
                without_single_token=versus(it, "multi", it["median_diff_multi"]),
                detection=plain(it["detection"]), beside=plain(it["beside"]))


def versus(it, part, diff):
    """Features against neurons, on all sampled units (part "all") or the multi-token ones ("multi")."""
    return dict(features_median=it["features"].get(part, {}).get("median"),
                neurons_median=it["neurons"].get(part, {}).get("median"),
                difference=diff["value"] if diff else None, difference_ci=list(diff["ci"]) if diff else None)


def matched_summary(it, sparse_k):
    """Features against the sparsified neurons, and both comparisons within density bins."""
    sparse = it.get("sparse_neurons", {})
    return dict(sparse_k=sparse_k,
                sparse_neurons=dict(median=sparse.get("all", {}).get("median"), n=sparse.get("n", 0),
                                    difference=value_ci(it.get("median_diff_sparse"))),
                weighting="each density bin by the smaller of its two counts",
                features_minus_neurons=value_ci(it["matched"]["neurons"]),
                features_minus_sparse_neurons=value_ci(it["matched"]["sparse_neurons"]),
                otherwise={kind: {name: value_ci(o) for name, o in it["matched"][kind].get("others", {}).items()}
                           for kind in ("neurons", "sparse_neurons")})


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


def levels_summary(sp):
    """The paired differences of area (mean over the rare predicates and per predicate, with 95%
    intervals, documents resampled) and each kind's unit and area."""
    lv, names = sp["levels"], [sp["names"][j] for j in sp["levels"]["rare"]]
    pair = lambda v: dict(value=v["value"], ci=list(v["ci"]), per_predicate={
        name: dict(value=float(x), ci=[float(c) for c in ci]) for name, x, ci in zip(names, v["per_predicate"],
                                                                                  v["per_predicate_ci"])})
    return dict(documents=lv["documents"], null="random directions in the neurons' space, as many as the features, "
                "each firing as often as one feature", difference={k: pair(v) for k, v in lv["difference"].items()},
                predicates={name: {kind: dict(unit=int(lv["units"][kind][i]), area=float(lv["area"][kind][i]),
                                              ci=[float(x) for x in lv["area_ci"][kind][i]]) for kind in lv["area"]}
                            for i, name in enumerate(names)})


def grounding_summary(grounding):
    g = grounding["summary"]
    return dict(**{part: {k: dict(v, ci=list(v["ci"]), null_ci=list(v["null_ci"])) for k, v in g[part].items()}
                   for part in ("model", "control")},
                features_minus={k: value_ci(v) for k, v in g["diff"].items()},
                headline_control="each unit against another unit's effects (null)",
                intervals="units resampled (lab/grounding.py says why not documents)",
                control_from=grounding["control_from"])


def value_ci(d):
    return dict(value=d["value"], ci=list(d["ci"])) if d else None


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
    the browser, the steering table and readers). stats: {kind: UnitStats}; results: analyze.interpretability's."""
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
