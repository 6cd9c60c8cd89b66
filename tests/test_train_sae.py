import os
import re
import shutil

import pytest
import torch

import data
import analyze
import train_sae
from lab import run as lab_run
from lab.plumbing import UserError, atomic_save
import train_lm
from tests.conftest import tiny_lm_config
from tests.test_train_lm import Crash, crash_at
from lab.trained import load_lm, load_sae
from model import harvest


def sae_config(out, **kw):
    base = dict(out=out, device="cpu", max_activations=24 * 1024, batch_size=1024, buffer_size=8 * 1024,
                eval_activations=4096, eval_every=8, n_features=1024, lr=1e-3, ckpt_minutes=0.0)
    base.update(kw)
    return train_sae.SAETrainConfig(**base)


def test_harvested_activations_are_the_models_own(tiny_lm):
    model, _ = load_lm(tiny_lm)
    tokens = data.load_tokens(os.path.join(tiny_lm, "data"), "val")
    acts, ids, pos = harvest(model, tokens, 200)  # 200 = 3 windows of 64, the last cut short
    T = model.cfg.block_size
    window = torch.from_numpy(tokens[T:2 * T].astype("int64"))[None]
    assert torch.equal(acts[T:2 * T], model.mlp_activations(window)[0])
    assert torch.equal(ids, torch.from_numpy(tokens[:200].astype("int64")))
    assert torch.equal(pos, torch.arange(200))
    seen = []
    model(window, mlp_hook=lambda layer, h: seen.append(h) or h)
    assert torch.allclose(acts[T:2 * T], seen[0][0])
    g = torch.Generator().manual_seed(0)
    acts_r, ids_r, pos_r = harvest(model, tokens, 128, generator=g)
    assert torch.equal(ids_r, torch.from_numpy(tokens[pos_r.numpy()].astype("int64")))


SNAPSHOTS = ["10240", "20480"]  # steps 10 (before the crash at 13, taken again after it) and 20


@pytest.fixture(scope="module")
def whole_2024(tiny_lm):
    """The uninterrupted run both kill-and-resume tests below compare against: sae_config's run (--recipe 2024,
    the default; 24 steps), with --snapshots at steps 10 and 20, which copy checkpoints aside and change
    nothing in the run (its weights, history and counters are those of the same run without them).
    Nothing writes into its folders after it finishes."""
    return train_sae.train(sae_config(tiny_lm, sae_dir="sae_2024_whole", recipe="2024", snapshots=SNAPSHOTS))[0]


def test_sae_training_learns_and_kill_resume_is_exact(tiny_lm, whole_2024):
    whole = whole_2024   # the crashed run below has no snapshots: compared with the flags it was started with
    evals = [h for h in whole["history"] if "mse" in h and not h.get("final")]
    assert evals[-1]["mse"] < 0.7 * evals[0]["mse"], (evals[0], evals[-1])
    with pytest.raises(Crash):  # dies at step 13: the checkpoint at the fill boundary (step 8) survives
        train_sae.train(sae_config(tiny_lm, sae_dir="sae_crash"), on_step=crash_at(13))
    crashed = torch.load(os.path.join(tiny_lm, "sae_crash", "F1024", "ckpt.pt"), weights_only=False)
    assert crashed["step"] == 8 and crashed["status"] == "crashed" and not crashed["final"]
    with pytest.raises(UserError, match=r"^--n-features 512: .* was trained with --n-features 1024; a resumed run"):
        train_sae.train(sae_config(tiny_lm, sae_dir="sae_crash", resume=True, n_features=512))
    # --resume alone (every other flag at its default) goes on with the run's own flags
    resumed = train_sae.train(train_sae.SAETrainConfig(out=tiny_lm, sae_dir="sae_crash", device="cpu", resume=True))[0]
    assert {**resumed["config"], "sae_dir": "sae_2024_whole", "resume": False, "ckpt_minutes": 0.0} == {
        **whole["config"], "snapshots": []}
    assert resumed["step"] == whole["step"] == 24
    for k, v in whole["sae"].items():
        assert torch.equal(v, resumed["sae"][k]), k
    assert whole["history"] == resumed["history"] and torch.equal(whole["since_fired"], resumed["since_fired"])


def test_2024_schedules_at_given_steps():
    """The L1 coefficient warms up over the first 5% of the steps, the learning rate decays to 0 over
    the last 20% (Anthropic's April 2024 update), as factors of --l1-coeff and --lr."""
    total = 1000
    steps = [0, 25, 50, 500, 800, 900, 1000]  # 0, 2.5%, 5%, 50%, 80%, 90%, 100%
    assert [train_sae.l1_warmup(s, total) for s in steps] == pytest.approx([0, 0.5, 1, 1, 1, 1, 1])
    assert [train_sae.lr_decay(s, total) for s in steps] == pytest.approx([1, 1, 1, 1, 1, 0.5, 0])


@pytest.mark.parametrize("recipe,activation", [("paper", "relu"), ("2024", "relu"), ("2024", "topk")])
def test_recipes_start_schedule_and_resample_as_described(tiny_lm, monkeypatch, recipe, activation):
    """What each step receives, watched from the inside: the SAE as the first step finds it, then
    every step's L1 coefficient and learning rate. 64 features are forced dead before the first
    step: the paper's recipe resamples them (its schedule at 40 steps: steps 1-4), 2024 never does."""
    seen, resampled, real_step, real_resample = [], [], train_sae.sae_step, train_sae.resample

    def watch(s, o, x, grads, l1_coeff, sync=None):
        if not seen:
            first.update({n: getattr(s, n).detach().clone() for n in ("W_enc", "W_dec", "b_enc", "b_dec")})
            with torch.no_grad():
                s.b_enc[:64] = -1e4
        seen.append((l1_coeff, o.param_groups[0]["lr"]))
        return real_step(s, o, x, grads, l1_coeff, sync)

    first = {}
    monkeypatch.setattr(train_sae, "sae_step", watch)
    monkeypatch.setattr(train_sae, "resample", lambda *a: resampled.append(a[4]) or real_resample(*a))
    ckpt = train_sae.train(sae_config(tiny_lm, sae_dir=f"sae_{recipe}_{activation}", recipe=recipe,
                                      activation=activation, max_activations=40 * 1024, n_features=256))[0]
    assert ckpt["config"]["recipe"] == recipe and len(seen) == 40
    l1s, lrs = zip(*seen)
    torch.testing.assert_close(first["W_dec"].norm(dim=1), torch.ones(256))
    assert (first["b_dec"] != 0).any()  # b_dec at the geometric median before the first step, both recipes
    b_enc = ckpt["sae"]["b_enc"][:64]
    if recipe == "paper":
        assert not torch.equal(first["W_enc"], 0.01 * first["W_dec"]) and (first["b_enc"] != 0).any()
        assert set(l1s) == {3e-3} and set(lrs) == {1e-3}
        assert resampled == [1, 2, 3, 4] and [h["step"] for h in ckpt["history"] if "resampled" in h] == [1, 2, 3, 4]
        assert next(h for h in ckpt["history"] if "resampled" in h)["resampled"] >= 64
        assert (b_enc > -1.0).all()  # re-aimed at an input, bias reset to 0
        return
    assert torch.equal(first["W_enc"], 0.01 * first["W_dec"]) and (first["b_enc"] == 0).all()
    if activation == "relu":  # 5% of 40 steps: 0, then 1/2, then the whole coefficient
        assert l1s == pytest.approx([0, 1.5e-3] + [3e-3] * 38)
    assert lrs == pytest.approx([1e-3] * 33 + [1e-3 * (40 - s) / 8 for s in range(33, 40)])  # 20%: steps 32-39
    assert resampled == [] and not any("resampled" in h for h in ckpt["history"])
    assert (b_enc == -1e4).all()  # dead from the first step, and kept dead: nothing resamples them
    assert (ckpt["since_fired"][:64] == 40).all()  # the checkpoint holds the counters as training left them


def test_sweep_trains_every_size_on_the_same_activations(tiny_lm):
    ckpts = train_sae.train(sae_config(tiny_lm, sae_dir="sae_sizes", sweep=[256, 512], max_activations=8 * 1024))
    assert [c["sae_config"]["n_features"] for c in ckpts] == [256, 512]
    assert all(os.path.exists(os.path.join(tiny_lm, "sae_sizes", f"F{n}", "log.jsonl")) for n in (256, 512))
    final = [c["history"][-1] for c in ckpts]
    assert all(f["final"] and 0 < f["fvu"] < 1 for f in final)
    losses = [[h["train_loss"] for h in c["history"] if "train_loss" in h] for c in ckpts]
    assert len(losses[0]) == 1 and losses[0] != losses[1]   # each size's own training loss, not the last size's
    # where the stage's time went: every phase measured, none negative
    split = ckpts[0]["time_split"]
    assert {"SAE steps", "harvest", "held-out metrics", "setup and the rest"} <= set(split)
    assert all(s >= 0 for s in split.values()) and split["SAE steps"] > 0


def test_2024_kill_resume_is_exact(tiny_lm, whole_2024):
    """The existing kill-and-resume test under --recipe 2024: its schedules are functions of the step
    and the run's length, so a resumed run continues them exactly."""
    snapshots, whole = SNAPSHOTS, whole_2024
    with pytest.raises(Crash):  # dies at step 13: the checkpoint at the fill boundary (step 8) survives
        train_sae.train(sae_config(tiny_lm, sae_dir="sae_2024_crash", recipe="2024", snapshots=snapshots),
                        on_step=crash_at(13))
    with pytest.raises(UserError, match="--recipe paper: .* was trained with --recipe 2024"):
        train_sae.train(sae_config(tiny_lm, sae_dir="sae_2024_crash", recipe="paper", resume=True))
    resumed = train_sae.train(sae_config(tiny_lm, sae_dir="sae_2024_crash", recipe="2024", snapshots=snapshots,
                                         resume=True))[0]
    assert resumed["step"] == whole["step"] == 24
    for k, v in whole["sae"].items():
        assert torch.equal(v, resumed["sae"][k]), k
    assert whole["history"] == resumed["history"]
    lr = [c["optimizer"]["param_groups"][0]["lr"] for c in (whole, resumed)]
    assert lr[0] == lr[1] == pytest.approx(1e-3 * 1 / 4.8)  # the last step (23 of 24) of the decay
    for n in snapshots:
        a, b = (torch.load(os.path.join(tiny_lm, f"sae_2024_{run}_at{n}", "F1024", "ckpt.pt"), weights_only=False)
                for run in ("whole", "crash"))
        assert a["seen"] == b["seen"] == int(n) and a["history"] == b["history"]
        assert all(torch.equal(v, b["sae"][k]) for k, v in a["sae"].items())


def test_paper_kill_resume_is_exact_across_a_resampling(tiny_lm, monkeypatch):
    """--recipe paper resamples dead features by drawing inputs from torch's global random state: a run
    killed between two resamplings and resumed must draw what the uninterrupted run drew. 48 steps resample
    at steps 1, 2, 4 and 5; the run dies at step 3, after its checkpoint at step 2. At steps 2 and 5, 32
    features are made to count as dead, so both resamplings draw: the second from the state the first left."""
    real_resample = train_sae.resample

    def with_dead(s, opt, since_fired, buffer, step, *rest):
        if step in (2, 5):
            since_fired[:32] = 10**6
        return real_resample(s, opt, since_fired, buffer, step, *rest)
    monkeypatch.setattr(train_sae, "resample", with_dead)
    kw = dict(recipe="paper", n_features=256, batch_size=512, buffer_size=2 * 512, max_activations=48 * 512,
              eval_every=48)
    whole = train_sae.train(sae_config(tiny_lm, sae_dir="sae_paper_whole", **kw))[0]
    assert [h["resampled"] for h in whole["history"] if h["step"] in (2, 5) and "resampled" in h] == [32, 32]
    with pytest.raises(Crash):
        train_sae.train(sae_config(tiny_lm, sae_dir="sae_paper_crash", **kw), on_step=crash_at(3))
    older = os.path.join(tiny_lm, "sae_paper_older", "F256", "ckpt.pt")  # a checkpoint without the random state
    shutil.copytree(os.path.join(tiny_lm, "sae_paper_crash"), os.path.dirname(os.path.dirname(older)))
    atomic_save({k: v for k, v in torch.load(older, weights_only=False).items() if k not in ("rng", "digest")}, older)
    with pytest.raises(UserError, match=r"sae_paper_older/F256/ckpt.pt holds no rng: it cannot be resumed exactly"):
        train_sae.train(sae_config(tiny_lm, sae_dir="sae_paper_older", resume=True, **kw))
    other = os.path.join(tiny_lm, "sae_paper_other", "F256", "ckpt.pt")  # as if trained on another LM
    shutil.copytree(os.path.join(tiny_lm, "sae_paper_crash"), os.path.dirname(os.path.dirname(other)))
    atomic_save({**torch.load(other, weights_only=False), "lm_fingerprint": "0" * 16}, other)
    with pytest.raises(UserError, match=rf"sae_paper_other/F256/ckpt.pt was trained on another LM than "
                                        rf"{re.escape(tiny_lm)}/lm: start a new --sae-dir$"):
        train_sae.train(sae_config(tiny_lm, sae_dir="sae_paper_other", resume=True, **kw))
    resumed = train_sae.train(sae_config(tiny_lm, sae_dir="sae_paper_crash", resume=True, **kw))[0]
    assert resumed["step"] == whole["step"] == 48
    for k, v in whole["sae"].items():
        assert torch.equal(v, resumed["sae"][k]), k
    assert whole["history"] == resumed["history"]


def test_snapshots_keep_the_sae_as_it_was(tiny_lm, capsys):
    """--snapshots: a copy of the checkpoints at the step where seen reaches each count, in a sibling
    folder analyze.py reads with --sae-dir; 0 is the SAE as initialised, before any step. Under the
    2024 recipe, and a sweep: every size is kept."""
    with pytest.raises(Crash):  # the same run, whose last checkpoint is the one at step 8
        train_sae.train(sae_config(tiny_lm, sae_dir="sae_snap_ref", recipe="2024", sweep=[256, 512]),
                        on_step=crash_at(9))
    train_sae.train(sae_config(tiny_lm, sae_dir="sae_snap", recipe="2024", sweep=[256, 512],
                               snapshots=["8192", "0", "5000", "1000000"]))
    assert "no snapshot at 1,000,000 activations: the run ended at 24,576" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(tiny_lm, "sae_snap_at1000000"))
    for n in (256, 512):
        snap = {c: load_sae(os.path.join(tiny_lm, f"sae_snap_at{c}", f"F{n}", "ckpt.pt"))
                for c in (0, 5000, 8192)}
        assert [(s[1]["seen"], s[1]["step"], s[1]["status"], s[1]["final"]) for s in snap.values()] == [
            (0, 0, "snapshot", False), (5120, 5, "snapshot", False), (8192, 8, "snapshot", False)]
        sae0, ckpt0 = snap[0]  # the 2024 initialisation, b_dec and act_scale already from the first fill
        assert torch.equal(sae0.W_enc, 0.01 * sae0.W_dec) and (sae0.b_enc == 0).all() and ckpt0["history"] == []
        torch.testing.assert_close(sae0.W_dec.norm(dim=1), torch.ones(n))
        assert sae0.act_scale != 1 and (sae0.b_dec != 0).any()
        ref = torch.load(os.path.join(tiny_lm, "sae_snap_ref", f"F{n}", "ckpt.pt"), weights_only=False)
        assert ref["step"] == 8 and ref["history"] == snap[8192][1]["history"]
        for k, v in ref["sae"].items():
            assert torch.equal(v, snap[8192][1]["sae"][k]), k
    run = analyze.load_run(analyze.AnalyzeConfig(out=tiny_lm, sae_dir="sae_snap_at0", device="cpu",
                                                 analysis_dir="analysis_snap_at0"))
    assert list(run.saes) == [256, 512] and run.saes[512].ckpt["seen"] == 0
    with pytest.raises(UserError, match="--snapshots copy"):
        train_sae.train(sae_config(tiny_lm, sae_dir="sae_snap_at8192", recipe="2024", sweep=[256, 512], resume=True))


def test_bad_input_is_one_clear_error(tiny_lm, tmp_path):
    with pytest.raises(UserError, match="train_lm.py"):
        train_sae.train(sae_config(tiny_lm, lm_dir="no_such_lm"))
    with pytest.raises(UserError, match="--l1-coeff"):
        train_sae.train(sae_config(tiny_lm, l1_coeff=-1.0))
    with pytest.raises(UserError, match="buffer_size"):
        train_sae.train(sae_config(tiny_lm, buffer_size=10))
    with pytest.raises(UserError, match="^--recipe 2023 must be paper or 2024$"):
        train_sae.train(sae_config(tiny_lm, recipe="2023"))
    train_lm.train(tiny_lm_config(tiny_lm, lm_dir="lm_untrained", max_tokens=0))
    train_sae.train(sae_config(tiny_lm, sae_dir="sae_first", max_activations=8 * 1024))
    with pytest.raises(UserError, match="--overwrite"):  # a finished run is not replaced silently
        train_sae.train(sae_config(tiny_lm, sae_dir="sae_first", max_activations=8 * 1024))
    with pytest.raises(UserError, match="another LM"):
        train_sae.train(sae_config(tiny_lm, sae_dir="sae_first", resume=True, lm_dir="lm_untrained",
                                   max_activations=8 * 1024))


def test_a_timed_start_leaves_the_sae_run_as_a_count_would(tiny_lm, monkeypatch):
    """--max-minutes: the timed start steps copies of the SAEs on activations of its own, so the run it
    sizes is the very run of that many steps (here the timer is replaced by 16 steps)."""
    timed = []
    monkeypatch.setattr(lab_run, "timed_steps", lambda minutes, step: [step() for _ in range(3)] and
                        timed.append(1) or 16)
    kw = dict(recipe="2024", n_features=256)   # (the size plays no part in how the run is timed)
    budget = train_sae.train(sae_config(tiny_lm, sae_dir="sae_minutes", max_minutes=5.0, **kw))[0]
    count = train_sae.train(sae_config(tiny_lm, sae_dir="sae_count", max_activations=16 * 1024, **kw))[0]
    assert timed and budget["max_steps"] == count["max_steps"] == 16
    for k, v in count["sae"].items():
        assert torch.equal(v, budget["sae"][k]), k
    assert budget["history"] == count["history"]


def test_many_passes_over_the_activations_are_announced(tiny_lm, capsys):
    with pytest.raises(Crash):
        train_sae.train(sae_config(tiny_lm, sae_dir="sae_long", max_activations=10**7), on_step=crash_at(1))
    assert "warning: this run reads the" in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_lm_and_sae_train_on_cuda(tiny_data):
    """The tiny pipeline's two training stages on the GPU (the analysis and compare.py have their own
    CUDA tests): the LM learns, the SAE reconstructs, and the checkpoints load back on the CPU."""
    lm = train_lm.train(tiny_lm_config(tiny_data, device="cuda", lm_dir="lm_cuda", max_tokens=60 * 16 * 64))
    assert lm["history"][-1]["val_loss"] < lm["history"][0]["val_loss"] - 1.0
    ckpt = train_sae.train(sae_config(tiny_data, device="cuda", lm_dir="lm_cuda", sae_dir="sae_cuda"))[0]
    final = ckpt["history"][-1]
    assert final["final"] and 0 < final["fvu"] < 0.9 and final["l0"] > 0
    sae, _ = load_sae(os.path.join(tiny_data, "sae_cuda", "F1024", "ckpt.pt"))
    model, _ = load_lm(tiny_data, "lm_cuda")
    acts = harvest(model, data.load_tokens(os.path.join(tiny_data, "data"), "val"), 256)[0]
    assert sae(acts)[0].device.type == "cpu" and torch.isfinite(sae(acts)[0]).all()


def test_no_fused_is_sae_pys_reference_alone(tiny_lm, monkeypatch):
    """--no-fused trains by sae.py alone: its gradients, its held-out metrics and its resampling (64 features
    forced dead, so the paper's recipe resamples them); no function of lab/sae_fast.py runs."""
    import inspect
    from lab import sae_fast
    for name, fn in inspect.getmembers(sae_fast, inspect.isfunction):
        if fn.__module__ == sae_fast.__name__:   # each function defined there (not those it imports)
            monkeypatch.setattr(sae_fast, name, lambda *a, name=name, **k: pytest.fail(f"--no-fused ran {name}"))
    real_step = train_sae.sae_step

    def dead_at_start(s, o, x, grads, l1_coeff, sync=None):
        if s.b_enc[0] > -1e4:
            with torch.no_grad():
                s.b_enc[:64] = -1e4
        return real_step(s, o, x, grads, l1_coeff, sync)
    monkeypatch.setattr(train_sae, "sae_step", dead_at_start)
    ckpt = train_sae.train(sae_config(tiny_lm, sae_dir="sae_reference", recipe="paper", fused=False,
                                      max_activations=40 * 1024))[0]
    assert sum(h.get("resampled", 0) for h in ckpt["history"]) >= 64
