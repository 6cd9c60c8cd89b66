"""lab/ratings.py: unblind the blind rating (lab/rate.py): features against neurons, judged by people.

    python analyze.py ratings ratings-ann.json ratings-bob.json     # the files first, then any flags (--out)

Reads the files that analysis/rate.html downloaded, checks each against its deck's key
(<analysis-dir>/rate_keys/<deck>.json) and reports, as the paper does for its blinded evaluator: per
kind (features, neurons, the random-weights control when the deck has one) the median and the
distribution of the total score (0-14); the difference of the medians, features minus neurons, with
a bootstrap 95% interval (the cards resampled: a card is a unit, the thing sampled); how much the
raters agree (Krippendorff's alpha); and each rater against analyze.py's lexical score of the same
units (Spearman). Writes ratings.png and ratings.json, and a section of report.md and summary.json.
A card's score, with several raters, is the mean of their totals.
"""
import dataclasses
import json
import os
import re

import numpy as np
from matplotlib.figure import Figure

from lab import rate, report
from lab.plumbing import UserError, arg, save_figure
from lab import stats
from lab.stats import bootstrap

COLOURS = {"features": "tab:blue", "neurons": "tab:red", "control": "tab:gray"}
QUITE = 8   # the paper: a total above 8 is "quite interpretable"


@dataclasses.dataclass
class Config:
    files: list = arg([], "the ratings files the page downloaded (ratings-<name>.json), all of one deck")


def main(cfg, acfg):
    """python analyze.py ratings FILE...: acfg (analyze.AnalyzeConfig) names the run whose deck they rate."""
    if not cfg.files:
        raise UserError("name the ratings files: python analyze.py ratings ratings-*.json [--out DIR]")
    folder = os.path.join(acfg.out, acfg.analysis_dir)
    raters = [read(path, folder) for path in cfg.files]
    check_raters(raters)
    res = unblind(raters[0]["key"], raters, acfg.bootstrap, acfg.seed)
    plot(res, os.path.join(folder, "ratings.png"))
    summary = {k: v for k, v in res.items() if k not in ("totals", "lexical", "kinds")}
    report.add_section(folder, "ratings", markdown(res), summary)
    print("\n".join(console(res)))
    return res


# ----------------------------------------------------------------------------------------------
# Reading and checking the files: every problem is one line naming the file and the fix


def read(path, folder):
    """A ratings file, checked against its deck's key: dict(path, rater, deck, key, totals (cards,) in
    the key's order, scores (cards, questions), seconds (cards,))."""
    again = "download it again from the rating page (its last screen, key D: the browser keeps the answers)"
    try:
        text = open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}): check the file name") from None
    try:
        r = json.loads(text)
    except ValueError:
        raise UserError(f"{path} is not whole JSON (truncated or edited?): {again}") from None
    if not isinstance(r, dict) or r.get("format") != rate.FORMAT:
        raise UserError(f"{path} is not a ratings file of a rate.html page: hand in the file the page downloads")
    try:
        deck, rater, cards = str(r["deck"]), str(r["rater"]), r["cards"]
        body = f"{deck}|{rater}|" + ";".join(f"{c['id']}:{','.join(str(s) for s in c['scores'])}:"
                                              f"{round(c['seconds'] * 10)}" for c in cards)
        ok = fnv(body) == r["check"]
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):   # (seconds: Infinity)
        ok = False
    if not ok:
        raise UserError(f"{path} was changed after it was downloaded (its check does not match): {again}")
    key_path = os.path.join(folder, "rate_keys", f"{deck}.json")
    if not re.fullmatch(r"[0-9a-f]{12}", deck) or not os.path.exists(key_path):
        made = sorted(f[:-5] for f in os.listdir(os.path.join(folder, "rate_keys"))) if os.path.isdir(
            os.path.join(folder, "rate_keys")) else []
        raise UserError(f"{path} rates deck {deck}, which was not made in {folder} (its decks: "
                        f"{', '.join(made) or 'none'}): pass the --out and --analysis-dir of the run whose rate.html "
                        "it came from")
    key = json.load(open(key_path, encoding="utf-8"))
    ids = [c["id"] for c in key["cards"]]
    by_id = {c["id"]: c for c in cards}
    if sorted(by_id) != sorted(ids) or len(cards) != len(ids):
        raise UserError(f"{path} rates {len(by_id)} cards, the deck {deck} has {len(ids)} others: hand in the file "
                        "the page downloads at the end of the deck")
    scores = np.array([by_id[i]["scores"] if isinstance(by_id[i]["scores"], list) else [] for i in ids], dtype=object)
    if (scores.shape != (len(ids), len(key["rubric"])) or not all(type(s) is int for s in scores.ravel())
            or (scores < 0).any() or (scores > key["rubric"]).any()):
        raise UserError(f"{path} holds scores outside the rubric (0 to {key['rubric']}): {again}")
    scores = scores.astype(int)
    return dict(path=path, rater=rater, deck=deck, key=key, scores=scores, totals=scores.sum(1),
                seconds=np.array([float(by_id[i]["seconds"]) for i in ids]))


def fnv(text):
    """FNV-1a, 32 bits, over text's UTF-8 bytes: the page's check (rate.py's fnv), recomputed."""
    h = 0x811C9DC5
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return f"{h:08x}"


def check_raters(raters):
    """One deck, and each rater once (a copied file, or two students who typed the same name)."""
    first = raters[0]
    seen = {}
    for r in raters:
        if r["deck"] != first["deck"]:
            raise UserError(f"{r['path']} rates deck {r['deck']}, {first['path']} deck {first['deck']}: "
                            "unblind one deck at a time")
        name = r["rater"].strip().lower()
        if name in seen:
            raise UserError(f"{seen[name]} and {r['path']} are both rater '{r['rater']}': drop the duplicate, or "
                            "if they are two people, have one rate again under another name")
        seen[name] = r["path"]


# ----------------------------------------------------------------------------------------------
# The statistics


def unblind(key, raters, n_boot=1000, seed=0):
    """Everything the report says, from the key and the checked raters."""
    kinds = np.array([c["kind"] for c in key["cards"]])
    totals = np.stack([r["totals"] for r in raters]).astype(float)        # (raters, cards)
    card = totals.mean(0)                                                 # a card's score: its raters' mean
    lexical = np.array([c["lexical"] for c in key["cards"]])
    single = np.array([c["single_token"] for c in key["cards"]])   # (the paper reports these apart: trivial to read)
    top = sum(key["rubric"])
    out = dict(deck=key["deck"], raters=[r["rater"] for r in raters], cards=len(card), max=top, kinds=kinds,
               totals=totals, lexical=lexical, by_kind={})
    rng = np.random.default_rng(seed)
    for kind in rate.KINDS:
        x = card[kinds == kind]
        if len(x) == 0:
            continue
        given = totals[:, kinds == kind].ravel()
        out["by_kind"][kind] = dict(
            cards=len(x), median=float(np.median(x)), median_ci=list(bootstrap(np.median, [x], n_boot, rng)),
            mean=float(x.mean()), quite=float((x > QUITE).mean()),
            distribution=np.bincount(given.astype(int), minlength=top + 1).tolist(),
            rater_medians=[float(np.median(t[kinds == kind])) for t in totals],
            single_token=int(single[kinds == kind].sum()),
            multi_median=float(np.median(x[~single[kinds == kind]])) if (~single[kinds == kind]).any() else None)
    diff = lambda a, b: dict(value=float(np.median(a) - np.median(b)),
                             ci=list(bootstrap(lambda a, b: np.median(a) - np.median(b), [a, b], n_boot, rng)))
    f, n = (kinds == "features"), (kinds == "neurons")
    out["difference"] = diff(card[f], card[n])
    out["difference_multi"] = diff(card[f & ~single], card[n & ~single]) if (f & ~single).any() and (
        n & ~single).any() else None
    out["agreement"] = krippendorff_alpha(totals) if len(raters) > 1 else None
    out["lexical_spearman"] = {r["rater"]: spearman(t, lexical) for r, t in zip(raters, totals)}
    if len(raters) > 1:
        out["lexical_spearman"]["(mean of the raters)"] = spearman(card, lexical)
    out["seconds_per_card"] = {r["rater"]: float(np.median(r["seconds"])) for r in raters}
    out["minutes"] = {r["rater"]: float(r["seconds"].sum() / 60) for r in raters}
    return out


def krippendorff_alpha(R):
    """Krippendorff's alpha for interval data: 1 - observed / expected disagreement, the squared
    differences between values given to the same unit against those between any two values.
    R (raters, units), NaN where a rater left a unit out; units with fewer than two values are
    not pairable and drop out. 1: perfect agreement; 0: no more than chance; None: no variation."""
    R = np.asarray(R, float)
    units = [u[~np.isnan(u)] for u in R.T]
    units = [u for u in units if len(u) >= 2]
    values = np.concatenate(units)
    n = len(values)
    observed = sum(((u[:, None] - u[None]) ** 2).sum() / (len(u) - 1) for u in units) / n
    expected = ((values[:, None] - values[None]) ** 2).sum() / (n * (n - 1))
    return float(1 - observed / expected) if expected > 0 else None


def spearman(a, b):
    """Spearman's rank correlation (lab/stats.py's); None where either side is constant: no ranking."""
    return stats.spearman(a, b) if len(set(a)) > 1 and len(set(b)) > 1 else None


# ----------------------------------------------------------------------------------------------
# The words and the figure


def markdown(res):
    k, d = res["by_kind"], res["difference"]
    n_raters = len(res["raters"])
    L = ["## 8. The blind rating", "",
         f"Deck `{res['deck']}` (`python analyze.py rate`): {res['cards']} cards drawn at random, shown unlabelled and "
         f"shuffled, rated by {n_raters} rater{'s' if n_raters > 1 else ''} ({', '.join(res['raters'])}) on the rubric "
         f"of lab/rate.py (0-{res['max']}; the paper's is 0-14, a total above {QUITE} \"quite interpretable\"), then "
         "unblinded with its key (`python analyze.py ratings`). A card's score is its raters' mean total.", "",
         "| kind | cards | median [95% CI] | mean | above 8 | per rater: median "
         "| single-token: cards; median without |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
    for kind, r in k.items():
        multi = f"{r['multi_median']:.1f}" if r["multi_median"] is not None else "-"
        L.append(f"| {kind if kind != 'control' else 'random-weights features'} | {r['cards']} | {r['median']:.1f} "
                 f"[{r['median_ci'][0]:.1f}, {r['median_ci'][1]:.1f}] | {r['mean']:.1f} | {100 * r['quite']:.0f}% | "
                 + ", ".join(f"{m:g}" for m in r["rater_medians"]) + f" | {r['single_token']}; {multi} |")
    alpha = res["agreement"]
    lex = "; ".join(f"{name} {rho:+.2f}" if rho is not None else f"{name}: -" for name, rho in
                    res["lexical_spearman"].items())
    m = res["difference_multi"]
    L += ["", f"Median, features minus neurons: **{d['value']:+.1f}**, 95% CI [{d['ci'][0]:+.1f}, {d['ci'][1]:+.1f}] "
          "(the paper: 12 - 0 = +12); without single-token units: " + (
              f"{m['value']:+.1f} [{m['ci'][0]:+.1f}, {m['ci'][1]:+.1f}]." if m else "- (one kind has none left)."),
          "Agreement between raters (Krippendorff's alpha, interval, on the totals): "
          + (f"{alpha:.2f} (1: perfect, 0: chance)." if alpha is not None else "needs two raters or more.")
          + f" Each rater against the lexical score of the same units (Spearman): {lex}.",
          "Single-token units (analyze.py's flag: one token carries most of the activation) are easy to read; the "
          "table's last column leaves them out.",
          "Time per card (median): " + "; ".join(f"{name} {s:.1f} s ({res['minutes'][name]:.1f} min in all)"
                                                 for name, s in res["seconds_per_card"].items()) + ".", ""]
    if n_raters == 1:
        L += ["One rater is not a class: these are one person's judgements, with no agreement to check them by.", ""]
    L += ["![blind rating](ratings.png)", ""]
    return L


def console(res):
    d = res["difference"]
    return ([f"ratings: {kind}: median {r['median']:.1f} of {res['max']} ({r['cards']} cards)"
             for kind, r in res["by_kind"].items()]
            + [f"ratings: features minus neurons {d['value']:+.1f} [95% CI {d['ci'][0]:+.1f}, {d['ci'][1]:+.1f}]; "
               f"agreement (Krippendorff's alpha) " + (f"{res['agreement']:.2f}" if res["agreement"] is not None
                                                        else "- (one rater)")])


def plot(res, path):
    """The paper's figure: the distribution of the rubric's totals, features and neurons side by side;
    then each rating against the lexical score."""
    fig = Figure(figsize=(11, 3.8))
    ax, bx = fig.subplots(1, 2, gridspec_kw=dict(width_ratios=[3, 2]))
    kinds = list(res["by_kind"])
    width = 0.8 / len(kinds)
    scores = np.arange(res["max"] + 1)
    for i, kind in enumerate(kinds):
        r = res["by_kind"][kind]
        share = np.array(r["distribution"]) / max(1, sum(r["distribution"]))
        ax.bar(scores + (i - (len(kinds) - 1) / 2) * width, share, width, color=COLOURS[kind],
               label=f"{kind if kind != 'control' else 'random-weights features'}: median {r['median']:g}")
    ax.axvline(QUITE + 0.5, color="gray", linestyle=":", linewidth=1)
    ax.set_xticks(scores)
    ax.set_xlabel(f"rubric total (0-{res['max']}); dotted: above it, 'quite interpretable'")
    ax.set_ylabel("share of ratings")
    ax.set_title(f"blind rating: {res['cards']} cards, {len(res['raters'])} rater(s)", fontsize=10)
    ax.legend(fontsize=8)
    for kind in kinds:
        on = res["kinds"] == kind
        for t in res["totals"]:
            bx.scatter(res["lexical"][on], t[on], s=14, color=COLOURS[kind], alpha=0.6)
    bx.set_xlabel("lexical score of the same unit (analyze.py, Pearson r)")
    bx.set_ylabel("rubric total")
    bx.set_title("each rating against the lexical score", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
