"""lab/compare.py: the paper's last two results: features are universal across seeds, and the number of
features is a knob (a larger dictionary splits features into finer ones).

    python -m lab.compare                  # after the main run: about 85 minutes on a 2-core CPU
    python -m lab.compare --out /tmp/run   # another run's outputs; interrupted? run it again, it resumes

It needs the main run (data.py, train_lm.py, train_sae.py) in --out and adds, each stage skipped
when its checkpoint is final and resumed when it was interrupted:

  1. model B: the same LM trained on the same number of tokens with another seed (<out>/lm_b/)
  2. the random-weights control: model A's initialisation, never trained (<out>/lm_random/)
  3. an SAE of the main run's size and recipe, on as many activations, on each (sae_b/, sae_random/)
  4. a sweep of dictionary sizes on model A, all on the same activations (sae_sweep/F<n>/)
  5. the measurements, in <out>/compare/: report.md, universality.png, control.png, knob.png

Universality is measured in a pass of its own (lab/universality.py), through the two LMs, their
SAEs and a second SAE on model A, over random windows of the whole corpus, with 95% intervals from
resampling documents. The knob and splitting are measured in a second pass, over held-out tokens,
through every dictionary of the sweep. The metrics are in lab/matching.py.
"""
import lab  # first, before torch loads: lab/__init__.py lets waiting OpenMP threads sleep

import dataclasses
import os
import time

import numpy as np
import torch
from matplotlib.figure import Figure

import analyze
import data
import train_lm
import train_sae
from lab.plumbing import (MAY_CHANGE_ON_RESUME, Progress, UserError, arg, finite, flat_dict, fmt_eta,
                          from_dict, lm_fingerprint, load_checkpoint, make_folder, parse_config, pick_device,
                          require, run_main, save_figure)
from lab.measure import MIN_ACTIVE, stream
from lab.matching import Acts, Correlator, Coverage, best_matches, decoder_cosines, nearest_parent, split_families
from lab.universality import (CLEAR_MARGIN, DENSITY_BINS, MIN_UNITS, clear_margin, difference_ci, median_ci,
                              universality, universality_pass, universality_windows)
from lab.figures import millions, plot_control, plot_knob
from lab.formatting import shown, token_text
from lab.report import write_json, write_markdown
from lab.trained import load_lm, load_sae, load_tokenizer


@dataclasses.dataclass
class CompareConfig:
    out: str = arg("out", "artifact root of the main run; the new runs and compare/ go beside it")
    device: str = arg("auto", "auto, cpu, cuda or cuda:N")
    seed_b: int = arg(1, "model B's seed (model A's is the main run's)")
    sizes: list = arg([512, 1024, 2048, 4096], "dictionary sizes of the sweep (more on a GPU, e.g. ... 16384)")
    sweep_activations: int = arg(0, "activations every size of the sweep trains on (0: as many as the main SAE saw)")
    sweep_minutes: float = arg(0.0, "a wall-clock budget for the sweep instead of --sweep-activations (0: none)")
    tokens: int = arg(0, "held-out tokens to measure the knob and splitting on and to analyse the control (0: the "
                      "whole split)")
    universality_tokens: int = arg(2_000_000, "tokens to correlate the two LMs' units on, in random windows of the "
                                   "whole corpus (0: every window)")
    groups: int = arg(16, "documents are dealt into this many groups, which the 95% intervals resample "
                      "(memory: 2 x groups x features^2 x 4 bytes)")
    pairs: int = arg(8, "matched A/B feature pairs shown, sampled at random from the alive features")
    families: int = arg(4, "feature families shown: the clearest splits")
    seed: int = arg(0, "seed for the sampled pairs")
    # set by programs (the tests), not on the command line
    n_units: int = arg(512, "units of each kind the control's features-versus-neurons comparison scores", flag=False)

    def __post_init__(self):  # checked before the hour-long stages start, not at the report
        require(len(self.sizes) >= 2 and all(str(n).isdigit() and int(n) >= 1 for n in self.sizes),
                f"--sizes {' '.join(map(str, self.sizes))}", "expects two or more positive dictionary sizes, e.g. "
                "--sizes 512 1024")
        self.sizes = [int(n) for n in self.sizes]
        require(self.sweep_activations >= 0, f"--sweep-activations {self.sweep_activations}",
                "must be >= 0 (0: as many as the main SAE saw)")
        require(finite(self.sweep_minutes) and self.sweep_minutes >= 0, f"--sweep-minutes {self.sweep_minutes}",
                "must be a number of minutes >= 0 (0: none)")
        require(self.tokens >= 0, f"--tokens {self.tokens}", "must be >= 0 (0: the whole held-out split)")
        require(self.universality_tokens >= 0, f"--universality-tokens {self.universality_tokens}",
                "must be >= 0 (0: every window of the corpus)")
        require(self.groups >= 2, f"--groups {self.groups}", "must be at least 2 (the intervals resample groups)")
        require(self.pairs >= 1, f"--pairs {self.pairs}", "must be at least 1")
        require(self.families >= 1, f"--families {self.families}", "must be at least 1")


def main(cfg):
    t0 = time.time()
    dirs = run_stages(cfg)
    res = measure(cfg, dirs)
    path = write_report(cfg, dirs, res)
    print(f"report: {path} ({fmt_eta(time.time() - t0)})")
    return res


# ----------------------------------------------------------------------------------------------
# Stages 1-4: the runs, each reusing the main run's recipe (its saved configs)


def run_stages(cfg):
    """Train whatever is missing; returns the main SAE's size and the sweep's sizes."""
    a_lm = load_checkpoint(os.path.join(cfg.out, "lm", "ckpt.pt"), "LM checkpoint (model A)",
                           f"run the main run first: python train_lm.py --out {cfg.out}")
    a_sae_path = main_sae_path(cfg.out)
    a_sae = load_checkpoint(a_sae_path, "SAE checkpoint", f"run python train_sae.py --out {cfg.out} first")
    if not (a_lm["final"] and a_sae["final"]):
        raise UserError(f"the main run in {cfg.out} has not finished: resume it first "
                        "(python train_lm.py --resume, then python train_sae.py --resume)")
    n_features = a_sae["sae_config"]["n_features"]
    lm_cfg = recipe(train_lm.TrainConfig, a_lm["config"], out=cfg.out, device=cfg.device, max_minutes=0)
    sae_cfg = recipe(train_sae.SAETrainConfig, a_sae["config"], out=cfg.out, device=cfg.device, sweep=[],
                     snapshots=[], n_features=n_features, max_activations=a_sae["seen"], max_minutes=0,
                     recipe=a_sae["config"].get("recipe", "paper"))  # (runs from before --recipe: the paper's)
    if cfg.seed_b == lm_cfg.seed:
        raise UserError(f"--seed-b {cfg.seed_b} is model A's own seed: universality across seeds needs another, "
                        f"e.g. --seed-b {lm_cfg.seed + 1}")
    a_tokens = a_lm["step"] * lm_cfg.batch_size * lm_cfg.model.block_size
    stage("model B", os.path.join(cfg.out, "lm_b", "ckpt.pt"), train_lm.train,
          dataclasses.replace(lm_cfg, lm_dir="lm_b", seed=cfg.seed_b, max_tokens=a_tokens))
    stage("random-weights control", os.path.join(cfg.out, "lm_random", "ckpt.pt"), train_lm.train,
          dataclasses.replace(lm_cfg, lm_dir="lm_random", max_tokens=0))
    for lm_dir, sae_dir in (("lm_b", "sae_b"), ("lm_random", "sae_random")):
        stage(f"SAE F{n_features} on {lm_dir}", os.path.join(cfg.out, sae_dir, f"F{n_features}", "ckpt.pt"),
              train_sae.train, dataclasses.replace(sae_cfg, lm_dir=lm_dir, sae_dir=sae_dir))
    sizes = sorted({int(n) for n in cfg.sizes})
    # By default every size sees as many activations as the main SAE, so the sweep's largest is a
    # second SAE on model A comparable with the main one. A time budget shared by the sizes buys
    # few: a fresh 2024-recipe SAE is dense until its L1 penalty has warmed up, and every size pays
    # that dense price.
    by_time = cfg.sweep_minutes > 0 and not cfg.sweep_activations
    sweep_budget = dict(max_minutes=cfg.sweep_minutes if by_time else 0.0,
                        max_activations=cfg.sweep_activations or a_sae["seen"])
    for n in sizes:  # a sweep is done when every size is
        stage(f"sweep {sizes}", os.path.join(cfg.out, "sae_sweep", f"F{n}", "ckpt.pt"), train_sae.train,
              dataclasses.replace(sae_cfg, sae_dir="sae_sweep", n_features=sizes[-1], sweep=sizes, **sweep_budget))
    return dict(n_features=n_features, sizes=sizes)


def main_sae_path(out):
    """The main run's SAE: the largest in <out>/sae/."""
    sizes = [int(d[1:]) for d in os.listdir(os.path.join(out, "sae"))
             if d[1:].isdigit()] if os.path.isdir(os.path.join(out, "sae")) else []
    if not sizes:
        raise UserError(f"no SAE in {out}/sae/: run python train_sae.py --out {out} first")
    return os.path.join(out, "sae", f"F{max(sizes)}", "ckpt.pt")


def recipe(cls, saved, **changes):
    """A run's config rebuilt from a saved one, flat or nested (fields this version no longer has are dropped)."""
    return from_dict(cls, {**saved, "resume": False, **changes})


def stage(name, ckpt_path, train, run_cfg):
    """Skip when the run's checkpoint is final, resume it when it was interrupted, else start it.
    A finished SAE must have decomposed the LM now in its place (a redone main run makes it stale)."""
    if os.path.exists(ckpt_path):
        ckpt = load_checkpoint(ckpt_path, f"checkpoint of {name}", "delete it and rerun: the stage starts over")
        lm_dir = getattr(run_cfg, "lm_dir", None)
        if "lm_fingerprint" in ckpt and ckpt["lm_fingerprint"] != lm_fingerprint(load_lm(run_cfg.out, lm_dir)[1]):
            raise UserError(f"{ckpt_path} decomposed an older {run_cfg.out}/{lm_dir}: delete its folder and rerun")
        if ckpt.get("final"):
            print(f"{name}: done ({ckpt_path})")
            return
        refuse_other_settings(name, ckpt_path, ckpt.get("config", {}), run_cfg)
        run_cfg = dataclasses.replace(run_cfg, resume=True)
    else:  # this stage decided to start afresh: a finished part (say, of a sweep with new --sizes) is redone
        run_cfg = dataclasses.replace(run_cfg, overwrite=True)
    print(f"{name}: {'resuming' if run_cfg.resume else 'training'} ({ckpt_path})", flush=True)
    train(run_cfg)


def refuse_other_settings(name, ckpt_path, saved, run_cfg):
    """An interrupted stage goes on only with the settings it was started with; said in this script's
    terms (--seed-b for model B's seed), since the training script's own flags are not this one's."""
    changed = {k: v for k, v in flat_dict(run_cfg).items()
               if k in saved and k not in MAY_CHANGE_ON_RESUME | {"overwrite"} and saved[k] != v}
    if changed:
        was = ", ".join(f"{'--seed-b' if k == 'seed' else k} {saved[k]} (now {v})" for k, v in changed.items())
        raise UserError(f"{name} in {os.path.dirname(ckpt_path)} was started with {was}: rerun with the settings it "
                        f"was started with to go on with it, or delete {os.path.dirname(ckpt_path)} to start it over")


# ----------------------------------------------------------------------------------------------
# Stage 5: measurements


def measure(cfg, dirs):
    """The universality pass and its summary, the knob pass, loss recovered per size and the
    random-weights control's analyses: everything the report needs."""
    t0 = time.time()
    device = pick_device(cfg.device)
    data_dir = os.path.join(cfg.out, "data")
    meta = data.load_meta(data_dir)
    tokens = data.load_tokens(data_dir, "val")
    lm_a, _ = load_lm(cfg.out, "lm", device)
    lm_b, _ = load_lm(cfg.out, "lm_b", device)
    T = lm_a.cfg.block_size
    n = (min(cfg.tokens or len(tokens), len(tokens)) // T) * T
    if n < 2 * T:
        raise UserError(f"--tokens {cfg.tokens}: need at least two windows of {T} held-out tokens")
    tokens = np.asarray(tokens[:n]).astype(np.int64)
    F = dirs["n_features"]
    sae_a = load_sae(os.path.join(cfg.out, "sae", f"F{F}", "ckpt.pt"), device)[0]
    sae_b = load_sae(os.path.join(cfg.out, "sae_b", f"F{F}", "ckpt.pt"), device)[0]
    sweep = {s: load_sae(os.path.join(cfg.out, "sae_sweep", f"F{s}", "ckpt.pt"), device)
             for s in dirs["sizes"]}
    batches = universality_windows(data_dir, T, cfg.universality_tokens, cfg.groups, cfg.seed)
    u_pass = universality_pass(lm_a, lm_b, sae_a, sae_b, sweep[dirs["sizes"][-1]][0], batches, cfg.groups,
                               meta["vocab_size"])
    u, u_seconds = universality(u_pass, cfg.seed), time.time() - t0
    matches = knob_pass(lm_a, {s: v[0] for s, v in sweep.items()}, tokens, n, meta["vocab_size"])
    res = dict(n_tokens=n, enc=load_tokenizer(data_dir), universality=u, mass=u_pass["mass"],
               u_tokens=u_pass["n_tokens"], u_seconds=u_seconds, match=matches,
               decoders={s: sae.W_dec.detach().float().cpu() for s, (sae, _) in sweep.items()},
               knob=knob(lm_a, tokens, n, sweep, matches), control=control(cfg, dirs))
    res["seconds"] = time.time() - t0
    return res


@torch.no_grad()
def knob_pass(lm_a, sweep, tokens, n, vocab):
    """One pass over n held-out tokens through model A and every dictionary of the sweep, reduced
    to: correlations of the smallest dictionary's features with each larger one's, and how much of
    each small feature's activation its children cover (splitting); firing counts, squared
    reconstruction errors and per-token activation mass. The sums stay on the model's device
    until the end (no copy to the host per chunk); what it returns is on the CPU."""
    device = lm_a.unembed.weight.device
    sizes = sorted(sweep)
    small, larger = sizes[0], sizes[1:]
    parents = {s: nearest_parent(sweep[small].W_dec, sweep[s].W_dec) for s in larger}
    parents_here = {s: p.to(device) for s, p in parents.items()}
    corr = {s: Correlator(small, s, device=device) for s in larger}
    cover = {s: Coverage(small, s, device) for s in larger}
    fired = {s: torch.zeros(s, device=device) for s in sizes}
    mass = {s: torch.zeros(vocab, s, device=device) for s in sizes}
    sq_err = dict.fromkeys(sizes, 0.0)
    a_sum, a_sumsq = 0.0, 0.0
    progress, t0 = Progress(None), time.time()
    batch = max(1, 4096 // lm_a.cfg.block_size) * lm_a.cfg.block_size
    for start, a in stream(lm_a, tokens, n, {"h": lambda h: h}, batch):
        a = a["h"]
        ids = torch.from_numpy(tokens[start:start + len(a)]).to(device)
        f = {s: Acts(sweep[s].encode(a)) for s in sizes}
        for s in larger:
            corr[s].add(f[small], f[s])
            cover[s].add(f[small].x, f[s].x, parents_here[s])
        for k, x in f.items():
            fired[k] += x.fired
            tok, unit, val = x.nonzeros
            mass[k].index_put_((ids[tok], unit), val, accumulate=True)
            sq_err[k] += ((sweep[k].decode(x.x) - a) * sweep[k].act_scale).double().square().sum()
        a_sum = a_sum + a.double().sum(0)
        a_sumsq = a_sumsq + a.double().square().sum(0)
        done = start + len(a)
        if progress.due() or done == n:
            rate = done / (time.time() - t0)
            progress.say(f"the knob: {done:,}/{n:,} held-out tokens | {rate:,.0f} tok/s | "
                         f"ETA {fmt_eta((n - done) / rate)}")
    spread = (a_sumsq - a_sum ** 2 / n).sum().item()  # FVU's denominator, in the activations' units
    sq_err = {s: e.item() for s, e in sq_err.items()}
    return dict(corr={k: c.correlations() for k, c in corr.items()},
                cover={s: c.fractions(parents_here[s]) for s, c in cover.items()},
                parents=parents, fired={k: v.cpu() for k, v in fired.items()}, mass={k: v.cpu() for k, v in mass.items()},
                fvu={s: sq_err[s] / (sweep[s].act_scale.item() ** 2 * spread) for s in sizes},
                mse={s: sq_err[s] / (n * lm_a.cfg.d_mlp) for s in sizes})


def knob(lm_a, tokens, n, sweep, m):
    """Per dictionary size: MSE, FVU, L0, dead fraction and loss recovered (the paper's knob)."""
    repl = {"clean": lambda h: h, "zero": lambda h: torch.zeros_like(h),
            **{s: (lambda h, sae=sae: sae(h)[0]) for s, (sae, _) in sweep.items()}}
    loss = analyze.lm_losses(lm_a, tokens, min(2**17, n - 1), repl)
    rows = []
    for s, (sae, ckpt) in sweep.items():
        fired = m["fired"][s]
        rows.append(dict(size=s, mse=m["mse"][s], fvu=m["fvu"][s], l0=fired.sum().item() / n,
                         dead=(fired == 0).float().mean().item(), loss=loss[s],
                         recovered=analyze.recovered(loss["zero"], loss[s], loss["clean"]), seen=ckpt["seen"]))
    return dict(rows=rows, clean=loss["clean"], zero=loss["zero"])


def control(cfg, dirs):
    """analyze.py's features-versus-neurons comparison, run on model A and on the random-weights
    model (each in its own folder under compare/, so the main analysis is left as it was)."""
    out = {}
    for name, lm_dir, sae_dir in (("A", "lm", "sae"), ("random", "lm_random", "sae_random")):
        acfg = analyze.AnalyzeConfig(out=cfg.out, lm_dir=lm_dir, sae_dir=sae_dir, n_features=dirs["n_features"],
                                     analysis_dir=os.path.join("compare", f"analysis_{name}"), device=cfg.device,
                                     tokens=cfg.tokens, seed=cfg.seed, n_units=cfg.n_units)
        res = analyze.analyze(acfg, "interp")
        out[name] = dict(summary=res["interp"]["summary"], compare=res["interp"]["compare"],
                         fired=res["measure"].stats[f"F{dirs['n_features']}"].fired)
    return out


# ----------------------------------------------------------------------------------------------
# Summaries


def splitting(m, W, n_show):
    """Per larger size: how many features of the size below have a close match (decoder cosine
    above 0.9) and how the smallest dictionary's features map onto it; the clearest families."""
    sizes = sorted(W)
    small = sizes[0]
    alive = {s: m["fired"][s] >= MIN_ACTIVE for s in sizes}
    rows = []
    for prev, s in zip(sizes, sizes[1:]):
        close = best_matches(decoder_cosines(W[prev][alive[prev]], W[s][alive[s]]))[0] > 0.9
        cos = decoder_cosines(W[small][alive[small]], W[s][alive[s]])
        corr = m["corr"][s][alive[small]][:, alive[s]]
        kids = m["parents"][s][alive[s]]
        counts = torch.bincount(kids[kids >= 0], minlength=small)[alive[small]]
        rows.append(dict(size=s, prev=prev, alive=int(alive[s].sum()), alive_prev=int(alive[prev].sum()),
                         close=int(close.sum()), cos=float(best_matches(cos)[0].median()),
                         corr=float(best_matches(corr)[0].median()), split=int((counts >= 2).sum())))
    largest = sizes[-1]
    parents = torch.where(alive[largest], m["parents"][largest], -1)
    families = split_families(parents, decoder_cosines(W[small], W[largest]), m["corr"][largest],
                              *m["cover"][largest])
    families = [f for f in families if alive[small][f["parent"]]][:n_show]
    for f in families:
        f["tree"] = family_tree(f["parent"], sizes, W, m["parents"], alive)
    return dict(rows=rows, families=families)


def family_tree(parent, sizes, W, parents, alive, max_children=6):
    """The members of one family at each size, each attached to its nearest (decoder cosine) member
    of the size below: [(size, unit, attached-to unit, cosine)] in order of size."""
    tree, level = [], [parent]
    for prev, s in zip(sizes, sizes[1:]):
        members = ((parents[s] == parent) & alive[s]).nonzero().squeeze(1)
        if len(members) == 0:
            break
        cos = decoder_cosines(W[s][members], W[prev][level])
        best, idx = cos.max(1)
        keep = best.argsort(descending=True)[:max_children]
        tree += [(s, members[i].item(), level[idx[i]], best[i].item()) for i in keep.tolist()]
        level = members[keep].tolist()
    return tree


# ----------------------------------------------------------------------------------------------
# Figures and report.md


def top_tokens(mass, unit, enc, k=4):
    """A unit's k tokens with the most activation mass, as `token` (share of its mass)."""
    col = mass[:, unit]
    total = col.sum().item()
    if total == 0:
        return "(never fired)"
    vals, ids = col.topk(k)
    return " ".join(f"{shown(token_text(enc, t))} {100 * v / total:.0f}%" for v, t in zip(vals.tolist(), ids.tolist())
                    if v > 0)


def density_label(lo, hi):
    decade = lambda x: f"1e{round(np.log10(x))}"
    return f"density < {decade(hi)}" if lo == 0 else f"{decade(lo)} to {decade(hi)}" if hi < 1 else f">= {decade(lo)}"


def plot_universality(u, path):
    fig = Figure(figsize=(11, 3.8))
    axes = fig.subplots(1, 2)
    bins = np.linspace(0, 1, 41)
    kinds = (("features", "tab:blue", "features, A vs B"), ("neurons", "tab:red", "neurons, A vs B"),
             ("same LM", "tab:gray", "features, A vs a second SAE on A"))
    for kind, color, label in kinds:
        x = u[kind]["best"]
        axes[0].hist(x, bins=bins, density=True, histtype="step", linewidth=2 if kind != "same LM" else 1,
                     color=color, label=f"{label} (n={len(x)}, median {np.median(x):.2f})")
        axes[0].axvline(np.median(x), color=color, linestyle="--", linewidth=1)
    axes[0].set_xlabel("max Pearson correlation with any unit of the other set")
    axes[0].set_ylabel("density of units")
    axes[0].set_title("model A's units, best match in model B (paper: median 0.72 vs 0.46)", fontsize=9)
    axes[0].legend(fontsize=8, loc="upper left")
    centres = [np.sqrt(max(lo, 1e-5) * hi) for lo, hi in zip(DENSITY_BINS, DENSITY_BINS[1:])]
    for (kind, color, label), shift in zip(kinds, (1.0, 1.15, 0.87)):
        cells = [(c * shift, median_ci(u[kind], lo, hi)) for c, lo, hi in zip(centres, DENSITY_BINS, DENSITY_BINS[1:])]
        cells = [(x, r) for x, r in cells if r]
        # the interval drawn as it is: a resample's best match is the best of noisier correlations, so
        # the interval can lie above the median
        axes[1].vlines([x for x, _ in cells], [r["ci"][0] for _, r in cells], [r["ci"][1] for _, r in cells],
                       color=color)
        axes[1].plot([x for x, _ in cells], [r["median"] for _, r in cells], "o", color=color, label=label)
    for edge in DENSITY_BINS[1:-1]:
        axes[1].axvline(edge, color="lightgray", linewidth=0.5)
    axes[1].set_xscale("log")
    axes[1].set_ylim(0, 1.02)
    axes[1].legend(fontsize=8, loc="lower left")
    axes[1].set_xlabel("the unit's density in model A (bins: decades)")
    axes[1].set_ylabel("median best correlation, 95% interval")
    axes[1].set_title("at the same density: do features match better than neurons?", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def write_report(cfg, dirs, res):
    """compare/report.md (and summary.json and the figures beside it): the runs compared, then universality,
    the random-weights control, the knob and feature splitting, each section a function returning its lines."""
    folder = os.path.join(cfg.out, "compare")
    make_folder(folder)
    write_summary(res["universality"], res["u_tokens"], os.path.join(folder, "summary.json"))
    split = splitting(res["match"], res["decoders"], cfg.families)
    plot_universality(res["universality"], os.path.join(folder, "universality.png"))
    plot_control(res["control"], res["n_tokens"], os.path.join(folder, "control.png"))
    plot_knob(res["knob"], os.path.join(folder, "knob.png"))
    sections = [universality_section(cfg, dirs, res), control_section(res["control"]),
                knob_section(res, dirs), splitting_section(split, res, dirs)]
    path = write_markdown(os.path.join(folder, "report.md"), [runs_section(cfg, dirs, res), *sections])
    print("\n".join(line for section in sections for line in section))
    return path


def runs_section(cfg, dirs, res):
    return [f"# Universality, the random-weights control and feature splitting: `{cfg.out}`", "",
            f"Measured in {fmt_eta(res['seconds'])}, universality in {fmt_eta(res['u_seconds'])}. Runs compared:", "",
            "| run | folder | trained on | final held-out line |", "| --- | --- | --- | --- |", *runs_table(cfg, dirs),
            ""]


def universality_section(cfg, dirs, res):
    enc, u = res["enc"], res["universality"]
    F = dirs["n_features"]
    f = u["features"]
    bins = list(zip(DENSITY_BINS, DENSITY_BINS[1:]))
    cell = lambda r: f"**{r['median']:.3f}** [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] (n={r['n']:,})" if r else "-"
    diff = lambda r: f"{r['value']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]" if r else "-"
    excluded = f"; the ultralow-density cluster's {f['ultralow']} features left out, as the paper does" if f["ultralow"] else ""
    L = ["## Universality: model A vs model B (differing only in seed)", "",
         f"Over {res['u_tokens']:,} tokens in random windows of the whole corpus (both splits), for each alive unit "
         f"of model A (fired on at least {MIN_ACTIVE} of them{excluded}), the largest Pearson correlation of its "
         "activations with any alive unit of the other set on the same tokens: the median, overall and by the "
         "unit's density, with 95% intervals from resampling the corpus's documents (dealt into "
         f"{cfg.groups} groups). The last row is a yardstick: A's features against a second SAE trained on model "
         f"A itself (the sweep's F{dirs['sizes'][-1]}: another initialisation, the same data order, "
         f"{millions(res['knob']['rows'][-1]['seen'])} activations). By chance, the best of thousands of "
         "correlations is above 0 even between unrelated units: the column \"chance\" correlates A's units with "
         "B's on other tokens (each token against one in another window, half a window apart in position). The "
         "intervals are rough (few groups). A resample that leaves out every group where a unit fires leaves its "
         "correlation undefined (a constant's): it takes one of the unit's own resampled values, not 0, which "
         "would pull the resampled medians down, most for the rarer kind (so for "
         f"{100 * f['silent']:.1f}% of the features' resamples, {100 * u['neurons']['silent']:.1f}% of the neurons', "
         f"{100 * u['same LM']['silent']:.1f}% of the second SAE's).", "",
         "| units | alive | median best r, all | " + " | ".join(density_label(lo, hi) for lo, hi in bins)
         + " | chance: on other tokens | paper |", "| --- " * (len(bins) + 5) + "|"]
    for kind, label, paper in (("features", f"features (F{F}), A vs B", "0.72"), ("neurons", "neurons, A vs B", "0.46"),
                               ("same LM", "features, A vs a second SAE on A", "-")):
        r = u[kind]
        L.append(f"| {label} | {len(r['best']):,} of {r['total']:,} | {cell(median_ci(r))} | "
                 + " | ".join(cell(median_ci(r, lo, hi)) for lo, hi in bins)
                 + (f" | {r['chance']:.3f}" if "chance" in r else " | -") + f" | {paper} |")
    L.append("| features minus neurons | | " + diff(difference_ci(f, u["neurons"])) + " | "
             + " | ".join(diff(difference_ci(f, u["neurons"], lo, hi)) for lo, hi in bins) + " | | 0.26 |")
    L += ["", f"Do features beat neurons by a clear margin (fixed before any number was seen: the interval of the "
          f"difference above +{CLEAR_MARGIN} overall, and above 0 in every density bin where both kinds have "
          f"{MIN_UNITS} units)? **{'Yes' if clear_margin(u) else 'No'}.**",
          "", "![universality](universality.png)", "",
          f"{cfg.pairs} features of model A drawn at random from the alive ones, beside their best match in model B "
          "(top tokens by share of the feature's activation mass):", "",
          "| A feature | its top tokens | r | B feature | its top tokens |", "| --- | --- | --- | --- | --- |"]
    rng = np.random.default_rng(cfg.seed)
    picks = rng.choice(len(f["units"]), min(cfg.pairs, len(f["units"])), replace=False)
    for i in sorted(picks, key=lambda i: -f["best"][i]):
        a, b = f["units"][i].item(), f["match"][i].item()
        L.append(f"| A/{a} | {top_tokens(res['mass']['A'], a, enc)} | {f['best'][i]:.2f} | B/{b} | "
                 f"{top_tokens(res['mass']['B'], b, enc)} |")
    return L + [""]


def control_section(c):
    L = ["## The random-weights control", "",
         "analyze.py's features-versus-neurons comparison (same units sampled, same score) on model A and on the "
         "same transformer at its initialisation, never trained, with an SAE of the same size and recipe.", "",
         "| model | units | scored | single-token | median score | median without single-token |",
         "| --- | --- | --- | --- | --- | --- |"]
    for model in ("A", "random"):
        for kind in ("features", "neurons"):
            r = c[model]["summary"][kind]
            multi = f"{r['multi']['median']:.3f}" if "multi" in r else "-"
            L.append(f"| {'model A' if model == 'A' else 'random weights'} | {kind} | {r['n']} | "
                     f"{r['single']} ({100 * r['single'] / r['n']:.0f}%) | {r['all']['median']:.3f} | {multi} |")
    return L + ["", "![control](control.png)", ""]


def knob_section(res, dirs):
    n = res["n_tokens"]
    L = ["## The knob: dictionary size", "",
         f"The sweep's dictionaries, all trained on one stream of model A's activations, measured on {n:,} held-out "
         "tokens (feature splitting below too).", "",
         "| size | MSE | FVU | L0 | dead (never fired on the held-out tokens) | loss recovered | activations seen |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
    L += [f"| {r['size']:,} | {r['mse']:.4f} | {r['fvu']:.3f} | {r['l0']:.1f} | {100 * r['dead']:.1f}% | "
          f"{100 * r['recovered']:.1f}% | {millions(r['seen'])} |" for r in res["knob"]["rows"]]
    return L + ["", "![knob](knob.png)", ""]


def splitting_section(split, res, dirs):
    enc, m = res["enc"], res["match"]
    small = dirs["sizes"][0]
    L = ["## Feature splitting", "",
         f"Decoder cosine similarity between sizes, alive features only. \"Close match\": a feature of the size "
         f"below whose best match here has cosine above 0.9. A F{small} feature \"splits\" here when at least two "
         "features of this size have it as their nearest (cosine at least 0.5).", "",
         "| size | alive | size below: close match here | F%d: median best cosine | F%d: median best r | "
         "F%d features split here |" % (small, small, small), "| --- | --- | --- | --- | --- | --- |"]
    L += [f"| {r['size']:,} | {r['alive']:,} | {r['close']:,} of {r['alive_prev']:,} "
          f"({100 * r['close'] / max(r['alive_prev'], 1):.0f}%) | {r['cos']:.2f} | {r['corr']:.2f} | {r['split']} |"
          for r in split["rows"]]
    largest = dirs["sizes"][-1]
    L += ["", f"The clearest splits: F{small} features whose F{largest} children each take a different part of "
          "their activation, ranked by the share of the parent's activation mass the children cover together minus "
          "the share the best one covers alone (a clean split in two halves: 50%; a mere copy: 0%). Each member "
          "hangs under its nearest member one size down (decoder cosine) and shows the share of the parent's mass "
          "on the tokens where it fires.", ""]
    for fam in split["families"]:
        p = fam["parent"]
        L.append(f"- **F{small}/{p}** {top_tokens(m['mass'][small], p, enc)}: its F{largest} children cover "
                 f"{100 * fam['coverage']:.0f}% together, the best one {100 * fam['best_child']:.0f}%")
        below = {}
        for size, unit, up, cos in fam["tree"]:
            below.setdefault((size, up), []).append((size, unit, cos))  # children of `up`, one size down

        def children(key, depth):
            for size, unit, cos in below.get(key, []):
                share = m["cover"][size][1][unit].item()
                L.append("  " * depth + f"- F{size}/{unit} (cos {cos:.2f}, {100 * share:.0f}% of the parent) "
                         f"{top_tokens(m['mass'][size], unit, enc)}")
                if size != largest:
                    children((dirs["sizes"][dirs["sizes"].index(size) + 1], unit), depth + 1)
        children((dirs["sizes"][1], p), 1)
    return L


def write_summary(u, n, path):
    """summary.json beside report.md: the universality medians with their intervals, overall and
    by density, and the share of each kind's resamples where a unit was silent (filled), for
    programs. Returns them."""
    bins = list(zip(DENSITY_BINS, DENSITY_BINS[1:]))
    out = dict(n_tokens=n, universality={
        name: dict(**median_ci(u[kind]), chance=u[kind].get("chance"), silent_resamples=u[kind]["silent"],
                   by_density=[dict(lo=lo, hi=hi, **(median_ci(u[kind], lo, hi) or {})) for lo, hi in bins])
        for name, kind in (("features", "features"), ("neurons", "neurons"), ("same_lm_features", "same LM"))})
    out["universality"]["features_minus_neurons"] = dict(
        **difference_ci(u["features"], u["neurons"]), clear_margin=clear_margin(u),
        by_density=[dict(lo=lo, hi=hi, **(difference_ci(u["features"], u["neurons"], lo, hi) or {}))
                    for lo, hi in zip(DENSITY_BINS, DENSITY_BINS[1:])])
    write_json(path, out)
    return out


def runs_table(cfg, dirs):
    rows = []
    for name, lm_dir, sae_dir in (("model A", "lm", "sae"), ("model B", "lm_b", "sae_b"),
                                  ("random weights", "lm_random", "sae_random")):
        lm = load_checkpoint(os.path.join(cfg.out, lm_dir, "ckpt.pt"), "LM checkpoint", "rerun python -m lab.compare")
        tokens = lm["step"] * lm["config"]["batch_size"] * lm["config"]["block_size"]
        val = next((h["val_loss"] for h in reversed(lm["history"]) if "val_loss" in h), None)
        rows.append(f"| {name} LM (seed {lm['config']['seed']}) | {lm_dir}/ | {millions(tokens)} tokens, "
                    f"{fmt_eta(lm['elapsed'])} | " + (f"val loss {val:.3f} (its last training eval) |" if lm["step"] else "untrained |"))
        rows.append(sae_row(cfg.out, f"{sae_dir}/F{dirs['n_features']}", f"{name} SAE"))
    rows += [sae_row(cfg.out, f"sae_sweep/F{s}", f"sweep F{s}") for s in dirs["sizes"]]
    return rows


def sae_row(out, folder, name):
    c = load_checkpoint(os.path.join(out, folder, "ckpt.pt"), "SAE checkpoint", "rerun python -m lab.compare")
    f = c["history"][-1]
    return (f"| {name} | {folder}/ | {millions(c['seen'])} activations, {fmt_eta(c['elapsed'])} | "
            f"L0 {f['l0']:.1f}, FVU {f['fvu']:.3f}, dead {100 * f['dead_frac']:.1f}% |")


if __name__ == "__main__":
    run_main(lambda: main(parse_config(CompareConfig, description=__doc__.split("\n\n")[0])))
