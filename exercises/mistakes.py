"""The usual mistakes, made on purpose: tests/test_course.py proves that lab/course.py catches each
one and names it. A teacher can hand them out as "find the bug" exercises.

MISTAKES: (the exercise, the wrong function, a pattern the check's one-line message must match).
SLOW: (the exercise, a right function far slower than the reference's), which passes with a note.
"""
import numpy as np
import torch

import analyze
import sae as sae_lib
from lab import explainer, stats


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



def encode_relu_not_activate(self, x):
    """Right for a ReLU SAE only: a TopK SAE's activation is self.activate."""
    return ((x.float() * self.act_scale - self.b_dec) @ self.W_enc.T + self.b_enc).relu()


def encode_in_float64(self, x):
    return self.activate((x.double() * self.act_scale - self.b_dec) @ self.W_enc.T.double() + self.b_enc)


def encode_scales_x_in_place(self, x):
    x_n = x.float()                # the same tensor when x is float32 already
    x_n *= self.act_scale
    return self.activate((x_n - self.b_dec) @ self.W_enc.T + self.b_enc)


def loss_l1_detached(self, x, l1_coeff=None):
    out = sae_lib.SAE.loss(self, x, l1_coeff)
    coeff = self.cfg.l1_coeff if l1_coeff is None else l1_coeff
    return dict(out, loss=out["mse"] + coeff * out["l1"].detach())


def loss_l1_from_item(self, x, l1_coeff=None):
    out = sae_lib.SAE.loss(self, x, l1_coeff)
    l1 = out["l1"].item()
    coeff = self.cfg.l1_coeff if l1_coeff is None else l1_coeff
    return dict(out, l1=l1, loss=out["mse"] + coeff * l1)


def loss_ignores_l1_coeff(self, x, l1_coeff=None):
    return sae_lib.SAE.loss(self, x)


def loss_l1_with_topk(self, x, l1_coeff=None):
    out = sae_lib.SAE.loss(self, x, l1_coeff)
    coeff = self.cfg.l1_coeff if l1_coeff is None else l1_coeff
    return dict(out, loss=out["mse"] + coeff * out["l1"])



def loss_returns_the_loss_alone(self, x, l1_coeff=None):
    return sae_lib.SAE.loss(self, x, l1_coeff)["loss"]


@torch.no_grad()
def loss_under_no_grad(self, x, l1_coeff=None):
    """The stubs of step 2 on carry @torch.no_grad(); the loss must not."""
    return sae_lib.SAE.loss(self, x, l1_coeff)


@torch.no_grad()
def parallel_part_left_in(sae):
    pass


@torch.no_grad()
def parallel_part_along_columns(sae):
    W, G = sae.W_dec, sae.W_dec.grad
    G -= (G * W).sum(0, keepdim=True) * W



@torch.no_grad()
def parallel_part_taken_from_the_weights(sae):
    W, G = sae.W_dec, sae.W_dec.grad
    W -= (G * W).sum(1, keepdim=True) * W


@torch.no_grad()
def decoder_not_renormalised(sae):
    pass


@torch.no_grad()
def decoder_columns_normalised(sae):
    sae.W_dec /= sae.W_dec.norm(dim=0, keepdim=True)



@torch.no_grad()
def decoder_rebound_to_a_new_parameter(sae):
    sae.W_dec = torch.nn.Parameter(sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True))


@torch.no_grad()
def median_is_the_mean(x, iters=100, tol=1e-6):
    return x.mean(0)


@torch.no_grad()
def median_one_step(x, iters=100, tol=1e-6):
    w = 1 / (x - x.mean(0)).norm(dim=1)
    return (w[:, None] * x).sum(0) / w.sum()



@torch.no_grad()
def median_three_steps_from_zero(x, iters=100, tol=1e-6):
    y = torch.zeros(x.shape[1])
    for _ in range(3):
        w = 1 / (x - y).norm(dim=1).clamp_min(1e-8)
        y = (w[:, None] * x).sum(0) / w.sum()
    return y


@torch.no_grad()
def median_without_a_zero_guard(x, iters=100, tol=1e-6):
    y = x.mean(0)
    for _ in range(iters):
        w = 1 / (x - y).norm(dim=1)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() <= tol * max(y.norm().item(), 1.0):
            return y_new
        y = y_new
    return y


def normalised_squared_errors(sae, x):
    return ((sae(x)[0] - x) * sae.act_scale).square().sum(1)


def resampling_with(weights_of, encoder_scale=0.2, reset_bias=True, moments=("exp_avg", "exp_avg_sq"),
                    errors_of=normalised_squared_errors, assumes_state=True):
    """The paper's resampling with one piece changed: weights_of(sq_errors) the draw's weights,
    errors_of(sae, x) the squared errors when none are given; assumes_state: the optimizer's moments
    indexed as if they existed (they do only once it has stepped)."""
    @torch.no_grad()
    def resample_dead(sae, opt, dead, x, sq_errors=None, batch_size=8192):
        rows = dead.nonzero().squeeze(1)
        errors = errors_of(sae, x) if sq_errors is None else sq_errors
        picks = torch.multinomial(weights_of(errors), len(rows), replacement=True)
        inputs = x[picks] * sae.act_scale
        directions = inputs / inputs.norm(dim=1, keepdim=True)
        norm = sae.W_enc[~dead].norm(dim=1).mean()
        sae.W_dec[rows] = directions
        sae.W_enc[rows] = encoder_scale * norm * directions
        if reset_bias:
            sae.b_enc[rows] = 0.0
        for p in (sae.W_enc, sae.W_dec, sae.b_enc):
            for moment in moments:
                if assumes_state or moment in opt.state[p]:
                    opt.state[p][moment][rows] = 0.0
        return len(rows)
    return resample_dead


def lm_loss_targets_not_shifted(model, windows, replace):
    last = len(model.blocks) - 1
    hook = lambda layer, h: replace(h.flatten(0, 1)).view_as(h) if layer == last else h
    return model(windows[:, :-1], windows[:, :-1], mlp_hook=hook)[1]


def lm_loss_not_spliced(model, windows, replace):
    return model(windows[:, :-1], windows[:, 1:])[1]



def lm_loss_without_the_flatten(model, windows, replace):
    last = len(model.blocks) - 1
    return model(windows[:, :-1], windows[:, 1:], mlp_hook=lambda layer, h: replace(h) if layer == last else h)[1]


def lm_loss_as_a_number(model, windows, replace):
    return analyze.lm_loss(model, windows, replace).item()



def recovered_without_a_return(ablated, replaced, clean):
    share = (ablated - replaced) / (ablated - clean)


def recovered_inverted(ablated, replaced, clean):
    return (replaced - clean) / (ablated - clean)


def recovered_against_the_ablated_loss(ablated, replaced, clean):
    return (ablated - replaced) / ablated


def simulate_token_rows_win(expl, prev, cur, labels, vocab):
    """A token row applied after the pair rows, so it overrides them."""
    out = explainer.simulate(expl, prev, cur, labels, vocab)
    for key, value in zip(expl["keys"], expl["values"]):
        if vocab * vocab <= key < vocab * (vocab + 1):
            out[cur == key - vocab * vocab] = value
    return out


def simulate_default_zero(expl, prev, cur, labels, vocab):
    out = explainer.simulate(expl, prev, cur, labels, vocab)
    out[out == expl["default"]] = 0.0
    return out



def simulate_last_predicate_wins(expl, prev, cur, labels, vocab):
    """The predicate rows applied in order, so a later predicate overrides an earlier one."""
    out = explainer.simulate(expl, prev, cur, labels, vocab)
    first = explainer.context_key(0, vocab)
    specific = np.isin(vocab * vocab + cur, expl["keys"]) | np.isin(prev * vocab + cur, expl["keys"])
    for key, value in zip(expl["keys"], expl["values"]):
        if key >= first:
            out[labels[:, key - first] & ~specific] = value
    return out


def simulate_token_by_token(expl, prev, cur, labels, vocab):
    """Right, but one token at a time in Python: far slower than the reference (a note, not a mistake)."""
    value = dict(zip(expl["keys"].tolist(), expl["values"].tolist()))
    first = explainer.context_key(0, vocab)
    predicates = sorted(k - first for k in value if k >= first)
    out = np.full(len(cur), float(expl["default"]))
    for i, (p, c) in enumerate(zip(prev.tolist(), cur.tolist())):
        held = [first + q for q in predicates if labels[i, q]]
        for key in (p * vocab + c, vocab * vocab + c, *held[:1]):
            if key in value:
                out[i] = value[key]
                break
    return out


def pearson_uncentred(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    scale = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / scale) if scale > 0 else 0.0



def pearson_absolute(a, b):
    return abs(stats.pearson(a, b))


def pearson_centres_in_place(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)    # no copy when they are float arrays already
    a -= a.mean()
    b -= b.mean()
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
    ("encode", encode_relu_not_activate, "self.activate"),
    ("encode", encode_in_float64, "torch.float64 where the reference gives torch.float32"),
    ("encode", encode_scales_x_in_place, "changed its argument x in place"),
    ("decode", decode_without_b_dec, "forgot to add b_dec"),
    ("decode", decode_in_normalised_units, "divide by act_scale"),
    ("loss", loss_mse_summed_over_dims, "summed over the d_in dimensions"),
    ("loss", loss_l1_mean_over_features, "sum over the features"),
    ("loss", loss_l1_detached, "the L1 term carries no gradient"),
    ("loss", loss_l1_from_item, "l1: got a float, not a tensor"),
    ("loss", loss_ignores_l1_coeff, "ignored its l1_coeff argument"),
    ("loss", loss_l1_with_topk, "with TopK the loss is the MSE alone"),
    ("loss", loss_under_no_grad, "no graph to backward through"),
    ("loss", loss_returns_the_loss_alone, "return dict"),
    ("remove_parallel_grad", parallel_part_left_in, "parallel part is left in"),
    ("remove_parallel_grad", parallel_part_along_columns, "along the columns"),
    ("remove_parallel_grad", parallel_part_taken_from_the_weights, "changed W_dec itself"),
    ("normalize_decoder", decoder_not_renormalised, "not renormalised"),
    ("normalize_decoder", decoder_columns_normalised, "each column"),
    ("normalize_decoder", decoder_rebound_to_a_new_parameter, "sae.W_dec is a new tensor"),
    ("geometric_median", median_is_the_mean, "that is the mean"),
    ("geometric_median", median_one_step, "repeat it"),
    ("geometric_median", median_three_steps_from_zero, "not converged"),
    ("geometric_median", median_without_a_zero_guard, "NaN when the estimate lands on a data point"),
    ("resample_dead", resampling_with(lambda e: e), "not squared again"),
    ("resample_dead", resampling_with(lambda e: torch.ones_like(e)), "uniformly"),
    ("resample_dead", resampling_with(lambda e: e * e, encoder_scale=1.0), "0.2 x the alive"),
    ("resample_dead", resampling_with(lambda e: e * e, reset_bias=False), "encoder bias"),
    ("resample_dead", resampling_with(lambda e: e * e, moments=()), "exp_avg of the resampled rows"),
    ("resample_dead", resampling_with(lambda e: e * e, moments=("exp_avg",)), "exp_avg_sq of the resampled rows"),
    ("resample_dead", resampling_with(lambda e: e * e, errors_of=lambda s, x: normalised_squared_errors(s, x).sqrt()),
     "with sq_errors=None .* not squared again"),
    ("resample_dead", resampling_with(lambda e: e * e), "not stepped yet"),
    ("lm_loss", lm_loss_targets_not_shifted, "not the next tokens"),
    ("lm_loss", lm_loss_not_spliced, "not spliced in"),
    ("lm_loss", lm_loss_without_the_flatten, "flatten them"),
    ("lm_loss", lm_loss_as_a_number, "got a float, not a tensor"),
    ("recovered", recovered_inverted, "wrong baseline"),
    ("recovered", recovered_against_the_ablated_loss, "wrong baseline"),
    ("recovered", recovered_without_a_return, "no return statement"),
    ("simulate", simulate_token_rows_win, "more specific row wins"),
    ("simulate", simulate_default_zero, "default"),
    ("simulate", simulate_last_predicate_wins, "the first one's row"),
    ("pearson", pearson_uncentred, "cosine"),
    ("pearson", pearson_absolute, "lost the sign"),
    ("pearson", pearson_centres_in_place, "changed its argument a in place"),
    ("sparse_grads", sparse_grads_b_dec_once, "b_dec enters twice"),
]

# Right but far slower than the reference: the check passes them with a note saying how much.
SLOW = [("simulate", simulate_token_by_token)]
