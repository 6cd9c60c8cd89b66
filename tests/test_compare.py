import glob
import json
import os
import shutil

import numpy as np
import pytest
import torch

from lab import compare
import data
from lab import matching, universality
import sae as sae_lib
import train_lm
from lab.plumbing import UserError, atomic_save
from lab.stats import document_weights
from lab.trained import load_lm, load_sae
from model import ModelConfig, Transformer


def sparse_acts(n_tokens, n_units, density=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    on = torch.rand(n_tokens, n_units, generator=g) < density
    return torch.rand(n_tokens, n_units, generator=g) * on


def correlations(a, b, chunk=1000):
    c = matching.Correlator(a.shape[1], b.shape[1])
    for i in range(0, len(a), chunk):
        c.add(a[i:i + chunk], b[i:i + chunk])
    return c.correlations()


def test_identical_units_correlate_perfectly_and_permuted_copies_match_back():
    a = sparse_acts(5000, 64)
    best, idx = matching.best_matches(correlations(a, a))
    assert torch.allclose(best, torch.ones(64), atol=1e-5) and torch.equal(idx, torch.arange(64))
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    best, idx = matching.best_matches(correlations(a, a[:, perm]))
    assert torch.allclose(best, torch.ones(64), atol=1e-5)
    assert torch.equal(perm[idx], torch.arange(64))  # unit i of a found at its place in the copy


def test_correlation_matches_numpy_on_dense_and_sparse_units():
    a, b = sparse_acts(3000, 10), torch.randn(3000, 7).relu()  # sparse features vs dense neurons
    ours = correlations(a, b)
    ref = torch.corrcoef(torch.cat([a, b], 1).T)[:10, 10:]
    assert torch.allclose(ours, ref, atol=1e-5)
    independent = correlations(sparse_acts(20000, 5, seed=2), sparse_acts(20000, 5, seed=3))
    assert independent.abs().max() < 0.05
    assert correlations(torch.zeros(100, 3), b[:100]).abs().max() == 0  # a dead unit: 0, not NaN


def test_the_sparse_cross_sums_equal_the_dense_product_on_fresh_inputs():
    """Both paths of add_cross_sums (pairs of units firing together; the dense product) against a.T @ b."""
    for seed, (n_a, n_b, density) in enumerate(((300, 200, 0.02), (64, 512, 0.1), (40, 30, 0.9), (50, 50, 0.0))):
        a, b = sparse_acts(700, n_a, density, seed), sparse_acts(700, n_b, density, seed + 100)
        # cost 0: always the pairs (limit 0: indexed in 64 bits); 10^9: always the product
        for cost, limit in ((0, 2 ** 31), (0, 0), (10 ** 9, 2 ** 31)):
            sab = torch.ones(n_a, n_b)
            saved = matching.PAIR_COST, matching.INT32_INDEX_LIMIT
            matching.PAIR_COST, matching.INT32_INDEX_LIMIT = cost, limit
            try:
                matching.add_cross_sums(sab, a, b)
            finally:
                matching.PAIR_COST, matching.INT32_INDEX_LIMIT = saved
            assert torch.allclose(sab, 1 + a.T @ b, atol=1e-4), (seed, cost, limit)


def test_acts_sums_and_firing_counts_equal_the_dense_ones_on_fresh_inputs():
    x = sparse_acts(500, 40, 0.1, seed=7) - 0.3 * sparse_acts(500, 40, 0.05, seed=8)   # some negative, as GELU's
    acts = matching.Acts(x)
    assert torch.allclose(acts.sums[0], x.sum(0).double(), atol=1e-5)
    assert torch.allclose(acts.sums[1], x.pow(2).sum(0).double(), atol=1e-5)
    assert torch.equal(acts.fired, (x > 0).sum(0))


def test_the_sparse_encoder_gives_the_saes_features(tiny_sae):
    """compare.features (the fused step's encoder: bf16 finds the active features where that is fast,
    float32 gives their values) against sae.encode, dense float32, on the LM's activations."""
    lm, _ = load_lm(tiny_sae, "lm")
    sae = load_sae(os.path.join(tiny_sae, "sae", "F1024", "ckpt.pt"))[0]
    tokens = data.load_tokens(os.path.join(tiny_sae, "data"), "val")
    h = lm.mlp_activations(data.windows(tokens, [0, 64, 128, 192], 64)).flatten(0, 1)
    with torch.no_grad():
        dense, sparse = sae.encode(h), universality.features(sae, h)
    assert sparse.shape == dense.shape and torch.equal(sparse.nonzeros[0], sparse.nonzeros[0].sort().values)
    # a pre-activation within bf16's rounding of 0 may be missed: only tiny values may differ
    assert (sparse.x - dense).abs().max() < 1e-2 * dense.max()
    assert (sparse.fired - (dense > 0).sum(0)).abs().sum() <= 1e-3 * (dense > 0).sum()
    rolled = sparse.rolled(70)
    assert torch.equal(rolled.x, sparse.x.roll(70, 0)) and torch.equal(rolled.nonzeros[0], rolled.nonzeros[0].sort().values)


def test_groups_add_up_and_resampling_a_group_measures_that_group_alone():
    a, b = sparse_acts(6000, 20, 0.1, seed=4), sparse_acts(6000, 15, 0.1, seed=5)
    b[:, 0] = a[:, 0] + 0.1 * b[:, 0]              # a pair that matches well everywhere
    b[3000:, 1] = a[3000:, 1]                      # one that matches only in the second half
    grouped = matching.Correlator(20, 15, groups=2)
    for i in range(0, 6000, 1000):
        grouped.add(a[i:i + 1000], b[i:i + 1000], group=i // 3000)
    assert torch.allclose(grouped.correlations(), correlations(a, b), atol=1e-5)
    rows, cols = torch.arange(20), torch.arange(15)
    draws = torch.tensor([[1, 1], [2, 0], [0, 2]])  # all the data; the first half twice; the second twice
    best_all, match, best = grouped.best_matches(rows, cols, draws)
    assert torch.allclose(best_all, best[0], atol=1e-6) and torch.equal(match, matching.best_matches(correlations(a, b))[1])
    for r, part in zip(best, (slice(None), slice(0, 3000), slice(3000, None))):
        assert torch.allclose(r, matching.best_matches(correlations(a[part], b[part]))[0], atol=1e-5)
    assert best[2, 1] > 0.99 and best[1, 1] < 0.5 and best[:, 0].min() > 0.9


def test_a_unit_silent_in_a_resample_does_not_pull_the_median_down():
    """16 groups of documents. 60 of model A's 100 units fire in one group only, each matching its
    partner in B almost exactly (r ~ 0.99); the other 40 fire everywhere and match at r ~ 0.7. The
    median is a rare unit's. A resample leaves out a rare unit's group a third of the time: scored 0
    there (the correlation of a constant), the resampled medians fall to the common units' 0.7;
    merely left out, the rare units are fewer than half of those left and the medians fall too.
    Filled from the unit's own resamples, the interval holds the estimate."""
    G, per, gen = 16, 400, torch.Generator().manual_seed(0)
    group = torch.arange(G * per) // per
    rare = (torch.rand(G * per, 60, generator=gen) < 0.2) & (group[:, None] == torch.arange(60) % G)
    a = torch.cat([rare * torch.rand(G * per, 60, generator=gen), sparse_acts(G * per, 40, 0.1, seed=1)], 1)
    b = a.clone()
    b[:, :60] *= 1 + 0.5 * torch.rand(G * per, 60, generator=gen)   # the rare units' partners: r ~ 0.99
    b[:, 60:] += sparse_acts(G * per, 40, 0.1, seed=2)                 # the common units' partners: r ~ 0.7
    corr = matching.Correlator(100, 100, groups=G)
    for g in range(G):
        corr.add(a[group == g], b[group == g], g)
    draws = torch.from_numpy(document_weights(np.random.default_rng(0), G, 400))
    units = torch.arange(100)
    best, _, filled, silent = universality.resampled_best(corr, units, units, draws, np.random.default_rng(1))
    zeros = corr.best_matches(units, units, draws)[2].numpy()           # the old code: 0 where silent
    assert best[:60].min() > 0.95 and 0.6 < best[60:].max() < 0.8 and np.median(best.numpy()) > 0.95
    assert 0.25 < silent[:, :60].mean() < 0.45 and not silent[:, 60:].any() and (zeros[silent] == 0).all()
    ci = lambda resampled: universality.median_ci(dict(best=best.numpy(), density=np.full(100, 0.01),
                                                       resampled=resampled))["ci"]
    assert ci(zeros)[1] < 0.8                                           # visibly biased: far below the estimate
    assert ci(np.where(silent, np.nan, zeros))[0] < 0.8                 # left out: the lower end falls as far
    assert 0.95 < ci(filled)[0] <= np.median(best.numpy()) <= ci(filled)[1] + 1e-6   # (equal groups: often equal)
    assert (filled[~silent] == zeros[~silent].astype(np.float64)).all()   # a unit that fires keeps its value


def test_a_clear_margin_needs_the_whole_interval_above_it_and_no_density_bin_against():
    rng = np.random.default_rng(0)
    def units(level, n=200, lo=1e-3, hi=1e-1):
        best = np.clip(level + 0.05 * rng.standard_normal(n), 0, 1)
        return dict(best=best, density=np.exp(rng.uniform(np.log(lo), np.log(hi), n)),
                    resampled=np.clip(best + 0.02 * rng.standard_normal((100, n)), 0, 1))
    assert universality.clear_margin(dict(features=units(0.7), neurons=units(0.45)))
    assert not universality.clear_margin(dict(features=units(0.52), neurons=units(0.45)))   # above 0, below +0.1
    # overall far ahead, but behind the neurons among the dense units
    features = units(0.7)
    dense = features["density"] >= 1e-2
    features["best"][dense] -= 0.5
    features["resampled"][:, dense] -= 0.5
    assert not universality.clear_margin(dict(features=features, neurons=units(0.3)))


def test_universality_windows_are_drawn_without_replacement_and_each_document_stays_in_one_group(tiny_lm):
    data_dir = os.path.join(tiny_lm, "data")
    meta = data.load_meta(data_dir)
    batches = universality.universality_windows(data_dir, 64, 64 * 60, 4, seed=0)
    assert [g for _, _, g in batches] == sorted(g for _, _, g in batches)          # group after group
    drawn = [(id(t), int(s), g) for t, starts, g in batches for s in starts]
    assert len(drawn) == 60 == len({(t, s) for t, s, _ in drawn})                   # no window twice
    splits = {id(t): t for t, _, _ in batches}
    assert len(splits) == 2 and all(s % 64 == 0 and s + 64 <= len(splits[t]) for t, s, _ in drawn)
    group_of = {}
    for t, s, g in drawn:  # a window's document: the end-of-text tokens before its start
        doc = (id(t), int((np.asarray(splits[t][:s + 1]) == meta["eot"]).sum()))
        assert group_of.setdefault(doc, g) == g
    every = universality.universality_windows(data_dir, 64, 0, 4, seed=0)
    assert sum(len(s) for _, s, _ in every) == sum(meta["tokens"][k] // 64 for k in ("train", "val"))


def test_a_permuted_copy_of_the_sae_is_matched_back_by_the_universality_pass(tiny_sae):
    lm, _ = load_lm(tiny_sae, "lm")
    sae = load_sae(os.path.join(tiny_sae, "sae", "F1024", "ckpt.pt"))[0]
    perm = torch.randperm(1024, generator=torch.Generator().manual_seed(3))
    copy = load_sae(os.path.join(tiny_sae, "sae", "F1024", "ckpt.pt"))[0]
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec"):
            getattr(copy, name).copy_(getattr(sae, name)[perm])
    batches = universality.universality_windows(os.path.join(tiny_sae, "data"), 64, 4096, 3, seed=1)
    u = universality.universality(universality.universality_pass(lm, lm, sae, copy, sae, batches, 3, 512), seed=0,
                             n_resamples=20)
    f = u["features"]
    assert np.allclose(f["best"], 1, atol=1e-4) and torch.equal(perm[f["match"]], f["units"])
    assert np.allclose(u["same LM"]["best"], 1, atol=1e-4) and np.allclose(f["resampled"], 1, atol=1e-4)


def test_decoder_cosines_identical_and_permuted():
    W = torch.randn(32, 16)
    cos = matching.decoder_cosines(W, 3 * W)
    assert torch.allclose(cos.diagonal(), torch.ones(32), atol=1e-6)
    perm = torch.randperm(32)
    best, idx = matching.best_matches(matching.decoder_cosines(W, W[perm]))
    assert torch.equal(perm[idx], torch.arange(32))


def test_a_feature_split_in_two_halves_is_found_as_the_parent_of_both():
    g = torch.Generator().manual_seed(0)
    d, n = 32, 4000
    small = torch.randn(8, d, generator=g)
    small /= small.norm(dim=1, keepdim=True)
    near = lambda v: v + 0.5 * torch.randn(d, generator=g) / d ** 0.5
    # the large dictionary: each small feature kept, except feature 3, split into two nearby
    # children (one takes the even tokens, one the odd), and feature 0, merely duplicated
    large = torch.cat([small[:3], small[4:], torch.stack([near(small[3]), near(small[3]), near(small[0])])])
    acts_small = sparse_acts(n, 8, density=0.1)
    half = torch.arange(n) % 2 == 0
    acts_large = torch.cat([acts_small[:, :3], acts_small[:, 4:], torch.stack(
        [acts_small[:, 3] * half, acts_small[:, 3] * ~half, acts_small[:, 0]], 1)], 1)
    parent_of = matching.nearest_parent(small, large)
    assert torch.equal(parent_of, torch.tensor([0, 1, 2, 4, 5, 6, 7, 3, 3, 0]))
    cover = matching.Coverage(8, 10)
    for i in range(0, n, 1000):
        cover.add(acts_small[i:i + 1000], acts_large[i:i + 1000], parent_of)
    coverage, by_child = cover.fractions(parent_of)
    assert torch.allclose(coverage, torch.ones(8)) and torch.allclose(by_child[7:9], torch.full((2,), 0.5), atol=0.05)
    families = matching.split_families(parent_of, matching.decoder_cosines(small, large),
                                      correlations(acts_small, acts_large), coverage, by_child)
    assert [f["parent"] for f in families] == [3, 0]   # the split first, the copy last
    assert sorted(families[0]["children"]) == [7, 8] and sorted(families[1]["children"]) == [0, 9]
    assert abs(families[0]["score"] - 0.5) < 0.05 and abs(families[1]["score"]) < 1e-6
    # children that fire on only part of the parent's tokens cover only that part
    partial = acts_large.clone()
    partial[: n // 2, 7:9] = 0
    cover = matching.Coverage(8, 10)
    cover.add(acts_small, partial, parent_of)
    expected = acts_small[n // 2:, 3].sum() / acts_small[:, 3].sum()
    assert abs(cover.fractions(parent_of)[0][3] - expected) < 1e-5


def test_stage_skips_finished_runs_and_resumes_interrupted_ones(tmp_path):
    calls = []
    path = str(tmp_path / "ckpt.pt")
    cfg = train_lm.TrainConfig(out=str(tmp_path))
    compare.stage("x", path, calls.append, cfg)
    torch.save({"final": False}, path)
    compare.stage("x", path, calls.append, cfg)
    torch.save({"final": True}, path)
    compare.stage("x", path, calls.append, cfg)
    assert [c.resume for c in calls] == [False, True]


def test_the_whole_experiment_on_the_tiny_run(tiny_sae, tmp_path, capsys):
    """Model B is model A's copy here, so every alive unit must find itself (r = 1); the control is
    model A's exact initialisation; the sweep trains; a second run redoes nothing."""
    # on a copy of the main run: the new runs stay out of the session's folder, where an analysis made
    # after this test would take lm_random for its grounding control
    out = str(tmp_path / "out")
    for folder in ("data", "lm", "sae"):
        shutil.copytree(os.path.join(tiny_sae, folder), os.path.join(out, folder))
    shutil.copytree(os.path.join(out, "lm"), os.path.join(out, "lm_b"))
    shutil.copytree(os.path.join(out, "sae"), os.path.join(out, "sae_b"))
    # 2,048 held-out tokens for the knob and the control's two analyses: the control scores every alive
    # unit of both models whatever the number of tokens, so more tokens only make it slower
    cfg = compare.CompareConfig(out=out, device="cpu", sizes=[64, 128, 256], sweep_activations=64 * 1024,
                                tokens=2048, universality_tokens=8192, groups=4, pairs=3, families=2, n_units=64)
    res = compare.main(cfg)
    u = res["universality"]
    assert len(u["features"]["best"]) > 100 and np.allclose(u["features"]["best"], 1, atol=1e-4)
    assert torch.equal(u["features"]["match"], u["features"]["units"])
    assert np.allclose(u["neurons"]["best"], 1, atol=1e-4)
    assert np.allclose(u["features"]["resampled"], 1, atol=1e-4)  # identical on every resample too
    assert u["features"]["chance"] < 0.8 and u["neurons"]["chance"] < 0.8   # the same units on other tokens
    # the control: never trained, model A's own initialisation (seed 0)
    lm_a = torch.load(os.path.join(out, "lm", "ckpt.pt"), weights_only=False)
    rnd = torch.load(os.path.join(out, "lm_random", "ckpt.pt"), weights_only=False)
    torch.manual_seed(lm_a["config"]["seed"])
    init = Transformer(ModelConfig(**lm_a["model_config"])).state_dict()
    assert rnd["step"] == 0 and all(torch.equal(init[k], v) for k, v in rnd["model"].items())
    for sae_dir in ("sae_random", "sae_sweep"):
        assert os.path.exists(os.path.join(out, sae_dir, "F256" if sae_dir == "sae_sweep" else "F1024", "ckpt.pt"))
    rows = res["knob"]["rows"]
    assert [r["size"] for r in rows] == [64, 128, 256]
    assert all(0 < r["fvu"] < 1 and r["l0"] > 0 and 0 <= r["dead"] < 1 and r["seen"] == 64 * 1024 for r in rows)
    assert all(r["recovered"] > 0 for r in rows)   # better than zero-ablating the neurons
    report = open(os.path.join(out, "compare", "report.md")).read()
    for figure in ("universality.png", "control.png", "knob.png"):
        assert f"({figure})" in report and os.path.getsize(os.path.join(out, "compare", figure)) > 10_000
    assert report.count("| A/") == 3 and "random weights" in report and "a second SAE on A" in report
    summary = json.load(open(os.path.join(out, "compare", "summary.json")))["universality"]
    for name, kind in (("features", "features"), ("neurons", "neurons"), ("same_lm_features", "same LM")):
        assert summary[name]["median"] == float(np.median(u[kind]["best"])) and summary[name]["n"] == len(u[kind]["best"])
    assert summary["features"]["ci"][0] <= summary["features"]["median"] <= summary["features"]["ci"][1]
    assert summary["features"]["silent_resamples"] == u["features"]["silent"] and 0 <= u["neurons"]["silent"] < 0.01
    assert sum(b.get("n", 0) for b in summary["features"]["by_density"]) <= summary["features"]["n"]
    assert summary["features_minus_neurons"]["value"] == pytest.approx(0, abs=1e-4)
    assert summary["features_minus_neurons"]["clear_margin"] is False and "clear margin" in open(
        os.path.join(out, "compare", "report.md")).read()
    # the measurement's results are CPU tensors, wherever it ran
    assert all(c.device.type == "cpu" for c in res["match"]["corr"].values())
    assert all(t.device.type == "cpu" for d in (res["match"]["fired"], res["match"]["mass"], res["mass"])
               for t in d.values())
    # a second run finds every stage done and trains nothing
    capsys.readouterr()
    stamps = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(out, "*", "**", "ckpt.pt"), recursive=True)}
    compare.run_stages(cfg)
    printed = capsys.readouterr().out
    assert printed.count(": done (") == 7 and "training" not in printed
    assert stamps == {p: os.path.getmtime(p) for p in stamps}


def test_the_sweep_sees_the_main_saes_activations_unless_told_otherwise(tiny_sae, monkeypatch):
    """Each stage's run as compare.py would start it: the sweep trains every size on as many
    activations as the main SAE saw, or on --sweep-activations, or for --sweep-minutes."""
    runs = {}
    monkeypatch.setattr(compare, "stage", lambda name, path, train, run_cfg: runs.__setitem__(name, run_cfg))
    main_seen = torch.load(compare.main_sae_path(tiny_sae), weights_only=False)["seen"]
    for flags, (minutes, activations) in (({}, (None, main_seen)), ({"sweep_activations": 5000}, (None, 5000)),
                                          ({"sweep_minutes": 2.5}, (2.5, main_seen))):
        runs.clear()
        compare.run_stages(compare.CompareConfig(out=tiny_sae, sizes=[64, 128], **flags))
        sweep = runs["sweep [64, 128]"]
        assert sweep.sweep == [64, 128] and sweep.max_activations == activations
        assert minutes is None or sweep.max_minutes == minutes
        assert runs["SAE F1024 on lm_b"].max_activations == main_seen
    for flag, value in (("sweep_minutes", float("nan")), ("sweep_minutes", -1.0), ("sweep_activations", -5),
                        ("pairs", -1), ("families", 0), ("tokens", -1), ("sizes", [512]), ("sizes", ["x", 2])):
        with pytest.raises(UserError, match=f"^--{flag.replace('_', '-')} "):   # before any stage starts
            compare.CompareConfig(out=tiny_sae, **{flag: value})


def test_missing_main_run_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="train_lm.py"):
        compare.run_stages(compare.CompareConfig(out=str(tmp_path)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_matching_passes_on_cuda_equal_the_cpu_ones(tiny_sae):
    """The sums stay on the GPU; the results come back to the CPU, equal to the CPU's up to rounding."""
    tokens = np.asarray(data.load_tokens(os.path.join(tiny_sae, "data"), "val")[:4096]).astype(np.int64)
    batches = universality.universality_windows(os.path.join(tiny_sae, "data"), 64, 4096, 2, 0)
    results = {}
    for device in ("cpu", "cuda"):
        lm, _ = load_lm(tiny_sae, "lm", device)
        sae = load_sae(os.path.join(tiny_sae, "sae", "F1024", "ckpt.pt"), device)[0]
        small = sae_lib.SAE(sae_lib.SAEConfig(d_in=512, n_features=64)).to(device)
        u = universality.universality_pass(lm, lm, sae, sae, small, batches, 2, 512)
        results[device] = dict(compare.knob_pass(lm, {64: small, 1024: sae}, tokens, len(tokens), 512),
                               u_corr={k: c.correlations() for k, c in u["corr"].items()}, u_fired=u["fired"])
    cpu, gpu = results["cpu"], results["cuda"]
    # cuBLAS and the CPU round differently: a pre-activation within rounding of 0 may flip, which
    # moves a rare unit's numbers a lot, so all but a few units must agree, not bit for bit
    for fired in ("fired", "u_fired"):
        for k in cpu[fired]:
            assert (gpu[fired][k] - cpu[fired][k]).abs().sum() <= 1e-3 * cpu[fired][k].sum() + 2
    for corr in ("corr", "u_corr"):
        for k in cpu[corr]:
            assert gpu[corr][k].device.type == "cpu"
            assert torch.isclose(gpu[corr][k], cpu[corr][k], atol=1e-3).float().mean() >= 0.99, k
    for k in cpu["mass"]:
        assert torch.isclose(gpu["mass"][k], cpu["mass"][k], rtol=1e-4, atol=1e-4).float().mean() >= 0.99, k
    assert gpu["fvu"] == pytest.approx(cpu["fvu"], rel=1e-4)


def test_model_b_needs_its_own_seed_and_keeps_the_one_it_started_with(tiny_sae, tmp_path):
    """--seed-b equal to model A's seed would measure universality on one seed; an interrupted model B
    goes on only with its own seed, said in lab.compare's flags."""
    with pytest.raises(UserError, match=r"^--seed-b 0 is model A's own seed: .* e.g. --seed-b 1$"):
        compare.run_stages(compare.CompareConfig(out=tiny_sae, seed_b=0))
    out = str(tmp_path / "out")
    shutil.copytree(tiny_sae, out, ignore=shutil.ignore_patterns("analysis*", "compare", "*_b", "*_random", "*sweep"))
    b = torch.load(os.path.join(out, "lm", "ckpt.pt"), weights_only=False)
    b.update(final=False, status="running", config={**b["config"], "seed": 1})
    atomic_save(b, os.path.join(out, "lm_b", "ckpt.pt"))
    with pytest.raises(UserError, match=r"^model B in .*lm_b was started with --seed-b 1 \(now 2\): rerun with the "
                                        r"settings it was started with to go on with it, or delete"):
        compare.run_stages(compare.CompareConfig(out=out, seed_b=2))
