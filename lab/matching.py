"""lab/matching.py: matching the units of one set to another's (lab/compare.py's universality and splitting).

Each unit of one set (an SAE's features, or a transformer's neurons) is matched to its best partner
in another: by the Pearson correlation of their activations over the same tokens, or by the cosine
similarity of their decoder directions. Correlations are accumulated chunk by chunk, so a million
tokens of 4,096 features never sit in memory densely; only the (units_a, units_b) sums do. For
feature splitting, Coverage measures how much of a small dictionary's feature its children in a
larger one take over, together and one by one.

The sums live on the device of the activations they are fed (pass it to the constructor), so a
GPU's chunks are never copied to the host; the results come back on the CPU.
"""
import functools

import torch

PAIR_COST = 1000  # a pair of the sparse cross sums costs about this many multiply-adds of a dense product (here: 20 ns, 0.025 ns)
INT32_INDEX_LIMIT = 2 ** 31  # below, the pairs are indexed in 32 bits: half the memory traffic, nearly twice the speed


class Correlator:
    """Accumulates what Pearson correlations need over chunks of the same tokens, kept apart per group
    of documents so that a bootstrap can resample the groups (lab/compare.py): the token count and
    the sums of a, b, a^2 and b^2 per unit (float64), and the cross sums a^T b (one (n_a, n_b)
    matrix per group, float32 to halve the memory; the groups are summed in float64 before
    E[ab] - E[a]E[b] is taken, so the small correlations of dense units are not lost)."""

    def __init__(self, n_a, n_b, groups=1, device="cpu"):
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)
        self.n = zeros(groups)
        self.sa, self.sa2 = zeros(groups, n_a), zeros(groups, n_a)
        self.sb, self.sb2 = zeros(groups, n_b), zeros(groups, n_b)
        self.sab = torch.zeros(groups, n_a, n_b, device=device)

    def add(self, a, b, group=0):
        """a (N, n_a), b (N, n_b): activations on the same N tokens of one group, on the
        Correlator's device (tensors, or Acts when several Correlators share them)."""
        a, b = as_acts(a), as_acts(b)
        self.n[group] += a.shape[0]
        for acts, s, s2 in ((a, self.sa, self.sa2), (b, self.sb, self.sb2)):
            s[group] += acts.sums[0]
            s2[group] += acts.sums[1]
        add_cross_sums(self.sab[group], a, b)

    def correlations(self):
        """(n_a, n_b) Pearson correlations over all groups; 0 where a unit never varied (never fired)."""
        return pearson(self.n.sum(), self.sa.sum(0)[:, None], self.sa2.sum(0)[:, None], self.sb.sum(0)[None],
                       self.sb2.sum(0)[None], self.sab.sum(0, dtype=torch.float64)).float().cpu()

    def best_matches(self, rows, cols, draws, k=8):
        """Each row unit's best correlation with the column units (rows, cols: index tensors), on all
        the data and on resamples of it: draws (R, groups) says how often each group is drawn in each
        of R resamples. On a resample a row's best is sought among its k best columns on all the data
        (it is one of them unless k columns nearly tie), so a resample costs k sums per row, not n_b.
        Returns (best (len(rows),), its column (len(rows),), best on each resample (R, len(rows)))."""
        top = self.correlations()[rows][:, cols].topk(min(k, len(cols)), dim=1)
        cand = cols[top.indices]                                                               # (rows, k)
        host = lambda x: x.double().cpu()
        here = lambda i: i.to(self.sab.device)
        n, sa, sa2 = host(self.n), host(self.sa[:, here(rows)]), host(self.sa2[:, here(rows)])  # (G,), (G, rows)
        sb, sb2 = host(self.sb[:, here(cand)]), host(self.sb2[:, here(cand)])                  # (G, rows, k)
        sab = host(self.sab[:, here(rows)[:, None], here(cand)])
        best = []
        for d in draws.double().split(64):  # (r, G): the sums of a few resamples at a time
            mix = lambda x: torch.tensordot(d, x, dims=1)
            r = pearson(mix(n)[:, None, None], mix(sa)[..., None], mix(sa2)[..., None], mix(sb), mix(sb2), mix(sab))
            best.append(r.max(dim=2).values)
        return top.values[:, 0], cand[:, 0], torch.cat(best).float()


def pearson(n, sa, sa2, sb, sb2, sab):
    """Pearson correlations from sums over n tokens (broadcast together); 0 where a unit never varied."""
    cov = sab / n - (sa / n) * (sb / n)
    var_a = (sa2 / n - (sa / n) ** 2).clamp_min(0)
    var_b = (sb2 / n - (sb / n) ** 2).clamp_min(0)
    denom = (var_a * var_b).sqrt()
    return torch.where(denom > 0, cov / denom.clamp_min(1e-30), torch.zeros_like(cov))


class Acts:
    """A chunk of activations (N, n) and what the sums need of it, each computed once however many
    Correlators it feeds: on a CPU its nonzeros, token by token (a few dozen of thousands of
    features fire on a token), and per unit the sum and the sum of squares (float64) and the count
    of tokens where it fires. (On a CPU, sums down the columns of a dense (N, n) array cost more
    than finding its nonzeros.) Built from the dense array, or from its nonzeros (from_nonzeros),
    which then never needs to be written out densely on a CPU."""

    def __init__(self, x):
        self.x, self.shape, self.device = x.float(), x.shape, x.device

    @classmethod
    def from_nonzeros(cls, tok, unit, val, shape):
        """tok, unit, val: the entries, sorted by token (as x.nonzero() gives them)."""
        acts = cls.__new__(cls)
        acts.shape, acts.device, acts.nonzeros = shape, tok.device, (tok, unit, val.float())
        return acts

    @functools.cached_property
    def x(self):
        x = torch.zeros(self.shape, device=self.device)
        x[self.nonzeros[0], self.nonzeros[1]] = self.nonzeros[2]
        return x

    @functools.cached_property
    def nonzeros(self):
        tok, unit = self.x.nonzero(as_tuple=True)
        return tok, unit, self.x[tok, unit]

    @functools.cached_property
    def sums(self):
        if self.device.type != "cpu":  # dense sums: no wait for the host to count the nonzeros
            return self.x.sum(0).double(), self.x.pow(2).sum(0).double()
        _, unit, val = self.nonzeros
        val = val.double()
        return (torch.bincount(unit, val, minlength=self.shape[1]),
                torch.bincount(unit, val * val, minlength=self.shape[1]))

    @functools.cached_property
    def fired(self):
        if self.device.type != "cpu":
            return (self.x > 0).sum(0)
        _, unit, val = self.nonzeros
        return torch.bincount(unit[val > 0], minlength=self.shape[1])

    def rolled(self, shift):
        """The same activations moved `shift` tokens on (wrapping around), as x.roll(shift, 0)."""
        if "nonzeros" not in self.__dict__:
            return Acts(self.x.roll(shift, 0))
        tok, unit, val = self.nonzeros
        tok = (tok + shift) % self.shape[0]
        order = torch.argsort(tok, stable=True)
        return Acts.from_nonzeros(tok[order], unit[order], val[order], self.shape)


def as_acts(x):
    return x if isinstance(x, Acts) else Acts(x)


def add_cross_sums(sab, a, b):
    """sab (n_a, n_b) += a^T b. Where both are sparse (a few dozen of thousands of features fire on a
    token), only the pairs of units that fire together on a token contribute, so the sum is built
    from those pairs: about L0_a x L0_b a token instead of n_a x n_b multiply-adds. On a GPU the
    dense product takes milliseconds, and choosing would cost a wait for the host each chunk."""
    a, b = as_acts(a), as_acts(b)
    if sab.device.type != "cpu":
        sab += a.x.T @ b.x
        return
    ta, ia, va = a.nonzeros
    tb, jb, vb = b.nonzeros
    N = a.shape[0]
    if len(ta) * len(tb) * PAIR_COST > sab.numel() * N ** 2:  # ~len(ta) len(tb) / N pairs: dense enough
        sab += a.x.T @ b.x                                      # that the product is cheaper
        return
    i = torch.int32 if sab.numel() < INT32_INDEX_LIMIT else torch.int64
    order = torch.argsort(ia, stable=True)                   # a's nonzeros unit by unit: sab fills row by row
    ta, ia, va = ta[order].to(i), ia[order].to(i), va[order]
    per_token = torch.bincount(tb, minlength=N).to(i)        # b's nonzeros come token by token
    pairs = per_token.index_select(0, ta)                    # how many b units fire beside each nonzero of a
    which_a = torch.repeat_interleave(pairs).to(i)
    first_b = (per_token.cumsum(0, dtype=i) - per_token).index_select(0, ta)
    which_b = torch.arange(len(which_a), dtype=i) + (first_b - (pairs.cumsum(0, dtype=i) - pairs)).index_select(0, which_a)
    flat = (ia * b.shape[1]).index_select(0, which_a) + jb.to(i).index_select(0, which_b)
    sab.view(-1).index_add_(0, flat, va.index_select(0, which_a) * vb.index_select(0, which_b))


class Coverage:
    """For each feature of a small dictionary (a parent), the share of its activation mass on tokens
    where at least one of its children in a larger dictionary fires (the features whose parent it
    is), and for each child the share on the tokens where it fires (the child on its own)."""

    def __init__(self, n_small, n_large, device="cpu"):
        self.total = torch.zeros(n_small, dtype=torch.float64, device=device)
        self.covered = torch.zeros(n_small, dtype=torch.float64, device=device)
        self.by_child = torch.zeros(n_large, dtype=torch.float64, device=device)

    def add(self, small, large, parent_of):
        """small (N, n_small), large (N, n_large) activations on the same tokens; parent_of (n_large,),
        all on the Coverage's device."""
        small, large = small.float(), large.float()
        tok, child = (large > 0).nonzero(as_tuple=True)
        keep = parent_of[child] >= 0
        tok, child = tok[keep], child[keep]
        child_fires = torch.zeros_like(small, dtype=torch.bool)
        child_fires[tok, parent_of[child]] = True
        self.total += small.sum(0).double()
        self.covered += (small * child_fires).sum(0).double()
        self.by_child.index_add_(0, child, small[tok, parent_of[child]].double())

    def fractions(self, parent_of):
        """(parents' coverage by all their children (n_small,), by each child alone (n_large,))."""
        total = self.total.clamp_min(1e-30)
        child = torch.where(parent_of >= 0, self.by_child / total[parent_of.clamp_min(0)], 0)
        return (self.covered / total).float().cpu(), child.float().cpu()


def best_matches(similarity):
    """For each row unit, its most similar column unit: (values (n_a,), indices (n_a,))."""
    return similarity.max(dim=1)


def decoder_cosines(W_a, W_b):
    """Cosine similarity of every dictionary vector of one SAE with every one of another:
    rows of W_dec (F, d) are the paper's decoder columns."""
    a = W_a / W_a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = W_b / W_b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return a @ b.T


def nearest_parent(W_small, W_large, min_cos=0.5):
    """(n_large,): each large feature's nearest small feature by decoder cosine, -1 below min_cos."""
    best, idx = best_matches(decoder_cosines(W_large.detach().float().cpu(), W_small.detach().float().cpu()))
    return torch.where(best >= min_cos, idx, -1)


def split_families(parent_of, cos, corr, coverage, child_coverage, max_children=6):
    """Families: each small feature with at least two children (the large features whose nearest
    parent it is), the clearest splits first: ranked by how much more of the parent's activation the
    children cover together than the best of them alone. A parent split in two halves scores 0.5;
    one merely duplicated (every child fires wherever the parent does) scores 0.
    parent_of (n_large,); cos, corr (n_small, n_large); coverage, child_coverage from Coverage."""
    families = []
    for p in range(cos.shape[0]):
        kids = (parent_of == p).nonzero().squeeze(1)
        if len(kids) < 2:
            continue
        best_child = float(child_coverage[kids].max())
        score = float(coverage[p]) - best_child
        kids = kids[cos[p, kids].argsort(descending=True)][:max_children]
        families.append({"parent": p, "children": kids.tolist(), "cosines": cos[p, kids].tolist(),
                         "correlations": corr[p, kids].tolist(), "coverage": float(coverage[p]),
                         "best_child": best_child, "score": score})
    return sorted(families, key=lambda f: -f["score"])
