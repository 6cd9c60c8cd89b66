"""lab/browser_page.py: the feature browser's page as text: the static index (its rows, the guided
start, each unit's table read out in words) and the HTML, CSS and script that draw a unit's page
from the JSON data lab/browser.py computes. Token text reaches the page only as JSON data that the
script writes with textContent, and as escaped text in the index, so a token holding <, & or quotes
stays text.
"""
import html
import json
import os

from lab.formatting import pattern, visible


def token_label(enc, t):
    """A token's text as the pages show it (label), and \\xNN for each byte that is not part of a whole
    UTF-8 character (a byte-level BPE token may hold a piece of one)."""
    return label(enc.decode_single_token_bytes(int(t)).decode("utf-8", "backslashreplace"))


def label(text):
    """lab/formatting.visible's symbols for line breaks, tabs and other control characters, and ␣ for a space."""
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


def html_page(cfg, run, pages, rows, scale, pool_tokens, guide="", absent=None):
    """The browser's page. absent: what the page says of a unit without a page: the units' counts, the
    dead ones, the dead features' nearest misses, and how many tokens the model never trained on."""
    data = script_data({"vocab": vocab_labels(run), "units": pages, "n_tokens": run.n_tokens, **(absent or {})})
    notes = NOTES.format(n_tokens=run.n_tokens, pool=pool_tokens, scale=scale, ctx=run.context,
                         intervals=cfg.intervals, sae=f"F{run.n_features}",
                         before=cfg.before, after=cfg.after)
    out = os.path.dirname(os.path.normpath(run.dir))  # the run: <out>/<analysis-dir>
    return (HEAD.replace("TITLE", html.escape(f"Feature browser: {out}")) + guide + notes + CONTROLS
            + "\n".join(rows) + "</tbody></table></div>\n<div id=\"unit\"></div>\n"
            + f'<script type="application/json" id="data">{data}</script>\n<script>{SCRIPT}</script>\n</body></html>\n')


def script_data(obj):
    """obj as JSON to embed in a <script> block. Inside <script> only text like "</script" or "<!--"
    could end or derail the block: write <, > and & as JSON's \\u escapes (and /, so no token sequence
    can even look like a URL to a reader). The browser's page and the rating deck both embed theirs so."""
    data = json.dumps(obj, separators=(",", ":"))
    for c in "<>&/":
        data = data.replace(c, f"\\u{ord(c):04x}")
    return data


def vocab_labels(run):
    """Every token of the vocabulary as the pages show it (token_label)."""
    return [token_label(run.enc, t) for t in range(run.meta["vocab_size"])]


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

