import dataclasses
import html.parser
import json
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
import torch

import analyze
from lab import browser, browser_page
from lab import formatting, summary
import sae as sae_lib
from lab.plumbing import UserError
from lab.steer import logit_effects, residual_scale
from model import ModelConfig, Transformer


def toy_model(seed=0):
    """A small random transformer in float64, with a non-trivial final layer norm."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=50, block_size=16, n_head=2, d_model=64, d_mlp=32)).double().eval()
    with torch.no_grad():
        for block in model.blocks:
            block.mlp_out.weight.normal_(0, 0.3)
        model.ln_f.weight.uniform_(0.5, 2.0)
        model.ln_f.bias.normal_(0, 0.5)
    return model


def test_logit_effects_are_the_exact_derivative_at_a_residual_state_of_the_mean_scale():
    model = toy_model()
    s = 1.7
    sae = sae_lib.SAE(sae_lib.SAEConfig(d_in=32, n_features=8)).double()
    sae.act_scale.fill_(3.0)
    dirs = browser.unit_directions(model, sae)
    for kind, i in (("neurons", 5), ("features", 3)):
        d = dirs[kind][i]
        effects = logit_effects(model, dirs[kind], s)[i]
        # direct: the real ln_f and unembed, at a zero-mean state x0 of scale s orthogonal to the
        # centred write r, where moving along r leaves the scale unchanged to first order
        r = model.blocks[0].mlp_out.weight @ d
        rc = r - r.mean()
        x0 = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
        x0 = x0 - x0.mean()
        x0 = x0 - (x0 @ rc) / (rc @ rc) * rc
        x0 = x0 / x0.std(unbiased=False) * (s ** 2 - model.ln_f.eps) ** 0.5
        eps = 1e-5
        logits = lambda x: model.unembed(model.ln_f(x))
        direct = (logits(x0 + eps * r) - logits(x0 - eps * r)) / (2 * eps)
        assert torch.allclose(effects, direct, rtol=1e-6, atol=1e-8)
    # a neuron's direction through mlp_out is mlp_out's column; a feature's is W_dec / act_scale
    assert torch.equal(dirs["neurons"][5] @ model.blocks[0].mlp_out.weight.T, model.blocks[0].mlp_out.weight[:, 5])
    assert torch.allclose(dirs["features"], sae.W_dec / 3.0)


def test_logit_effects_match_the_models_own_average_derivative():
    """The linearisation against the real thing: steer a neuron by eps at every position and average
    the change of every logit over the tokens. Equal but for the dropped change of each token's scale
    (here, a random model whose MLP dominates the residual stream, it is not small)."""
    model = toy_model(1)
    tokens = np.random.default_rng(0).integers(0, 50, 16 * 40)
    scale = residual_scale(model, tokens, n_windows=40)
    x = torch.from_numpy(tokens).view(40, 16)
    eps = 1e-4
    for i in (0, 7):
        d = torch.zeros(32, dtype=torch.float64)
        d[i] = 1
        steered = lambda e: model(x, mlp_hook=lambda layer, h: h + e * d)[0].detach()
        direct = ((steered(eps) - steered(-eps)) / (2 * eps)).mean((0, 1))
        effects = logit_effects(model, d[None], scale)[0]
        direct, effects = direct - direct.mean(), effects - effects.mean()   # (a shift of all logits is no effect)
        assert np.corrcoef(direct, effects)[0, 1] > 0.99
        assert (effects - direct).norm() < 0.2 * direct.norm()   # the dropped term: about 10% here


@pytest.fixture(scope="module")
def analysed(analysed_all):
    """analysis_browse/ of the tiny run: its measure.pt and units.json (conftest.py's analysed_all, the whole
    analysis, shared with test_analyze.py's end-to-end test and with test_steer.py and test_rate.py)."""
    return analysed_all[0]


def browse(**kw):
    """The browser's own settings, its pool small for speed."""
    return browser.Config(**{"pool_tokens": 4096, **kw})


def measured(cfg):
    """The run, its streaming pass and units.json, as analyze.py hands them to the browser."""
    run = analyze.load_run(cfg)
    return run, analyze.measured(cfg, run), summary.load_units(cfg, run)


class Page(html.parser.HTMLParser):
    """Every start tag with its attributes, and the text of each index row's cells."""

    def __init__(self):
        super().__init__()
        self.tags, self.cells, self.row, self.scripts, self.script = [], {}, None, {}, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "tr" and "id" in attrs:
            self.row = attrs["id"]
            self.cells[self.row] = []
        elif tag == "td" and self.row:
            self.cells[self.row].append("")
        elif tag == "script":
            self.script = attrs.get("id", len(self.scripts))
            self.scripts[self.script] = ""

    def handle_endtag(self, tag):
        self.row = None if tag == "tr" else self.row
        self.script = None if tag == "script" else self.script

    def handle_data(self, text):
        if self.script is not None:
            self.scripts[self.script] += text
        elif self.row and self.cells[self.row]:
            self.cells[self.row][-1] += text


def test_browser_is_one_self_contained_page_with_every_requested_unit(analysed):
    run, m, units = measured(analysed)
    # three features that fired and two neurons, whether they fired or not (checked both ways below)
    alive = m.stats["F1024"].fired.nonzero().squeeze(1).tolist()
    f1, f2, f3 = alive[0], alive[len(alive) // 2], alive[-1]
    cfg = browse(features=[str(f) for f in (f1, f2, f3)], neurons=["0", "511"])
    out = browser.write_browser(cfg, run, m, units)
    assert out["path"] == os.path.join(run.dir, "browser_selected.html")   # the full page is left alone
    text = open(out["path"], encoding="utf-8").read()
    assert out["bytes"] == os.path.getsize(out["path"]) < 5e6
    for needle in ("http://", "https://", "//cdn", "src=", "url(", "@import", "<link"):
        assert needle not in text.lower()
    page = Page()
    page.feed(text)
    page.close()
    keys = {f"f{f1}", f"f{f2}", f"f{f3}", "n0", "n511"}
    assert set(page.cells) == {"row-" + k for k in keys}
    data = json.loads(page.scripts["data"])
    assert set(data["units"]) == keys
    # token text travels as JSON only, escaped: the data block holds no markup at all
    assert "<" not in page.scripts["data"] and len(page.scripts) == 3   # window.onerror's, the data, the script
    enc = run.enc
    assert data["vocab"] == [browser_page.token_label(enc, t) for t in range(run.meta["vocab_size"])]
    assert any(c in v for v in data["vocab"] for c in '<&"')   # the escaping above had something to escape
    units = json.load(open(os.path.join(run.dir, "units.json")))
    stats = {"f": m.stats["F1024"], "n": m.stats["neurons"]}
    for key, u in data["units"].items():
        s, i = stats[key[0]], int(key[1:])
        assert u["density"] == s.fired[i].item() / run.n_tokens
        assert u["max"] == pytest.approx(s.max_activation()[i].item(), abs=1e-4)
        assert len(u["hist"]) == cfg.bins and sum(u["hist"]) <= cfg.pool_tokens
        assert len(u["up"]) == len(u["down"]) == cfg.logit_tokens and u["up"][0][1] >= u["up"][-1][1] >= u["down"][0][1]
        if u["max"] == 0:  # never fired: no contexts to show, and no effect at any activation it had
            assert s.fired[i] == 0 and u["top"] == [] and u["up"][0][1] == u["down"][-1][1] == 0
            continue
        assert u["up"][-1][1] > u["down"][0][1]  # effects are scaled by the largest activation
        assert 0 < len(u["top"]) <= cfg.top_contexts and max(u["top"][0][1]) == 100   # the peak of the top context
        for ids, acts, peak in u["top"]:   # cut around the peak
            assert len(ids) == len(acts) <= cfg.before + 1 + cfg.after and acts[peak] == max(acts)
        assert len(u["intervals"]) == cfg.intervals
        for lo, hi, examples in u["intervals"]:
            assert len(examples) <= cfg.interval_contexts
            for ids, acts, peak in examples:
                assert lo * 100 - 1 <= max(acts) <= hi * 100 + 1
        scored = {r["unit"]: r for r in units["features" if key[0] == "f" else "neurons"]}.get(i)
        cells = page.cells["row-" + key]
        assert cells[2] == (f"{scored['score']:.3f}" if scored else "")
    # a unit's top context is the cached one: its tokens, its activations in percent of the max
    top = m.stats["F1024"].top
    half = int(top[1].val[f1, 0] > top[0].val[f1, 0])
    c, acts = top[half].ctx[f1, 0].item(), top[half].acts[f1, 0]
    p = int(acts.argmax())
    lo, hi = max(0, p - cfg.before), p + cfg.after + 1
    assert data["units"][f"f{f1}"]["top"][0] == [run.tokens[c * run.context:(c + 1) * run.context][lo:hi].tolist(),
                                              (100 * acts / acts.max()).round().int().tolist()[lo:hi], p - lo]
    # the links between the bases: the decoder's largest weights and cosines (checked in detail below)
    W = run.main_sae.W_dec.detach()
    for f in (f1, f2, f3):
        top = W[f].abs().topk(cfg.link_neurons)
        assert [n for n, _ in data["units"][f"f{f}"]["neurons"]] == top.indices.tolist()
        assert [w for _, w in data["units"][f"f{f}"]["neurons"]] == [round(w, 2) for w in W[f, top.indices].tolist()]
        assert len(data["units"][f"f{f}"]["similar"]) == cfg.similar
    assert len(data["units"]["n0"]["features"]) == cfg.link_neurons


def test_index_rows_escape_token_text():
    nasty = '</script><b x="1">&amp;\n'
    row = browser_page.index_row("f1", "features", 1, 0.01, dict(score=0.5, single_token=False, otherwise=0.0,
                                                            explanation=[dict(prev=nasty, token="<", value=1.0)]))
    page = Page()
    page.feed("<table>" + row + "</table>")
    assert page.cells["row-f1"][3] == f"`{formatting.visible(nasty).replace(' ', '␣')}`→`<` 1.00; otherwise 0.00"
    assert [t for t, _ in page.tags] == ["table", "tr", "td", "a", "td", "td", "td"]
    context = dict(prev=None, token=None, context="docstring", value=0.5)
    row = browser_page.index_row("n2", "neurons", 2, 0.01, dict(score=0.5, single_token=False, otherwise=0.0,
                                                           explanation=[context, dict(prev=None, token=" a", value=0.25)]))
    page.feed("<table>" + row + "</table>")
    assert page.cells["row-n2"][3] == "⟨docstring⟩ 0.50; `␣a` 0.25; otherwise 0.00"


def test_bad_flags_and_missing_inputs_are_one_line_errors(analysed, tmp_path):
    with pytest.raises(UserError, match="--features"):
        analyze.main(["browse", "--out", analysed.out, "--analysis-dir", analysed.analysis_dir, "--tokens", "8192",
                      "--device", "cpu", "--features", "x"])
    with pytest.raises(UserError, match="0..1023"):
        analyze.main(["browse", "--out", analysed.out, "--analysis-dir", analysed.analysis_dir, "--tokens", "8192",
                      "--device", "cpu", "--features", "1024"])
    with pytest.raises(UserError, match="--top-contexts"):
        analyze.main(["browse", "--out", analysed.out, "--top-contexts", "0"])
    written = browser.write_browser(browse(neurons=["4"]), *measured(analysed))   # one kind only: no features
    assert written["units"] == {"features": 0, "neurons": 1}
    cfg = dataclasses.replace(analysed, analysis_dir="analysis_no_units")
    run = analyze.load_run(cfg)
    with pytest.raises(UserError, match="analyze.py interp"):
        summary.load_units(cfg, run)


def test_html_flag_writes_the_page_elsewhere_and_outputs_are_plain_cpu_values(analysed, tmp_path):
    path = str(tmp_path / "page.html")
    analyze.main(["browse", "--out", analysed.out, "--analysis-dir", analysed.analysis_dir, "--tokens", "8192",
                  "--device", "cpu", "--pool-tokens", "4096", "--neurons", "3", "--html", path])
    assert os.path.getsize(path) > 0
    # every number a page holds is a plain int or float, never a tensor (on any device)
    cfg = browse(features=["1"], neurons=["3"])
    run, m, _ = measured(analysed)
    stats = {"features": m.stats["F1024"], "neurons": m.stats["neurons"]}
    chosen = browser.choose_units(cfg, stats)
    maxima = {kind: s.max_activation()[chosen[kind]] for kind, s in stats.items()}
    pool = browser.sample_pool(cfg, run, chosen, maxima)
    assert all(t.device.type == "cpu" for kind in chosen for t in [pool[kind]["hist"], *pool[kind]["tops"][0].__dict__.values()])
    effects = logit_effects(run.model, browser.unit_directions(run.model, run.main_sae)["neurons"][[3]], 1.0).cpu()
    page = browser.page(cfg, run, stats["neurons"], 3, maxima["neurons"][0].item(), 0.1,
                        browser.unit_pool(pool, "neurons", 0), effects[0])
    plain = lambda x: all(map(plain, x)) if isinstance(x, list) else all(map(plain, x.values())) if isinstance(
        x, dict) else isinstance(x, (int, float))
    assert plain(page)


def test_decoder_links_are_the_decoders_largest_weights_and_cosines():
    torch.manual_seed(0)
    W = torch.nn.functional.normalize(torch.randn(40, 32), dim=1)
    alive = torch.ones(40, dtype=torch.bool)
    alive[[3, 17, 30]] = False                       # dead features: no page, never listed
    chosen = {"features": torch.tensor([0, 5, 17, 39]), "neurons": torch.tensor([2, 31])}
    links = browser.decoder_links(W, chosen, alive, 8, 5)
    live = alive.nonzero().squeeze(1)
    for j, f in enumerate(chosen["features"].tolist()):
        top = torch.topk(W[f].abs(), 8)
        assert links["features"][j]["neurons"] == [[n, round(W[f, n].item(), 2)] for n in top.indices.tolist()]
        cos = torch.nn.functional.cosine_similarity(W[f][None], W, dim=1)
        cos[~alive] = -2
        cos[f] = -2                                  # not itself
        best = cos.topk(5)
        assert links["features"][j]["similar"] == [[i, round(c, 2)] for i, c in zip(best.indices.tolist(),
                                                                                    best.values.tolist())]
    for j, n in enumerate(chosen["neurons"].tolist()):
        col = W[:, n].masked_fill(~alive, 0)
        top = torch.topk(col.abs(), 8).indices
        assert links["neurons"][j]["features"] == [[f, round(W[f, n].item(), 2)] for f in top.tolist()]
        assert all(f in live for f, _ in links["neurons"][j]["features"])
    # more asked than there are: all there are
    few = browser.decoder_links(W, chosen, alive, 100, 100)
    assert len(few["features"][0]["neurons"]) == 32 and len(few["features"][0]["similar"]) == 36
    assert len(few["features"][2]["similar"]) == 37   # a dead feature's page (when asked for): every alive one


def test_contexts_are_cut_around_their_peak():
    cfg = browser.Config(before=4, after=2)
    tokens = np.arange(100, 132)
    for p in (0, 2, 10, 30, 31):
        acts = torch.zeros(32)
        acts[p], acts[(p + 5) % 32] = 2.0, 1.0
        ids, pct, peak = browser.example(cfg, tokens, acts, 2.0)
        lo = max(0, p - 4)
        assert ids == list(range(100 + lo, 100 + min(32, p + 3))) and len(pct) == len(ids)
        assert peak == p - lo and ids[peak] == 100 + p and pct[peak] == 100
    acts = torch.tensor([0.0, 1.0, 3.0, 3.0, 0.0])   # a tie: the first peak
    assert browser.example(cfg, np.arange(5), acts, 3.0) == [[0, 1, 2, 3, 4], [0, 33, 100, 100, 0], 2]


def test_token_labels_show_whitespace_and_partial_utf8_bytes():
    class Enc:
        tokens = [b" the", b"\n", b"\t", b"\xe2\x80", b"\x94", "é".encode(), b'<&"', b"\r\n", b"  "]

        def decode_single_token_bytes(self, t):
            return self.tokens[t]

    labels = [browser_page.token_label(Enc(), t) for t in range(len(Enc.tokens))]
    assert labels == ["␣the", "↵", "⇥", "\\xe2\\x80", "\\x94", "é", '<&"', "␍↵", "␣␣"]
    assert labels[1] == formatting.visible("\n")   # formatting.visible's symbols, the same as report.md and steer's


def test_the_guided_start_follows_its_rule_and_every_page_reads_its_table_out():
    expl = lambda token, value: [dict(prev=None, token=token, context=None, value=value)]
    units = {"features": [dict(unit=i, score=score, single_token=single, explanation=expl(f"t{i}", 1.0), otherwise=0.0,
                               density=i / 100) for i, score, single in [
                              (1, .99, True), (2, .9, False), (3, .8, False), (4, .9, False), (5, .5, False),
                              (6, .7, False), (7, .85, False)]],
             "neurons": [dict(unit=0, score=.4, single_token=False, explanation=expl("<b>", 2.0), otherwise=0.1)]}
    pages = {**{f"f{i}": {"neurons": [[0, 0.5], [3, -0.25], [9, 0.1], [8, 0.05]]} for i in range(1, 7)}, "n0": {}}
    guide = browser_page.guided_start(units, pages)
    # the best scores (4 before 2: as good, and denser), single-token feature 1 left out, feature 7
    # (no page) too; three neurons each
    assert re.findall(r'href="#f(\d+)"', guide) == ["4", "2", "3", "6", "5"]
    assert guide.count('<a href="#n0">neuron 0</a> (weight +0.50, score 0.40: `&lt;b&gt;`)') == 5
    assert "neuron 3 (weight -0.25, not scored); neuron 9 (weight +0.10, not scored)</li>" in guide
    assert "neuron 8" not in guide and "<b>" not in guide
    assert browser_page.guided_start(dict(units, features=units["features"][:1]), pages) == ""   # none to show
    assert browser_page.words("features", None).startswith("This feature has no explanation table")
    said = browser_page.words("neurons", dict(score=0.4, single_token=True, otherwise=0.1, explanation=[
        dict(prev=" a", token="b", context=None, value=2.0),
        dict(prev=None, token=None, context="comment", value=0.5)]))
    assert ("table that predicts its activation from the text alone: 2.00 on `␣a`→`b`, 0.50 on ⟨comment⟩, and "
            "0.10 on anything else") in said and "r = 0.40" in said and "single-token unit" in said


def test_index_densities_are_short_and_do_not_wrap():
    row = browser_page.index_row("n7", "neurons", 7, 3.14e-4, None)
    assert "<td>3.1e-4</td>" in row and 'data-density="3.140e-04"' in row
    assert browser_page.short(0.5) == "5.0e-1" and browser_page.short(1.0) == "1.0e+0" and browser_page.short(1.2e-10) == "1.2e-10"
    assert "td:nth-child(-n+3) { white-space: nowrap; }" in browser_page.HEAD


def chromium():
    """A Chromium or Chrome binary on PATH, or None."""
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
    return next((shutil.which(n) for n in names if shutil.which(n)), None)


def headless(binary, url, *flags):
    """Run headless Chromium on url; returns (stdout, stderr)."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--enable-logging=stderr",
                               "--v=0", *flags, url], capture_output=True, text=True, timeout=180)
    return done.stdout, done.stderr


# What the test drives in the page, run after its own script: the filters, the search, a feature's page.
PROBE = """<script>
const R = {}, shown = () => rows.filter(r => r.style.display !== 'none').map(r => r.id.slice(4));
const set = (id, v) => { $(id).value = v; filter(); };
R.start = shown();
set('dmin', ''); R.no_dmin = shown();
set('dmax', ''); set('smin', ''); R.no_bounds = shown();
set('dmin', '0'); R.dmin_0 = shown(); set('dmin', '');
for (const q of ['F@F', 'feature @F', 'Feature@F', '@F', 'neuron 511', 'N 511', 'NEURON', 'zzzz'])
  { set('q', q); R[q] = shown(); R[q + ' hash'] = location.hash; }
set('q', '');
history.replaceState(null, '', '#f@F'); show();
R.words = document.querySelector('#unit .words').textContent;
R.links = Array.from(document.querySelectorAll('#unit .links a')).map(a => a.getAttribute('href'));
R.peaks = Array.from(document.querySelectorAll('#unit div.ctx .peak')).map(s => Math.round(s.getBoundingClientRect().left));
R.bars = document.querySelectorAll('#unit svg rect').length;
R.bar_titles = Array.from(document.querySelectorAll('#unit svg rect title')).map(t => t.textContent);
R.axis = Array.from(document.querySelectorAll('#unit svg text')).map(t => t.textContent);
R.fills = Array.from(document.querySelectorAll('#unit svg rect')).map(r => getComputedStyle(r).fill);
R.swatches = Array.from(document.querySelectorAll('#unit .swatch')).map(s => getComputedStyle(s).backgroundColor);
R.nowrap = [0, 1, 2].map(i => getComputedStyle(rows[0].cells[i]).whiteSpace);
const box = document.querySelector('#unit svg').getBoundingClientRect();
R.clipped = Array.from(document.querySelectorAll('#unit svg text')).map(t => t.getBoundingClientRect())
  .filter(b => b.left < box.left || b.right > box.right || b.top < box.top || b.bottom > box.bottom).length;
for (const k of ['f99999', 'n512', 'f@D', 'f@A', '']) {
  history.replaceState(null, '', '#' + k); show(); R['absent ' + k] = $('unit').textContent;
}
history.replaceState(null, '', '#n0'); show();
R.neuron_links = Array.from(document.querySelectorAll('#unit .links a, #unit .links .nolink')).length;
document.body.dataset.result = JSON.stringify(R);
</script>"""


def test_page_works_in_a_headless_browser(analysed, tmp_path):
    binary = chromium()
    if binary is None:
        pytest.skip("no chromium or chrome on PATH (apt-get install chromium)")
    run, m, units = measured(analysed)
    alive = m.stats["F1024"].fired.nonzero().squeeze(1).tolist()
    f1, f2 = alive[len(alive) // 3], alive[2 * len(alive) // 3]
    assert f2 not in (0, 511)
    dead = [alive[-1]]   # a feature made dead: its encoder bias far below any pre-activation (the run is in memory)
    run.main_sae.b_enc.data[dead[0]] = -100.0
    m.stats["F1024"].fired[dead[0]] = 0
    cfg = browse(features=[str(f1), str(f2)], neurons=["0", "511"], html=str(tmp_path / "page.html"))
    text = open(browser.write_browser(cfg, run, m, units)["path"], encoding="utf-8").read()
    probe = tmp_path / "probe.html"
    other = next(f for f in alive if f not in (f1, f2))
    probe.write_text(text.replace("</body>", PROBE.replace("@F", str(f2)).replace("@D", str(dead[0]))
                                  .replace("@A", str(other)) + "</body>"), encoding="utf-8")
    dom, log = headless(binary, probe.as_uri() + f"#f{f1}", "--dump-dom")
    page = Page()
    page.feed(dom)
    html_attrs = next(a for t, a in page.tags if t == "html")
    assert "data-error" not in html_attrs and "Uncaught" not in log, (html_attrs, log[-2000:])
    R = json.loads(next(a for t, a in page.tags if t == "body")["data-result"])
    every = [f"f{f1}", f"f{f2}", "n0", "n511"]
    assert sorted(R["start"]) == sorted(u for u in every if u != "n511" or m.stats["neurons"].fired[511] > 0)
    assert sorted(R["no_dmin"]) == sorted(R["no_bounds"]) == sorted(every)   # an empty box is no bound
    assert R["dmin_0"] == []
    for q in ("F@F", "feature @F", "Feature@F", "@F"):   # a unit's name, any case: that unit, and its page
        assert R[q.replace("@F", str(f2))] == [f"f{f2}"] and R[q.replace("@F", str(f2)) + " hash"] == f"#f{f2}"
    assert R["neuron 511"] == R["N 511"] == ["n511"] and R["neuron 511 hash"] == "#n511"
    assert sorted(R["NEURON"]) == ["n0", "n511"] and R["zzzz"] == []   # text: case-insensitive, unit names too
    # the feature's page: links to its neurons (those with a page) and to similar features, both in the data
    data = json.loads(text.split('id="data">')[1].split("</script>")[0])
    u = data["units"][f"f{f2}"]
    assert R["links"] == [f"#n{n}" for n, _ in u["neurons"] if f"n{n}" in data["units"]] + \
        [f"#f{f}" for f, _ in u["similar"] if f"f{f}" in data["units"]]
    assert R["neuron_links"] == cfg.link_neurons
    assert R["words"] == u["words"] and R["words"].startswith(("How to read the line above", "This feature has no"))
    assert len(set(R["peaks"])) == 1 and len(R["peaks"]) >= 2       # every context's peak in one column
    assert R["bars"] == cfg.bins and all(t.endswith("]") and " tokens with activation in (" in t for t in R["bar_titles"])
    assert "1" in R["axis"] and "10" in R["axis"] and "activation" in R["axis"]   # counts on the axis
    # each interval's colour: its bars' and its heading's swatch (intervals are listed strongest first)
    per = cfg.bins // cfg.intervals
    assert len({R["fills"][i * per] for i in range(cfg.intervals)}) == cfg.intervals
    assert R["swatches"] == [R["fills"][i * per] for i in range(cfg.intervals)][::-1]
    assert R["nowrap"] == ["nowrap"] * 3
    assert R["clipped"] == 0   # every label of the histogram inside its figure
    # a unit without a page says why: unknown, dead (and where it came closest to firing), or not chosen
    assert R["absent f99999"] == "There is no feature 99999 here: features are f0 to f1023, neurons n0 to n511. " \
                                 "Pick a unit in the index."
    assert R["absent n512"].startswith("There is no neuron 512 here")
    assert R[f"absent f{dead[0]}"].startswith(f"feature {dead[0]}: deadIt never fired on the 8,192 held-out tokens")
    miss = data["misses"][f"f{dead[0]}"]
    assert miss[1] < 0 and f"its pre-activation (before the ReLU) peaked at {miss[1]}" in R[f"absent f{dead[0]}"]
    assert R[f"absent f{other}"] == f"feature {other} fires, but is not on this page: python analyze.py browse " \
                                    f"--features {other} writes a page for it."
    assert R["absent "] == "Pick a unit in the index."
    dom2, _ = headless(binary, probe.as_uri(), "--dump-dom")
    assert "data-error" not in dom2


def test_logit_tables_leave_out_untrained_tokens_and_no_context_shows_twice(analysed, monkeypatch):
    run, m, units = measured(analysed)
    f = m.stats["F1024"].fired.nonzero().squeeze(1)[0].item()
    cfg = browse(features=[str(f)], neurons=[str(n) for n in range(32)])
    page = lambda: json.loads(open(browser.write_browser(cfg, run, m, units)["path"], encoding="utf-8").read()
                              .split('id="data">')[1].split("</script>")[0])
    before = page()
    assert before["untrained"] == int(browser.never_trained_on(run).sum())
    top = [t for t, _ in before["units"][f"f{f}"]["up"][:3]] + [t for t, _ in before["units"][f"f{f}"]["down"][:2]]
    untrained = np.zeros(run.meta["vocab_size"], dtype=bool)
    untrained[top] = True
    monkeypatch.setattr(browser, "never_trained_on", lambda run: untrained)
    after = page()
    assert after["untrained"] == 5
    for u in after["units"].values():
        assert not {t for t, _ in u["up"] + u["down"]} & set(top)
        assert len(u["up"]) == cfg.logit_tokens
        shown = [tuple(ex[0]) for ex in u["top"]] + [tuple(ex[0]) for _, _, exs in u["intervals"] for ex in exs]
        assert len(shown) == len(set(shown))


def test_a_folder_given_as_the_page_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"--html .* is a folder: give the page a file name, e.g. --html .*browser.html"):
        browser.page_path(browser.Config(html=str(tmp_path)), None)
