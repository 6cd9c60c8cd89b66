"""compare.py: matching units between two dictionaries (the paper's universality and splitting).

Two questions from the end of the paper, each answered by matching every unit of one set to its
best partner in another:

- Universality: do two transformers that differ only in their seed learn the same features? For
  each feature of A/1, the largest Pearson correlation of its activations with any feature of B/1
  over the same tokens (the paper: median 0.72 for features, 0.46 for neurons).
- Feature splitting: as the dictionary grows, a coarse feature splits into finer ones. For each
  feature of the small dictionary, its nearest features in the larger one by decoder cosine
  similarity and by activation correlation; a clear split is one parent whose few children
  together cover its activations.

Activations are streamed in chunks of tokens, so a million tokens of 4,096 features never sit in
memory densely; only the (units_a, units_b) matrix of co-activation sums does.
"""
import torch


class Correlator:
    """Accumulates what Pearson correlations need over chunks of the same tokens:
    sums of a, b, a^2, b^2 per unit and the cross sums a^T b (float64, so the subtraction
    E[ab] - E[a]E[b] does not lose the small correlations of dense units)."""

    def __init__(self, n_a, n_b):
        self.n = 0
        self.sa, self.sa2 = torch.zeros(n_a, dtype=torch.float64), torch.zeros(n_a, dtype=torch.float64)
        self.sb, self.sb2 = torch.zeros(n_b, dtype=torch.float64), torch.zeros(n_b, dtype=torch.float64)
        self.sab = torch.zeros(n_a, n_b, dtype=torch.float64)

    def add(self, a, b):
        """a (N, n_a), b (N, n_b): activations on the same N tokens. A sparse a (most features
        are zero on most tokens) makes a^T b cost only its nonzeros."""
        a, b = a.float(), b.float()
        self.n += a.shape[0]
        self.sa += a.sum(0).double()
        self.sa2 += a.pow(2).sum(0).double()
        self.sb += b.sum(0).double()
        self.sb2 += b.pow(2).sum(0).double()
        if (a > 0).float().mean() < 0.1:
            self.sab += torch.sparse.mm(a.T.to_sparse_csr(), b).double()
        else:
            self.sab += (a.T @ b).double()

    def correlations(self):
        """(n_a, n_b) Pearson correlations; 0 where a unit never varied (never fired)."""
        n = self.n
        cov = self.sab / n - torch.outer(self.sa / n, self.sb / n)
        var_a = (self.sa2 / n - (self.sa / n) ** 2).clamp_min(0)
        var_b = (self.sb2 / n - (self.sb / n) ** 2).clamp_min(0)
        denom = torch.outer(var_a.sqrt(), var_b.sqrt())
        return torch.where(denom > 0, cov / denom.clamp_min(1e-30), torch.zeros_like(cov)).float()


def best_matches(similarity):
    """For each row unit, its most similar column unit: (values (n_a,), indices (n_a,))."""
    return similarity.max(dim=1)


def decoder_cosines(W_a, W_b):
    """Cosine similarity of every dictionary vector of one SAE with every one of another:
    rows of W_dec (F, d) are the paper's decoder columns."""
    a = W_a / W_a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = W_b / W_b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return a @ b.T


def split_families(cos, corr, coverage, min_cos=0.5, max_children=6):
    """Families: for each parent (feature of the small dictionary), its children in the larger one:
    the features whose nearest parent it is (by decoder cosine), at cosine >= min_cos. The clearest
    splits come first: at least two children, ranked by how much of the parent's activation the
    children together cover (coverage[p]) times their mean activation correlation with the parent.

    cos, corr: (F_small, F_large) decoder cosines and activation correlations.
    coverage: function (parent, children) -> fraction of the parent's activation mass on tokens
    where some child fires."""
    parent_of = cos.argmax(dim=0)          # each large feature's nearest small feature
    best_cos = cos.max(dim=0).values
    families = []
    for p in range(cos.shape[0]):
        kids = ((parent_of == p) & (best_cos >= min_cos)).nonzero().squeeze(1)
        if len(kids) < 2:
            continue
        kids = kids[cos[p, kids].argsort(descending=True)][:max_children]
        cover = coverage(p, kids)
        score = cover * corr[p, kids].mean().item()
        families.append({"parent": p, "children": kids.tolist(), "cosines": cos[p, kids].tolist(),
                         "correlations": corr[p, kids].tolist(), "coverage": cover, "score": score})
    return sorted(families, key=lambda f: -f["score"])
