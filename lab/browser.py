"""lab/browser.py: one self-contained HTML page to browse features and neurons, as in the paper's interface.

    python analyze.py browse                              # writes out/analysis/browser.html
    python analyze.py browse --features 12 40 --neurons 7 # only these units: analysis/browser_selected.html
    python analyze.py browse --html /tmp/page.html        # the page elsewhere; other limits: --help

The paper's readers explore its features on interactive pages; this file writes the same kind of
page for our run, as one HTML file with its styles, script and data inline (no server, no network:
it works from a USB stick). It opens on a guided start (guided_start: the best-scored features that
are not single-token units, each beside the neurons it is made of, chosen by that rule), then an index
of every unit that fires, sortable and filterable by density and by the interpretability score, with
its explanation (both from analyze.py's interp step, in units.json), searchable by text or by unit
name (f12, neuron 7); and for each unit, features and neurons laid out alike (its explanation read
out in a sentence, words()):

  - density and a histogram of its activations;
  - its top-activating contexts (cached by analyze.py's streaming pass in measure.pt), each token
    shaded by its activation, the peak token outlined;
  - contexts sampled from several activation intervals (the paper groups examples by activation as
    a fraction of the unit's maximum), so weak activations are seen too;
  - its logit effects: the output tokens its direction most raises and lowers, through mlp_out,
    the final layer norm (linearised, see logit_effects) and the unembedding;
  - links between the two bases, through the SAE's decoder: a feature's largest-weight neurons and
    its most similar features (decoder cosine); a neuron's features that weigh on it most.

The top contexts come from the cache; the histograms and interval contexts need a second, smaller
pass over random held-out windows (--pool-tokens), which is all this file computes besides the
logit effects. This file computes the page's data; lab/browser_page.py writes it out as the page
(the index, the guided start, the HTML, CSS and script).
"""
import dataclasses
import os
import time

import numpy as np
import torch

import data
from lab import measure
from lab.plumbing import UserError, arg, atomic_write_text
from lab.browser_page import guided_start, html_page, index_row, report_lines, words
from lab.steer import logit_effects, residual_scale


@dataclasses.dataclass
class Config:
    features: list = arg([], "feature indices to put on pages (none given, and no --neurons: every unit that fires)")
    neurons: list = arg([], "neuron indices to put on pages")
    top_contexts: int = arg(8, "top-activating contexts per unit (from analysis/measure.pt)")
    before: int = arg(16, "tokens shown before each context's peak token (within its cached context)")
    after: int = arg(6, "tokens shown after each context's peak token")
    intervals: int = arg(4, "activation intervals, equal fractions of the unit's maximum, sampled for contexts")
    interval_contexts: int = arg(2, "random contexts shown per activation interval")
    pool_tokens: int = arg(2**18, "held-out tokens (random LM windows) the histograms and interval contexts come from")
    logit_tokens: int = arg(8, "output tokens listed as most raised and as most lowered")
    bins: int = arg(24, "histogram bins")
    link_neurons: int = arg(8, "a feature's neurons (its largest decoder weights), and a neuron's features, listed")
    similar: int = arg(5, "most similar features (decoder cosine) listed per feature")
    html: str = arg("", "the page to write (default: <analysis-dir>/browser.html, or browser_selected.html when "
                        "--features or --neurons are given, so the full page is never overwritten by a few units)")


def main(cfg, run, measured):
    """python analyze.py browse: the page for the units asked (measured() gives the streaming
    pass's Measurement and units.json, analyze.py's)."""
    check_config(cfg)
    write_browser(cfg, run, *measured())


def write_browser(cfg, run, m, units):
    """Write the page (page_path); returns dict(path, bytes, units, report): the report's lines.
    run: lab/measure.py's Run; m: its Measurement; units: units.json (analyze.py's interp step)."""
    t0 = time.time()
    stats = {"features": m.stats[run.main_name], "neurons": m.stats["neurons"]}
    chosen = choose_units(cfg, stats)
    dead = {kind: (s.fired == 0).nonzero().squeeze(1) for kind, s in stats.items()}
    maxima = {kind: s.max_activation()[chosen[kind]] for kind, s in stats.items()}
    pool = sample_pool(cfg, run, chosen, maxima, dead["features"])
    scale = residual_scale(run.model, run.tokens)
    directions = unit_directions(run.model, run.main_sae)
    links = decoder_links(run.main_sae.W_dec, chosen, stats["features"].fired > 0, cfg.link_neurons, cfg.similar)
    untrained = torch.from_numpy(never_trained_on(run))
    pages, rows = {}, []
    for kind, idx in chosen.items():
        # computed on the model's device, used beside the CPU statistics; tokens the model never saw in
        # training keep their random unembedding rows, so their logit effects say nothing: left out
        effects = logit_effects(run.model, directions[kind][idx.to(run.device)], scale).cpu() * maxima[kind][:, None]
        effects[:, untrained] = float("nan")
        scored = {u["unit"]: u for u in units[kind]}
        for j, u in enumerate(idx.tolist()):
            key = f"{kind[0]}{u}"
            density = stats[kind].fired[u].item() / run.n_tokens
            pages[key] = {**page(cfg, run, stats[kind], u, maxima[kind][j].item(), density, unit_pool(pool, kind, j),
                                 effects[j]), **links[kind][j], "words": words(kind, scored.get(u))}
            rows.append(index_row(key, kind, u, density, scored.get(u)))
    path = page_path(cfg, run)
    shift = lambda a: a - a.min()   # pre-activations, all below 0: shaded from the context's lowest
    misses = {f"f{u}": [example(cfg, pool["tokens"][c * run.context:(c + 1) * run.context], shift(a),
                                float(shift(a).max()) or 1.0), round(v, 3)] for u, v, c, a in pool["misses"]}
    absent = dict(counts={k[0]: len(s.fired) for k, s in stats.items()}, dead={k[0]: d.tolist() for k, d in dead.items()},
                  misses=misses, untrained=int(untrained.sum()))
    text = html_page(cfg, run, pages, rows, scale, len(pool["tokens"]), guided_start(units, pages), absent)
    atomic_write_text(text, path)
    size = os.path.getsize(path)
    counts = {kind: len(idx) for kind, idx in chosen.items()}
    print(f"browser: {path} ({size / 1e6:.1f} MB, {counts['features']} features and {counts['neurons']} neurons, "
          f"{time.time() - t0:.0f}s)")
    return dict(path=path, bytes=size, units=counts, report=report_lines(os.path.relpath(path, run.dir), size, counts))


def check_config(cfg, positive=("top_contexts", "intervals", "interval_contexts", "pool_tokens", "logit_tokens",
                                 "bins", "link_neurons", "similar"), non_negative=("before", "after")):
    """The tool's counts: each of positive at least 1, each of non_negative at least 0 (the rating
    deck's checks too, with its own fields)."""
    flag = lambda name: "--" + name.replace("_", "-")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise UserError(f"{flag(name)} must be at least 1")
    if any(getattr(cfg, name) < 0 for name in non_negative):
        flags = [flag(name) for name in non_negative]
        raise UserError(f"{', '.join(flags[:-1])} and {flags[-1]} must be at least 0")


def page_path(cfg, run):
    """--html, or the default: the full page, or a separate one for chosen units."""
    if cfg.html and os.path.isdir(cfg.html):
        raise UserError(f"--html {cfg.html} is a folder: give the page a file name, e.g. --html "
                        f"{os.path.join(cfg.html, 'browser.html')}")
    if cfg.html:
        return cfg.html
    return os.path.join(run.dir, "browser_selected.html" if cfg.features or cfg.neurons else "browser.html")


def choose_units(cfg, stats):
    """{kind: unit indices}: the requested ones, or every unit that fired on a held-out token."""
    if cfg.features or cfg.neurons:
        chosen = {}
        for kind, asked in (("features", cfg.features), ("neurons", cfg.neurons)):
            try:
                idx = torch.tensor(sorted({int(i) for i in asked}), dtype=torch.long)
            except ValueError:
                raise UserError(f"--{kind}: expected unit indices, got {' '.join(asked)}") from None
            U = len(stats[kind].fired)
            if len(idx) and (idx.min() < 0 or idx.max() >= U):
                raise UserError(f"--{kind}: indices must lie in 0..{U - 1}")
            chosen[kind] = idx
        return chosen
    return {kind: (s.fired > 0).nonzero().squeeze(1) for kind, s in stats.items()}


# ----------------------------------------------------------------------------------------------
# Logit effects (lab/steer.py's logit_effects) of each unit's direction


def unit_directions(model, sae):
    """{kind: (U, d_mlp)}: the MLP activation vector that one unit of each unit's activation adds.
    A neuron is a basis vector (so its direction through mlp_out is mlp_out's column); a feature is
    its decoder row in the MLP's units (SAE.directions)."""
    d_mlp = model.cfg.d_mlp
    eye = torch.eye(d_mlp, dtype=sae.W_dec.dtype, device=sae.W_dec.device)
    return {"neurons": eye, "features": sae.directions()}


# ----------------------------------------------------------------------------------------------
# Links between the two bases: a feature's decoder row is its direction in the neurons' space


@torch.no_grad()
def decoder_links(W_dec, chosen, alive, k_neurons, k_similar):
    """{kind: [one dict per chosen unit]}, through the decoder W_dec (F, d_mlp), rows of unit norm. A
    feature: `neurons`, its k_neurons largest |W_dec[f, n]| (the neurons it is made of), and `similar`,
    the k_similar alive features (mask alive, (F,)) whose decoder rows have the largest cosine with its
    own; a neuron: `features`, the k_neurons alive features with the largest |W_dec[f, n]| (those that
    use it most). Each a list of [unit, signed weight or cosine, 2 digits], largest first."""
    W = W_dec.detach().float().cpu()
    alive = alive.cpu().nonzero().squeeze(1)
    unit = torch.nn.functional.normalize(W, dim=1)
    pairs = lambda idx, val: [[int(i), round(v, 2)] for i, v in zip(idx.tolist(), val.tolist()) if v > -1e9]
    out = {"features": [], "neurons": []}
    for chunk in chosen["features"].split(1024):                  # (a (1024, F) block of cosines at a time)
        top = W[chunk].abs().topk(min(k_neurons, W.shape[1]), dim=1).indices
        cos = (unit[chunk] @ unit[alive].T).masked_fill_(chunk[:, None] == alive[None], -1e10)   # not itself
        sim = cos.topk(min(k_similar, len(alive)), dim=1)
        for i, f in enumerate(chunk.tolist()):
            out["features"].append(dict(neurons=pairs(top[i], W[f, top[i]]),
                                        similar=pairs(alive[sim.indices[i]], sim.values[i])))
    cols = W[alive][:, chosen["neurons"]]                          # (alive features, chosen neurons)
    top = cols.abs().topk(min(k_neurons, len(alive)), dim=0).indices
    for j in range(len(chosen["neurons"])):
        out["neurons"].append(dict(features=pairs(alive[top[:, j]], cols[top[:, j], j])))
    return out


# ----------------------------------------------------------------------------------------------
# The second pass: histograms and contexts from every activation interval


def never_trained_on(run):
    """(vocab,) bool: the tokens that never occur in the training split."""
    train = data.load_tokens(os.path.join(os.path.dirname(os.path.normpath(run.dir)), "data"), "train")
    return np.bincount(train, minlength=run.meta["vocab_size"]) == 0


@torch.no_grad()
def sample_pool(cfg, run, chosen, maxima, dead=()):
    """Run the chosen units over random held-out LM windows (pool_tokens in all). Per kind:
    hist (U, bins) counts of the nonzero activations in equal bins of (0, max]; and per interval
    (equal fractions of the max, by each context's peak) up to interval_contexts contexts drawn
    uniformly at random: each (context, unit) gets a random priority and measure.update_top keeps
    the largest priorities, a streaming sample without replacement. Contexts are cut inside the
    windows as in measure.pt, so each one's activations are those the streaming pass saw. For the
    dead features, "misses": (feature, its largest pre-activation, the context, the context's
    pre-activations): where it came closest to firing."""
    T, ctx, K = run.model.cfg.block_size, run.context, cfg.intervals
    rng = np.random.default_rng(run.seed)
    n_windows = run.n_tokens // T
    pick = np.sort(rng.choice(n_windows, min(n_windows, max(1, cfg.pool_tokens // T)), replace=False))
    tokens = run.tokens.reshape(-1, T)[pick].ravel()
    neurons = chosen["neurons"].to(run.device)
    sources = {"features": measure.select_encoder(run.main_sae, chosen["features"]), "neurons": lambda h: h[:, neurons]}
    sources = {kind: fn for kind, fn in sources.items() if len(chosen[kind])}
    sae, dead = run.main_sae, torch.as_tensor(dead, dtype=torch.long)
    if len(dead):
        sources["dead"] = lambda h: sae.pre_acts(h.float() * sae.act_scale)[:, dead.to(h.device)]
    miss = torch.full((len(dead),), -float("inf")), torch.zeros(len(dead), dtype=torch.long), [None] * len(dead)
    g = torch.Generator().manual_seed(run.seed)
    out = {kind: dict(hist=torch.zeros(len(idx), cfg.bins, dtype=torch.long),
                      # one running "top-k" per interval, ranked by random priority (interp's running top-k)
                      tops=[measure.new_top(len(idx), cfg.interval_contexts, ctx) for _ in range(K)])
           for kind, idx in chosen.items()}
    for start, acts in measure.stream(run.model, tokens, len(tokens), sources, run.batch):
        ids = torch.arange(start // ctx, (start + len(next(iter(acts.values())))) // ctx)
        for kind, a in acts.items():
            if kind == "dead":   # a running maximum of each dead feature's pre-activation, and its context
                cacts = a.float().cpu().view(-1, ctx, a.shape[1])
                peak, where = cacts.amax(1).max(0)
                for j in (peak > miss[0]).nonzero().squeeze(1).tolist():
                    miss[0][j], miss[1][j], miss[2][j] = peak[j], ids[where[j]], cacts[where[j], :, j].clone()
                continue
            a, mx, o = a.float().cpu(), maxima[kind].clamp_min(1e-12), out[kind]
            row, col = a.nonzero().unbind(1)    # bins 1..bins over (0, max]: ceil(bins * a / max)
            b = (a[row, col] / mx[col] * cfg.bins).ceil().long().clamp(1, cfg.bins) - 1
            o["hist"].view(-1).index_add_(0, col * cfg.bins + b, torch.ones_like(b))
            measure.sample_intervals(o["tops"], a.view(-1, ctx, a.shape[1]), mx, ids, g)
    for o in out.values():
        for top in o["tops"]:
            measure.sort_top(top)
    misses = [(u, v, c, a) for u, v, c, a in zip(dead.tolist(), miss[0].tolist(), miss[1].tolist(), miss[2])
              if a is not None]
    return dict(tokens=tokens, misses=misses, **out)


def unit_pool(pool, kind, j):
    """The j-th chosen unit's share of the pool: its histogram, its interval samples, the pool's tokens."""
    return dict(hist=pool[kind]["hist"][j], tokens=pool["tokens"],
                tops=[measure.TopContexts(val=t.val[j], ctx=t.ctx[j], acts=t.acts[j]) for t in pool[kind]["tops"]])


# ----------------------------------------------------------------------------------------------
# The page: data for the script, an index for html.parser and for readers without a script


def page(cfg, run, s, u, mx, density, pool, effects):
    """One unit's page data; contexts as example() writes them."""
    ctx = run.context
    tops = [(v, c, a) for t in s.top for v, c, a in zip(t.val[u].tolist(), t.ctx[u].tolist(), t.acts[u]) if v > 0]   # (a unit that fires in few contexts has slots holding contexts where it is 0)
    tops.sort(key=lambda t: -t[0])
    seen = set()   # the same text (a licence header, a repeated line) is shown once on a page

    def new(ex):
        fresh = tuple(ex[0]) not in seen
        seen.add(tuple(ex[0]))
        return fresh
    top = [ex for ex in (example(cfg, run.tokens[c * ctx:(c + 1) * ctx], a, mx) for _, c, a in tops) if new(ex)]
    top = top[:cfg.top_contexts]
    intervals = []
    for i, t in enumerate(pool["tops"]):
        keep = t.val > -float("inf")
        found = sorted(zip(t.acts[keep].amax(1).tolist(), t.ctx[keep].tolist(), t.acts[keep]),
                       key=lambda x: -x[0])
        intervals.append([i / cfg.intervals, (i + 1) / cfg.intervals,
                          [example(cfg, pool["tokens"][c * ctx:(c + 1) * ctx], a, mx) for _, c, a in found]])
    for interval in intervals[::-1]:   # the strongest first, as the page shows them
        interval[2] = [ex for ex in interval[2] if new(ex)]
    k = min(cfg.logit_tokens, int((~effects.isnan()).sum()))
    up, down = effects.nan_to_num(-float("inf")).topk(k), (-effects).nan_to_num(-float("inf")).topk(k)
    return dict(max=round(mx, 4), density=density, fired=int(s.fired[u]), hist=pool["hist"].tolist(),
                top=top, intervals=intervals[::-1],
                up=[[int(t), round(v, 3)] for v, t in zip(up.values.tolist(), up.indices.tolist())],
                down=[[int(t), round(-v, 3)] for v, t in zip(down.values.tolist(), down.indices.tolist())])


def example(cfg, tokens, acts, mx):
    """[token ids, activations in percent of the unit's max, the peak's position]: the context cut to
    cfg.before tokens before its peak (its first largest activation) and cfg.after after it."""
    p = int(acts.argmax())
    lo, hi = max(0, p - cfg.before), p + cfg.after + 1
    return [[int(t) for t in tokens[lo:hi]],
            [int(round(100 * max(a, 0) / mx)) if mx > 0 else 0 for a in acts[lo:hi].tolist()], p - lo]
