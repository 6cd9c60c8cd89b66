"""lab/rate.py: the paper's blinded human rating, as one offline page that a class rates.

    python analyze.py rate                    # analysis/rate.html (the deck) and its key in analysis/rate_keys/
    python analyze.py rate --cards 60         # a longer deck; python analyze.py rate --help for the rest
    python analyze.py ratings ratings-*.json  # unblind the downloaded ratings (lab/ratings.py)

The paper's first and strongest evidence is human: "we have a blinded human evaluator score their
interpretability. The features have much higher scores than the neurons" (a rubric scored 0-14:
median neuron 0, median feature 12). Our own interpretability score (analyze.py, section 3) is a
lexical stand-in; this file lets people do the paper's judging on their own model.

The deck: units drawn at random among the scored ones (units.json), features and neurons of the main
run in equal shares, and the features of the random-weights control when lab/compare.py has trained
one (<out>/lm_random, sae_random), shuffled together. Each card shows what the paper's raters saw:
the top-activating contexts, contexts from lower activation intervals (equal fractions of the unit's
largest activation), a few random contexts, every token shaded by its activation, and the tokens it
fires on most, out of context. Nothing on a card says what it is: no unit number, no kind, no
density, activations only in percent of the unit's own largest (features and neurons live on
different scales). The key (which card is which unit) never enters the page: it is written to
analysis/rate_keys/<deck>.json, and card ids are hashes salted with a secret kept there, so the page's
source does not tell a feature from a neuron either. The secret also seeds the draw, so a student who
reruns this command on the same model gets another deck, not the teacher's key.

The rater scores each card on a rubric modelled on the paper's (RUBRIC) with the keyboard alone;
the page keeps the answers in the browser's local storage (a reload resumes) and at the end
downloads ratings-<name>.json: the deck, each card's scores and the seconds spent on it, and a check
(a hash of those) that tells a file edited by hand from a downloaded one.
"""
import dataclasses
import hashlib
import html
import json
import os
import secrets
import time

import numpy as np
import torch

from lab import browser, browser_page, measure
from lab.plumbing import UserError, arg, atomic_write_text
from lab.summary import load_units
from model import harvest

# The rubric, modelled on the paper's (a total of 0-14, above 8 "quite interpretable"): is there one
# hypothesis for the top contexts, does it hold lower down, how specific is it. (question, max, levels)
RUBRIC = [
    ("Is there one hypothesis that explains the top contexts?", 5,
     ["no: nothing in common", "a vague hunch", "fits some of them", "fits most of them",
      "fits all of them, loosely worded", "fits every one of them, clearly"]),
    ("Does it hold in the lower intervals and the random contexts?", 5,
     ["no: lower down it is something else", "rarely", "in some", "in most",
      "in nearly all (weaker, as expected)", "in all, and it is silent where it should be"]),
    ("How specific is it?", 4,
     ["not at all (fires on anything)", "broad (e.g. 'code', 'English')", "a category (e.g. 'numbers', 'names')",
      "a narrow pattern (e.g. 'the name after def')", "one precise thing"]),
]
KINDS = ("features", "neurons", "control")  # control: the random-weights model's features
FORMAT = "monosemanticity-ratings-1"        # the ratings file's format (lab/ratings.py reads it)


@dataclasses.dataclass
class Config:
    cards: int = arg(40, "cards in the deck, in equal shares: features and neurons of the main run, and the "
                         "random-weights control's features when lab/compare.py has trained one")
    top_contexts: int = arg(5, "top-activating contexts per card")
    intervals: int = arg(4, "activation intervals (equal fractions of the unit's largest activation); the "
                            "card shows every one below the top: e.g. 4 gives 0.50-0.75, 0.25-0.50 and 0-0.25")
    interval_contexts: int = arg(2, "contexts per interval, drawn at random")
    random_contexts: int = arg(3, "contexts drawn at random from the held-out text, where the unit may be silent")
    top_tokens: int = arg(10, "tokens shown out of context: those the unit fires on most")
    before: int = arg(12, "tokens shown before each context's peak")
    after: int = arg(4, "tokens shown after it")
    pool_tokens: int = arg(2**18, "held-out tokens (random LM windows) the interval contexts are drawn from")
    control: bool = arg(True, "mix in the random-weights control's features when lab/compare.py has trained one")
    html: str = arg("", "the page (default <analysis-dir>/rate.html); its key always goes to "
                        "<analysis-dir>/rate_keys/<deck>.json")
    secret: str = arg("", "the deck's secret (salts the card ids, seeds the draw); empty: a fresh random one",
                      flag=False)


def main(cfg, acfg, measured):
    """python analyze.py rate: draw a deck, write its page and its key. acfg: analyze.AnalyzeConfig;
    measured(acfg, run): analyze.measured."""
    browser.check_config(cfg, ("cards", "top_contexts", "intervals", "interval_contexts", "top_tokens", "pool_tokens"),
                         ("random_contexts", "before", "after"))
    return write_deck(cfg, acfg, measured)


def write_deck(cfg, acfg, measured):
    """Draw the deck, write rate.html and its key; returns dict(path, key_path, deck, cards)."""
    t0 = time.time()
    secret = cfg.secret or secrets.token_hex(16)
    deck = digest(secret)[:12]
    rng = np.random.default_rng(int(digest(secret + ":draw")[:16], 16))
    runs = sources(acfg, measured, cfg.control)
    share = cfg.cards // len(runs)
    cards, key = [], []
    for kind, (run, m, units) in runs.items():
        stats = m.stats["neurons" if kind == "neurons" else run.main_name]
        scored = units["neurons" if kind == "neurons" else "features"]
        if len(scored) < share:
            raise UserError(f"--cards {cfg.cards}: only {len(scored)} {kind} are scored in {run.dir}/units.json "
                            f"({share} needed): ask for fewer cards")
        drawn = sorted(rng.choice(len(scored), share, replace=False))
        picked = [scored[i] for i in drawn]
        idx = torch.tensor([u["unit"] for u in picked])
        for u, card in zip(picked, make_cards(cfg, run, stats, kind, idx, rng)):
            card_id = digest(f"{secret}:{kind}:{u['unit']}")[:10]
            cards.append(dict(id=card_id, **card))
            key.append(dict(id=card_id, kind=kind, unit=u["unit"], lexical=u["score"], single_token=u["single_token"]))
    order = rng.permutation(len(cards))      # features, neurons and the control interleaved at random
    cards, key = [cards[i] for i in order], [key[i] for i in order]
    main_run = runs["features"][0]
    path = cfg.html or os.path.join(main_run.dir, "rate.html")
    key_path = os.path.join(main_run.dir, "rate_keys", f"{deck}.json")
    atomic_write_text(json.dumps(dict(deck=deck, secret=secret, sae=main_run.main_name,
                                      lm=main_run.fingerprint, made=time.strftime("%Y-%m-%d %H:%M"),
                                      rubric=[q[1] for q in RUBRIC], cards=key), indent=1), key_path)
    atomic_write_text(deck_page(main_run, deck, cards, "control" in runs), path)
    counts = {kind: sum(k["kind"] == kind for k in key) for kind in runs}
    print(f"rate: {path} ({len(cards)} cards: " + ", ".join(f"{n} {kind}" for kind, n in counts.items())
          + f"; {os.path.getsize(path) / 1e6:.1f} MB, {time.time() - t0:.0f}s); its key: {key_path} "
          "(keep it: python analyze.py ratings FILE... unblinds with it)")
    return dict(path=path, key_path=key_path, deck=deck, cards=key)


def digest(text):
    return hashlib.sha256(text.encode()).hexdigest()


def sources(acfg, measured, control=True):
    """{kind: (Run, Measurement, units.json)}: the main run's features and neurons, and the
    random-weights control (its SAE's features) when lab/compare.py has trained and analysed it."""
    run = measure.load_run(acfg)
    main = (run, measured(acfg, run), load_units(acfg, run))
    out = {"features": main, "neurons": main}
    folder = os.path.join("compare", "analysis_random")            # lab/compare.py's analysis of the control
    units = os.path.join(acfg.out, folder, "units.json")
    if control and os.path.exists(units):   # on the tokens compare measured it on (its own --tokens)
        ccfg = dataclasses.replace(acfg, lm_dir="lm_random", sae_dir="sae_random", n_features=run.n_features,
                                   analysis_dir=folder, tokens=json.load(open(units))["n_tokens"])
        crun = measure.load_run(ccfg)
        out["control"] = (crun, measured(ccfg, crun), load_units(ccfg, crun))
    return out


# ----------------------------------------------------------------------------------------------
# The cards: what the paper's raters saw


def make_cards(cfg, run, stats, kind, idx, rng):
    """One card per unit in idx (of stats, a UnitStats; kind: which of the run's sources). Each is
    dict(sections=[[title, [example, ...]], ...], tokens=[[token, percent], ...]); an example is
    browser.example's [token ids, activations in percent of the unit's largest, the peak's position]."""
    maxima = stats.max_activation()[idx]
    which = "neurons" if kind == "neurons" else "features"      # the control's units are features
    other = "features" if which == "neurons" else "neurons"
    pool = browser.sample_pool(browser.Config(intervals=cfg.intervals, interval_contexts=cfg.interval_contexts,
                                              pool_tokens=cfg.pool_tokens), run, {which: idx, other: idx[:0]},
                               {which: maxima, other: maxima[:0]})
    encode = (lambda h: h[:, idx.to(h.device)]) if which == "neurons" else measure.select_encoder(run.main_sae, idx)
    if cfg.random_contexts:
        rand_ids, rand_acts = random_contexts(run, encode, len(idx), cfg.random_contexts, rng)
    ctx, K = run.context, cfg.intervals
    text = lambda c, tokens=run.tokens: tokens[c * ctx:(c + 1) * ctx]
    cards = []
    for j, u in enumerate(idx.tolist()):
        mx = maxima[j].item()
        tops = sorted(((v, c, a) for t in stats.top for v, c, a in zip(t.val[u].tolist(), t.ctx[u].tolist(), t.acts[u])
                       if v > 0), key=lambda t: -t[0])
        sections = [["Top activations", [cut(cfg, text(c), a, mx) for _, c, a in tops[:cfg.top_contexts]]]]
        for i in reversed(range(K - 1)):     # the intervals below the top one, strongest first
            t = pool[which]["tops"][i]
            keep = t.val[j] > -float("inf")
            found = sorted(zip(t.acts[j][keep].amax(1).tolist(), t.ctx[j][keep].tolist(), t.acts[j][keep]),
                           key=lambda x: -x[0])
            sections.append([f"Activation {i / K:.2f}-{(i + 1) / K:.2f} of the largest",
                             [cut(cfg, text(c, pool["tokens"]), a, mx) for _, c, a in found]])
        if cfg.random_contexts:
            sections.append(["Random contexts", [cut(cfg, text(c), a, mx) for c, a in zip(rand_ids[j], rand_acts[j])]])
        cards.append(dict(sections=sections, tokens=top_tokens(run, stats, u, mx, cfg.top_tokens)))
    return cards


def cut(cfg, tokens, acts, mx):
    """browser.example (the context around its peak), or, where the unit is silent, its first tokens."""
    if float(acts.max()) > 0:
        return browser.example(cfg, tokens, acts, mx)
    n = cfg.before + cfg.after + 1
    return [[int(t) for t in tokens[:n]], [0] * len(tokens[:n]), -1]


@torch.no_grad()
def random_contexts(run, encode, U, n, rng):
    """n held-out contexts per unit drawn uniformly at random (as the paper's random examples), and
    each unit's activations on them: ids (U, n), acts (U, n, ctx). encode(neurons) -> (N, U)."""
    T, ctx = run.model.cfg.block_size, run.context
    ids = np.stack([rng.choice(run.n_tokens // ctx, n, replace=False) for _ in range(U)]).reshape(U, n)
    windows = np.unique(ids * ctx // T)
    h = harvest(run.model, run.tokens.reshape(-1, T)[windows].ravel(), len(windows) * T, device=run.device)[0]
    acts = encode(h).float().cpu()                                           # (windows * T, U)
    start = np.searchsorted(windows, ids * ctx // T) * T + ids * ctx % T     # (U, n): each context's first row
    rows = torch.from_numpy(start[..., None] + np.arange(ctx))               # (U, n, ctx)
    return ids, acts[rows, torch.arange(U)[:, None, None]]


def top_tokens(run, stats, u, mx, k):
    """The k tokens the unit fires on most, out of context: each distinct token's largest activation
    over the unit's cached top contexts (both halves), in percent of its largest; [[token, percent]]."""
    best = {}
    for t in stats.top:
        for v, c, a in zip(t.val[u].tolist(), t.ctx[u].tolist(), t.acts[u]):
            if v <= 0:
                continue
            for tok, x in zip(run.tokens[c * run.context:(c + 1) * run.context].tolist(), a.tolist()):
                best[tok] = max(best.get(tok, 0.0), x)
    ranked = sorted(((x, tok) for tok, x in best.items() if x > 0), reverse=True)[:k]
    return [[int(tok), int(round(100 * x / mx)) if mx > 0 else 0] for x, tok in ranked]


# ----------------------------------------------------------------------------------------------
# The page


def deck_page(run, deck, cards, control):
    """The deck's page: the cards as data (browser_page.script_data), rated by the script."""
    data = browser_page.script_data(dict(deck=deck, rubric=RUBRIC, format=FORMAT, vocab=browser_page.vocab_labels(run),
                                         cards=cards))
    intro = INTRO.format(n=len(cards), deck=html.escape(deck), total=sum(q[1] for q in RUBRIC),
                         control=" and some are features of a model that was never trained" if control else "")
    return (HEAD.replace("TITLE", f"Blind rating, deck {html.escape(deck)}") + intro
            + f'<script type="application/json" id="data">{data}</script>\n<script>{SCRIPT}</script>\n</body></html>\n')


HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>TITLE</title>
<script>window.onerror = m => { document.documentElement.dataset.error = String(m); };</script>
<style>
body { font: 15px/1.45 system-ui, sans-serif; margin: 1em 2em; color: #222; max-width: 75em; }
#rubric { position: sticky; top: 0; background: #fff; border-bottom: 2px solid #ccc; padding: .3em 0; z-index: 1; }
.q { padding: .15em .5em; border-left: 4px solid transparent; } .q.on { border-left-color: #d60; background: #fff3e6; }
.q .opts { color: #666; font-size: 13px; } .q b.val { display: inline-block; min-width: 2.5em; color: #d60; }
#progress { color: #555; margin: .3em 0; } .keys { color: #777; font-size: 13px; } #note { color: #b00; }
h3 { margin: .8em 0 .2em; font-size: 14px; }
.ctx { font: 13px/1.9 ui-monospace, monospace; white-space: pre; overflow-x: auto; border-bottom: 1px solid #eee; }
.ctx span.peak { outline: 2px solid #b00; } .sp { color: #bbb; } .tok { margin-right: .8em; }
</style></head><body>
<h1>TITLE</h1>
"""

INTRO = """<div id="start"><p>You will see {n} cards. Each shows one unit of a language model: where it is active
in held-out text, every token shaded by how strongly (orange: strongly; the outlined token is the strongest in its
line), first its strongest contexts, then weaker ones, then a few random ones, and the tokens it is most active on,
out of context. Some cards are neurons of the model, some are features of a sparse autoencoder{control}; nothing on a
card says which. For each, score three questions (a total of 0 to
{total}), with the keyboard only: a digit answers the highlighted question, ↑ and ↓ move between questions,
→ goes to the next card and ← back. Read the top contexts first and try a one-sentence hypothesis; then check it
lower down. Take about half a minute a card. You can close the page and come back: your answers stay in this
browser. At the end the page downloads your ratings, a file to hand in.</p>
<p>Your name (it names the file): <input id="name" autocomplete="off"> and press Enter.</p>
<p class="keys">Deck {deck}.</p></div>
<div id="rate" hidden><div id="rubric"></div><div id="progress"></div><div id="card"></div></div>
<div id="done" hidden></div>
"""

SCRIPT = r"""
const D = JSON.parse(document.getElementById('data').textContent);
const $ = id => document.getElementById(id);
const store = 'rate:' + D.deck;
let S = JSON.parse(localStorage.getItem(store) || 'null');  // {rater, pos, q, scores: {id: [..]}, ms: {id: ms}}
let shownAt = null;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;  // text, never markup: tokens may hold < & "
  return e;
}
function save() { localStorage.setItem(store, JSON.stringify(S)); }
function flush() {  // the time on the current card so far, kept
  if (shownAt === null || !S || S.pos >= D.cards.length) return;
  const id = D.cards[S.pos].id, now = performance.now();
  S.ms[id] = (S.ms[id] || 0) + (now - shownAt);
  shownAt = now;
  save();
}
function rated(c) { const s = S.scores[c.id]; return s && s.every(x => x !== null); }
function token(t) {
  const s = el('span');
  D.vocab[t].split('\u2423').forEach((part, i) => {
    if (i) s.appendChild(el('span', 'sp', '\u2423'));
    if (part) s.appendChild(document.createTextNode(part));
  });
  return s;
}
function shade(s, pct) {
  if (pct > 0) s.style.background = 'rgba(255, 110, 0, ' + Math.min(1, pct / 100).toFixed(2) + ')';
}
function context([ids, pct, peak]) {
  const div = el('div', 'ctx');
  ids.forEach((t, j) => {
    const s = token(t);
    if (j === peak) s.className = 'peak';
    shade(s, pct[j]);
    div.appendChild(s);
  });
  return div;
}
function showCard() {
  const c = D.cards[S.pos], scores = S.scores[c.id] || D.rubric.map(() => null);
  const rubric = $('rubric');
  rubric.replaceChildren();
  D.rubric.forEach(([question, max, levels], i) => {
    const q = el('div', 'q' + (i === S.q ? ' on' : ''));
    q.appendChild(el('b', 'val', scores[i] === null ? '_' : String(scores[i])));
    q.appendChild(document.createTextNode((i + 1) + '. ' + question + ' (0-' + max + ')'));
    q.appendChild(el('div', 'opts', levels.map((l, k) => k + ': ' + l).join(' · ')));
    rubric.appendChild(q);
  });
  rubric.appendChild(el('div', 'keys',
      'digit: answer the highlighted question · ↑ ↓: question · → next card · ← previous'));
  rubric.appendChild(el('div', '', '')).id = 'note';
  const done = D.cards.filter(rated).length;
  $('progress').textContent = 'Card ' + (S.pos + 1) + ' of ' + D.cards.length + ' · ' + done + ' rated';
  const box = $('card');
  box.replaceChildren();
  c.sections.forEach(([title, examples]) => {
    box.appendChild(el('h3', '', title + (examples.length ? '' : ': none found')));
    examples.forEach(ex => box.appendChild(context(ex)));
  });
  box.appendChild(el('h3', '', 'Most active on these tokens, out of context'));
  const line = el('div', 'ctx');
  c.tokens.forEach(([t, pct]) => { const s = token(t); s.className = 'tok'; shade(s, pct); line.appendChild(s); });
  box.appendChild(line);
}
function render() {
  $('start').hidden = !!S;
  $('rate').hidden = !S || S.pos >= D.cards.length;
  $('done').hidden = !S || S.pos < D.cards.length;
  if (!S) { $('name').focus(); return; }
  if (S.pos < D.cards.length) { showCard(); shownAt = performance.now(); window.scrollTo(0, 0); }
  else finish();
}
function finish() {
  const box = $('done');
  if (!S.downloaded) download();   // the first time the end is reached; D downloads it again
  box.replaceChildren(el('p', '', 'All ' + D.cards.length + ' cards rated, ' + S.rater + '. Your ratings were ' +
      'downloaded as ' + fileName() + ': hand that file in. D (or Enter) downloads it again; ' +
      '← goes back to the last card.'));
  const secs = Object.values(S.ms).reduce((a, b) => a + b, 0) / 1000;
  box.appendChild(el('p', 'keys', 'Time on the cards: ' + Math.round(secs / 60) + ' min, ' +
      (secs / D.cards.length).toFixed(0) + ' s a card.'));
}
function fileName() { return 'ratings-' + (S.rater.toLowerCase().replace(/[^a-z0-9_-]+/g, '-') || 'rater') + '.json'; }
function fnv(text) {  // FNV-1a, 32 bits, over the UTF-8 bytes: lab/ratings.py recomputes it
  let h = 0x811c9dc5;
  for (const b of new TextEncoder().encode(text)) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h.toString(16).padStart(8, '0');
}
function ratings() {
  const cards = D.cards.map(c => ({id: c.id, scores: S.scores[c.id],
                                   seconds: Math.round((S.ms[c.id] || 0) / 100) / 10}));
  const body = D.deck + '|' + S.rater + '|' + cards.map(c => c.id + ':' + c.scores.join(',') + ':' +
      Math.round(c.seconds * 10)).join(';');
  return {format: D.format, deck: D.deck, rater: S.rater, cards: cards, check: fnv(body)};
}
function download() {
  const url = URL.createObjectURL(new Blob([JSON.stringify(ratings(), null, 1)], {type: 'application/json'}));
  const a = el('a');
  a.href = url;
  a.download = fileName();
  document.body.appendChild(a);
  a.click();
  a.remove();
  S.downloaded = true;
  save();
}
function note(text) { const n = $('note'); if (n) n.textContent = text; }
function move(to) {
  flush();
  S.pos = Math.max(0, Math.min(D.cards.length, to));
  S.q = 0;
  save();
  render();
}
document.addEventListener('keydown', e => {
  if (!S) {
    const name = $('name').value.trim();
    if (e.key === 'Enter' && name) {
      S = {rater: name, pos: 0, q: 0, scores: {}, ms: {}};
      save();
      render();
    }
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (S.pos >= D.cards.length) {
    if (e.key === 'd' || e.key === 'D' || e.key === 'Enter') download();
    else if (e.key === 'ArrowLeft') move(D.cards.length - 1);
    return;
  }
  const c = D.cards[S.pos];
  if (/^[0-9]$/.test(e.key)) {
    const v = +e.key, max = D.rubric[S.q][1];
    if (v > max) { note('Question ' + (S.q + 1) + ' goes from 0 to ' + max + '.'); return; }
    S.scores[c.id] = S.scores[c.id] || D.rubric.map(() => null);
    S.scores[c.id][S.q] = v;
    S.q = Math.min(D.rubric.length - 1, S.q + 1);
    flush();
    showCard();
  } else if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
    S.q = (S.q + (e.key === 'ArrowDown' ? 1 : D.rubric.length - 1)) % D.rubric.length;
    save();
    showCard();
  } else if (e.key === 'ArrowRight') {
    if (rated(c)) move(S.pos + 1);
    else {
      S.q = S.scores[c.id] ? S.scores[c.id].indexOf(null) : 0;
      showCard();
      note('Answer all three questions first.');
    }
  } else if (e.key === 'ArrowLeft') {
    move(S.pos - 1);
  } else return;
  e.preventDefault();
});
document.addEventListener('visibilitychange', () => {  // time away from the page is not time on the card
  if (document.hidden) flush();
  else if (shownAt !== null) shownAt = performance.now();
});
window.addEventListener('pagehide', flush);
render();
"""
