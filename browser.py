"""browser.py: one self-contained HTML page to browse features and neurons, as in the paper's interface.

    python analyze.py browse                              # writes out/analysis/browser.html
    python analyze.py browse --features 12 40 --neurons 7 # only these units: analysis/browser_selected.html
    python analyze.py browse --html /tmp/page.html        # the page elsewhere; other limits: --help

The paper's readers explore its features on interactive pages; this file writes the same kind of
page for our run, as one HTML file with its styles, script and data inline (no server, no network:
it works from a USB stick). An index of every unit that fires, sortable and filterable by density
and by the interpretability score, with its explanation (both from analyze.py's interp step, in
units.json); and for each unit, features and neurons laid out alike:

  - density and a histogram of its activations;
  - its top-activating contexts (cached by analyze.py's streaming pass in measure.pt), each token
    shaded by its activation, the peak token outlined;
  - contexts sampled from several activation intervals (the paper groups examples by activation as
    a fraction of the unit's maximum), so weak activations are seen too;
  - its logit effects: the output tokens its direction most raises and lowers, through mlp_out,
    the final layer norm (linearised, see logit_effects) and the unembedding.

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

import interp
from common import UserError, arg, atomic_write_text, parse_config, run_main
from measured import AnalyzeConfig, load_or_measure, load_run, load_units
from model import logit_effects, residual_scale
from report import token_text, visible


@dataclasses.dataclass
class BrowseConfig(AnalyzeConfig):
    features: list = arg([], "feature indices to put on pages (none given, and no --neurons: every unit that fires)")
    neurons: list = arg([], "neuron indices to put on pages")
    top_contexts: int = arg(8, "top-activating contexts per unit (from analysis/measure.pt)")
    intervals: int = arg(4, "activation intervals, equal fractions of the unit's maximum, sampled for contexts")
    interval_contexts: int = arg(2, "random contexts shown per activation interval")
    pool_tokens: int = arg(2**18, "held-out tokens (random LM windows) the histograms and interval contexts come from")
    logit_tokens: int = arg(8, "output tokens listed as most raised and as most lowered")
    bins: int = arg(24, "histogram bins")
    html: str = arg("", "the page to write (default: <analysis-dir>/browser.html, or browser_selected.html when "
                        "--features or --neurons are given, so the full page is never overwritten by a few units)")


def main(argv=None):
    cfg = parse_config(BrowseConfig, argv, description=__doc__.split("\n\n")[0])
    check_config(cfg)
    run = load_run(cfg)
    write_browser(cfg, run, load_or_measure(cfg, run))


def write_browser(cfg, run, m):
    """Write the page (page_path); returns dict(path, bytes, units, report): the report's lines."""
    t0 = time.time()
    units = load_units(cfg, run)
    stats = {"features": m.stats[run.main_name], "neurons": m.stats["neurons"]}
    chosen = choose_units(cfg, stats)
    maxima = {kind: s.max_activation()[chosen[kind]] for kind, s in stats.items()}
    pool = sample_pool(cfg, run, chosen, maxima)
    scale = residual_scale(run.model, run.tokens)
    directions = unit_directions(run.model, run.main_sae)
    pages, rows = {}, []
    for kind, idx in chosen.items():
        # computed on the model's device, used beside the CPU statistics
        effects = logit_effects(run.model, directions[kind][idx.to(run.device)], scale).cpu() * maxima[kind][:, None]
        scored = {u["unit"]: u for u in units[kind]}
        for j, u in enumerate(idx.tolist()):
            key = f"{kind[0]}{u}"
            density = stats[kind].fired[u].item() / run.n_tokens
            pages[key] = page(cfg, run, stats[kind], u, maxima[kind][j].item(), density, unit_pool(pool, kind, j),
                              effects[j])
            rows.append(index_row(key, kind, u, density, scored.get(u)))
    path = page_path(cfg, run)
    text = render(cfg, run, pages, rows, scale, len(pool["tokens"]))
    atomic_write_text(text, path)
    size = os.path.getsize(path)
    counts = {kind: len(idx) for kind, idx in chosen.items()}
    print(f"browser: {path} ({size / 1e6:.1f} MB, {counts['features']} features and {counts['neurons']} neurons, "
          f"{time.time() - t0:.0f}s)")
    return dict(path=path, bytes=size, units=counts, report=report_lines(os.path.relpath(path, run.dir), size, counts))


def check_config(cfg):
    for name in ("top_contexts", "intervals", "interval_contexts", "pool_tokens", "logit_tokens", "bins"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")


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
# Logit effects (model.logit_effects) of each unit's direction


def unit_directions(model, sae):
    """{kind: (U, d_mlp)}: the MLP activation vector that one unit of each unit's activation adds.
    A neuron is a basis vector (so its direction through mlp_out is mlp_out's column); a feature is
    its decoder row in the MLP's units (SAE.directions)."""
    d_mlp = model.cfg.d_mlp
    eye = torch.eye(d_mlp, dtype=sae.W_dec.dtype, device=sae.W_dec.device)
    return {"neurons": eye, "features": sae.directions()}


# ----------------------------------------------------------------------------------------------
# The second pass: histograms and contexts from every activation interval


@torch.no_grad()
def sample_pool(cfg, run, chosen, maxima):
    """Run the chosen units over random held-out LM windows (pool_tokens in all). Per kind:
    hist (U, bins) counts of the nonzero activations in equal bins of (0, max]; and per interval
    (equal fractions of the max, by each context's peak) up to interval_contexts contexts drawn
    uniformly at random: each (context, unit) gets a random priority and interp.update_top keeps
    the largest priorities, a streaming sample without replacement. Contexts are cut inside the
    windows as in measure.pt, so each one's activations are those the streaming pass saw."""
    T, ctx, K = run.model.cfg.block_size, cfg.context, cfg.intervals
    rng = np.random.default_rng(cfg.seed)
    n_windows = run.n_tokens // T
    pick = np.sort(rng.choice(n_windows, min(n_windows, max(1, cfg.pool_tokens // T)), replace=False))
    tokens = run.tokens.reshape(-1, T)[pick].ravel()
    neurons = chosen["neurons"].to(run.device)
    sources = {"features": interp.select_encoder(run.main_sae, chosen["features"]), "neurons": lambda h: h[:, neurons]}
    sources = {kind: fn for kind, fn in sources.items() if len(chosen[kind])}
    g = torch.Generator().manual_seed(cfg.seed)
    out = {kind: dict(hist=torch.zeros(len(idx), cfg.bins, dtype=torch.long),
                      # one running "top-k" per interval, ranked by random priority (interp's running top-k)
                      tops=[interp.new_top(len(idx), cfg.interval_contexts, ctx) for _ in range(K)])
           for kind, idx in chosen.items()}
    for start, acts in interp.stream(run.model, tokens, len(tokens), sources, run.batch):
        ids = torch.arange(start // ctx, (start + len(next(iter(acts.values())))) // ctx)
        for kind, a in acts.items():
            a, mx, o = a.float().cpu(), maxima[kind].clamp_min(1e-12), out[kind]
            row, col = a.nonzero().unbind(1)    # bins 1..bins over (0, max]: ceil(bins * a / max)
            b = (a[row, col] / mx[col] * cfg.bins).ceil().long().clamp(1, cfg.bins) - 1
            o["hist"].view(-1).index_add_(0, col * cfg.bins + b, torch.ones_like(b))
            cacts = a.view(-1, ctx, a.shape[1])
            cmax = cacts.amax(1)
            interval = (cmax / mx * K).ceil().long().clamp(1, K) - 1
            priority = torch.rand(cmax.shape, generator=g).masked_fill_(cmax <= 0, -float("inf"))
            for i in range(K):
                interp.update_top(o["tops"][i], priority.masked_fill(interval != i, -float("inf")), ids, cacts)
    for o in out.values():
        for top in o["tops"]:
            interp.sort_top(top)
    return dict(tokens=tokens, **out)


def unit_pool(pool, kind, j):
    """The j-th chosen unit's share of the pool: its histogram, its interval samples, the pool's tokens."""
    return dict(hist=pool[kind]["hist"][j], tokens=pool["tokens"],
                tops=[interp.TopContexts(val=t.val[j], ctx=t.ctx[j], acts=t.acts[j]) for t in pool[kind]["tops"]])


# ----------------------------------------------------------------------------------------------
# The page: data for the script, an index for html.parser and for readers without a script


def page(cfg, run, s, u, mx, density, pool, effects):
    """One unit's page data; contexts are [token ids, activations in percent of the unit's max]."""
    ctx = cfg.context
    tops = [(v, c, a) for t in s.top for v, c, a in zip(t.val[u].tolist(), t.ctx[u].tolist(), t.acts[u]) if v > 0]   # (a unit that fires in few contexts has slots holding contexts where it is 0)
    tops.sort(key=lambda t: -t[0])
    top = [example(run.tokens[c * ctx:(c + 1) * ctx], a, mx) for _, c, a in tops[:cfg.top_contexts]]
    intervals = []
    for i, t in enumerate(pool["tops"]):
        keep = t.val > -float("inf")
        found = sorted(zip(t.acts[keep].amax(1).tolist(), t.ctx[keep].tolist(), t.acts[keep]),
                       key=lambda x: -x[0])
        intervals.append([i / cfg.intervals, (i + 1) / cfg.intervals,
                          [example(pool["tokens"][c * ctx:(c + 1) * ctx], a, mx) for _, c, a in found]])
    k = min(cfg.logit_tokens, len(effects))
    up, down = effects.topk(k), (-effects).topk(k)
    return dict(max=round(mx, 4), density=density, fired=int(s.fired[u]), hist=pool["hist"].tolist(),
                top=top, intervals=intervals[::-1],
                up=[[int(t), round(v, 3)] for v, t in zip(up.values.tolist(), up.indices.tolist())],
                down=[[int(t), round(-v, 3)] for v, t in zip(down.values.tolist(), down.indices.tolist())])


def example(tokens, acts, mx):
    return [[int(t) for t in tokens], [int(round(100 * max(a, 0) / mx)) if mx > 0 else 0 for a in acts.tolist()]]


def index_row(key, kind, u, density, scored):
    """The unit's row of the index: static HTML, its text escaped."""
    if scored is None:
        score, expl = "", "not scored (too few firing tokens, one half only, or in the ultralow cluster)"
    else:
        score = f"{scored['score']:.3f}"
        expl = "; ".join(("" if r["prev"] is None else f"`{visible(r['prev'])}`→") + f"`{visible(r['token'])}` "
                         f"{r['value']:.2f}" for r in scored["explanation"])
        expl += f"; otherwise {scored['otherwise']:.2f}" + (" (single-token)" if scored["single_token"] else "")
    return (f'<tr id="row-{key}" data-kind="{kind[:-1]}" data-density="{density:.3e}" data-score="{score}">'
            f'<td><a href="#{key}">{kind[:-1]} {u}</a></td><td>{density:.2e}</td><td>{score}</td>'
            f'<td>{html.escape(expl)}</td></tr>')


def render(cfg, run, pages, rows, scale, pool_tokens):
    vocab = [visible(token_text(run.enc, t)) for t in range(run.meta["vocab_size"])]
    data = json.dumps({"vocab": vocab, "units": pages}, separators=(",", ":"))
    # Inside <script> only text like "</script" or "<!--" could end or derail the block: write <, >
    # and & as JSON's \u escapes (and /, so no token sequence can even look like a URL to a reader).
    for c in "<>&/":
        data = data.replace(c, f"\\u{ord(c):04x}")
    notes = NOTES.format(n_tokens=run.n_tokens, pool=pool_tokens, scale=scale, ctx=cfg.context,
                         intervals=cfg.intervals, sae=f"F{run.main}")
    return (HEAD.replace("TITLE", html.escape(f"Feature browser: {cfg.out}")) + notes + CONTROLS
            + "\n".join(rows) + "</tbody></table></div>\n<div id=\"unit\"></div>\n"
            + f'<script type="application/json" id="data">{data}</script>\n<script>{SCRIPT}</script>\n</body></html>\n')


def report_lines(name, size, counts):
    return ["## 5. The feature browser", "",
            f"[{name}]({name}) ({size / 1e6:.1f} MB, one self-contained file: open it in any web browser, "
            f"no network needed) has pages for {counts['features']:,} features and {counts['neurons']:,} neurons, "
            "laid out alike as in the paper's interface: density, activation histogram, top contexts with every token "
            "shaded by its activation, contexts from several activation intervals, and the logit effects. Its index "
            "sorts and filters by density and by the interpretability score of section 3. `python analyze.py browse "
            "--help` lists its limits (contexts per unit, units, pool size).", ""]


HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>TITLE</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; }
details { margin: .5em 0; max-width: 60em; } summary { cursor: pointer; }
#controls { margin: .6em 0; } #controls input { width: 5em; } #controls #q { width: 12em; }
#index { max-height: 38vh; overflow-y: auto; border: 1px solid #ccc; }
table { border-collapse: collapse; width: 100%; } td, th { padding: 2px 8px; text-align: left; vertical-align: top; }
th { position: sticky; top: 0; background: #eee; cursor: pointer; user-select: none; }
tbody tr:nth-child(even) { background: #fafafa; } tr.current { background: #ffe8cc !important; }
td:nth-child(4) { font-family: ui-monospace, monospace; font-size: 12px; white-space: pre-wrap; }
h2 { margin-bottom: .2em; } h3 { margin: 1em 0 .3em; font-size: 15px; }
.ctx { font: 12px/1.9 ui-monospace, monospace; white-space: pre; overflow-x: auto; border-bottom: 1px solid #eee; }
.ctx span.peak { outline: 2px solid #b00; }
.logits { display: flex; gap: 3em; } .logits td { font-family: ui-monospace, monospace; white-space: pre; }
.tok { background: #eef; } svg rect { fill: #e60; } svg text { font-size: 10px; fill: #555; }
</style></head><body>
<h1>TITLE</h1>
"""

NOTES = """<details><summary>How to read these pages</summary><ul>
<li><b>Density</b>: the fraction of the {n_tokens:,} held-out tokens on which the unit is active. <b>Score</b> and
<b>explanation</b>: analyze.py's lexical explain-then-simulate measure (Pearson r; section 3 of report.md): a table of
token patterns, <code>`a`→`b`</code> meaning token b after token a, with the mean activation each predicts.</li>
<li>Activations: features (SAE {sae}) in the SAE's normalised units, neurons in the MLP's own. Each context is {ctx}
held-out tokens, shaded by activation relative to the unit's largest one; the peak token is outlined; hover a token
for its activation. ↵ is a line break, ⇥ a tab.</li>
<li><b>Histogram</b>: the unit's nonzero activations on {pool:,} held-out tokens (random LM windows), in equal bins of
(0, largest activation]; bar heights are log(1 + count).</li>
<li><b>Intervals</b>: contexts sampled at random among those {pool:,} tokens' contexts whose peak activation falls
in each of {intervals} equal fractions of the largest activation, so weak activations are seen too.</li>
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
value="0">, score at least <input id="smin" type="number" step="0.1" value="-1"> (above -1 hides unscored units),
explanation contains <input id="q"> <span id="count"></span></div>
<div id="index"><table><thead><tr><th data-sort="order">unit</th><th data-sort="density">density</th>
<th data-sort="score">score</th><th>explanation</th></tr></thead><tbody>
"""

SCRIPT = r"""
const D = JSON.parse(document.getElementById('data').textContent);
const rows = Array.from(document.querySelectorAll('tbody tr'));
rows.forEach((r, i) => { r.dataset.order = i; });

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;  // text, never markup: tokens may hold < & "
  return e;
}

// the index: filters and sorting
function num(r, key) {
  const v = r.dataset[key];
  return v === '' ? -Infinity : +v;
}
function filter() {
  const kind = document.getElementById('kind').value, q = document.getElementById('q').value;
  const dmin = +document.getElementById('dmin').value, dmax = +document.getElementById('dmax').value;
  const smin = +document.getElementById('smin').value;
  let shown = 0;
  rows.forEach(r => {
    const d = Math.log10(Math.max(+r.dataset.density, 1e-12)), s = num(r, 'score');
    const ok = (!kind || r.dataset.kind === kind) && d >= dmin && d <= dmax && (s >= smin || smin <= -1) &&
               (!q || r.cells[3].textContent.includes(q));
    r.style.display = ok ? '' : 'none';
    shown += ok;
  });
  document.getElementById('count').textContent = shown + ' of ' + rows.length + ' units';
}
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
function context(ex, max) {
  const [ids, pct] = ex, div = el('div', 'ctx'), peak = pct.indexOf(Math.max(...pct));
  ids.forEach((t, j) => {
    const s = el('span', j === peak ? 'peak' : '', D.vocab[t]);
    if (pct[j] > 0) s.style.background = 'rgba(255, 110, 0, ' + (pct[j] / 100).toFixed(2) + ')';
    s.title = 'activation ' + (pct[j] * max / 100).toPrecision(3);
    div.appendChild(s);
  });
  return div;
}
function histogram(h, max) {  // inline SVG built from numbers only
  const W = 420, H = 90, top = Math.log10(1 + Math.max(1, ...h)), w = W / h.length;
  let svg = '<svg width="' + W + '" height="' + (H + 14) + '">';
  h.forEach((c, i) => {
    const y = H * Math.log10(1 + c) / top;
    svg += '<rect x="' + (i * w).toFixed(1) + '" y="' + (H - y).toFixed(1) + '" width="' + (w - 1).toFixed(1) +
           '" height="' + y.toFixed(1) + '"><title>' + c + ' tokens</title></rect>';
  });
  return svg + '<text x="0" y="' + (H + 12) + '">0</text><text x="' + W + '" y="' + (H + 12) +
         '" text-anchor="end">' + (+max).toPrecision(3) + '</text></svg>';
}
function logits(title, list) {
  const div = el('div'), table = el('table');
  div.appendChild(el('h3', '', title));
  list.forEach(([t, v]) => {
    const tr = table.insertRow();
    tr.insertCell().appendChild(el('span', 'tok', D.vocab[t]));
    tr.insertCell().textContent = (v > 0 ? '+' : '') + v.toFixed(2);
  });
  div.appendChild(table);
  return div;
}
function show() {
  const key = decodeURIComponent(location.hash.slice(1)), u = D.units[key];
  const box = document.getElementById('unit'), row = document.getElementById('row-' + key);
  box.replaceChildren();
  document.querySelectorAll('tr.current').forEach(r => r.classList.remove('current'));
  if (!u || !row) { box.appendChild(el('p', '', 'Pick a unit in the index.')); return; }
  row.classList.add('current');
  box.appendChild(el('h2', '', row.cells[0].textContent));
  box.appendChild(el('p', '', 'density ' + u.density.toExponential(2) + ' (active on ' + u.fired +
      ' held-out tokens) · largest activation ' + u.max + ' · score ' + (row.dataset.score || 'none')));
  box.appendChild(el('p', 'ctx', row.cells[3].textContent));
  box.appendChild(el('h3', '', 'Activation histogram (nonzero activations; log count)'));
  const hist = el('div');
  hist.innerHTML = histogram(u.hist, u.max);
  box.appendChild(hist);
  const lg = el('div', 'logits');
  lg.appendChild(logits('Logits raised most', u.up));
  lg.appendChild(logits('Logits lowered most', u.down));
  box.appendChild(lg);
  box.appendChild(el('h3', '', 'Top activations'));
  u.top.forEach(ex => box.appendChild(context(ex, u.max)));
  u.intervals.forEach(([lo, hi, exs]) => {
    box.appendChild(el('h3', '', 'Interval ' + lo.toFixed(2) + '–' + hi.toFixed(2) + ' of the largest activation' +
        (exs.length ? '' : ': no context in the sample')));
    exs.forEach(ex => box.appendChild(context(ex, u.max)));
  });
}
window.addEventListener('hashchange', show);
filter();
show();
"""


if __name__ == "__main__":
    run_main(main)
