import torch

import compare


def sparse_acts(n_tokens, n_units, density=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    on = torch.rand(n_tokens, n_units, generator=g) < density
    return torch.rand(n_tokens, n_units, generator=g) * on


def correlations(a, b, chunk=1000):
    c = compare.Correlator(a.shape[1], b.shape[1])
    for i in range(0, len(a), chunk):
        c.add(a[i:i + chunk], b[i:i + chunk])
    return c.correlations()


def test_identical_units_correlate_perfectly_and_permuted_copies_match_back():
    a = sparse_acts(5000, 64)
    best, idx = compare.best_matches(correlations(a, a))
    assert torch.allclose(best, torch.ones(64), atol=1e-5) and torch.equal(idx, torch.arange(64))
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    best, idx = compare.best_matches(correlations(a, a[:, perm]))
    assert torch.allclose(best, torch.ones(64), atol=1e-5)
    assert torch.equal(perm[idx], torch.arange(64))  # unit i of a found at its place in the copy


def test_correlation_matches_numpy_on_dense_and_sparse_units():
    a, b = sparse_acts(3000, 10), torch.randn(3000, 7).relu()  # sparse features vs dense neurons
    ours = correlations(a, b)
    ref = torch.corrcoef(torch.cat([a, b], 1).T)[:10, 10:]
    assert torch.allclose(ours, ref, atol=1e-5)
    independent = correlations(sparse_acts(20000, 5, seed=2), sparse_acts(20000, 5, seed=3))
    assert independent.abs().max() < 0.05
    assert correlations(torch.zeros(100, 3), b[:100]).abs().max() == 0  # a dead unit: 0, not NaN


def test_decoder_cosines_identical_and_permuted():
    W = torch.randn(32, 16)
    cos = compare.decoder_cosines(W, 3 * W)
    assert torch.allclose(cos.diagonal(), torch.ones(32), atol=1e-6)
    perm = torch.randperm(32)
    best, idx = compare.best_matches(compare.decoder_cosines(W, W[perm]))
    assert torch.equal(perm[idx], torch.arange(32))


def test_a_feature_split_in_two_halves_is_found_as_the_parent_of_both():
    g = torch.Generator().manual_seed(0)
    d, n = 32, 4000
    small = torch.randn(8, d, generator=g)
    small /= small.norm(dim=1, keepdim=True)
    # the large dictionary: each small feature kept, except feature 3 split into two nearby children
    child1 = small[3] + 0.5 * torch.randn(d, generator=g) / d ** 0.5
    child2 = small[3] + 0.5 * torch.randn(d, generator=g) / d ** 0.5
    large = torch.cat([small[:3], small[4:], torch.stack([child1, child2])])
    acts_small = sparse_acts(n, 8, density=0.1)
    half = torch.arange(n) % 2 == 0      # the parent fires; child 1 takes even tokens, child 2 odd
    acts_large = torch.cat([acts_small[:, :3], acts_small[:, 4:],
                            torch.stack([acts_small[:, 3] * half, acts_small[:, 3] * ~half], 1)], 1)
    cos = compare.decoder_cosines(small, large)
    corr = correlations(acts_small, acts_large)

    def coverage(p, kids):
        mass = acts_small[:, p]
        return (mass * (acts_large[:, kids] > 0).any(1)).sum().item() / mass.sum().item()
    families = compare.split_families(cos, corr, coverage)
    assert len(families) == 1
    assert families[0]["parent"] == 3 and sorted(families[0]["children"]) == [7, 8]
    assert abs(families[0]["coverage"] - 1.0) < 1e-6
