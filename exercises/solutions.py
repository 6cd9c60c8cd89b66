"""A teacher's answers to exercises/sae.py, written from the course's equations (not copied from the
reference): `python -m lab.course check --impl exercises/solutions.py` passes every step, and
tests/test_course.py trains an SAE on them to the reference's numbers. Steps 1-6; step 7, the sparse
backward pass, is lab/sae_fast.py itself.
"""
import numpy as np
import torch


def encode(self, x):
    self.check(x)                                             # a wrong width: a one-line error
    x_bar = x.float() * self.act_scale - self.b_dec          # normalised units, minus the pre-encoder bias
    return self.activate(x_bar @ self.W_enc.T + self.b_enc)


def decode(self, f):
    return (f @ self.W_dec + self.b_dec) / self.act_scale


def loss(self, x, l1_coeff=None):
    self.check(x)
    x_n = x.float() * self.act_scale
    f = self.activate((x_n - self.b_dec) @ self.W_enc.T + self.b_enc)
    mse = ((f @ self.W_dec + self.b_dec) - x_n).square().mean()
    l1 = f.sum(dim=1).mean()
    if self.cfg.activation == "topk":
        return dict(loss=mse, mse=mse, l1=l1, f=f)
    coeff = self.cfg.l1_coeff if l1_coeff is None else l1_coeff
    return dict(loss=mse + coeff * l1, mse=mse, l1=l1, f=f)


@torch.no_grad()
def remove_parallel_grad(sae):
    W, G = sae.W_dec, sae.W_dec.grad
    along = (G * W).sum(dim=1, keepdim=True) / (W * W).sum(dim=1, keepdim=True)
    G -= along * W


@torch.no_grad()
def normalize_decoder(sae):
    sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True))


@torch.no_grad()
def geometric_median(x, iters=100, tol=1e-6):
    y = x.mean(dim=0)
    for _ in range(iters):
        w = 1 / (x - y).norm(dim=1).clamp_min(1e-8)
        y_next = (w[:, None] * x).sum(dim=0) / w.sum()
        moved = (y_next - y).norm()
        y = y_next
        if moved <= tol * max(y.norm().item(), 1.0):
            break
    return y


@torch.no_grad()
def resample_dead(sae, opt, dead, x, sq_errors=None, batch_size=8192):
    rows = dead.nonzero().squeeze(1)
    if len(rows) == 0:
        return 0
    if sq_errors is None:
        sq_errors = torch.cat([(sae(b)[0] - b).mul(sae.act_scale).square().sum(1) for b in x.split(batch_size)])
    weights = sq_errors.square()
    if weights.sum() == 0:
        weights = torch.ones_like(weights)
    picks = torch.multinomial(weights, len(rows), replacement=len(rows) > int((weights > 0).sum()))
    inputs = x[picks].float() * sae.act_scale
    directions = inputs / inputs.norm(dim=1, keepdim=True).clamp_min(1e-8)
    alive_norm = sae.W_enc[~dead].norm(dim=1).mean() if (~dead).any() else torch.tensor(1.0)
    sae.W_dec[rows] = directions
    sae.W_enc[rows] = 0.2 * alive_norm * directions
    sae.b_enc[rows] = 0.0
    for p in (sae.W_enc, sae.W_dec, sae.b_enc):
        for moment in ("exp_avg", "exp_avg_sq"):
            if moment in opt.state.get(p, {}):
                opt.state[p][moment][rows] = 0.0
    return len(rows)


@torch.no_grad()
def lm_loss(model, windows, replace):
    last = len(model.blocks) - 1

    def hook(layer, h):
        return replace(h.flatten(0, 1)).view_as(h) if layer == last else h
    return model(windows[:, :-1], windows[:, 1:], mlp_hook=hook)[1]


def recovered(ablated, replaced, clean):
    return (ablated - replaced) / (ablated - clean)


def simulate(expl, prev, cur, labels, vocab):
    keys, values = np.asarray(expl["keys"]), np.asarray(expl["values"], float)
    out = np.full(len(cur), float(expl["default"]))
    first = vocab * (vocab + 1)                                # the first predicate's key
    # the least specific rows first, so that each more specific row overwrites them: the predicates
    # from the last to the first, then the token rows, then the (previous token, token) rows
    rows = sorted(zip(keys.tolist(), values), key=lambda r: (r[0] < first, r[0] < vocab * vocab, -r[0]))
    for key, value in rows:
        if key >= first:
            out[labels[:, key - first]] = value
        elif key >= vocab * vocab:
            out[cur == key - vocab * vocab] = value
        else:
            out[prev * vocab + cur == key] = value
    return out


def pearson(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a - a.mean(), b - b.mean()
    scale = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / scale) if scale > 0 else 0.0
