"""Tests of sae.py: the fused step against autograd, the decoder constraint, resampling, the
geometric median, recovery of known features from superposition, and bad input. Offline, CPU."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sae import (SAE, SAEConfig, dead_window, evaluate, geometric_median, make_optimizer,
                 normalize_decoder, reference_grads, resample_dead, resample_schedule)
from lab.sae_fast import fused_grads, train_step

PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")
pytestmark = pytest.mark.filterwarnings("ignore:Sparse (CSR tensor support|invariant checks)")


def make_sae(N, d, F, activation="relu", k=8, bias=-0.5, seed=0):
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_in=d, n_features=F, activation=activation, k=k, l1_coeff=3e-3))
    x = torch.randn(N, d).relu() * 3.0  # post-ReLU-like activations in arbitrary units
    sae.init_from_data(x)
    with torch.no_grad():
        sae.b_enc.fill_(bias)
    return sae, x


def grads(sae, x, fn, **kw):
    with torch.sparse.check_sparse_tensor_invariants():  # every CSR tensor built is valid
        out = fn(sae, x, **kw)
    return out, {n: getattr(sae, n).grad.clone() for n in PARAMS}


def superposition_data(n, d=512, n_true=1024, active=7, seed=0):
    """Sparse positive combinations of n_true random unit directions in d dims (n_true > d): each
    direction is present with probability active/n_true, with a magnitude uniform in (0, 1)."""
    D = torch.randn(n_true, d, generator=torch.Generator().manual_seed(0))
    D /= D.norm(dim=1, keepdim=True)
    g = torch.Generator().manual_seed(seed + 1)
    x = [(torch.rand(m, n_true, generator=g) * (torch.rand(m, n_true, generator=g) < active / n_true)) @ D
         for m in [4096] * (n // 4096) + [n % 4096]]
    return D, torch.cat(x)


# --- the fused step equals autograd -------------------------------------------------------------

CASES = {  # name: (N, d, F, activation, b_enc)
    "small": (64, 16, 32, "relu", -0.5),
    "odd shapes": (300, 48, 200, "relu", -1.0),
    "512 wide": (256, 512, 1024, "relu", -0.3),
    "some dead": (200, 64, 256, "relu", None),
    "all active": (128, 32, 64, "relu", 100.0),
    "none active": (64, 32, 64, "relu", -1e4),
    "topk": (300, 64, 256, "topk", 0.0),
    "topk few positive": (100, 32, 128, "topk", -2.0),
}


@pytest.mark.parametrize("case", CASES)
def test_fused_equals_autograd(case):
    N, d, F, act, bias = CASES[case]
    sae, x = make_sae(N, d, F, act, bias=0.0 if bias is None else bias)
    if bias is None:  # a third of the features can never fire
        with torch.no_grad():
            sae.b_enc[::3] = -1e4
    ref, g_ref = grads(sae, x, reference_grads)
    out, g = grads(sae, x, fused_grads, bf16=False, dense_above=2.0)  # force the sparse path
    for key in ("loss", "mse", "l1", "l0"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-6)
    assert torch.equal(out["fired"], ref["fired"])
    for n in PARAMS:
        scale = g_ref[n].abs().max().item() + 1e-12
        torch.testing.assert_close(g[n], g_ref[n], rtol=1e-4, atol=1e-5 * scale, msg=n)
    if bias is None:
        assert (out["fired"][::3] == 0).all() and (g["W_enc"][::3] == 0).all()
    if case == "all active":
        assert (out["fired"] == N).all()


def test_a_scheduled_l1_coeff_replaces_the_configs():
    """train_sae.py --recipe 2024 warms the L1 coefficient up: the step takes this step's value,
    the fused step and autograd agree on it, and the config's own value is left alone."""
    sae, x = make_sae(300, 48, 200, bias=-0.5)
    ref, g_ref = grads(sae, x, reference_grads, l1_coeff=0.0)
    out, g = grads(sae, x, fused_grads, bf16=False, dense_above=2.0, l1_coeff=0.0)
    torch.testing.assert_close(out["loss"], out["mse"])  # no penalty at the warm-up's start
    torch.testing.assert_close(ref["loss"], out["loss"], rtol=1e-5, atol=1e-6)
    for n in PARAMS:
        torch.testing.assert_close(g[n], g_ref[n], rtol=1e-4, atol=1e-5 * (g_ref[n].abs().max().item() + 1e-12))
    half, g_half = grads(sae, x, fused_grads, bf16=False, dense_above=2.0, l1_coeff=1.5e-3)
    torch.testing.assert_close(half["loss"], half["mse"] + 1.5e-3 * half["l1"])
    full, g_full = grads(sae, x, fused_grads, bf16=False, dense_above=2.0)  # None: the config's 3e-3
    torch.testing.assert_close(full["loss"], full["mse"] + 3e-3 * full["l1"])
    assert sae.cfg.l1_coeff == 3e-3 and not torch.allclose(g_half["b_enc"], g_full["b_enc"])


@pytest.mark.parametrize("act", ["relu", "topk"])
def test_bf16_encoder_close_to_autograd(act):
    """bf16 only picks the active set (the values are recomputed in float32), so the result is
    exact except for features whose pre-activation is within bf16 rounding of the threshold."""
    sae, x = make_sae(1024, 512, 2048, act, k=32, bias=-0.3)
    ref, g_ref = grads(sae, x, reference_grads)
    out, g = grads(sae, x, fused_grads, bf16=True, dense_above=2.0)
    assert abs(out["loss"] / ref["loss"] - 1) < 1e-3
    for n in PARAMS:
        err = ((g[n] - g_ref[n]).norm() / g_ref[n].norm()).item()
        assert err < 0.05, (n, err)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("act", ["relu", "topk"])
def test_fused_equals_autograd_on_cuda(act):
    sae, x = make_sae(512, 128, 1024, act, k=16, bias=-0.5)
    sae, x = sae.cuda(), x.cuda()
    ref, g_ref = grads(sae, x, reference_grads)
    out, g = grads(sae, x, fused_grads, bf16=False, dense_above=2.0)
    torch.testing.assert_close(out["loss"], ref["loss"], rtol=1e-5, atol=1e-6)
    for n in PARAMS:
        torch.testing.assert_close(g[n], g_ref[n], rtol=1e-3, atol=1e-5 * g_ref[n].abs().max().item())
    out, g = grads(sae, x, fused_grads, bf16=True, dense_above=2.0)
    assert abs(out["loss"] / ref["loss"] - 1) < 1e-3


def test_dense_fallback_and_train_step_paths_agree():
    """Early in training f is dense and fused_grads hands over to autograd; either way a few
    optimizer steps from the same start give the same parameters."""
    saes = [make_sae(256, 64, 256, bias=b, seed=1)[0] for b in (0.5, 0.5, -1.0, -1.0)]
    x = torch.randn(256, 64).relu() * 3.0
    density = [(s.encode(x) > 0).float().mean().item() for s in saes]
    assert density[0] > 0.1 > density[2]  # dense: autograd inside fused_grads; sparse: the fused path
    opts = [make_optimizer(s, 1e-3) for s in saes]
    for _ in range(5):
        outs = [train_step(s, o, x, fused=f, bf16=False) for s, o, f in zip(saes, opts, [1, 0, 1, 0])]
    for a, b in [(0, 1), (2, 3)]:
        for n in PARAMS:
            torch.testing.assert_close(getattr(saes[a], n), getattr(saes[b], n), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(outs[a]["loss"], outs[b]["loss"], rtol=1e-4, atol=1e-6)


# --- the decoder constraint -----------------------------------------------------------------------

@pytest.mark.parametrize("fused", [True, False])
def test_decoder_rows_unit_norm_and_gradient_orthogonal(fused):
    sae, x = make_sae(256, 64, 256, bias=-0.2)
    opt = make_optimizer(sae, 1e-2)
    for _ in range(10):
        if fused:
            fused_grads(sae, x, bf16=False, dense_above=2.0)
        else:
            reference_grads(sae, x)
        along = (sae.W_dec.grad * sae.W_dec).sum(1)  # the gradient about to be applied
        assert along.abs().max() < 1e-6 * sae.W_dec.grad.abs().max() + 1e-9
        opt.step()
        normalize_decoder(sae)
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(256))
    train_step(sae, opt, x, fused=fused)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(256))


# --- resampling -----------------------------------------------------------------------------------

def test_resample_follows_the_paper():
    sae, x = make_sae(512, 32, 64, bias=-0.2)
    opt = make_optimizer(sae, 1e-3)
    for _ in range(3):
        train_step(sae, opt, x, bf16=False)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[[3, 10, 40]] = True
    alive_norm = sae.W_enc[~dead].norm(dim=1).mean().item()
    before = {n: getattr(sae, n).detach().clone() for n in PARAMS}
    state = {n: {m: opt.state[getattr(sae, n)][m].clone() for m in ("exp_avg", "exp_avg_sq")}
             for n in PARAMS}
    assert resample_dead(sae, opt, dead, x) == 3
    x_n = x * sae.act_scale
    unit_inputs = x_n / x_n.norm(dim=1, keepdim=True)
    cos = sae.W_dec[dead].detach() @ unit_inputs.T
    assert (cos.max(1).values > 1 - 1e-5).all()            # decoder row = a sampled input, unit norm
    assert len(set(cos.argmax(1).tolist())) == 3           # without replacement
    torch.testing.assert_close(sae.W_enc[dead].norm(dim=1), torch.full((3,), 0.2 * alive_norm))
    torch.testing.assert_close(sae.W_enc[dead] / sae.W_enc[dead].norm(dim=1, keepdim=True),
                               sae.W_dec[dead])             # encoder row: the same direction
    assert (sae.b_enc[dead] == 0).all()
    for n in PARAMS:                                       # nothing else moved
        rest = ~dead if n != "b_dec" else slice(None)
        assert torch.equal(getattr(sae, n)[rest], before[n][rest])
        for m in ("exp_avg", "exp_avg_sq"):
            now = opt.state[getattr(sae, n)][m]
            assert torch.equal(now[rest], state[n][m][rest])
            if n != "b_dec":
                assert (now[dead] == 0).all() and (state[n][m][dead] != 0).any()
    f = sae.encode(x)                                      # they fire again, weakly
    assert ((f[:, dead] > 0).sum(0) > 0).all()
    assert resample_dead(sae, opt, torch.zeros(64, dtype=torch.bool), x) == 0


def test_resample_picks_inputs_by_squared_loss():
    sae, x = make_sae(512, 32, 64, bias=-0.2)
    x[7] *= 30.0  # by far the worst reconstructed input: probability ~1 - 1e-5
    opt = make_optimizer(sae, 1e-3)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[5] = True
    resample_dead(sae, opt, dead, x)
    torch.testing.assert_close(sae.W_dec[5], x[7] / x[7].norm())


def test_schedule_scales_the_paper():
    assert resample_schedule(1_000_000) == [25_000, 50_000, 75_000, 100_000]
    assert resample_schedule(20_000) == [500, 1000, 1500, 2000]
    assert dead_window(1_000_000) == 12_500
    assert dead_window(20_000) == 250 and dead_window(40_000) == 500
    assert dead_window(1_000) == 25 and resample_schedule(10) == [1]


# --- geometric median, evaluation -----------------------------------------------------------------

def test_geometric_median():
    c = torch.tensor([1.0, -2.0, 3.0])
    sym = torch.cat([c + torch.eye(3), c - torch.eye(3)])
    torch.testing.assert_close(geometric_median(sym), c)
    line = torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]])  # 1-D: the ordinary median
    assert abs(geometric_median(line).item() - 2.0) < 1e-3
    torch.manual_seed(0)
    cloud = c + 0.1 * torch.randn(999, 3)
    with_outlier = torch.cat([cloud, torch.full((1, 3), 1e6)])
    assert (geometric_median(with_outlier) - c).norm() < 0.05  # the mean moved by 1e3
    assert (with_outlier.mean(0) - c).norm() > 100


def test_evaluate_and_units_on_an_exact_sae():
    """The identity SAE reconstructs non-negative inputs exactly, whatever act_scale is."""
    sae = SAE(SAEConfig(d_in=8, n_features=8))
    x = torch.randn(1000, 8).relu() * 7.0
    x[:, 2] = 0  # feature 2 never fires
    sae.init_from_data(x)
    torch.testing.assert_close((x * sae.act_scale).pow(2).sum(1).mean(), torch.tensor(8.0))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(8)); sae.W_dec.copy_(torch.eye(8))
        sae.b_enc.zero_(); sae.b_dec.zero_()
    torch.testing.assert_close(sae(x)[0], x)
    ev = evaluate(sae, x, batch_size=300)
    assert ev["mse"] < 1e-10 and ev["fvu"] < 1e-10
    assert abs(ev["l0"] - (x > 0).sum(1).float().mean().item()) < 1e-6
    assert ev["dead_frac"] == 1 / 8 and ev["dense_frac"] == 7 / 8 and ev["density"].shape == (8,)


# --- the SAE finds known features in superposition --------------------------------------------------

def test_recovers_features_from_superposition():
    """1024 known directions in 512 dims, ~7 active per input: the SAE (2048 features, trained with
    the fused train_step on 150k inputs) finds them; early steps run dense (f is not sparse yet)."""
    torch.manual_seed(0)
    D, x = superposition_data(600 * 256)
    sae = SAE(SAEConfig(d_in=512, n_features=2048, l1_coeff=3e-3))
    sae.init_from_data(x[:8192])
    opt = make_optimizer(sae, 3e-3)
    for xb in x.split(256):
        train_step(sae, opt, xb)
    mmcs = (D @ sae.W_dec.detach().T).max(1).values.mean().item()
    ev = evaluate(sae, superposition_data(8192, seed=1)[1])
    print(f"\nsuperposition: mean max cosine similarity {mmcs:.3f}, "
          f"L0 {ev['l0']:.1f} (true 7), FVU {ev['fvu']:.3f}, dead {ev['dead_frac']:.1%}")
    assert mmcs >= 0.9


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(n_features=0), dict(d_in=0), dict(l1_coeff=-1.0),
                                dict(l1_coeff=float("nan")), dict(activation="gelu"),
                                dict(activation="topk", k=5000), dict(activation="topk", k=0)])
def test_nonsense_hyperparameters(kw):
    with pytest.raises(ValueError) as e:
        SAEConfig(**kw)
    assert "\n" not in str(e.value) and list(kw)[-1] in str(e.value)


def test_wrong_width_is_one_line_error():
    sae = SAE(SAEConfig(d_in=16, n_features=32))
    x = torch.randn(4, 8)
    for call in (sae.encode, sae.loss, sae.init_from_data, lambda x: fused_grads(sae, x),
                 lambda x: evaluate(sae, x), lambda x: resample_dead(sae, None, torch.ones(32, dtype=torch.bool), x)):
        with pytest.raises(ValueError, match="d_in") as e:
            call(x)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("activation,shift", [("relu", -2.0), ("relu", 0.5), ("topk", 0.0)])
def test_sparse_evaluate_equals_the_plain_one(activation, shift):
    """sae_fused.evaluate (the training loop's held-out metrics) gives sae.evaluate's numbers on
    fresh random inputs: sparse (shift -2), dense enough to take the dense fallback (+0.5), TopK."""
    from lab.sae_fast import evaluate as sparse_evaluate
    torch.manual_seed(7)
    sae = SAE(SAEConfig(d_in=48, n_features=384, activation=activation, k=8))
    x = torch.randn(3000, 48) * 3 + 1
    sae.init_from_data(x)
    with torch.no_grad():
        sae.b_enc += shift
        sae.b_enc[:20] = -1e4   # some features never fire: dead_frac must agree
    plain, sparse = evaluate(sae, x, batch_size=700), sparse_evaluate(sae, x, batch_size=700)
    for k in ("mse", "fvu"):
        assert sparse[k] == pytest.approx(plain[k], rel=1e-5)
    for k in ("l0", "dead_frac", "dense_frac"):
        assert sparse[k] == pytest.approx(plain[k], abs=1e-3)
    assert round(plain["dead_frac"] * 384) >= 20
    assert (sparse["density"] - plain["density"]).abs().max() <= 2 / len(x)
