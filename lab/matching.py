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
import torch


class Correlator:
    """Accumulates what Pearson correlations need over chunks of the same tokens:
    sums of a, b, a^2, b^2 per unit and the cross sums a^T b (float64, so the subtraction
    E[ab] - E[a]E[b] does not lose the small correlations of dense units)."""

    def __init__(self, n_a, n_b, device="cpu"):
        self.n = 0
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)
        self.sa, self.sa2 = zeros(n_a), zeros(n_a)
        self.sb, self.sb2 = zeros(n_b), zeros(n_b)
        self.sab = zeros(n_a, n_b)

    def add(self, a, b):
        """a (N, n_a), b (N, n_b): activations on the same N tokens, on the Correlator's device. On
        a CPU a sparse a (most features are zero on most tokens) makes a^T b cost only its
        nonzeros; on a GPU the dense product takes milliseconds, and choosing would cost a wait
        for the host each chunk."""
        a, b = a.float(), b.float()
        self.n += a.shape[0]
        self.sa += a.sum(0).double()
        self.sa2 += a.pow(2).sum(0).double()
        self.sb += b.sum(0).double()
        self.sb2 += b.pow(2).sum(0).double()
        if a.device.type == "cpu" and (a > 0).float().mean() < 0.1:
            self.sab += torch.sparse.mm(transposed_csr(a), b).double()
        else:
            self.sab += (a.T @ b).double()

    def correlations(self):
        """(n_a, n_b) Pearson correlations; 0 where a unit never varied (never fired)."""
        n = self.n
        cov = self.sab / n - torch.outer(self.sa / n, self.sb / n)
        var_a = (self.sa2 / n - (self.sa / n) ** 2).clamp_min(0)
        var_b = (self.sb2 / n - (self.sb / n) ** 2).clamp_min(0)
        denom = torch.outer(var_a.sqrt(), var_b.sqrt())
        return torch.where(denom > 0, cov / denom.clamp_min(1e-30), torch.zeros_like(cov)).float().cpu()


def transposed_csr(a):
    """a.T (n_a, N) in CSR form, built from a's nonzeros (several times faster than a.T.to_sparse_csr())."""
    tok, unit = a.nonzero(as_tuple=True)
    order = torch.argsort(unit, stable=True)
    rows = torch.zeros(a.shape[1] + 1, dtype=torch.long)
    rows[1:] = torch.bincount(unit, minlength=a.shape[1]).cumsum(0)
    return torch.sparse_csr_tensor(rows, tok[order], a[tok, unit][order], size=(a.shape[1], a.shape[0]))


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
