import os
import subprocess
import sys

import pytest
import torch

import train_lm
from common import UserError
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


def test_kill_and_resume_equals_uninterrupted_run(tiny_data, tmp_path):
    kw = dict(max_tokens=30 * 8 * 32, batch_size=8, block_size=32, eval_every=10, ckpt_every=10)
    whole = train_lm.train(tiny_lm_config(tiny_data, lm_dir="lm_whole", **kw))
    with pytest.raises(Crash):  # dies after step 17: the checkpoint of step 10 survives
        train_lm.train(tiny_lm_config(tiny_data, lm_dir="lm_crash", **kw), on_step=crash_at(17))
    assert torch.load(os.path.join(tiny_data, "lm_crash", "ckpt.pt"), weights_only=False)["step"] == 10
    resumed = train_lm.train(tiny_lm_config(tiny_data, lm_dir="lm_crash", resume=True, **kw))
    assert resumed["step"] == whole["step"] == 30
    for k, v in whole["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    assert [h["val_loss"] for h in whole["history"]] == [h["val_loss"] for h in resumed["history"]]


def test_resume_refuses_a_different_model(tiny_lm):
    with pytest.raises(UserError, match="another model config"):
        train_lm.train(tiny_lm_config(tiny_lm, resume=True, d_mlp=256))
    with pytest.raises(UserError, match="no LM checkpoint to resume"):
        train_lm.train(tiny_lm_config(tiny_lm, resume=True, lm_dir="nothing_here"))


def test_ddp_two_processes_match_one(tiny_data, tmp_path):
    """torchrun with 2 gloo processes, each on half of every batch, ends with the same weights as one
    process on the whole batch: DDP averages the two halves' gradients."""
    args = ["--out", tiny_data, "--device", "cpu", "--max-tokens", str(3 * 8 * 32), "--batch-size", "8",
            "--block-size", "32", "--warmup-steps", "2", "--no-bf16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    "29517", "train_lm.py", *args, "--lm-dir", "lm_ddp"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    subprocess.run([sys.executable, "train_lm.py", *args, "--lm-dir", "lm_single"], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    a = torch.load(os.path.join(tiny_data, "lm_ddp", "ckpt.pt"), weights_only=False)["model"]
    b = torch.load(os.path.join(tiny_data, "lm_single", "ckpt.pt"), weights_only=False)["model"]
    # 1e-4: the key bias has a zero gradient in theory, and Adam turns float noise there into tiny steps
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


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
