"""
The sparse autoencoder (SAE) of "Towards Monosemanticity" (Bricken et al., 2023).

    x_bar = x - b_dec                  pre-encoder bias, tied to minus the post-decoder bias
    f     = ReLU(W_enc x_bar + b_enc)  feature activations, sparse
    x_hat = W_dec f + b_dec            reconstruction; every dictionary vector has unit norm
    loss  = mse(x_hat, x) + l1_coeff * |f|_1

Units. Beyond the paper (Anthropic's 2024 update does the same), inputs are first multiplied by a
fixed scalar act_scale chosen once from data so that mean ||x * act_scale||^2 == d_in. All of the
SAE's insides (b_dec, f, the loss) live in these normalised units, so one l1_coeff means the same
thing for every model (model A, seed B, a random-weights control). encode/decode/forward take and
give back the original units.

Loss, in normalised units x_n = x * act_scale:
    mse = mean over the batch AND the d_in dims of (x_hat_n - x_n)^2   (predicting 0 gives ~1)
    l1  = mean over the batch of sum_i f_i
    loss = mse + l1_coeff * l1     (relu; the paper)      loss = mse     (topk; Gao et al. 2024)

This file holds, in order: the module (the readable autograd reference), the decoder-norm
constraint, the fused training step whose backward is derived by hand and touches only the active
features, dead-feature resampling and evaluation.
"""
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from common import fast_bf16

# torch's notes that CSR support is "beta" and that invariant checks are off (tests turn them on)
warnings.filterwarnings("ignore", message="Sparse (CSR tensor support is in beta|invariant checks)")


@dataclass
class SAEConfig:
    d_in: int = 512          # width of the activations (the paper: 512 MLP neurons)
    n_features: int = 4096   # dictionary size (the paper's A/1: 8x the neurons)
    # relu only. On synthetic superposition data (1024 directions in 512 dims, ~7 active) 3e-3
    # gave L0 14 and FVU 0.06 at 2048 features; 1e-3: L0 62; 1e-2: collapse (FVU 0.95).
    # train_sae.py retunes it on real activations.
    l1_coeff: float = 3e-3
    activation: str = "relu" # "relu" (the paper: ReLU + L1) or "topk" (Gao et al. 2024: k largest, no L1)
    k: int = 32              # topk only: active features per input

    def __post_init__(self):
        checks = [(self.d_in >= 1, f"d_in must be >= 1, got {self.d_in}"),
                  (self.n_features >= 1, f"n_features must be >= 1, got {self.n_features}"),
                  (self.l1_coeff >= 0, f"l1_coeff must be >= 0, got {self.l1_coeff}"),
                  (self.activation in ("relu", "topk"),
                   f"activation must be 'relu' or 'topk', got {self.activation!r}"),
                  (self.activation != "topk" or 1 <= self.k <= self.n_features,
                   f"k must be in 1..n_features={self.n_features} for topk, got {self.k}")]
        for ok, problem in checks:
            if not ok:  # (a NaN fails its check too)
                raise ValueError(f"SAEConfig: {problem}")


class SAE(nn.Module):
    """Weights are stored feature-major: row i of W_enc and of W_dec belong to feature i, so one
    feature's vectors are contiguous (the paper's decoder *column* i is our W_dec row i)."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        F, d = cfg.n_features, cfg.d_in
        # paper: PyTorch's default init (nn.Linear's Kaiming-uniform), encoder and decoder untied
        encoder, decoder = nn.Linear(d, F), nn.Linear(F, d, bias=False)
        self.W_enc = nn.Parameter(encoder.weight.data)                # (F, d)
        self.b_enc = nn.Parameter(encoder.bias.data)                  # (F,)
        self.W_dec = nn.Parameter(decoder.weight.data.T.contiguous()) # (F, d), rows normalised below
        self.b_dec = nn.Parameter(torch.zeros(d))                     # set by init_from_data
        self.register_buffer("act_scale", torch.tensor(1.0))
        normalize_decoder(self)

    def check(self, x):
        if x.ndim != 2 or x.shape[1] != self.cfg.d_in:
            raise ValueError(f"SAE expects activations of shape (N, {self.cfg.d_in}), got "
                             f"{tuple(x.shape)}: set SAEConfig.d_in to the activation width")

    @torch.no_grad()
    def init_from_data(self, x):
        """act_scale so that mean ||x * act_scale||^2 == d_in; b_dec = geometric median (paper)."""
        self.check(x)
        x = x.float()
        self.act_scale.fill_(math.sqrt(self.cfg.d_in / x.pow(2).sum(1).mean().item()))
        self.b_dec.copy_(geometric_median(x * self.act_scale))

    def pre_acts(self, x_n):
        return (x_n - self.b_dec) @ self.W_enc.T + self.b_enc

    def activate(self, pre):
        if self.cfg.activation == "topk":  # keep the k largest pre-activations of each row, ReLU them
            vals, idx = pre.topk(self.cfg.k, dim=1)
            return torch.zeros_like(pre).scatter(1, idx, vals.relu())
        return pre.relu()

    def encode(self, x):
        """x (N, d_in) in original units -> f (N, F) in normalised units."""
        self.check(x)
        return self.activate(self.pre_acts(x.float() * self.act_scale))

    def decode(self, f):
        """f (N, F) -> x_hat (N, d_in) in original units."""
        return (f @ self.W_dec + self.b_dec) / self.act_scale

    def forward(self, x):
        f = self.encode(x)
        return self.decode(f), f

    def loss(self, x):
        """The autograd reference, in normalised units (see the top of the file)."""
        self.check(x)
        x_n = x.float() * self.act_scale
        f = self.activate(self.pre_acts(x_n))
        mse = (f @ self.W_dec + self.b_dec - x_n).pow(2).mean()
        l1 = f.sum(1).mean()
        loss = mse + self.cfg.l1_coeff * l1 if self.cfg.activation == "relu" else mse
        return dict(loss=loss, mse=mse, l1=l1, f=f)


@torch.no_grad()
def geometric_median(x, iters=100, tol=1e-6):
    """The point minimising the summed Euclidean distance to the rows of x (Weiszfeld's algorithm:
    repeatedly take the mean weighted by 1/distance). Unlike the mean, robust to outliers."""
    y = x.mean(0)
    for _ in range(iters):
        w = 1 / (x - y).norm(dim=1).clamp_min(1e-8)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        done = (y_new - y).norm() <= tol * y.norm().clamp_min(1.0)
        y = y_new
        if done:
            break
    return y


# ----------------------------------------------------------------------------------------------
# The decoder-norm constraint (paper): unit-norm dictionary vectors. Renormalising after each step
# alone was worse than also removing, before the step, the part of each vector's gradient that
# would only change its length.

@torch.no_grad()
def remove_parallel_grad(sae):
    W, G = sae.W_dec, sae.W_dec.grad
    G.addcmul_((torch.linalg.vecdot(G, W) / torch.linalg.vecdot(W, W))[:, None], W, value=-1)


@torch.no_grad()
def normalize_decoder(sae):
    sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)


def make_optimizer(sae, lr):
    """Plain Adam, as in the paper (which does not state its betas: we use PyTorch's 0.9, 0.999).
    fused=True is the same arithmetic in one kernel (5x faster than foreach on this CPU)."""
    return torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999), fused=True)


def train_step(sae, opt, x, fused=True, bf16=None):
    """One optimizer step on batch x (N, d_in). Returns fused_grads' dict (0-dim tensors, so a GPU
    step never waits for the host; call .item() when logging). Both paths overwrite every .grad,
    so there is nothing to zero."""
    out = fused_grads(sae, x, bf16=bf16) if fused else reference_grads(sae, x)
    opt.step()
    normalize_decoder(sae)
    return out


def reference_grads(sae, x):
    """The gradients by autograd: sae.loss(x).backward(), then remove_parallel_grad."""
    for p in sae.parameters():
        p.grad = None
    with torch.enable_grad():
        out = sae.loss(x)
        out["loss"].backward()
    remove_parallel_grad(sae)
    active = out.pop("f").detach() > 0
    out = {k: v.detach() for k, v in out.items()}
    return dict(out, l0=active.sum(1).float().mean(), fired=active.sum(0))


# ----------------------------------------------------------------------------------------------
# The fused step. Only the encoder product x_bar @ W_enc.T is dense (2*d*F flops per input);
# after the ReLU a few dozen of the F features are active, and everything else touches only them,
# as sparse matrices with one stored entry per active (input b, feature i):
#
#   forward    x_hat = b_dec + f @ W_dec                     sparse (N,F) @ dense (F,d)
#              e = x_hat - x_n,  mse = sum(e^2) / (N d),  l1 = sum(f) / N
#   backward   g = dL/dx_hat = 2 e / (N d)                   dense (N,d), cheap
#              dL/df[b,i]  = g[b] . W_dec[i] + l1_coeff / N  only at active (b,i): "sampled" matmul
#              dpre[b,i]   = dL/df[b,i] where f[b,i] > 0, else 0 (ReLU; topk: no l1 term)
#              dW_dec      = f^T @ g                         sparse^T @ dense
#              dW_enc      = dpre^T @ x_bar                  sparse^T @ dense
#              db_enc      = sum over b of dpre              a scatter-add over active entries
#              db_dec      = sum_b g - sum_b dpre[b] @ W_enc = sum_b g - db_enc @ W_enc
#                (b_dec enters twice: added after decoding, subtracted before encoding)
#   then the parallel component of dW_dec is removed, as in remove_parallel_grad.
#
# CPU ops, chosen by measurement (2-core Xeon with AMX, N=4096, F=4096, L0~25): the sparse products
# are CSR tensors through MKL (torch.sparse.mm 3.6 ms, sampled_addmm 3.7 ms; gather + index_add_ of
# the (nnz, d) rows took 35-110 ms, MKL on the transposed CSR 9 ms against 6 ms for sorting by
# feature first); the encoder runs in row chunks so the (chunk, F) pre-activations stay in cache,
# in bf16 where that is fast (the product 3-8x faster; 800 steps on synthetic data gave the same
# losses and held-out metrics to 1e-4). Finding the active entries then costs as much as the product.
# On CUDA the same calls go to cuBLAS/cuSPARSE. A Triton kernel would
# replace the torch.sparse calls in fused_grads: one program per block of rows that gathers the
# W_dec rows of its active features to decode, forms g and the sampled products in registers, and
# one per block of features for the transposed products (it is not written: no GPU to test on).

@torch.no_grad()
def fused_grads(sae, x, bf16=None, chunk=1024, dense_above=0.1):
    """Fill .grad of W_enc, b_enc, W_dec, b_dec with the gradient of sae.loss(x), derived by hand
    and exploiting the sparsity of f, including remove_parallel_grad. No autograd graph.
    bf16: run the dense encoder product in bfloat16 to pick the active features, then recompute
    their values in float32 (None: where matmuls are fast in bf16, see fast_bf16).
    dense_above: if more than this fraction of f is active (early in training, before the L1
    penalty has made f sparse), sparse products are slower than dense ones (measured crossover
    10-15% on CPU): fall back to the autograd reference."""
    sae.check(x)
    cfg, N, F = sae.cfg, x.shape[0], sae.cfg.n_features
    fwd = _sparse_forward(sae, x, bf16, chunk, dense_above)
    if fwd is None:
        return reference_grads(sae, x)
    x_bar, rows, crow, cols, f, e = fwd
    csr = lambda v: torch.sparse_csr_tensor(crow, cols, v, (N, F))
    mse = e.flatten().dot(e.flatten()) / e.numel()
    l1 = f.sum() / N
    relu = cfg.activation == "relu"
    loss = mse + cfg.l1_coeff * l1 if relu else mse
    # backward
    g = e.mul_(2 / e.numel())
    active = f > 0
    l1_grad = torch.full_like(f, cfg.l1_coeff / N if relu else 0.0)
    dpre = torch.sparse.sampled_addmm(csr(l1_grad), g, sae.W_dec.T).values() * active
    # the transposed products need the entries sorted by feature: a CSR matrix of shape (F, N)
    order = torch.argsort(cols, stable=True)
    crow_t, rows_t = _crow(cols, F), rows[order]
    csr_t = lambda v: torch.sparse_csr_tensor(crow_t, rows_t, v[order], (F, N))
    for p, v, dense in ((sae.W_dec, f, g), (sae.W_enc, dpre, x_bar)):
        p.grad = _spmm(csr_t(v), dense, torch.empty_like(p) if p.grad is None else p.grad)
    remove_parallel_grad(sae)
    sae.b_enc.grad = torch.zeros_like(sae.b_enc).index_add_(0, cols, dpre)
    sae.b_dec.grad = g.sum(0) - sae.b_enc.grad @ sae.W_enc
    fired = torch.zeros(F, dtype=torch.long, device=x.device).index_add_(0, cols, active.long())
    return dict(loss=loss, mse=mse, l1=l1, l0=active.sum() / N, fired=fired)


def _sparse_forward(sae, x, bf16=None, chunk=1024, dense_above=1.0):
    """The forward pass in normalised units: x_bar = x_n - b_dec, the active entries of f (rows,
    CSR row pointers, cols, values) and the error e = x_hat - x_n. None if f is too dense."""
    bf16 = fast_bf16(x.device) if bf16 is None else bf16
    x_bar = x.float() * sae.act_scale
    x_bar -= sae.b_dec
    sparse = _encode_sparse(sae, x_bar, bf16, chunk, dense_above)
    if sparse is None:
        return None
    rows, crow, cols, f = sparse
    e = _spmm(torch.sparse_csr_tensor(crow, cols, f, (len(x), sae.cfg.n_features)), sae.W_dec,
              torch.empty_like(x_bar))
    e -= x_bar  # = W_dec f + b_dec - x_n = x_hat - x_n
    return x_bar, rows, crow, cols, f, e


def _encode_sparse(sae, x_bar, bf16, chunk, dense_above):
    """The one dense product, in row chunks so the (chunk, F) pre-activations stay in cache.
    Returns the active entries, rows sorted and columns sorted within a row (CSR's invariant), as
    rows, CSR row pointers, cols, float32 values. relu: every pre-activation > 0; topk: the k
    largest of each row (kept with value 0 if not > 0). None if f is denser than dense_above."""
    cfg, N, F = sae.cfg, x_bar.shape[0], sae.cfg.n_features
    topk = cfg.activation == "topk"
    k = min(2 * cfg.k, F) if bf16 else cfg.k  # bf16 picks 2k candidates, float32 picks the k
    W, b, xb = sae.W_enc, sae.b_enc, x_bar
    if bf16:
        W, b, xb = W.bfloat16(), b.bfloat16(), xb.bfloat16()
    rows, cols, vals = [], [], []
    buf = torch.empty(min(chunk, N), F, dtype=W.dtype, device=W.device)
    for s in range(0, N, chunk):
        x_chunk = xb[s:s + chunk]
        pre = torch.addmm(b, x_chunk, W.T, out=buf[:len(x_chunk)])
        if topk:
            c = pre.topk(k, dim=1, sorted=False).indices.sort(dim=1).values.flatten()
            r = torch.arange(len(pre), device=pre.device).repeat_interleave(k)
        else:
            # a positive bf16 number is a positive int16 bit pattern: same test, ~2x faster on CPU
            r, c = ((pre.view(torch.int16) if bf16 else pre) > 0).nonzero().unbind(1)
        if len(c) > dense_above * pre.numel():
            return None
        if not bf16:  # (bf16: recomputed below)
            vals.append(pre[r, c])
        rows.append(r + s); cols.append(c)
    rows, cols = torch.cat(rows).int(), torch.cat(cols).int()  # int32 indices: ~10% faster in MKL
    crow = _crow(rows, N)
    if bf16:  # recompute the chosen entries in float32: a sampled matmul, only nnz*d flops
        pattern = torch.sparse_csr_tensor(crow, cols, sae.b_enc[cols], (N, F))
        vals = torch.sparse.sampled_addmm(pattern, x_bar, sae.W_enc.T).values()
        if topk and k > cfg.k:  # the exact top k of the 2k candidates, columns sorted again
            keep = vals.view(N, k).topk(cfg.k, dim=1).indices.sort(dim=1).values
            keep = (keep + k * torch.arange(N, device=keep.device)[:, None]).flatten()
            rows, cols, vals = rows[keep], cols[keep], vals[keep]
            crow = _crow(rows, N)
    else:
        vals = torch.cat(vals)
    return rows, crow, cols, vals.relu()


def _spmm(a, b, out):
    """out = a @ b for a sparse CSR a: torch.sparse.mm without its zero-fill and copy of the
    result (addmm with beta=0 ignores out's old contents), 30% faster on CPU."""
    return torch.addmm(out, a, b, beta=0, out=out)


def _crow(rows, n):
    """CSR row pointers of sorted row indices: crow[r] = number of entries in rows before r."""
    return torch.cat([rows.new_zeros(1), torch.bincount(rows, minlength=n).cumsum(0).to(rows.dtype)])


# ----------------------------------------------------------------------------------------------
# Dead features (paper): features that stopped firing are resampled a few times early in training,
# each one re-aimed at an input the SAE currently reconstructs badly.

def resample_schedule(total_steps):
    """The paper resamples at steps 25k, 50k, 75k and 100k of 1M: the same fractions of our run
    (2.5%, 5%, 7.5%, 10%), then leaves 90% of training to settle. Resampling more often diverges."""
    return sorted({max(1, round(frac * total_steps)) for frac in (0.025, 0.05, 0.075, 0.1)})


def dead_window(total_steps):
    """How many recent steps a feature must have been silent for to count as dead. The paper: 12,500
    of 1M steps (1.25%), ~100M activations. At our run lengths (10k-30k steps) 1.25% is 125-375
    steps, too few to tell a rare feature from a dead one, so use at least 250 steps (~1M
    activations at batch 4096), but never more than the 2.5% between two resamples, so each
    resample looks at a window no earlier resample has touched."""
    return max(1, round(max(0.0125 * total_steps, min(250, 0.025 * total_steps))))


@torch.no_grad()
def resample_dead(sae, opt, dead, x, batch_size=8192):
    """The paper's procedure: dead (F,) bool mask; x: a sample of inputs (the paper uses 819,200).
    Each dead feature is re-aimed at one input, picked with probability proportional to the square
    of its reconstruction loss; the encoder row and bias are reset so the new feature fires only
    weakly at first. Returns how many features were resampled."""
    sae.check(x)
    idx = dead.nonzero().squeeze(1)
    if len(idx) == 0:
        return 0
    loss = torch.cat([_sparse_forward(sae, xb)[-1].pow(2).sum(1) for xb in x.split(batch_size)])
    prob = loss.pow(2)
    prob = prob if prob.sum() > 0 else torch.ones_like(prob)  # a perfect SAE: pick uniformly
    pick = torch.multinomial(prob, len(idx), replacement=len(idx) > (prob > 0).sum().item())
    x_n = x[pick].float() * sae.act_scale
    direction = x_n / x_n.norm(dim=1, keepdim=True).clamp_min(1e-8)
    alive = ~dead
    enc_norm = sae.W_enc[alive].norm(dim=1).mean() if alive.any() else torch.tensor(1.0)
    sae.W_dec[idx] = direction                     # the input, normalised to unit norm
    sae.W_enc[idx] = direction * 0.2 * enc_norm    # 0.2 x the alive features' mean encoder norm
    sae.b_enc[idx] = 0.0
    for p in (sae.W_enc, sae.W_dec, sae.b_enc):    # fresh Adam moments for exactly these rows
        for moment in ("exp_avg", "exp_avg_sq"):
            if moment in opt.state.get(p, {}):
                opt.state[p][moment][idx] = 0.0
    return len(idx)


@torch.no_grad()
def evaluate(sae, x, batch_size=8192):
    """Held-out metrics (normalised units): mse, fvu (fraction of variance unexplained: squared
    error / squared deviation from the mean), l0 (mean active features per input), density (F,)
    (fraction of inputs each feature fires on), dead_frac (never fired here) and dense_frac
    (fires on more than 10% of inputs)."""
    sae.check(x)
    sq_err, fired, l0 = 0.0, torch.zeros(sae.cfg.n_features, device=x.device), 0.0
    for xb in x.split(batch_size):
        x_hat, f = sae(xb)
        sq_err += ((x_hat - xb) * sae.act_scale).float().pow(2).sum().item()
        active = f > 0
        fired += active.sum(0)
        l0 += active.sum().item()
    x_n = x.float() * sae.act_scale
    density = fired / len(x)
    return dict(mse=sq_err / x.numel(), fvu=sq_err / (x_n - x_n.mean(0)).pow(2).sum().item(),
                l0=l0 / len(x), dead_frac=(density == 0).float().mean().item(),
                dense_frac=(density > 0.1).float().mean().item(), density=density)
