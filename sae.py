"""sae.py: the sparse autoencoder (SAE) of "Towards Monosemanticity" (Bricken et al., 2023).

    x_bar = x - b_dec                  pre-encoder bias, tied to minus the post-decoder bias
    f     = ReLU(W_enc x_bar + b_enc)  feature activations, sparse
    x_hat = W_dec f + b_dec            reconstruction; every dictionary vector has unit norm
    loss  = mse(x_hat, x) + l1_coeff * |f|_1

Units. Beyond the paper (Anthropic's 2024 update does the same), inputs are first multiplied by a
fixed scalar act_scale, chosen once from data so that mean ||x * act_scale||^2 == d_in. The SAE's
insides (b_dec, f, the loss) live in these normalised units, so one l1_coeff means the same thing
for every model (model A, seed B, a random-weights control); encode/decode/forward speak x's units.

Loss, in normalised units x_n = x * act_scale:
    mse = mean over the batch AND the d_in dims of (x_hat_n - x_n)^2   (predicting 0 gives ~1)
    l1  = mean over the batch of sum_i f_i
    loss = mse + l1_coeff * l1     (relu; the paper)      loss = mse     (topk; Gao et al. 2024)

In the paper's order: the module, the decoder-norm constraint, the training step (its gradient by
autograd; lab/sae_fast.py's fused_grads, train_sae.py's default, derives it by hand), resampling, evaluation.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from lab.plumbing import require


@dataclass
class SAEConfig:
    d_in: int = 512          # width of the activations (the paper: 512 MLP neurons)
    n_features: int = 4096   # dictionary size (the paper's A/1: 8x the neurons)
    # relu only, in the normalised units below: sparsity vs reconstruction (too high: the SAE collapses to the mean)
    l1_coeff: float = 3e-3
    activation: str = "relu" # "relu" (the paper: ReLU + L1) or "topk" (Gao et al. 2024: k largest, no L1)
    k: int = 32              # topk only: active features per input

    def __post_init__(self):  # each a UserError (a ValueError) "SAEConfig: ..."; a NaN fails its check too
        for ok, problem in [(self.d_in >= 1, f"d_in must be >= 1, got {self.d_in}"),
                            (self.n_features >= 1, f"n_features must be >= 1, got {self.n_features}"),
                            (self.l1_coeff >= 0, f"l1_coeff must be >= 0, got {self.l1_coeff}"),
                            (self.activation in ("relu", "topk"),
                             f"activation must be 'relu' or 'topk', got {self.activation!r}"),
                            (self.activation != "topk" or 1 <= self.k <= self.n_features,
                             f"k must be in 1..n_features={self.n_features} for topk, got {self.k}")]:
            require(ok, "SAEConfig:", problem)


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

    def directions(self):
        """(F, d_in): each feature's dictionary vector in the original units of x, the vector that
        one unit of its activation adds to the reconstruction (steering adds multiples of it)."""
        return self.W_dec.detach() / self.act_scale

    def loss(self, x, l1_coeff=None):
        """The autograd reference, in normalised units (see the top of the file). l1_coeff: this
        step's coefficient where a schedule changes it (train_sae.py --recipe 2024), else cfg's."""
        self.check(x)
        l1_coeff = self.cfg.l1_coeff if l1_coeff is None else l1_coeff
        x_n = x.float() * self.act_scale
        f = self.activate(self.pre_acts(x_n))
        mse = (f @ self.W_dec + self.b_dec - x_n).pow(2).mean()
        l1 = f.sum(1).mean()
        loss = mse + l1_coeff * l1 if self.cfg.activation == "relu" else mse
        return dict(loss=loss, mse=mse, l1=l1, f=f)


@torch.no_grad()
def geometric_median(x, iters=100, tol=1e-6):
    """The point minimising the summed Euclidean distance to the rows of x (Weiszfeld's algorithm:
    repeatedly take the mean weighted by 1/distance). Unlike the mean, robust to outliers."""
    y = x.mean(0)
    for _ in range(iters):
        w = 1 / (x - y).norm(dim=1).clamp_min(1e-8)
        y, y_old = (w[:, None] * x).sum(0) / w.sum(), y
        if (y - y_old).norm() <= tol * y_old.norm().clamp_min(1.0):
            break
    return y


# ----------------------------------------------------------------------------------------------
# The decoder-norm constraint: unit-norm dictionary vectors. The paper found renormalising after each step
# alone worse than also removing, before it, the part of each vector's gradient that only changes its length.

@torch.no_grad()
def remove_parallel_grad(sae):
    W, G = sae.W_dec, sae.W_dec.grad
    G.addcmul_((torch.linalg.vecdot(G, W) / torch.linalg.vecdot(W, W))[:, None], W, value=-1)


@torch.no_grad()
def normalize_decoder(sae):
    sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)


def make_optimizer(sae, lr):
    """Plain Adam, as in the paper (its betas unstated: PyTorch's 0.9, 0.999); fused: the same sums, one kernel."""
    return torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999), fused=True)


def train_step(sae, opt, x, l1_coeff=None, grads=None, sync=None):
    """One optimizer step on x (N, d_in): the gradients (grads, else reference_grads), averaged over the
    processes under DDP (sync), Adam, the dictionary renormalised. Returns loss, mse, l1, l0 and fired."""
    stats = (grads or reference_grads)(sae, x, l1_coeff)
    if sync is not None:
        sync(sae, stats)
    opt.step()
    normalize_decoder(sae)
    return stats


def reference_grads(sae, x, l1_coeff=None):
    """The gradients by autograd into fresh .grads (the caller zeroes nothing), their parallel part removed."""
    sae.zero_grad(set_to_none=True)
    with torch.enable_grad():
        out = sae.loss(x, l1_coeff)
        out["loss"].backward()
    remove_parallel_grad(sae)
    active = out.pop("f").detach() > 0
    out = {k: v.detach() for k, v in out.items()}
    return dict(out, l0=active.sum(1).float().mean(), fired=active.sum(0))


# ----------------------------------------------------------------------------------------------
# Dead features (paper): those that stopped firing are resampled a few times early in training.

def resample_schedule(total_steps):
    """The paper resamples at steps 25k, 50k, 75k and 100k of 1M: the same fractions of our run
    (2.5%, 5%, 7.5%, 10%), then leaves 90% of training to settle. Resampling more often diverges."""
    return sorted({max(1, round(frac * total_steps)) for frac in (0.025, 0.05, 0.075, 0.1)})


def dead_window(total_steps):
    """Steps a feature must have been silent for to count as dead. The paper: 12,500 of 1M (1.25%), ~100M
    activations. At our few thousand steps that is a few dozen, too few to tell a rare feature from a dead
    one: so at least 250 (~1M activations at batch 4096), but at most the 2.5% between two resamples, so
    each resample looks at a window no earlier resample has touched."""
    return max(1, round(max(0.0125 * total_steps, min(250, 0.025 * total_steps))))


@torch.no_grad()
def resample_dead(sae, opt, dead, x, sq_errors=None, batch_size=8192):
    """The paper's procedure: dead (F,) bool mask; x: a sample of inputs (the paper uses 819,200). Each
    dead feature is re-aimed at one input, picked with probability proportional to the square of its
    reconstruction loss; the encoder row and bias are reset so the new feature fires only weakly at first.
    sq_errors (N,): each input's squared error, if the caller has it. Returns how many were resampled."""
    sae.check(x)
    idx = dead.nonzero().squeeze(1)
    if len(idx) == 0:
        return 0
    if sq_errors is None:
        sq_errors = torch.cat([(sae(xb)[0] - xb).mul(sae.act_scale).pow(2).sum(1) for xb in x.split(batch_size)])
    prob = sq_errors.pow(2)                        # the paper: the square of each input's loss (its squared error)
    prob = prob if prob.sum() > 0 else torch.ones_like(prob)  # a perfect SAE: pick uniformly
    pick = torch.multinomial(prob, len(idx), replacement=len(idx) > (prob > 0).sum().item())
    x_n = x[pick].float() * sae.act_scale
    direction = x_n / x_n.norm(dim=1, keepdim=True).clamp_min(1e-8)
    enc_norm = sae.W_enc[~dead].norm(dim=1).mean() if not dead.all() else torch.tensor(1.0)
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
    """Held-out metrics (normalised units): mse, fvu (fraction of variance unexplained: squared error /
    squared deviation from the mean), l0 (mean active features per input), density (F,) (fraction of
    inputs each feature fires on), dead_frac (never fired here) and dense_frac (fires on over 10%)."""
    sae.check(x)
    sq_err, fired, l0 = 0.0, torch.zeros(sae.cfg.n_features, device=x.device), 0.0
    for xb in x.split(batch_size):
        x_hat, f = sae(xb)
        sq_err += ((x_hat - xb) * sae.act_scale).float().pow(2).sum().item()
        active = f > 0
        fired += active.sum(0)
        l0 += active.sum().item()
    return metrics(sae, x, sq_err, fired, l0)


def metrics(sae, x, sq_err, fired, l0):
    """evaluate's dict from its sums over x: squared error (normalised units), (F,) firings, active features."""
    x_n = x.float() * sae.act_scale
    density = fired / len(x)
    return dict(mse=sq_err / x.numel(), fvu=sq_err / (x_n - x_n.mean(0)).pow(2).sum().item(),
                l0=l0 / len(x), dead_frac=(density == 0).float().mean().item(),
                dense_frac=(density > 0.1).float().mean().item(), density=density)
