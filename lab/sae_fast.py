"""lab/sae_fast.py: the SAE's training step, fast. The maths is sae.py's; this file is speed.

sae.py trains by autograd: sae.loss(x).backward(). That spends 12*d*F FLOPs per input, almost all
of them on zeros, because after the ReLU only a few dozen of the F features are active. Here the
backward pass is derived by hand (below, beside the code) so that only the encoder product is
dense and everything else touches the active features only. tests/test_sae.py checks that it
equals sae.reference_grads on random inputs (dead features, all features active, TopK); lab/bench.py
(through lab/bench_sae.py) times it against the autograd step.
"""
import warnings

import torch

from lab.plumbing import fast_bf16
import sae as sae_lib
from sae import metrics, reference_grads, remove_parallel_grad

# torch's notes that CSR support is "beta" and that invariant checks are off (tests turn them on)
warnings.filterwarnings("ignore", message="Sparse (CSR tensor support is in beta|invariant checks)")


def train_step(sae, opt, x, fused=True, bf16=None, l1_coeff=None):
    """sae.train_step through fused_grads (or, fused=False, the autograd reference): what the tests
    and the benchmark call. Returns the dict of 0-dim tensors (a GPU step never waits for the host;
    call .item() when logging)."""
    grads = (lambda s, x, l1: fused_grads(s, x, l1, bf16=bf16)) if fused else reference_grads
    return sae_lib.train_step(sae, opt, x, l1_coeff, grads)


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
# The ops, chosen by measurement (docs/speed.md has the timings): the sparse products are CSR
# tensors (MKL on a CPU, cuSPARSE on CUDA), several times faster than gathering the (nnz, d) rows;
# the transposed products sort the entries by feature first. The encoder runs in row chunks so the
# (chunk, F) pre-activations stay in cache, in bf16 where that is fast; the chosen entries are then
# recomputed in float32, so the values are exact and only which entries are active can differ.

@torch.no_grad()
def fused_grads(sae, x, l1_coeff=None, bf16=None, chunk=1024, dense_above=0.1):
    """Fill .grad of W_enc, b_enc, W_dec, b_dec with the gradient of sae.loss(x), derived by hand
    and exploiting the sparsity of f, including remove_parallel_grad. No autograd graph.
    bf16: run the dense encoder product in bfloat16 to pick the active features, then recompute
    their values in float32 (None: where matmuls are fast in bf16, see fast_bf16).
    dense_above: if more than this fraction of f is active (early in training, before the L1
    penalty has made f sparse), sparse products are slower than dense ones: fall back to the
    autograd reference.
    l1_coeff: this step's (train_sae.py --recipe 2024 warms it up), else sae.cfg.l1_coeff."""
    sae.check(x)
    cfg, N, F = sae.cfg, x.shape[0], sae.cfg.n_features
    l1_coeff = cfg.l1_coeff if l1_coeff is None else l1_coeff
    fwd = sparse_forward(sae, x, bf16, chunk, dense_above)
    if fwd is None:
        return reference_grads(sae, x, l1_coeff)
    x_bar, rows, crow, cols, f, e = fwd
    csr = lambda v: torch.sparse_csr_tensor(crow, cols, v, (N, F))
    mse = e.flatten().dot(e.flatten()) / e.numel()
    l1 = f.sum() / N
    relu = cfg.activation == "relu"
    loss = mse + l1_coeff * l1 if relu else mse
    # backward
    g = e.mul_(2 / e.numel())
    active = f > 0
    l1_grad = torch.full_like(f, l1_coeff / N if relu else 0.0)
    dpre = torch.sparse.sampled_addmm(csr(l1_grad), g, sae.W_dec.T).values() * active
    # the transposed products need the entries sorted by feature: a CSR matrix of shape (F, N)
    order = torch.argsort(cols, stable=True)
    crow_t, rows_t = crow_pointers(cols, F), rows[order]
    csr_t = lambda v: torch.sparse_csr_tensor(crow_t, rows_t, v[order], (F, N))
    for p, v, dense in ((sae.W_dec, f, g), (sae.W_enc, dpre, x_bar)):
        p.grad = spmm(csr_t(v), dense, torch.empty_like(p) if p.grad is None else p.grad)
    remove_parallel_grad(sae)
    sae.b_enc.grad = torch.zeros_like(sae.b_enc).index_add_(0, cols, dpre)
    sae.b_dec.grad = g.sum(0) - sae.b_enc.grad @ sae.W_enc
    fired = torch.zeros(F, dtype=torch.long, device=x.device).index_add_(0, cols, active.long())
    return dict(loss=loss, mse=mse, l1=l1, l0=active.sum() / N, fired=fired)


def sparse_forward(sae, x, bf16=None, chunk=1024, dense_above=1.0):
    """The forward pass in normalised units: x_bar = x_n - b_dec, the active entries of f (rows,
    CSR row pointers, cols, values) and the error e = x_hat - x_n. None if f is too dense."""
    bf16 = fast_bf16(x.device) if bf16 is None else bf16
    x_bar = x.float() * sae.act_scale
    x_bar -= sae.b_dec
    sparse = encode_sparse(sae, x_bar, bf16, chunk, dense_above)
    if sparse is None:
        return None
    rows, crow, cols, f = sparse
    e = spmm(torch.sparse_csr_tensor(crow, cols, f, (len(x), sae.cfg.n_features)), sae.W_dec,
              torch.empty_like(x_bar))
    e -= x_bar  # = W_dec f + b_dec - x_n = x_hat - x_n
    return x_bar, rows, crow, cols, f, e


def encode_sparse(sae, x_bar, bf16, chunk, dense_above):
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
            # a positive bf16 number is a positive int16 bit pattern: the same test, faster on a CPU
            r, c = ((pre.view(torch.int16) if bf16 else pre) > 0).nonzero().unbind(1)
        if len(c) > dense_above * pre.numel():
            return None
        if not bf16:  # (bf16: recomputed below)
            vals.append(pre[r, c])
        rows.append(r + s); cols.append(c)
    rows, cols = torch.cat(rows).int(), torch.cat(cols).int()  # int32 indices: ~10% faster in MKL
    crow = crow_pointers(rows, N)
    if bf16:  # recompute the chosen entries in float32: a sampled matmul, only nnz*d flops
        pattern = torch.sparse_csr_tensor(crow, cols, sae.b_enc[cols], (N, F))
        vals = torch.sparse.sampled_addmm(pattern, x_bar, sae.W_enc.T).values()
        if topk and k > cfg.k:  # the exact top k of the 2k candidates, columns sorted again
            keep = vals.view(N, k).topk(cfg.k, dim=1).indices.sort(dim=1).values
            keep = (keep + k * torch.arange(N, device=keep.device)[:, None]).flatten()
            rows, cols, vals = rows[keep], cols[keep], vals[keep]
            crow = crow_pointers(rows, N)
    else:
        vals = torch.cat(vals)
    return rows, crow, cols, vals.relu()


def spmm(a, b, out):
    """out = a @ b for a sparse CSR a: torch.sparse.mm without its zero-fill and copy of the
    result (addmm with beta=0 ignores out's old contents), 30% faster on CPU."""
    return torch.addmm(out, a, b, beta=0, out=out)


def crow_pointers(rows, n):
    """CSR row pointers of sorted row indices: crow[r] = number of entries in rows before r."""
    return torch.cat([rows.new_zeros(1), torch.bincount(rows, minlength=n).cumsum(0).to(rows.dtype)])


@torch.no_grad()
def squared_errors(sae, x, batch_size=8192):
    """(N,) each input's squared reconstruction error in normalised units, through the sparse
    forward pass: what sae.resample_dead samples from (the paper: ~800k inputs, so speed matters)."""
    return torch.cat([sparse_forward(sae, xb)[-1].pow(2).sum(1) for xb in x.split(batch_size)])


@torch.no_grad()
def evaluate(sae, x, batch_size=8192, dense_above=0.1):
    """sae.evaluate's metrics (the same dict) through the sparse forward pass, in float32 so that
    L0 and dead counts are exact: the training loop's held-out metrics, several times faster than
    the dense forward. A batch where f is denser than dense_above (early in training) goes through
    the dense forward instead."""
    sae.check(x)
    F = sae.cfg.n_features
    sq_err, fired, l0 = 0.0, torch.zeros(F, device=x.device), 0.0
    for xb in x.split(batch_size):
        fwd = sparse_forward(sae, xb, bf16=False, dense_above=dense_above)
        if fwd is None:
            x_hat, f = sae(xb)
            sq_err += ((x_hat - xb) * sae.act_scale).float().pow(2).sum().item()
            active = (f > 0).sum(0)
        else:
            _, _, _, cols, f, e = fwd
            sq_err += e.pow(2).sum().item()
            active = torch.bincount(cols[f > 0], minlength=F)   # (topk keeps entries that are 0)
        fired += active
        l0 += active.sum().item()
    return metrics(sae, x, sq_err, fired, l0)
