"""The usual mistakes, made on purpose: tests/test_course.py proves that lab/course.py catches each
one and names it. A teacher can hand them out as "find the bug" exercises.

MISTAKES: (the exercise, the wrong function, words the check's message must contain).
"""
import numpy as np
import torch

import analyze
import sae as sae_lib


def encode_without_b_dec(self, x):
    return self.activate(x.float() * self.act_scale @ self.W_enc.T + self.b_enc)


def encode_without_act_scale(self, x):
    return self.activate((x.float() - self.b_dec) @ self.W_enc.T + self.b_enc)


def decode_without_b_dec(self, f):
    return (f @ self.W_dec) / self.act_scale


def decode_in_normalised_units(self, f):
    return f @ self.W_dec + self.b_dec


def loss_mse_summed_over_dims(self, x, l1_coeff=None):
    out = sae_lib.SAE.loss(self, x, l1_coeff)
    x_n = x.float() * self.act_scale
    mse = (out["f"] @ self.W_dec + self.b_dec - x_n).pow(2).sum(1).mean()
    return dict(out, mse=mse, loss=mse + self.cfg.l1_coeff * out["l1"])


def loss_l1_mean_over_features(self, x, l1_coeff=None):
    out = sae_lib.SAE.loss(self, x, l1_coeff)
    l1 = out["f"].mean()
    return dict(out, l1=l1, loss=out["mse"] + self.cfg.l1_coeff * l1)


@torch.no_grad()
def parallel_part_left_in(sae):
    pass


@torch.no_grad()
def parallel_part_along_columns(sae):
    W, G = sae.W_dec, sae.W_dec.grad
    G -= (G * W).sum(0, keepdim=True) * W


@torch.no_grad()
def decoder_not_renormalised(sae):
    pass


@torch.no_grad()
def decoder_columns_normalised(sae):
    sae.W_dec /= sae.W_dec.norm(dim=0, keepdim=True)


@torch.no_grad()
def median_is_the_mean(x, iters=100, tol=1e-6):
    return x.mean(0)


@torch.no_grad()
def median_one_step(x, iters=100, tol=1e-6):
    w = 1 / (x - x.mean(0)).norm(dim=1)
    return (w[:, None] * x).sum(0) / w.sum()


def resampling_with(weights_of, encoder_scale=0.2, reset_bias=True, reset_moments=True):
    """The paper's resampling with one piece changed: weights_of(sq_errors) the draw's weights."""
    @torch.no_grad()
    def resample_dead(sae, opt, dead, x, sq_errors=None, batch_size=8192):
        rows = dead.nonzero().squeeze(1)
        picks = torch.multinomial(weights_of(sq_errors), len(rows), replacement=True)
        inputs = x[picks] * sae.act_scale
        directions = inputs / inputs.norm(dim=1, keepdim=True)
        norm = sae.W_enc[~dead].norm(dim=1).mean()
        sae.W_dec[rows] = directions
        sae.W_enc[rows] = encoder_scale * norm * directions
        if reset_bias:
            sae.b_enc[rows] = 0.0
        for p in (sae.W_enc, sae.W_dec, sae.b_enc) if reset_moments else ():
            for moment in ("exp_avg", "exp_avg_sq"):
                opt.state[p][moment][rows] = 0.0
        return len(rows)
    return resample_dead


def lm_loss_targets_not_shifted(model, windows, replace):
    last = len(model.blocks) - 1
    hook = lambda layer, h: replace(h.flatten(0, 1)).view_as(h) if layer == last else h
    return model(windows[:, :-1], windows[:, :-1], mlp_hook=hook)[1]


def lm_loss_not_spliced(model, windows, replace):
    return model(windows[:, :-1], windows[:, 1:])[1]


def recovered_inverted(ablated, replaced, clean):
    return (replaced - clean) / (ablated - clean)


def recovered_against_the_ablated_loss(ablated, replaced, clean):
    return (ablated - replaced) / ablated


def simulate_token_rows_win(expl, prev, cur, labels, vocab):
    """A token row applied after the pair rows, so it overrides them."""
    out = analyze.simulate(expl, prev, cur, labels, vocab)
    for key, value in zip(expl["keys"], expl["values"]):
        if vocab * vocab <= key < vocab * (vocab + 1):
            out[cur == key - vocab * vocab] = value
    return out


def simulate_default_zero(expl, prev, cur, labels, vocab):
    out = analyze.simulate(expl, prev, cur, labels, vocab)
    out[out == expl["default"]] = 0.0
    return out


def pearson_uncentred(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    scale = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / scale) if scale > 0 else 0.0


def sparse_grads_b_dec_once(sae, x, l1_coeff=None):
    """The fused step's gradient with b_dec's path through the encoder left out."""
    from lab.sae_fast import fused_grads
    out = fused_grads(sae, x, l1_coeff, bf16=False, dense_above=2.0)
    sae.b_dec.grad += sae.b_enc.grad @ sae.W_enc
    return out


MISTAKES = [
    ("encode", encode_without_b_dec, "forgot to subtract b_dec"),
    ("encode", encode_without_act_scale, "act_scale"),
    ("decode", decode_without_b_dec, "forgot to add b_dec"),
    ("decode", decode_in_normalised_units, "divide by act_scale"),
    ("loss", loss_mse_summed_over_dims, "summed over the d_in dimensions"),
    ("loss", loss_l1_mean_over_features, "sum over the features"),
    ("remove_parallel_grad", parallel_part_left_in, "parallel part is left in"),
    ("remove_parallel_grad", parallel_part_along_columns, "along the columns"),
    ("normalize_decoder", decoder_not_renormalised, "not renormalised"),
    ("normalize_decoder", decoder_columns_normalised, "each column"),
    ("geometric_median", median_is_the_mean, "that is the mean"),
    ("geometric_median", median_one_step, "repeat it"),
    ("resample_dead", resampling_with(lambda e: e), "not squared again"),
    ("resample_dead", resampling_with(lambda e: torch.ones_like(e)), "uniformly"),
    ("resample_dead", resampling_with(lambda e: e * e, encoder_scale=1.0), "0.2 x the alive"),
    ("resample_dead", resampling_with(lambda e: e * e, reset_bias=False), "encoder bias"),
    ("resample_dead", resampling_with(lambda e: e * e, reset_moments=False), "Adam moments"),
    ("lm_loss", lm_loss_targets_not_shifted, "not the next tokens"),
    ("lm_loss", lm_loss_not_spliced, "not spliced in"),
    ("recovered", recovered_inverted, "wrong baseline"),
    ("recovered", recovered_against_the_ablated_loss, "wrong baseline"),
    ("simulate", simulate_token_rows_win, "more specific row wins"),
    ("simulate", simulate_default_zero, "default"),
    ("pearson", pearson_uncentred, "cosine"),
    ("sparse_grads", sparse_grads_b_dec_once, "b_dec enters twice"),
]
