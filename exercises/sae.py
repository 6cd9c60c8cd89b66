"""Your implementation of the paper's pieces: the course's exercises (docs/course.md).

Work in a copy, so that this file stays the blank start (and git pull never meets your edits):

    cp exercises/sae.py my_sae.py
    python -m lab.course check --impl my_sae.py --step 1

Write each function in place of its `raise NotImplementedError(...)`, one step at a time, from the
step's equations in docs/course.md and the function's docstring here; read the reference the course
names once your check passes. Keep every function at the top level of the file, never inside a
class: the course puts encode, decode and loss into sae.SAE as its methods for you. A function you
have not written yet is left out of every check and every run (the reference's stays in its place).
"""
import numpy as np  # for your simulate and pearson
import torch


# ----------------------------------------------------------------------------------------------
# Step 1: the SAE. Written here as functions, they become methods of sae.SAE: self is the SAE, with
# W_enc (F, d), b_enc (F,), W_dec (F, d), b_dec (d,), act_scale (a scalar tensor), cfg.l1_coeff,
# self.activate(pre) (the ReLU, or TopK when cfg.activation == "topk": use it, not .relu()) and
# self.check(x), which gives an input of the wrong width a one-line error: call it first in encode
# and loss. No @torch.no_grad() here: train_sae.py calls backward() on the loss.

def encode(self, x):
    """x (N, d) in original units -> f (N, F): scale by act_scale, subtract the pre-encoder bias
    b_dec, the encoder W_enc and b_enc, then self.activate."""
    raise NotImplementedError("step 1: encode")


def decode(self, f):
    """f (N, F) -> x_hat (N, d) in original units: the decoder W_dec, plus b_dec, divided by act_scale."""
    raise NotImplementedError("step 1: decode")


def loss(self, x, l1_coeff=None):
    """dict(loss, mse, l1, f), float32 tensors (loss keeps its graph), everything in normalised units
    (x_n = x * act_scale): mse the mean over the batch and the d dims of (x_hat_n - x_n)^2, l1 the mean
    over the batch of the sum of f over the features, loss = mse + l1_coeff * l1 (l1_coeff None:
    self.cfg.l1_coeff; train_sae.py passes its own each step; with TopK, loss = mse). Leave x as it
    is: compute new tensors, never write into it."""
    raise NotImplementedError("step 1: loss")


# ----------------------------------------------------------------------------------------------
# Step 2: the decoder-norm constraint (sae.py, "The decoder-norm constraint")

@torch.no_grad()
def remove_parallel_grad(sae):
    """In sae.W_dec.grad, remove from each feature's row its component along that feature's
    decoder row sae.W_dec[i] (the part of the step that would only change the row's length)."""
    raise NotImplementedError("step 2: remove_parallel_grad")


@torch.no_grad()
def normalize_decoder(sae):
    """Divide each feature's decoder row sae.W_dec[i] by its norm, in place: sae.W_dec must stay the
    same nn.Parameter, the one the optimizer holds."""
    raise NotImplementedError("step 2: normalize_decoder")


# ----------------------------------------------------------------------------------------------
# Step 3: where b_dec starts

@torch.no_grad()
def geometric_median(x, iters=100, tol=1e-6):
    """The point minimising the summed distance to the rows of x (N, d), by Weiszfeld's algorithm:
    start at the mean; repeatedly take the mean of the rows weighted by 1 / their distance to the
    current estimate; stop after iters steps or when the estimate moves less than tol (relative).
    When the estimate lands on a data point its distance is 0: keep 1 / distance finite."""
    raise NotImplementedError("step 3: geometric_median")


# ----------------------------------------------------------------------------------------------
# Step 4: dead features (sae.py, "Dead features")

@torch.no_grad()
def resample_dead(sae, opt, dead, x, sq_errors=None, batch_size=8192):
    """The paper's resampling. dead (F,) bool; x (N, d) inputs; sq_errors (N,) each input's squared
    reconstruction error (None: compute it). For each dead feature draw an input with probability
    proportional to the square of its squared error (torch.multinomial; with replacement when there are
    more dead features than inputs), and set: W_dec[i] = the input in normalised units, scaled to unit
    norm; W_enc[i] = that direction times 0.2 x the mean norm of the alive features' W_enc rows;
    b_enc[i] = 0; the Adam moments (opt.state[p]["exp_avg"], ["exp_avg_sq"]) of those rows of W_enc,
    W_dec and b_enc to 0, where they exist (opt.state[p] is empty until the optimizer's first step).
    sq_errors None: each input's ((sae(x)[0] - x) * act_scale)^2 summed over the d dims, computed in
    batches of batch_size. Returns how many features were resampled."""
    raise NotImplementedError("step 4: resample_dead")


# ----------------------------------------------------------------------------------------------
# Step 5: loss recovered (analyze.py, section 1)

@torch.no_grad()
def lm_loss(model, windows, replace):
    """The mean next-token loss of model on windows (B, T + 1) (it reads windows[:, :-1] and predicts
    windows[:, 1:]) with the last layer's MLP activations h (B, T, d_mlp) replaced by
    replace(h.flatten(0, 1)).view_as(h): pass model(..., mlp_hook=fn), fn(layer, h) -> h. Returns
    the loss as a 0-dim tensor (analyze.py's lm_losses calls .item() on it)."""
    raise NotImplementedError("step 5: lm_loss")


def recovered(ablated, replaced, clean):
    """The share of the loss recovered: 1 at the clean loss, 0 at the ablated one."""
    raise NotImplementedError("step 5: recovered")


# ----------------------------------------------------------------------------------------------
# Step 6: the explain-then-simulate score (lab/explainer.py's simulate, lab/stats.py's pearson)

def simulate(expl, prev, cur, labels, vocab):
    """The activation an explanation table predicts for each token (numpy arrays prev, cur of token
    ids, labels (n, P) bool). Rows are keys: prev * vocab + token for a (previous token, token) pair,
    vocab * vocab + token for a token, lab.explainer.context_key(p, vocab) for predicate p. A token
    gets the value of the most specific row that matches it: a pair row, else a token row, else the row
    of the first predicate (lowest p) that holds on it; no row: expl["default"]. expl: dict(keys
    (sorted), values, counts, default)."""
    raise NotImplementedError("step 6: simulate")


def pearson(a, b):
    """The Pearson correlation of two 1-D arrays, with its sign; 0 when either is constant. Leave a
    and b as they are (np.asarray does not copy a float array)."""
    raise NotImplementedError("step 6: pearson")


# ----------------------------------------------------------------------------------------------
# Step 7 (stretch): the sparse backward pass (lab/sae_fast.py's derivation is the answer)

@torch.no_grad()
def sparse_grads(sae, x, l1_coeff=None):
    """Fill .grad of W_enc, b_enc, W_dec and b_dec with the gradient of sae.loss(x), its parallel part
    removed from W_dec's, without autograd: only the encoder product dense, the rest touching only the
    active (input, feature) pairs. Return dict(loss, mse, l1, l0, fired) as sae.reference_grads does."""
    raise NotImplementedError("step 7: sparse_grads")

