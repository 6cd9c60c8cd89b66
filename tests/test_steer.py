import os

import numpy as np
import pytest
import torch

import analyze
from lab import summary
import sae as sae_lib
from lab import steer
from lab.plumbing import UserError
from lab.steer import logit_effects, residual_scale
from model import ModelConfig, Transformer


@pytest.fixture(scope="module")
def analysed(analysed_all):
    """analysis_browse/ of the tiny run: its measure.pt and units.json (conftest.py's analysed_all, the whole
    analysis, shared with test_analyze.py's end-to-end test and with test_browser.py and test_rate.py)."""
    return analysed_all[0]


def test_value_zero_reproduces_the_unsteered_generation_exactly():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=60, block_size=16, n_head=2, d_model=32, d_mlp=64)).eval()
    sae = sae_lib.SAE(sae_lib.SAEConfig(d_in=64, n_features=128))
    sae.act_scale.fill_(2.5)
    cfg = steer.Config(new_tokens=30, temperature=1.0, top_k=0)
    ids = torch.tensor([[1, 2, 3]])
    plain = steer.generate(model, ids, cfg, 3)
    assert torch.equal(steer.generate(model, ids, cfg, 3, steer.steering_hook(sae, 7, 0.0, 0)), plain)
    assert torch.equal(steer.generate(model, ids, cfg, 3), plain)   # the same seed, the same sample
    assert not torch.equal(steer.generate(model, ids, cfg, 3, steer.steering_hook(sae, 7, 500.0, 0)), plain)
    # what is added: value times the decoder row, in the MLP's units, at every position
    h = torch.rand(2, 5, 64)
    added = steer.steering_hook(sae, 7, 4.0, 0)(0, h) - h
    assert torch.allclose(added, (4.0 * sae.W_dec[7] / 2.5).expand_as(h), atol=1e-6)
    assert torch.equal(steer.steering_hook(sae, 7, 4.0, 0)(1, h), h)   # other layers untouched


def test_a_large_value_raises_the_top_logit_effect_tokens(analysed):
    run = analyze.load_run(analysed)
    model, sae = run.model, run.main_sae
    effects = logit_effects(model, sae.directions(), residual_scale(model, run.tokens))
    m = analyze.measured(analysed, run)
    largest = m.stats["F1024"].max_activation()
    x = torch.from_numpy(run.tokens[:8 * 64].reshape(8, 64))
    for f in (0, 2, 100, 500):
        top, v = effects[f].argmax(), largest[f].item()
        p = lambda v: torch.softmax(model(x, mlp_hook=steer.steering_hook(sae, f, v, 0))[0], -1)[..., top].mean()
        assert p(30 * v) > 2 * p(0.0) and p(30 * v) > p(3 * v) > p(0.0)
    # the report's measurement: every chosen feature's top tokens rise, its bottom ones fall
    res = steer.measure_steering(steer.Config(), run, m, summary.load_units(analysed, run))
    assert len(res["rows"]) == steer.Config().steer_features and res["positions"] == 50 * analysed.context
    assert len({r["up"][0] for r in res["rows"]}) == len(res["rows"])   # distinct top tokens
    for r in res["rows"]:
        assert r["p_up"][-1] > r["p_up"][0] and r["p_down"][-1] < r["p_down"][0]
        assert np.all(np.diff(r["p_up"]) > 0)
    assert os.path.getsize(os.path.join(run.dir, "steering.png")) > 10_000
    assert any("| #" in line for line in res["report"])
    plain = lambda x: isinstance(x, (int, float))
    assert all(plain(r["max"]) and plain(r["raised"]) and all(map(plain, r["p_up"] + r["p_down"] + r["up"]))
               for r in res["rows"])


def test_the_report_gives_the_size_of_the_change():
    assert steer.change([0.00021, 0.0004, 0.00075]) == "0.00021 → 0.00075 (×3.57)"
    assert steer.change([0.0, 0.01]) == "0 → 0.01 (from 0)"


def test_the_command_line_prints_both_generations(analysed, capsys):
    flags = ["--out", analysed.out, "--tokens", "8192", "--analysis-dir", analysed.analysis_dir, "--device", "cpu",
             "--prompt", 'def f(x):\n    return "<&>"', "--new-tokens", "12", "--feature", "5"]
    analyze.main(["steer"] + flags + ["--value", "0"])
    text = capsys.readouterr().out
    unsteered = text.split("--- unsteered")[1].split("--- steered")[0].split("\n", 1)[1]
    steered = text.split("--- steered")[1].split("--- largest")[0].split("\n", 1)[1]
    assert unsteered == steered and unsteered.startswith('def f(x):\n    return "<&>"')
    analyze.main(["steer"] + flags + ["--value", "40"])
    assert "(+" in capsys.readouterr().out
    with pytest.raises(UserError, match="0..1023"):
        analyze.main(["steer"] + flags[:-1] + ["1024"])
    for bad in ("nan", "inf"):
        with pytest.raises(UserError, match="--value .*finite"):
            analyze.main(["steer"] + flags + ["--value", bad])
    with pytest.raises(UserError, match="--value 1e\\+30 is too large"):
        analyze.main(["steer"] + flags + ["--value", "1e30"])
    # a prompt without a feature would be ignored (the many-prompt measurement runs instead)
    with pytest.raises(UserError, match="--prompt needs --feature N"):
        analyze.main(["steer", "--out", analysed.out, "--prompt", "import os"])


@pytest.mark.parametrize("flags", [["--feature", "-2"], ["--temperature", "nan"], ["--temperature", "-1.0"],
                                   ["--show", "-1"], ["--top-k", "-1"], ["--new-tokens", "0"], ["--steer-scale", "nan"],
                                   ["--steer-scale", "inf"], ["--steer-scale", "0.0"], ["--steer-prompts", "0"]])
def test_every_bad_flag_is_refused_by_name_before_the_run_loads(flags, tmp_path):
    with pytest.raises(UserError, match=f"^{flags[0]} {flags[1]} must be "):
        analyze.main(["steer", "--out", str(tmp_path / "no_run_here"), *flags])


def test_a_measurement_with_flags_of_its_own_writes_beside_the_reports_figure(analysed, capsys):
    folder = os.path.join(analysed.out, analysed.analysis_dir)
    report_figure = os.path.join(folder, "steering.png")   # (other tests may have written the full report here)
    before = open(report_figure, "rb").read() if os.path.exists(report_figure) else None
    flags = ["--out", analysed.out, "--tokens", "8192", "--analysis-dir", analysed.analysis_dir, "--device", "cpu"]
    analyze.main(["steer", *flags, "--steer-prompts", "2", "--steer-features", "1"])
    assert "For the 1 best-scoring feature of section 3" in capsys.readouterr().out
    assert os.path.exists(os.path.join(folder, "steering_1f_2p_x4_5t.png"))
    assert (open(report_figure, "rb").read() if os.path.exists(report_figure) else None) == before
    # a prompt longer than the context is cut, and the student is told
    analyze.main(["steer", *flags, "--feature", "5", "--new-tokens", "2", "--prompt", "x = 1\n" * 400])
    assert "note: the prompt is longer than the model's context; it reads the last 64 tokens" in capsys.readouterr().out
