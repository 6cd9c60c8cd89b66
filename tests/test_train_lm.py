import os
import shutil
import subprocess
import sys

import pytest
import torch

import train_lm
import train_sae
from lab import plumbing
from lab import run as lab_run
from lab.plumbing import UserError, atomic_save, parse_config, run_main
from tests.conftest import tiny_lm_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_training_lowers_the_loss(tiny_lm):
    ckpt = torch.load(os.path.join(tiny_lm, "lm", "ckpt.pt"), weights_only=False)
    first, last = ckpt["history"][0]["val_loss"], ckpt["history"][-1]["val_loss"]
    assert last < first - 0.5, (first, last)
    assert ckpt["val_loss"] < torch.log(torch.tensor(512.0))  # far better than uniform
    assert ckpt["final"] and ckpt["step"] == ckpt["max_steps"] == 150


class Crash(Exception):
    pass


def crash_at(n):
    def on_step(step):
        if step == n:
            raise Crash
    return on_step


def test_kill_and_resume_equals_uninterrupted_run(tiny_data, tmp_path, capsys):
    kw = dict(max_tokens=30 * 8 * 32, batch_size=8, block_size=32, eval_every=10, ckpt_every=10)
    whole = train_lm.train(tiny_lm_config(tiny_data, lm_dir="lm_whole", **kw))
    assert "step 1/30 | loss" in capsys.readouterr().out.split("| val -")[0]  # no stale val before step 10
    path = os.path.join(tiny_data, "lm_crash", "ckpt.pt")
    saved = {}
    def on_step(step):  # step 11: the checkpoint of step 10 is on disk; dies after step 17
        if step == 11:
            saved.update(torch.load(path, weights_only=False)["model"])
        crash_at(17)(step)
    with pytest.raises(Crash):
        train_lm.train(tiny_lm_config(tiny_data, lm_dir="lm_crash", **kw), on_step=on_step)
    crashed = torch.load(path, weights_only=False)
    assert crashed["step"] == 10 and crashed["status"] == "crashed" and "Crash" in crashed["error"]
    assert not crashed["final"] and all(torch.equal(v, saved[k]) for k, v in crashed["model"].items())
    other = os.path.join(tiny_data, "lm_other", "ckpt.pt")   # the same run, as if made from other shards
    shutil.copytree(os.path.dirname(path), os.path.dirname(other))
    atomic_save({**torch.load(other, weights_only=False), "tokenizer_hash": "0" * 64}, other)
    with pytest.raises(UserError, match=r"lm_other/ckpt.pt was trained with another model config or tokenizer; "
                                        r"use the same flags and data, or a new --lm-dir$"):
        train_lm.train(tiny_lm_config(tiny_data, lm_dir="lm_other", resume=True, **kw))
    with pytest.raises(UserError, match=r"^--lr 0.1: .* was trained with --lr 0.003; a resumed run keeps its flags"):
        train_lm.train(tiny_lm_config(tiny_data, lm_dir="lm_crash", resume=True, **kw, lr=0.1))
    # --resume alone (every other flag at its default) goes on with the run's own settings
    resumed = train_lm.train(train_lm.TrainConfig(out=tiny_data, lm_dir="lm_crash", device="cpu", resume=True,
                                                  ckpt_every=10))
    assert "resume: the run's own flags, as it was started: --max-tokens 7680, --batch-size 8" in capsys.readouterr().out
    assert {**resumed["config"], "lm_dir": "lm_whole", "resume": False} == whole["config"]
    assert resumed["step"] == whole["step"] == 30
    for k, v in whole["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    assert [h["val_loss"] for h in whole["history"]] == [h["val_loss"] for h in resumed["history"]]
    assert resumed["status"] == "final"


def test_resume_refuses_a_different_model(tiny_lm):
    with pytest.raises(UserError, match="--d-mlp 256: .* was trained with --d-mlp 512"):
        train_lm.train(tiny_lm_config(tiny_lm, resume=True, d_mlp=256))
    with pytest.raises(UserError, match="no LM checkpoint to resume"):
        train_lm.train(tiny_lm_config(tiny_lm, resume=True, lm_dir="nothing_here"))


def test_ddp_two_processes_match_one(tiny_data, tmp_path):
    """torchrun with 2 gloo processes, each on half of every batch, ends with the same weights as one
    process on the whole batch: DDP averages the two halves' gradients. Not the key bias: its gradient
    is zero in theory (softmax ignores a shift shared by all keys), so it holds float noise, which Adam
    divides by its own size into steps up to the learning rate (on some CPUs > 1e-4 after 3 steps);
    it does not change the function, so the validation losses must agree instead."""
    args = ["--out", tiny_data, "--device", "cpu", "--max-tokens", str(3 * 8 * 32), "--batch-size", "8",
            "--block-size", "32", "--warmup-steps", "2", "--no-bf16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread each: the same reduction order per process
    # the two runs side by side (their own folders; one thread each, so neither's result depends on the
    # other's timing): on a 2-core machine the single process starts while torchrun's are starting
    ddp = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                            "29517", "train_lm.py", *args, "--lm-dir", "lm_ddp"], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        subprocess.run([sys.executable, "train_lm.py", *args, "--lm-dir", "lm_single"], cwd=ROOT, env=env,
                       check=True, capture_output=True)
    finally:
        out, err = ddp.communicate()
    if ddp.returncode:
        raise subprocess.CalledProcessError(ddp.returncode, ddp.args, out, err)
    a = torch.load(os.path.join(tiny_data, "lm_ddp", "ckpt.pt"), weights_only=False)
    b = torch.load(os.path.join(tiny_data, "lm_single", "ckpt.pt"), weights_only=False)
    d = a["model_config"]["d_model"]
    key_bias = lambda w: torch.cat([w[:d], w[2 * d:]])  # q and v biases stay, k's is the noise above
    for k in a["model"]:
        x, y = a["model"][k], b["model"][k]
        if k.endswith("attn.qkv.bias"):
            x, y = key_bias(x), key_bias(y)
        assert torch.allclose(x, y, atol=1e-5), (k, (x - y).abs().max())  # here: 6e-7 at most
    assert abs(a["val_loss"] - b["val_loss"]) < 1e-5


def test_bad_flags_are_one_line_errors(tiny_data):
    with pytest.raises(UserError, match="--d-model"):
        train_lm.train(tiny_lm_config(tiny_data, d_model=100, n_head=3))
    with pytest.raises(UserError, match="--batch-size"):
        train_lm.train(tiny_lm_config(tiny_data, batch_size=0))
    with pytest.raises(UserError, match="run python data.py"):
        train_lm.train(tiny_lm_config(tiny_data + "_missing"))
    out = subprocess.run([sys.executable, "train_lm.py", "--out", tiny_data + "_missing"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "data.py" in out.stderr


def test_bigram_baseline_on_a_known_case():
    import numpy as np
    # a deterministic cycle 0->1->2->0: the bigram model is nearly certain
    toks = np.array([0, 1, 2] * 1000, dtype=np.uint16)
    assert train_lm.bigram_loss(toks, toks[:300], 3) < 0.01


LM_FLAGS = ["--max-minutes nan", "--max-minutes inf", "--max-minutes -1", "--max-tokens -1",
            "--lr nan", "--lr 0", "--lr inf", "--batch-size 0", "--block-size 0", "--n-head 0", "--d-mlp 0",
            "--activation tanh", "--warmup-steps -1"]
SAE_FLAGS = ["--max-minutes nan", "--max-minutes inf", "--max-minutes -1", "--max-activations -1",
             "--max-activations 0", "--lr nan", "--lr 0", "--l1-coeff nan", "--l1-coeff inf", "--l1-coeff -1",
             "--batch-size 0", "--n-features 0", "--sweep 0 512", "--activation gelu", "--k 0", "--k 5000",
             "--recipe 2023", "--snapshots 1e6"]


@pytest.mark.parametrize("cls,flag", [(train_lm.TrainConfig, f) for f in LM_FLAGS] +
                                     [(train_sae.SAETrainConfig, f) for f in SAE_FLAGS])
def test_each_bad_flag_is_refused_up_front_by_name(cls, flag, capsys):
    argv = flag.split() + (["--activation", "topk"] if flag.startswith("--k ") else [])
    with pytest.raises(SystemExit) as e:
        run_main(lambda: parse_config(cls, argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith(f"error: {flag.split()[0]} "), err


@pytest.mark.parametrize("cls,field,value", [(train_lm.TrainConfig, f, v) for f, v in (
    ("min_lr_frac", 2.0), ("grad_clip", float("nan")), ("weight_decay", -1.0), ("eval_every", 0), ("ckpt_every", 0))]
    + [(train_sae.SAETrainConfig, f, v) for f, v in (("buffer_size", 10), ("eval_every", 0), ("eval_activations", 0),
                                                      ("ckpt_minutes", float("nan")), ("ckpt_minutes", -1.0))])
def test_each_bad_setting_of_a_program_is_refused_by_name(cls, field, value):
    """The settings that are not flags (the tests and lab/compare.py set them) are checked as flags are."""
    with pytest.raises(UserError, match=field):
        cls(**{field: value})


def test_a_time_budget_becomes_a_count_once_from_a_timed_start(monkeypatch):
    """timed_steps times the calls after its first few and fits them into the minutes."""
    calls = []
    monkeypatch.setattr(plumbing.time, "time", lambda: 0.5 * len(calls))  # every call to step takes 0.5 s
    assert plumbing.timed_steps(1.0, lambda: calls.append(1), n=4, skip=2) == 120 and len(calls) == 6


def test_a_timed_start_leaves_the_run_as_a_count_would(tiny_data, monkeypatch):
    """--max-minutes: the timed start runs on a copy of the model and optimizer with batches of its own,
    so the run it sizes is the very run of that many steps (here the timer is replaced by 20 steps)."""
    timed = []
    monkeypatch.setattr(lab_run, "timed_steps", lambda minutes, step: [step() for _ in range(3)] and timed.append(1)
                        or 20)
    kw = dict(batch_size=8, block_size=32, eval_every=10, ckpt_every=10)
    budget = train_lm.train(tiny_lm_config(tiny_data, lm_dir="lm_minutes", max_minutes=5.0, **kw))
    count = train_lm.train(tiny_lm_config(tiny_data, lm_dir="lm_count", max_tokens=20 * 8 * 32, **kw))
    assert timed and budget["max_steps"] == count["max_steps"] == 20
    for k, v in count["model"].items():
        assert torch.equal(v, budget["model"][k]), k


def test_a_finished_run_is_not_replaced_silently(tiny_lm):
    with pytest.raises(UserError, match="--overwrite"):
        train_lm.train(tiny_lm_config(tiny_lm))


def test_many_passes_over_the_data_are_announced(tiny_data, capsys):
    with pytest.raises(Crash):  # the warning comes before the first step
        train_lm.train(tiny_lm_config(tiny_data, lm_dir="lm_long", max_tokens=10**7), on_step=crash_at(1))
    assert "warning: this run reads the" in capsys.readouterr().out
