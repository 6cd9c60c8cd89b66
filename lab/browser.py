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
logit effects. Token text reaches the page only as JSON data that the page's script writes with
textContent, and as escaped text in the index, so a token holding <, & or quotes stays text.
"""
import dataclasses
import html
import json
import os
import time

import numpy as np
import torch

import data
from lab import measure
from lab.plumbing import UserError, arg, atomic_write_text
from lab.report import pattern, visible
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
    run: analyze.Run; m: lab/measure.py's Measurement; units: analyze.py's units.json."""
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
    text = render(cfg, run, pages, rows, scale, len(pool["tokens"]), guided_start(units, pages), absent)
    atomic_write_text(text, path)
    size = os.path.getsize(path)
    counts = {kind: len(idx) for kind, idx in chosen.items()}
    print(f"browser: {path} ({size / 1e6:.1f} MB, {counts['features']} features and {counts['neurons']} neurons, "
          f"{time.time() - t0:.0f}s)")
    return dict(path=path, bytes=size, units=counts, report=report_lines(os.path.relpath(path, run.dir), size, counts))


def check_config(cfg):
    for name in ("top_contexts", "intervals", "interval_contexts", "pool_tokens", "logit_tokens", "bins",
                 "link_neurons", "similar"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.before < 0 or cfg.after < 0:
        raise UserError("--before and --after must be at least 0")


def page_path(cfg, run):
    """--html, or the default: the full page, or a separate one for chosen units."""
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
            cacts = a.view(-1, ctx, a.shape[1])
            cmax = cacts.amax(1)
            interval = (cmax / mx * K).ceil().long().clamp(1, K) - 1
            priority = torch.rand(cmax.shape, generator=g).masked_fill_(cmax <= 0, -float("inf"))
            for i in range(K):
                measure.update_top(o["tops"][i], priority.masked_fill(interval != i, -float("inf")), ids, cacts)
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


def token_label(enc, t):
    """A token's text as the pages show it (label), and \\xNN for each byte that is not part of a whole
    UTF-8 character (a byte-level BPE token may hold a piece of one)."""
    return label(enc.decode_single_token_bytes(int(t)).decode("utf-8", "backslashreplace"))


def label(text):
    """report.visible's symbols for line breaks, tabs and other control characters, and ␣ for a space."""
    return visible(text).replace(" ", "␣")


def short(x):
    """3.1e-4: a density in few characters."""
    return f"{x:.1e}".replace("e-0", "e-").replace("e+0", "e+")


def index_row(key, kind, u, density, scored):
    """The unit's row of the index: static HTML, its text escaped."""
    if scored is None:
        score, expl = "", "not scored (too few firing tokens, one half only, or in the ultralow cluster)"
    else:
        score = f"{scored['score']:.3f}"
        code = lambda text: f"`{label(text)}`"
        expl = "; ".join(f"{pattern(r, code, '→')} {r['value']:.2f}" for r in scored["explanation"])
        expl += f"; otherwise {scored['otherwise']:.2f}" + (" (single-token)" if scored["single_token"] else "")
    return (f'<tr id="row-{key}" data-kind="{kind[:-1]}" data-density="{density:.3e}" data-score="{score}">'
            f'<td><a href="#{key}">{kind[:-1]} {u}</a></td><td>{short(density)}</td><td>{score}</td>'
            f'<td>{html.escape(expl)}</td></tr>')


def words(kind, scored):
    """What a unit's explanation table means, in a sentence for its page."""
    unit = kind[:-1]
    if scored is None:
        return (f"This {unit} has no explanation table: it fires on too few held-out tokens, or in one half of them "
                "only, or (a feature) in the ultralow-density cluster, so it was not scored.")
    code = lambda text: f"`{label(text)}`"
    rows = ", ".join(f"{r['value']:.2f} on {pattern(r, code, '→')}" for r in scored["explanation"])
    single = (" One token carries most of its activation: a single-token unit, easy to predict."
              if scored["single_token"] else "")
    return (f"How to read the line above: it is the {unit}'s explanation, a table that predicts its activation from "
            f"the text alone: {rows or 'no pattern'}, and {scored['otherwise']:.2f} on anything else (`a`→`b` is "
            f"token b after token a; ⟨...⟩ a kind of context). On held-out text these predictions correlate with "
            f"its real activations at r = {scored['score']:.2f} (1: the table says all there is to say; 0: nothing)."
            + single)


def guided_start(units, pages, n=5, k=3):
    """The first thing on the page: the n features with the best score among those that are not
    single-token units (a single-token unit is easy to explain but teaches little), the densest first
    among equal scores, each beside the
    k neurons it is made of (the largest weights of its decoder row), with their scores and explanations.
    Static HTML, its text escaped."""
    scored = {kind: {u["unit"]: u for u in units[kind]} for kind in ("features", "neurons")}
    best = sorted((u for u in units["features"] if not u["single_token"] and f"f{u['unit']}" in pages),
                  key=lambda u: (-u["score"], -u["density"]))[:n]   # ties: the one seen most often first
    if not best:
        return ""
    code = lambda text: f"`{label(text)}`"
    summary = lambda u: "; ".join(pattern(r, code, "→") for r in u["explanation"][:3]) if u else "not scored"
    items = []
    for f in best:
        neurons = []
        for i, w in pages[f"f{f['unit']}"]["neurons"][:k]:
            u = scored["neurons"].get(i)
            link = f'<a href="#n{i}">neuron {i}</a>' if f"n{i}" in pages else f"neuron {i}"
            neurons.append(f"{link} (weight {w:+.2f}, score {u['score']:.2f}: {html.escape(summary(u))})" if u
                           else f"{link} (weight {w:+.2f}, not scored)")
        items.append(f'<li><a href="#f{f["unit"]}">feature {f["unit"]}</a> (score {f["score"]:.2f}): '
                     f"<code>{html.escape(summary(f))}</code><br>made mostly of " + "; ".join(neurons) + "</li>")
    return (f'<div id="guide"><h2>Start here</h2><p>The {len(best)} features with the best interpretability score '
            "(section 3 of report.md: how well a short table of token patterns predicts the unit on held-out text), "
            "leaving out single-token units, the most frequent first among equal scores, each beside the neurons "
            "it is made of: the largest weights of its decoder row, the direction it adds to the 512 neurons. Open "
            "a feature, then its neurons, and compare their top contexts: a feature tends to fire on one thing, "
            "each of its neurons on that and on much else. Every unit is in the index below.</p><ol>" + "\n".join(items) + "</ol></div>\n")


def render(cfg, run, pages, rows, scale, pool_tokens, guide="", absent=None):
    """absent: what the page says of a unit without a page: the units' counts, the dead ones, the dead
    features' nearest misses, and how many tokens the model never trained on."""
    vocab = [token_label(run.enc, t) for t in range(run.meta["vocab_size"])]
    data = json.dumps({"vocab": vocab, "units": pages, "n_tokens": run.n_tokens, **(absent or {})},
                      separators=(",", ":"))
    # Inside <script> only text like "</script" or "<!--" could end or derail the block: write <, >
    # and & as JSON's \u escapes (and /, so no token sequence can even look like a URL to a reader).
    for c in "<>&/":
        data = data.replace(c, f"\\u{ord(c):04x}")
    notes = NOTES.format(n_tokens=run.n_tokens, pool=pool_tokens, scale=scale, ctx=run.context,
                         intervals=cfg.intervals, sae=f"F{run.main}",
                         before=cfg.before, after=cfg.after)
    out = os.path.dirname(os.path.normpath(run.dir))  # the run: <out>/<analysis-dir>
    return (HEAD.replace("TITLE", html.escape(f"Feature browser: {out}")) + guide + notes + CONTROLS
            + "\n".join(rows) + "</tbody></table></div>\n<div id=\"unit\"></div>\n"
            + f'<script type="application/json" id="data">{data}</script>\n<script>{SCRIPT}</script>\n</body></html>\n')


def report_lines(name, size, counts):
    return ["## 5. The feature browser", "",
            f"[{name}]({name}) ({size / 1e6:.1f} MB, one self-contained file: open it in any web browser, "
            "no network needed) opens on a guided start (the best-scored features that are not single-token units, "
            f"each beside the neurons it is made of) and has pages for {counts['features']:,} features and "
            f"{counts['neurons']:,} neurons, laid out alike as in the paper's interface: density, activation "
            "histogram, top contexts with every token shaded by its activation, contexts from several activation intervals, and the logit effects. Its index "
            "sorts and filters by density and by the interpretability score of section 3. `python analyze.py browse "
            "--help` lists its limits (contexts per unit, units, pool size).", ""]


HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>TITLE</title>
<script>window.onerror = m => { document.documentElement.dataset.error = String(m); };</script>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; }
details { margin: .5em 0; max-width: 60em; } summary { cursor: pointer; }
#controls { margin: .6em 0; } #controls input { width: 5em; } #controls #q { width: 12em; }
#index { max-height: 38vh; overflow-y: auto; border: 1px solid #ccc; }
table { border-collapse: collapse; width: 100%; } td, th { padding: 2px 8px; text-align: left; vertical-align: top; }
th { position: sticky; top: 0; background: #eee; cursor: pointer; user-select: none; }
tbody tr:nth-child(even) { background: #fafafa; } tr.current { background: #ffe8cc !important; }
td:nth-child(-n+3) { white-space: nowrap; }
td:nth-child(4) { font-family: ui-monospace, monospace; font-size: 12px; white-space: pre-wrap; }
h2 { margin-bottom: .2em; } h3 { margin: 1em 0 .3em; font-size: 15px; }
.ctx { font: 12px/1.9 ui-monospace, monospace; white-space: pre; overflow-x: auto; border-bottom: 1px solid #eee; }
div.ctx { display: flex; max-width: 70em; } /* the peak token in one column: what precedes it right-aligned */
.ctx .l { flex: 0 0 45%; display: flex; justify-content: flex-end; overflow: hidden; } .ctx .r { display: flex; }
.ctx span.peak { outline: 2px solid #b00; } .sp { color: #bbb; }
.links a, .links span { font-family: ui-monospace, monospace; font-size: 13px; } .links span.nolink { color: #888; }
.swatch { display: inline-block; width: .9em; height: .9em; margin-right: .4em; vertical-align: -1px; }
.logits { display: flex; gap: 3em; } .logits td { font-family: ui-monospace, monospace; white-space: pre; }
.tok { background: #eef; } .words { color: #555; max-width: 60em; } #guide li { margin: .3em 0; }
svg text { font-size: 10px; fill: #555; } svg line { stroke: #999; }
</style></head><body>
<h1>TITLE</h1>
"""

NOTES = """<details><summary>How to read these pages</summary><ul>
<li><b>Density</b>: the fraction of the {n_tokens:,} held-out tokens on which the unit is active. <b>Score</b> and
<b>explanation</b>: analyze.py's lexical explain-then-simulate measure (Pearson r; section 3 of report.md): a table of
token patterns, <code>`a`→`b`</code> meaning token b after token a, and context predicates such as <code>⟨comment⟩</code>
(inside a Python comment; all of them in section 4 of report.md), with the mean activation each predicts.</li>
<li>Activations: features (SAE {sae}) in the SAE's normalised units, neurons in the MLP's own. Each context is {ctx}
held-out tokens, shaded by activation relative to the unit's largest one, shown from up to {before} tokens before its
peak token (outlined, and aligned down the page) to {after} after it; hover a token for its activation. ␣ is a space,
↵ a line break, ⇥ a tab, \\xNN a byte that is only part of a UTF-8 character.</li>
<li><b>Histogram</b>: the unit's nonzero activations on {pool:,} held-out tokens (random LM windows), in equal bins of
(0, largest activation]; bar heights are log(1 + count), hover a bar for its count. Its colours are the intervals'.</li>
<li><b>Intervals</b>: contexts sampled at random among those {pool:,} tokens' contexts whose peak activation falls
in each of {intervals} equal fractions of the largest activation, so weak activations are seen too.</li>
<li><b>Neurons and features</b>: a feature's decoder row (unit norm) is its direction over the neurons: its
page lists the neurons with the largest weights in it, with their sign, and the features whose rows are most alike
(cosine); a neuron's page lists the features with the largest weight on it. Units without a page (never active)
are greyed.</li>
<li><b>Logit effects</b>: the unit's direction in the MLP activations (a neuron: a basis vector, so through mlp_out
its column; a feature: its decoder row divided by the SAE's act_scale) through mlp_out, the final layer norm and the
unembedding, at the unit's largest activation. The final layer norm is linearised: the direction is centred, divided
by the harmonic mean over held-out tokens of the residual stream's scale ({scale:.3f}) and multiplied by the norm's
gain; the change the direction makes to that scale itself is dropped. Values are changes of the logits (nats).</li>
<li><b>Steering</b>: <code>python analyze.py steer --feature N --value V --prompt "..."</code> adds V times a
feature's direction to the MLP activations and samples from the model.</li>
</ul></details>
"""

CONTROLS = """<div id="controls">show <select id="kind"><option value="">features and neurons</option>
<option value="feature">features</option><option value="neuron">neurons</option></select>
log10 density from <input id="dmin" type="number" step="0.5" value="-9"> to <input id="dmax" type="number" step="0.5"
value="0"> (empty: no bound), score at least <input id="smin" type="number" step="0.1" value="-1"> (above -1 hides unscored units),
search <input id="q" placeholder="f12, neuron 7 or text"> <span id="count"></span></div>
<div id="index"><table><thead><tr><th data-sort="order">unit</th><th data-sort="density">density</th>
<th data-sort="score">score</th><th>explanation</th></tr></thead><tbody>
"""

SCRIPT = r"""
const D = JSON.parse(document.getElementById('data').textContent);
const rows = Array.from(document.querySelectorAll('tbody tr'));
rows.forEach((r, i) => { r.dataset.order = i; });
const $ = id => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;  // text, never markup: tokens may hold < & "
  return e;
}

// the index: filters, search and sorting
function num(r, key) {
  const v = r.dataset[key];
  return v === '' ? -Infinity : +v;
}
function bound(id, none) {  // an empty (or unreadable) box is no bound
  const v = $(id).value.trim();
  return v === '' || isNaN(+v) ? none : +v;
}
function unitQuery(q) {  // 'feature 12', 'F12', 'n 7', '12': the row ids it names, else null
  const m = q.trim().toLowerCase().match(/^(f|feature|n|neuron)?\s*#?\s*(\d+)$/);
  return m ? (m[1] ? [m[1][0]] : ['f', 'n']).map(k => 'row-' + k + (+m[2])) : null;
}
const text = r => (r.cells[0].textContent + ' ' + r.cells[3].textContent).toLowerCase();
function filter() {
  const kind = $('kind').value, q = $('q').value.trim().toLowerCase(), named = unitQuery(q);
  const dmin = bound('dmin', -Infinity), dmax = bound('dmax', Infinity), smin = bound('smin', -1);
  let shown = 0;
  rows.forEach(r => {
    const d = Math.log10(Math.max(+r.dataset.density, 1e-12)), s = num(r, 'score');
    const ok = named ? named.includes(r.id) :  // a unit asked for by name is shown whatever the bounds
      (!kind || r.dataset.kind === kind) && d >= dmin && d <= dmax && (s >= smin || smin <= -1) &&
      (!q || [q, q.replaceAll(' ', '\u2423')].some(t => text(r).includes(t)));
    r.style.display = ok ? '' : 'none';
    shown += ok;
  });
  $('count').textContent = shown + ' of ' + rows.length + ' units';
  const hits = named ? rows.filter(r => named.includes(r.id)) : [];
  if (hits.length === 1) go(hits[0].id.slice(4));  // typing a unit's name opens its page
}
function go(key) {
  if (location.hash.slice(1) !== key) { history.replaceState(null, '', '#' + key); show(); }
}
$('q').onkeydown = e => {  // Enter: the first unit shown
  const first = rows.find(r => r.style.display !== 'none');
  if (e.key === 'Enter' && first) location.hash = first.id.slice(4);
};
let sortKey = 'order', sortDir = 1;
function sortBy(key) {
  sortDir = key === sortKey ? -sortDir : (key === 'order' ? 1 : -1);
  sortKey = key;
  const body = document.querySelector('tbody');
  rows.slice().sort((a, b) => sortDir * (num(a, key) - num(b, key))).forEach(r => body.appendChild(r));
}
document.querySelectorAll('th[data-sort]').forEach(th => th.onclick = () => sortBy(th.dataset.sort));
document.querySelectorAll('#controls input, #controls select').forEach(e => e.oninput = filter);

// a unit's page
function token(t, cls) {  // a token's text, its spaces' ␣ drawn faint
  const s = el('span', cls);
  D.vocab[t].split('\u2423').forEach((part, i) => {
    if (i) s.appendChild(el('span', 'sp', '\u2423'));
    if (part) s.appendChild(document.createTextNode(part));
  });
  return s;
}
function context([ids, pct, peak], max) {  // the tokens before the peak right-aligned, so peaks line up
  const div = el('div', 'ctx'), left = el('span', 'l'), right = el('span', 'r');
  ids.forEach((t, j) => {
    const s = token(t, j === peak ? 'peak' : '');
    if (pct[j] > 0) s.style.background = 'rgba(255, 110, 0, ' + (pct[j] / 100).toFixed(2) + ')';
    s.title = 'activation ' + (pct[j] * max / 100).toPrecision(3);
    (j < peak ? left : right).appendChild(s);
  });
  div.append(left, right);
  return div;
}
function colour(i, K) {  // interval i of K: pale yellow (weakest) to red (strongest)
  const x = K > 1 ? i / (K - 1) : 1;
  return 'hsl(' + (48 - 48 * x).toFixed(0) + ', 95%, ' + (70 - 25 * x).toFixed(0) + '%)';
}
function histogram(h, max, K) {  // inline SVG built from numbers only
  const L = 56, W = 420, H = 90, w = W / h.length, p = x => (+x).toPrecision(2);  // L: room for 1000000
  const decades = Math.max(1, Math.ceil(Math.log10(Math.max(1, ...h)))), top = Math.log10(1 + 10 ** decades);
  const y = c => H * Math.log10(1 + c) / top;
  let svg = '<svg width="' + (L + W + 24) + '" height="' + (H + 38) + '"><g transform="translate(' + L + ',8)">';
  for (let k = 0; k <= decades; k++)  // the count axis: 1, 10, 100, ...
    svg += '<line x1="-4" x2="0" y1="' + (H - y(10 ** k)).toFixed(1) + '" y2="' + (H - y(10 ** k)).toFixed(1) +
           '"/><text x="-6" y="' + (H - y(10 ** k) + 3).toFixed(1) + '" text-anchor="end">' + (10 ** k) + '</text>';
  h.forEach((c, i) => {
    const lo = i * max / h.length, hi = (i + 1) * max / h.length, band = Math.min(K - 1, Math.floor((i + .5) * K / h.length));
    svg += '<rect x="' + (i * w).toFixed(1) + '" y="' + (H - y(c)).toFixed(1) + '" width="' + (w - 1).toFixed(1) +
           '" height="' + y(c).toFixed(1) + '" fill="' + colour(band, K) + '"><title>' + c +
           ' tokens with activation in (' + p(lo) + ', ' + p(hi) + ']</title></rect>';
  });
  svg += '<line x1="0" x2="' + W + '" y1="' + H + '" y2="' + H + '"/><line x1="0" x2="0" y1="0" y2="' + H + '"/>';
  for (let i = 0; i <= K; i++)  // the activation axis, at the intervals' edges
    svg += '<text x="' + (i * W / K).toFixed(1) + '" y="' + (H + 13) + '" text-anchor="' +
           (i ? (i < K ? 'middle' : 'end') : 'start') + '">' + (i ? p(i * max / K) : '0') + '</text>';
  return svg + '<text x="' + (W / 2) + '" y="' + (H + 25) + '" text-anchor="middle">activation</text></g></svg>';
}
function logits(title, list) {
  const div = el('div'), table = el('table');
  div.appendChild(el('h3', '', title));
  list.forEach(([t, v]) => {
    const tr = table.insertRow();
    tr.insertCell().appendChild(token(t, 'tok'));
    tr.insertCell().textContent = (v > 0 ? '+' : '') + v.toFixed(2);
  });
  div.appendChild(table);
  return div;
}
function links(title, list, kind, signed) {  // [[unit, value]]: a link to each unit that has a page
  const p = el('p', 'links');
  p.appendChild(el('b', '', title + ': '));
  list.forEach(([i, v], j) => {
    const key = kind + i, label = (kind === 'f' ? 'feature ' : 'neuron ') + i + ' (' +
          (signed && v > 0 ? '+' : '') + v.toFixed(2) + ')', a = el(D.units[key] ? 'a' : 'span', 'nolink', label);
    if (D.units[key]) { a.href = '#' + key; a.className = ''; }
    if (j) p.appendChild(document.createTextNode(' · '));
    p.appendChild(a);
  });
  return p;
}
function absent(box, key) {  // why a unit has no page: unknown, dead (and where it came closest), not chosen
  const m = /^([fn])(\d+)$/.exec(key), counts = D.counts || {};
  if (!key) { box.appendChild(el('p', '', 'Pick a unit in the index.')); return; }
  const name = m ? (m[1] === 'f' ? 'feature ' : 'neuron ') + m[2] : key;
  if (!m || +m[2] >= counts[m[1]]) {
    box.appendChild(el('p', '', 'There is no ' + name + ' here: features are f0 to f' + (counts.f - 1) +
        ', neurons n0 to n' + (counts.n - 1) + '. Pick a unit in the index.'));
  } else if ((D.dead || {})[m[1]] && D.dead[m[1]].includes(+m[2])) {
    box.appendChild(el('h2', '', name + ': dead'));
    box.appendChild(el('p', '', 'It never fired on the ' + D.n_tokens.toLocaleString() + ' held-out tokens measured ' +
        '(a dead unit, as in the paper), so it has no contexts, histogram or score.'));
    const miss = (D.misses || {})[key];
    if (miss) {
      box.appendChild(el('p', '', 'Where it came closest to firing: its pre-activation (before the ReLU) peaked at ' +
          miss[1] + ', below the 0 it needs, on the outlined token (shaded by pre-activation):'));
      box.appendChild(context(miss[0], 100));
    }
  } else {
    box.appendChild(el('p', '', name + ' fires, but is not on this page: python analyze.py browse --' +
        (m[1] === 'f' ? 'features ' : 'neurons ') + m[2] + ' writes a page for it.'));
  }
}
function show() {
  const key = decodeURIComponent(location.hash.slice(1)), u = D.units[key];
  const box = $('unit'), row = $('row-' + key);
  box.replaceChildren();
  document.querySelectorAll('tr.current').forEach(r => r.classList.remove('current'));
  if (!u || !row) { absent(box, key); return; }
  row.classList.add('current');
  box.appendChild(el('h2', '', row.cells[0].textContent));
  box.appendChild(el('p', '', 'density ' + u.density.toExponential(2) + ' (active on ' + u.fired +
      ' held-out tokens) · largest activation ' + u.max + ' · score ' + (row.dataset.score || 'none')));
  box.appendChild(el('p', 'ctx', row.cells[3].textContent));
  box.appendChild(el('p', 'words', u.words));
  if (u.neurons) box.appendChild(links('Neurons it is made of (decoder weight)', u.neurons, 'n', true));
  if (u.similar) box.appendChild(links('Most similar features (decoder cosine)', u.similar, 'f', false));
  if (u.features) box.appendChild(links('Features that use it most (decoder weight)', u.features, 'f', true));
  const K = u.intervals.length, total = u.hist.reduce((a, b) => a + b, 0);
  box.appendChild(el('h3', '', 'Activation histogram (' + total + ' nonzero activations; log count)'));
  const hist = el('div');
  hist.innerHTML = histogram(u.hist, u.max, K);
  box.appendChild(hist);
  const lg = el('div', 'logits');
  if (D.untrained) lg.appendChild(el('p', '', 'Leaving out the ' + D.untrained + ' tokens never seen in training ' +
      '(their logits were never trained, so their effects mean nothing).'));
  lg.appendChild(logits('Logits raised most', u.up));
  lg.appendChild(logits('Logits lowered most', u.down));
  box.appendChild(lg);
  box.appendChild(el('h3', '', 'Top activations'));
  u.top.forEach(ex => box.appendChild(context(ex, u.max)));
  u.intervals.forEach(([lo, hi, exs]) => {
    const h = el('h3', '', 'Interval ' + lo.toFixed(2) + '–' + hi.toFixed(2) + ' of the largest activation' +
        (exs.length ? '' : ': no context in the sample')), sw = el('span', 'swatch');
    sw.style.background = colour(Math.round(lo * K), K);
    h.prepend(sw);
    box.appendChild(h);
    exs.forEach(ex => box.appendChild(context(ex, u.max)));
  });
}
window.addEventListener('hashchange', show);
filter();
show();
"""

