import ast
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import analyze
from lab import explainer, figures, measure, predicates, specificity, stats, top_random
from lab import report
import sae as sae_lib
from lab.plumbing import UserError, atomic_save, lm_fingerprint
from lab.formatting import pattern, shown
from lab.summary import specificity_summary
from lab.trained import load_lm, load_tokenizer
from model import harvest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(out, **kw):
    base = dict(out=out, device="cpu", tokens=8192, loss_tokens=4096, n_units=64, bootstrap=100)
    base.update(kw)
    return analyze.AnalyzeConfig(**base)


def synthetic_tokens(n, vocab, eot, doc_len=300, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, n)
    tokens[::doc_len] = eot  # a document every doc_len tokens, so both halves have text
    return tokens


def batches_of(acts, size):
    return [(s, {"u": acts[s:s + size]}) for s in range(0, len(acts), size)]


def test_measure_counts_sums_and_top_contexts_exactly():
    N, U, ctx = 1024, 6, 16
    g = torch.Generator().manual_seed(0)
    acts = torch.rand(N, U, generator=g) * (torch.rand(N, U, generator=g) < 0.2)
    acts[:, 0] = (torch.arange(N) % 2 == 0).float()  # fires on every other token
    halves = analyze.window_halves(N, 64)
    proxies = torch.rand(N, 2, generator=g).numpy() < 0.3
    s = measure.measure(batches_of(acts, 128), N, halves, proxies, ctx, k=(5, 3))["u"]
    assert s.fired[0].item() / N == 0.5
    assert torch.equal(s.fired, (acts > 0).sum(0))
    assert torch.allclose(s.sum, acts.double().sum(0))
    assert torch.allclose(s.proxy_sum, acts.double().T @ torch.from_numpy(proxies).double())
    assert torch.equal(s.proxy_fired, (acts > 0).long().T @ torch.from_numpy(proxies).long())
    assert torch.equal(s.fired_half[1], (acts[torch.from_numpy(halves) == 1] > 0).sum(0))
    contexts = acts.view(-1, ctx, U)
    ctx_half = torch.from_numpy(halves[::ctx])
    for h, k in ((measure.EXPLAIN, 5), (measure.SCORE, 3)):
        top = s.top[h]
        for u in range(U):
            best = contexts[ctx_half == h, :, u].amax(1).sort(descending=True).values[:k]
            assert torch.equal(top.val[u], best)  # the k largest, in order
            ids = top.ctx[u]
            assert (ctx_half[ids] == h).all()  # from the right half only
            assert torch.equal(top.acts[u], contexts[ids, :, u])  # each one's own activations
            assert torch.equal(top.val[u], top.acts[u].amax(1))


def score_synthetic(acts, tokens, eot, vocab, ctx=16, labels=None, max_entries=10, sizes=()):
    N = len(tokens)
    labels = np.zeros((N, 0), bool) if labels is None else labels
    halves = analyze.window_halves(N, 64)
    s = measure.measure(batches_of(acts, 512), N, halves, np.zeros((N, 1), bool), ctx, k=(40, 20))["u"]
    score_ctx = np.flatnonzero(halves[::ctx] == measure.SCORE)
    pool = dict(ctx=score_ctx[:100], acts=acts.view(-1, ctx, acts.shape[1])[score_ctx[:100]])
    prev = np.concatenate([[eot], tokens[:-1]])
    text = explainer.HeldOut(tokens, prev, labels, vocab + 1, ctx)
    return top_random.score_units(range(acts.shape[1]), s, pool, text, n_top=20, n_random=20, max_entries=max_entries,
                                  sizes=sizes)


def test_simulation_scores_a_token_detector_near_one_and_noise_near_zero():
    vocab, eot = 40, 40
    tokens = synthetic_tokens(16384, vocab, eot)
    t = torch.from_numpy(tokens)
    prev = torch.cat([torch.tensor([eot]), t[:-1]])
    g = torch.Generator().manual_seed(1)
    acts = torch.stack([2.0 * (t == 7),                                    # copies one token's indicator
                        torch.rand(len(t), generator=g) * (torch.rand(len(t), generator=g) < 0.2),  # noise
                        1.5 * ((prev == 3) & (t == 5)) + 0.5 * (t == 9)], 1).float()  # a bigram and a token
    token, noise, bigram = score_synthetic(acts, tokens, eot, vocab)
    assert token["score"] > 0.99 and bigram["score"] > 0.99
    assert abs(noise["score"]) < 0.15
    assert token["single_token"] and not noise["single_token"] and not bigram["single_token"]
    expl = token["explanation"]
    assert len(expl["keys"]) <= 10 and (vocab + 1) ** 2 + 7 in expl["keys"].tolist()
    assert expl["values"][expl["keys"].tolist().index((vocab + 1) ** 2 + 7)] == pytest.approx(2.0)


def test_explanation_prefers_the_specific_pattern_and_respects_max_entries():
    vocab = 10
    prev = np.array([1, 2, 1, 2, 3, 3, 4, 5])
    cur = np.array([7, 7, 7, 7, 8, 8, 9, 6])
    acts = np.array([3.0, 0.0, 3.0, 0.0, 1.0, 1.0, 0.0, 0.5])
    none = np.zeros((len(cur), 0), bool)
    expl = explainer.explain(prev, cur, none, acts, max_entries=2, vocab=vocab)
    pred = explainer.simulate(expl, prev, cur, none, vocab)
    assert len(expl["keys"]) == 2
    assert pred[0] == 3.0 and pred[1] < 3.0  # "7 after 1" fires, "7 after 2" does not
    assert stats.pearson(pred, acts) > 0.9
    assert stats.pearson([1, 1, 1], [1, 2, 3]) == 0.0  # a constant prediction carries no information


def test_a_context_unit_is_explained_by_its_predicate_and_not_by_tokens():
    """A unit that fires on every token inside comments, whatever the token: one context row says it all;
    a token table of the same size cannot (the comments' tokens are those of the rest of the text)."""
    vocab, eot = 200, 200
    tokens = synthetic_tokens(16384, vocab, eot)
    rng = np.random.default_rng(2)
    labels = np.zeros((len(tokens), len(predicates.PREDICATES)), bool)
    for start in rng.choice(len(tokens) - 12, 700, replace=False):   # comments of 3 to 11 tokens
        labels[start:start + rng.integers(3, 12), predicates.PREDICATES.index("comment")] = True
    labels[:, predicates.PREDICATES.index("string")] = rng.random(len(tokens)) < 0.3   # a predicate beside the point
    acts = torch.from_numpy(1.0 * labels[:, [predicates.PREDICATES.index("comment")]]).float()
    (contexts,) = score_synthetic(acts, tokens, eot, vocab, labels=labels, max_entries=5, sizes=(1,))
    (token_only,) = score_synthetic(acts, tokens, eot, vocab, labels=labels[:, :0], max_entries=5)
    comment = explainer.context_key(predicates.PREDICATES.index("comment"), vocab + 1)
    prev = np.concatenate([[eot], tokens[:-1]])
    assert explainer.explain(prev, tokens, labels, acts[:, 0].numpy(), 5, vocab + 1)["order"][0] == comment
    assert contexts["score"] > 0.99 and contexts["by_size"][1] > 0.99   # the comment row alone scores it
    assert comment in contexts["explanation"]["keys"] and not contexts["single_token"]
    assert token_only["score"] < 0.5 and len(token_only["explanation"]["keys"]) == 5


def test_pair_rows_override_token_rows_override_predicate_rows():
    vocab = 10
    ctx = lambda p: explainer.context_key(p, vocab)
    keys = np.array([1 * vocab + 7, vocab * vocab + 7, ctx(0), ctx(2)])   # 7 after 1; 7; predicate 0; predicate 2
    prev = np.array([1, 2, 2, 2, 2, 3])
    cur = np.array([7, 7, 8, 8, 8, 9])
    labels = np.array([[1, 0, 1], [1, 1, 1], [1, 0, 1], [0, 0, 1], [0, 1, 0], [0, 0, 0]], bool)
    # pair row on the first token, token row on the second (predicates 0 and 2 hold on both), predicate 0
    # over predicate 2 on the third; predicate 2 alone on the fourth; predicate 1 is no row; nothing on the last
    assert explainer.match(keys, prev, cur, labels, vocab).tolist() == [0, 1, 2, 3, -1, -1]
    acts = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    for chosen in (keys, keys[::-1]):   # whichever row was chosen first
        expl = explainer.table(chosen, prev, cur, labels, acts, vocab)
        assert explainer.simulate(expl, prev, cur, labels, vocab).tolist() == [5.0, 4.0, 3.0, 2.0, 0.5, 0.5]


def test_context_labels_read_python_and_skip_other_text(tiny_data):
    """With the real BPE: a token is labelled when any character it covers is inside the span."""
    enc = load_tokenizer(os.path.join(tiny_data, "data"))
    code = 'def f(x):\n    """Doc."""\n    return "s" + 0x1F  # note\n'
    ids = [enc.eot_token] + enc.encode_ordinary(code) + [enc.eot_token] + enc.encode_ordinary("it's 42 (")
    labels = predicates.context_labels(np.array(ids), len(ids), enc, enc.eot_token)
    text = {p: "".join(enc.decode([i]) for i, row in zip(ids, labels) if row[j])
            for j, p in enumerate(predicates.PREDICATES)}
    assert text["docstring"].strip() == '"""Doc."""' and text["comment"].strip() == "# note"
    assert text["string"].strip() == '"s"' and text["number"].replace(" ", "") == "0x1F42"
    assert text["keyword"].split() == ["def", "return"] and "f" in text["identifier"] and "x" in text["identifier"]
    second = len(ids) - len(enc.encode_ordinary("it's 42 ("))
    python = [predicates.PREDICATES.index(p) for p in ("comment", "docstring", "string", "identifier", "keyword")]
    assert not labels[second:, python].any()  # the second document is not Python: no Python labels


class CharEncoding:
    """A tokenizer whose tokens are characters (code points), so labels are checked character by character."""

    def decode_with_offsets(self, ids):
        return "".join(map(chr, ids)), list(range(len(ids)))


def labelled_runs(doc):
    """{predicate: the runs of consecutive characters of doc on which it holds}."""
    ids = [0] + [ord(c) for c in doc]   # 0 (NUL) ends the previous document
    labels = predicates.context_labels(np.array(ids), len(ids), CharEncoding(), 0)[1:]
    out = {}
    for j, name in enumerate(predicates.PREDICATES):
        edges = np.diff(np.concatenate([[0], labels[:, j].astype(int), [0]]))
        out[name] = [doc[a:b] for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]
    return out


PREDICATE_CASES = [  # a document and the runs of each predicate on it; every predicate not named holds nowhere
    ('import re\n# see https://x.org/a?b=1\ndef f(x):\n    """Doc >>> no."""\n    match = 0x1F + 12\n'
     '    return "s\\x41" if x else None\n',
     dict(comment=["# see https://x.org/a?b=1"], docstring=['"""Doc >>> no."""'], string=['"s\\x41"'],
          number=["1", "0x1F", "12"], identifier=["re", "f", "x", "x"],
          keyword=["import", "def", "match", "return", "if", "else", "None"], url=["https://x.org/a?b=1"],
          hexadecimal=["0x1F", "\\x41"])),
    # not Python (it does not parse): no comment, identifier or keyword, though it has # and words
    ("From: Ann Lee\nX-Mailer: mutt\nTo whom it may concern: hi # not a comment\n"
     "see http://a.b/c, www.x.org and ftp://no.pe\n",
     dict(email_header=["From: Ann Lee", "X-Mailer: mutt"], url=["http://a.b/c,", "www.x.org"])),
    ("id deadbeef01 cafe 0123456789 \\xff\\x00 0xFF ok\n",
     dict(number=["0123456789", "0xFF"], hexadecimal=["deadbeef01", "\\xff\\x00", "0xFF"])),
    ("data=QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo= abcdefghijklmnopqrstuvwxyzABCD QUJD1234\n",
     dict(base64=["QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="])),
    ("'\\N{LATIN SMALL LETTER A}' is GREEK CAPITAL LETTER OMEGA, not LATIN Small or GREEK ALPHA\n",
     dict(unicode_name=["\\N{LATIN SMALL LETTER A}", "GREEK CAPITAL LETTER OMEGA"])),
    ("café Ωμέγα Жук שלום عربي かな 漢字 한글 ＡＢ — ☃\n",
     dict(latin_extended=["é"], greek=["Ωμέγα"], cyrillic=["Жук"], hebrew_arabic=["שלום", "عربي"],
          cjk=["かな", "漢字", "한글", "ＡＢ"], other_non_ascii=["—", "☃"])),
    ("Title\n=====\nUse :func:`len` and ``x + 1``.\n\n.. note::\n   Hi.\n-- not\n",
     dict(number=["1"], rest_markup=["=====", ":func:`len`", "``x + 1``", ".. note::"])),
    ('<p class="x">a &amp; b &#39; c</p> 3 < 4 and &nope\n',
     dict(number=["39", "3", "4"], html_markup=['<p class="x">', "&amp;", "&#39;", "</p>"])),
    ("Copyright (c) 2001 PSF.\nThis is fine.\nTHE SOFTWARE IS PROVIDED WITHOUT WARRANTY.\nLicensed under MIT\n",
     dict(number=["2001"], license=["Copyright (c) 2001 PSF.", "THE SOFTWARE IS PROVIDED WITHOUT WARRANTY.",
                                    "Licensed under MIT"])),
    ("Example:\n    >>> f(1)\n    2\n    ... more\n    >>>no\n",
     dict(number=["1", "2"], doctest=[">>> f(1)", "... more"])),
]


@pytest.mark.parametrize("doc,expected", PREDICATE_CASES)
def test_each_predicate_holds_exactly_where_it_should(doc, expected):
    assert set(expected) <= set(predicates.PREDICATES)
    assert labelled_runs(doc) == {name: expected.get(name, []) for name in predicates.PREDICATES}


def test_precision_recall_and_the_specialists_union():
    """A predicate on tokens 0-199, split between two specialists; a broad unit that covers it all and
    more; a unit that fires half on it (a specialist, just); one that fires only on it but too rarely."""
    N = 1024
    labels = np.zeros((N, 2), bool)
    labels[:200, 0] = True
    labels[600:700, 1] = True                          # a predicate no unit fires on
    fires = np.zeros((N, 5), bool)
    fires[:100, 0] = fires[100:200, 1] = True          # each half of the predicate
    fires[:600, 2] = True                              # all of it, and 400 tokens more
    fires[150:160, 3] = fires[300:310, 3] = True       # 10 on it, 10 off it
    fires[:measure.MIN_ACTIVE - 1, 4] = True            # only on it, but on too few tokens
    acts = torch.from_numpy(fires * np.linspace(1, 2, N)[:, None]).float()
    s = measure.measure(batches_of(acts, 128), N, analyze.window_halves(N, 64), labels, 16, k=(2, 2))["u"]
    assert s.proxy_fired[:, 0].tolist() == [100, 100, 200, 10, measure.MIN_ACTIVE - 1]
    precision, recall = specificity.precision_recall(s)
    assert precision[:, 0].tolist() == [1.0, 1.0, 200 / 600, 0.5, 1.0]
    assert recall[:, 0].tolist() == [0.5, 0.5, 1.0, 10 / 200, (measure.MIN_ACTIVE - 1) / 200]
    assert precision[:, 1].sum() == recall[:, 1].sum() == 0
    best = specificity.best_f1(s)
    assert best["units"][0] == 0 and best["f1"][0] == pytest.approx(2 / 3)   # F1 0.5 for the broad unit
    assert (best["precision"][0], best["recall"][0]) == (1.0, 0.5)
    members = specificity.specialists(s)
    assert members[:, 0].tolist() == [True, True, False, True, False] and not members[:, 1].any()
    union = sum(specificity.union_counts(a["u"], torch.from_numpy(labels[start:start + len(a["u"])]), members)
                for start, a in batches_of(acts, 100))
    assert union.tolist() == [[210, 0], [200, 0]]      # fired on 0-199 and 300-309: precision 200/210, recall 1


def test_ultralow_cluster_is_found_only_when_there_is_one():
    rng = np.random.default_rng(0)
    main = 10 ** rng.normal(-2.5, 0.4, 900)
    low = 10 ** rng.normal(-5.5, 0.2, 100)
    found = analyze.ultralow_cluster(np.concatenate([main, low, np.zeros(20)]))
    assert found is not None and abs(found["members"].sum() - 100) <= 3 and not found["members"][-20:].any()
    assert analyze.ultralow_cluster(np.concatenate([main, np.zeros(20)])) is None
    dense_pair = 10 ** np.concatenate([rng.normal(-1, 0.1, 500), rng.normal(-0.5, 0.1, 500)])
    assert analyze.ultralow_cluster(dense_pair) is None  # two modes, but not orders of magnitude apart
    skewed = 10 ** np.concatenate([rng.normal(-3.8, 0.9, 2200), rng.normal(-2.2, 0.55, 1900)])
    assert analyze.ultralow_cluster(skewed) is None  # one mode with a long low tail (our default run's shape)


def identity_sae_checkpoint(out, sae_dir):
    """An "SAE" whose 512 features are the 512 neurons: it reconstructs the activations exactly."""
    _, lm_ckpt = load_lm(out)
    s = sae_lib.SAE(sae_lib.SAEConfig(d_in=512, n_features=512))
    with torch.no_grad():
        s.W_enc.copy_(torch.eye(512))
        s.W_dec.copy_(torch.eye(512))
        s.b_enc.zero_()
        s.b_dec.zero_()
    path = os.path.join(out, sae_dir, "F512", "ckpt.pt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"config": {}, "sae_config": dataclasses.asdict(s.cfg), "sae": s.state_dict(), "history": [],
                "elapsed": 0.0, "seen": 0, "step": 0, "lm_dir": "lm", "lm_fingerprint": lm_fingerprint(lm_ckpt),
                "final": True}, path)


def test_identity_sae_recovers_all_of_the_loss(tiny_lm):
    identity_sae_checkpoint(tiny_lm, "sae_identity")
    cfg = small_config(tiny_lm, sae_dir="sae_identity", analysis_dir="analysis_identity")
    res = analyze.analyze(cfg, "losses")["losses"]
    neurons, identity = res["rows"]
    assert res["zero"] > res["clean"] + 0.05 and res["mean"] > res["clean"]
    assert identity["rec_zero"] == pytest.approx(1.0, abs=1e-4)
    assert identity["rec_mean"] == pytest.approx(1.0, abs=1e-4)
    assert identity["fvu"] < 1e-8 and identity["mse"] < 1e-8
    assert (identity["l0"], identity["dead"], identity["dense"]) == (neurons["l0"], neurons["dead"], neurons["dense"])


def test_report_builds_end_to_end(analysed_all):
    """analyze.py's every step, as `python analyze.py` runs them (conftest.py's analysed_all: 8,192 held-out
    tokens; its folder is the one the browser, steering and rating tests read)."""
    cfg, res = analysed_all
    folder = os.path.join(cfg.out, cfg.analysis_dir)
    report = open(os.path.join(folder, "report.md")).read()
    for needle in ("## Summary", "79%", "168", "## 4. Activation specificity", "(density.png)", "(interp.png)"):
        assert needle in report
    for png in ("density.png", "interp.png", "specificity.png"):
        assert os.path.getsize(os.path.join(folder, png)) > 10_000
    units = json.load(open(os.path.join(folder, "units.json")))
    assert len(units["features"]) > 0 and len(units["neurons"]) > 0
    assert all(len(u["explanation"]) <= cfg.max_entries and -1 <= u["score"] <= 1 for u in units["features"])
    n = res["interp"]["n"]
    assert len(res["interp"]["compare"]["features"]) == len(res["interp"]["compare"]["neurons"]) == n > 0
    curve = res["interp"]["summary"]["by_size"]
    assert list(curve) == list(analyze.SIZES) and curve[cfg.max_entries]["features"] == pytest.approx(
        res["interp"]["summary"]["features"]["all"]["median"])
    rec = res["losses"]["rows"][1]
    assert rec["loss"] < res["losses"]["zero"] and 0 < rec["fvu"] < 1
    sp = res["specificity"]
    assert sp["base_rate"][predicates.PREDICATES.index("number")] > 0 and 0 < len(sp["plotted"]) <= 6
    for j in sp["held"]:   # a specialists' union covers at least what its best member covers
        for kind in ("features", "neurons"):
            u, f = sp["specialists"][kind], sp["f1"][kind]
            assert 0 <= u["recall"][j] <= 1 and (u["count"][j] == 0) == np.isnan(u["precision"][j])
            if u["count"][j] and f["precision"][j] >= specificity.SPECIALIST:
                assert u["recall"][j] >= f["recall"][j] - 1e-12
    assert "| predicate | tokens where it holds | best feature (F1)" in report
    assert "`--explain contexts`" in report
    with pytest.raises(UserError, match="--explain"):
        analyze.analyze(dataclasses.replace(cfg, explain="words"), "density")
    # the random contexts, recomputed window by window, are the streaming pass's own activations
    run = analyze.load_run(cfg)
    model, s = run.model, run.saes[1024].sae
    again = measure.context_acts(model, run.tokens, np.array([0, 5, 130]), 32, {"f": s.encode})["f"]
    acts = s.encode(harvest(model, run.tokens, 160 * 32)[0])
    assert torch.allclose(again, acts.view(-1, 32, 1024)[[0, 5, 130]], atol=1e-5)
    # a step on its own reuses the streaming pass
    assert analyze.analyze(cfg, "density")["measure"].reused
    # summary.json holds the report's headline numbers
    summary = json.load(open(os.path.join(folder, "summary.json")))
    it = res["interp"]["summary"]
    assert summary["loss_recovered"] == {"zero_ablation": rec["rec_zero"], "mean_ablation": rec["rec_mean"]}
    assert (summary["l0"], summary["fvu"], summary["dead_fraction"]) == (rec["l0"], rec["fvu"], rec["dead"] / 1024)
    assert summary["interpretability"]["all"] == {
        "features_median": it["features"]["all"]["median"], "neurons_median": it["neurons"]["all"]["median"],
        "difference": it["median_diff"]["value"], "difference_ci": list(it["median_diff"]["ci"])}
    assert summary["interpretability"]["without_single_token"]["features_median"] == it["features"]["multi"]["median"]
    assert summary["interpretability"]["explain"] == "contexts" and "number" in summary["specificity"]
    number = summary["specificity"]["number"]
    j = predicates.PREDICATES.index("number")
    assert number["best_feature"]["unit"] == sp["f1"]["features"]["units"][j]
    assert number["specialist_neurons"]["count"] == sp["specialists"]["neurons"]["count"][j]
    rows = [r for kind in ("features", "neurons") for u in units[kind] for r in u["explanation"]]
    assert all((r["context"] in predicates.PREDICATES) == (r["token"] is None) for r in rows)
    assert any(r["context"] for r in rows)   # some units are explained by a context (47 rows of 7,554 here)
    assert all(isinstance(r[k], (int, float)) for r in res["losses"]["rows"] for k in ("l0", "mse", "fvu", "loss"))
    # the controlled comparisons: sparsified neurons at the features' density, grounding with its control
    k = res["measure"].sparse_k
    assert k == round(512 * rec["l0"] / 1024) and summary["matched_density"]["sparse_k"] == k
    sparse, neurons = res["measure"].stats["sparse_neurons"], res["measure"].stats["neurons"]
    assert sparse.fired.sum() <= min(k * run.n_tokens, neurons.fired.sum()) and (sparse.fired <= neurons.fired).all()
    h = harvest(run.model, run.tokens, 1024)[0]   # on each token, the k most active of the neurons that fire
    assert torch.equal((analyze.sparsify(h, k) > 0).sum(1), (h > 0).sum(1).clamp(max=k))
    for needle in ("### At matched density", "### At every activation level", "## 7. Grounded in the model"):
        assert needle in report
    g = summary["grounding"]
    assert abs(g["control"]["neurons"]["median"]) < 0.03 < g["model"]["neurons"]["median"]   # untrained: no agreement
    assert abs(g["model"]["features"]["null"]) < 0.03 and g["control_from"].startswith("the LM's initial weights")


def test_a_copied_run_reuses_its_measurement(tiny_sae, tmp_path):
    """measure.pt is keyed by the SAEs' paths under --out, not by absolute paths."""
    cfg = small_config(tiny_sae, analysis_dir="analysis_copied")
    analyze.analyze(cfg, "density")
    copy = str(tmp_path / "copy")
    shutil.copytree(tiny_sae, copy, ignore=shutil.ignore_patterns("analysis*", "compare", "*_b", "*_random", "*sweep"))
    shutil.copytree(os.path.join(tiny_sae, cfg.analysis_dir), os.path.join(copy, cfg.analysis_dir))
    assert analyze.analyze(dataclasses.replace(cfg, out=copy), "density")["measure"].reused
    # ...but an SAE retrained in place (same path, same step count, other weights) is measured anew
    path = os.path.join(copy, "sae", "F1024", "ckpt.pt")
    ckpt = torch.load(path, weights_only=False)
    ckpt["sae"]["b_enc"] = ckpt["sae"]["b_enc"] + 0.01
    atomic_save(ckpt, path)
    assert not analyze.analyze(dataclasses.replace(cfg, out=copy), "density")["measure"].reused


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_whole_analysis_runs_on_cuda(tiny_sae):
    cpu = analyze.analyze(small_config(tiny_sae, analysis_dir="analysis_cpu"))
    res = analyze.analyze(small_config(tiny_sae, device="cuda", analysis_dir="analysis_cuda"))
    for name, s in res["measure"].stats.items():
        ref = cpu["measure"].stats[name].fired
        # cuBLAS and the CPU round differently: a pre-activation within rounding of 0 may flip, so the
        # firing counts agree to a few tokens in a thousand, not bit for bit
        assert s.fired.device.type == "cpu" and (s.fired - ref).abs().sum() <= 1e-3 * ref.sum() + 2
    assert res["losses"]["rows"][1]["rec_zero"] == pytest.approx(cpu["losses"]["rows"][1]["rec_zero"], abs=1e-3)
    assert res["browser"]["units"] == cpu["browser"]["units"]
    assert [r["feature"] for r in res["steering"]["rows"]] == [r["feature"] for r in cpu["steering"]["rows"]]


def test_report_wording_follows_the_numbers():
    # a predicate that never holds (no Python in the corpus) is left out, and said to be
    names, P = predicates.PREDICATES, len(predicates.PREDICATES)
    j = names.index("number")
    on = np.arange(P) == j
    best = dict(units=np.arange(P), r=0.4 * on, mass=0.5 * on)
    f1 = dict(units=np.arange(P), precision=np.full(P, 0.9), recall=np.full(P, 0.25), f1=np.full(P, 0.39))
    features = dict(count=3 * on, precision=np.where(on, 0.8, np.nan), recall=0.95 * on)
    neurons = dict(count=0 * on, precision=np.full(P, np.nan), recall=0.0 * on)   # no specialist neuron
    s = dict(names=names, base_rate=0.02 * on, best=dict(features=best, neurons=best), held=[j],
             f1=dict(features=f1, neurons=f1), specialists=dict(features=features, neurons=neurons))
    table = specificity.specificity_markdown(s)
    assert "| number |" in table and "| comment |" not in table and "#0: 0.00" not in table
    pr = specificity.precision_recall_markdown(s)
    assert f"| number | 2% | #{j}: 0.90 / 0.25 | 3: 0.80 / 0.95 | #{j}: 0.90 / 0.25 | none |" in pr
    assert "Left out: comment, docstring, string, identifier," in pr and "| comment |" not in pr
    summary = json.loads(json.dumps(specificity_summary(s), allow_nan=False))
    assert list(summary) == ["number"] and summary["number"]["base_rate"] == 0.02
    assert summary["number"]["specialist_features"] == dict(count=3, precision=0.8, recall=0.95)
    assert summary["number"]["specialist_neurons"] == dict(count=0, precision=None, recall=0.0)
    assert summary["number"]["best_neuron"] == dict(unit=j, precision=0.9, recall=0.25, f1=0.39)
    assert report.best_proxy(s).startswith(f"feature #{j} with 'number': 0.40")
    assert report.best_proxy(dict(s, held=[])) == "none of the predicates holds on these tokens"
    # an explanation row reads as a context or as tokens, wherever it is shown
    assert pattern(dict(prev=None, token=None, context="comment"), shown) == "⟨comment⟩"
    assert pattern(dict(prev="a", token="b", context=None), shown) == "`a` → `b`"
    assert pattern(dict(prev=None, token="b"), shown) == "`b`"
    # which ablation is stricter is read off the losses
    assert "stricter" in report.mean_ablation_word(dict(zero=5.0, mean=4.0))
    assert "more lenient" in report.mean_ablation_word(dict(zero=4.0, mean=5.0))
    # a checkpoint that is not final says why
    assert report.sae_state_note({"final": True}) == report.sae_state_note({"status": "final"}) == ""
    assert "crashed" in report.sae_state_note({"final": False, "status": "crashed"})
    assert "still running" in report.sae_state_note({"final": False})
    assert "still running" in report.sae_state_note({"final": False, "status": "running"})
    assert "snapshots" in report.sae_state_note({"final": False, "status": "snapshot"})


def test_no_import_cycles_among_the_projects_modules():
    """Every import, at the top or inside a function, points one way; no private name crosses files.
    The core's files (the top level) and the lab's (lab/) are one graph: the lab may import the core,
    the core calls the lab only at its edges, and no path comes back."""
    files = {f[:-3]: f for f in os.listdir(ROOT) if f.endswith(".py")}
    files.update({f"lab.{f[:-3]}": os.path.join("lab", f) for f in os.listdir(os.path.join(ROOT, "lab"))
                  if f.endswith(".py") and f != "__init__.py"})
    graph = {}
    for name, path in files.items():
        tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
        graph[name] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom) and node.module == "lab":
                graph[name] |= {f"lab.{a.name}" for a in node.names if f"lab.{a.name}" in files}
            elif isinstance(node, ast.ImportFrom) and node.module in files:
                graph[name].add(node.module)
                assert not any(a.name.startswith("_") for a in node.names), (name, node.module)
    assert graph["analyze"] and graph["lab.compare"]  # (the graph is read: imports were found)
    done, path = set(), []

    def visit(m):
        assert m not in path, f"import cycle: {' -> '.join(path[path.index(m):] + [m])}"
        if m in done:
            return
        path.append(m)
        for n in graph[m]:
            visit(n)
        path.pop()
        done.add(m)

    for m in sorted(files):
        visit(m)


def test_missing_inputs_name_the_script_to_run(tiny_lm, tmp_path):
    with pytest.raises(UserError, match="data.py"):
        analyze.analyze(small_config(str(tmp_path)))
    with pytest.raises(UserError, match="train_sae.py"):
        analyze.analyze(small_config(tiny_lm, sae_dir="no_such_sae"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "analyze.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "data.py" in r.stderr



def test_another_pairs_analysis_never_writes_into_this_ones_folder(tiny_sae):
    """An analysis folder holds one LM/SAE pair's report, figures and cache: another pair is refused there
    in one line naming the flag, and gets its own folder."""
    identity_sae_checkpoint(tiny_sae, "sae_pair_other")
    analyze.analyze(small_config(tiny_sae, analysis_dir="analysis_pair"), "density")
    before = open(os.path.join(tiny_sae, "analysis_pair", "density.png"), "rb").read()
    with pytest.raises(UserError, match=r"analysis_pair holds the analysis of --lm-dir lm --sae-dir sae: give this "
                                        r"pair a folder of its own, e.g. --analysis-dir analysis_sae_pair_other"):
        analyze.analyze(small_config(tiny_sae, sae_dir="sae_pair_other", analysis_dir="analysis_pair"), "density")
    assert open(os.path.join(tiny_sae, "analysis_pair", "density.png"), "rb").read() == before
    analyze.analyze(small_config(tiny_sae, sae_dir="sae_pair_other", analysis_dir="analysis_sae_pair_other"), "density")


def test_a_sample_too_small_to_mean_much_says_so(tiny_sae, capsys):
    analyze.analyze(small_config(tiny_sae, tokens=300, analysis_dir="analysis_300"), "density")
    assert "warning: 256 held-out tokens (--tokens 300) are too few for the loss recovered" in capsys.readouterr().out


def test_the_interp_figure_draws_a_median_that_lies_outside_its_interval(tmp_path):
    """A percentile interval need not hold the median (a few units, documents resampled: it happens on
    one thread's tiny runs); the figure must still be drawn, not refused by matplotlib."""
    units = [dict(score=s, single_token=False) for s in (0.2, 0.5, 0.7)]
    by_size = {e: {"features": 0.5, "features_ci": [0.55, 0.8], "neurons": 0.4, "neurons_ci": [0.1, 0.35]}
               for e in (1, 5)}
    rows = [dict(lo=0.001, hi=0.01, features=(6, 0.5), neurons=(6, 0.4))]
    path = tmp_path / "interp.png"
    figures.plot_interp({"features": units, "neurons": units}, dict(by_size=by_size, by_density=rows), 5, str(path))
    assert path.stat().st_size > 0
