"""lab/figures.py: the figures of the report and of lab/compare.py's report, drawn with matplotlib's
object API (no global state, no display) and written whole or not at all (plumbing.save_figure).

    plot_density      the paper's histogram of log10 feature density (analyze.py, step 2)
    plot_interp       features vs neurons on the lexical score: distributions, explanation length, density
    plot_control      the random-weights control beside model A (lab/compare.py)
    plot_knob         the dictionary sizes of the sweep (lab/compare.py)
"""
import numpy as np
from matplotlib.figure import Figure

from lab.plumbing import save_figure


def plot_density(out, n, path):
    fig = Figure(figsize=(4.5 * len(out), 3.4))
    axes = fig.subplots(1, len(out), squeeze=False)
    bins = np.arange(np.floor(np.log10(1 / n)) - 0.25, 0.25, 0.125)
    for ax, (k, r) in zip(axes[0], out.items()):
        d = r["density"]
        ax.hist(np.log10(d[d > 0]), bins=bins, color="tab:blue")
        if r["cluster"]:
            ax.hist(np.log10(d[r["cluster"]["members"]]), bins=bins, color="tab:orange",
                    label=f"ultralow cluster: {r['cluster']['members'].sum()}")
            ax.legend(loc="upper left", fontsize=8)
        ax.set_title(f"F{k}: {k - r['dead']:,} alive, {r['dead']:,} dead (never fired)", fontsize=9)
        ax.set_xlabel(f"log10 feature density ({n:,} held-out tokens)")
    axes[0][0].set_ylabel("features")
    fig.tight_layout()
    save_figure(fig, path)


def plot_interp(compare, summary, max_entries, path):
    fig = Figure(figsize=(11, 7.6))
    axes = fig.subplots(2, 2)
    axes = axes.ravel()
    bins = np.linspace(-0.2, 1, 25)
    for ax, part in zip(axes, ("all", "multi")):
        for kind, color in (("features", "tab:blue"), ("neurons", "tab:red")):
            x = [r["score"] for r in compare[kind] if part == "all" or not r["single_token"]]
            ax.hist(x, bins=bins, histtype="step", linewidth=2, color=color, label=f"{kind} (n={len(x)})")
            if x:
                ax.axvline(np.median(x), color=color, linestyle="--", linewidth=1)
        ax.set_title("all sampled units" if part == "all" else "without single-token units", fontsize=10)
        ax.set_xlabel(f"simulation score (Pearson r), {max_entries}-row explanations; dashed: median", fontsize=9)
        ax.legend(fontsize=8, loc="upper left")
        ax.set_ylabel("units")
    ax = axes[2]
    sizes = list(summary["by_size"])
    for kind, color in (("features", "tab:blue"), ("neurons", "tab:red")):
        med = np.array([summary["by_size"][e][kind] for e in sizes])
        ci = np.array([summary["by_size"][e][kind + "_ci"] for e in sizes]).T
        # a percentile interval need not hold the median itself (few units, documents resampled): where it
        # does not, the bar stops at the point, since matplotlib refuses negative lengths
        err = np.clip([med - ci[0], ci[1] - med], 0, None)
        ax.errorbar(sizes, med, yerr=err, color=color, marker="o", capsize=3, label=kind)
    ax.axvline(max_entries, color="gray", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(e) for e in sizes])
    ax.set_xlabel("rows in the explanation table")
    ax.set_ylabel("median score (95% CI)")
    ax.set_title("longer explanations: neurons catch up?", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[3]
    for kind, color in (("features", "tab:blue"), ("neurons", "tab:red")):
        rows = [r for r in summary["by_density"] if r[kind][0] >= 5]
        ax.plot([np.sqrt(r["lo"] * r["hi"]) for r in rows], [r[kind][1] for r in rows], color=color, marker="o",
                label=kind)
    ax.set_xscale("log")
    ax.set_xlabel("density (decade bins with at least 5 units)")
    ax.set_ylabel("median score, all scored units")
    ax.set_title("the same density, the same score?", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def millions(x):
    return f"{x / 1e6:.1f}M" if x >= 1e6 else f"{x:,}"


def plot_control(c, n, path):
    fig = Figure(figsize=(11, 3.8))
    axes = fig.subplots(1, 2)
    groups = [("A", "features"), ("A", "neurons"), ("random", "features"), ("random", "neurons")]
    x = np.arange(len(groups))
    for dx, part, color in ((-0.2, "all", "tab:blue"), (0.2, "multi", "tab:orange")):
        med = [c[m]["summary"][k].get(part, {}).get("median", np.nan) for m, k in groups]
        axes[0].bar(x + dx, med, 0.4, color=color,
                    label="all sampled units" if part == "all" else "without single-token units")
    for i, (m, k) in enumerate(groups):
        r = c[m]["summary"][k]
        axes[0].text(i, 0.02, f"{100 * r['single'] / r['n']:.0f}%\nsingle-\ntoken", ha="center", fontsize=7,
                     color="white")
    axes[0].set_xticks(x, [f"{'model A' if m == 'A' else 'random model'}\n{k}" for m, k in groups], fontsize=8)
    axes[0].set_ylabel("median interpretability score")
    axes[0].set_title("features vs neurons, trained and random-weights transformer", fontsize=9)
    axes[0].legend(fontsize=8, loc="upper right")
    bins = np.arange(np.floor(np.log10(1 / n)) - 0.25, 0.25, 0.125)
    for m, color in (("A", "tab:blue"), ("random", "tab:gray")):
        d = (c[m]["fired"].double() / n).numpy()
        axes[1].hist(np.log10(d[d > 0]), bins=bins, histtype="step", linewidth=2, color=color,
                     label=f"{'model A' if m == 'A' else 'random model'}: {(d == 0).sum()} dead")
    axes[1].set_xlabel(f"log10 feature density ({n:,} held-out tokens)")
    axes[1].set_ylabel("features")
    axes[1].set_title("feature density, trained vs random-weights transformer", fontsize=9)
    axes[1].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path)


def plot_knob(k, path):
    rows = k["rows"]
    sizes = [r["size"] for r in rows]
    fig = Figure(figsize=(14, 3.2))
    axes = fig.subplots(1, 4)
    for ax, key, label in zip(axes, ("fvu", "l0", "dead", "recovered"),
                              ("FVU (unexplained variance)", "L0 (features per token)", "dead fraction",
                               "loss recovered (zero ablation)")):
        ax.plot(sizes, [r[key] for r in rows], marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes], fontsize=8)
        ax.set_xlabel("dictionary size")
        ax.set_title(label, fontsize=9)
    fig.suptitle(f"the knob: one LM, one stream of {millions(rows[0]['seen'])} activations, "
                 f"{len(rows)} dictionary sizes", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
