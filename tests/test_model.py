import torch

from model import ModelConfig, Transformer


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=300, block_size=32)).eval()


def test_model_is_causal():
    model = tiny_model()
    x = torch.randint(0, 300, (2, 32))
    x2 = x.clone()
    x2[:, 20:] = torch.randint(0, 300, (2, 12))
    a, _ = model(x)
    b, _ = model(x2)
    assert torch.equal(a[:, :20], b[:, :20])
    assert not torch.allclose(a[:, 20:], b[:, 20:])


def test_reading_and_replacing_neurons():
    model = tiny_model()
    x = torch.randint(0, 300, (3, 32))
    clean, _ = model(x)
    seen = []
    same, _ = model(x, mlp_hook=lambda layer, h: seen.append(h) or h)
    assert torch.equal(same, clean)  # the identity hook changes nothing
    assert seen[0].shape == (3, 32, 512) and (seen[0] >= 0).all()  # 512 ReLU neurons
    assert torch.equal(model.mlp_activations(x), seen[0])
    ablated, _ = model(x, mlp_hook=lambda layer, h: torch.zeros_like(h))
    assert not torch.allclose(ablated, clean)
    # zero-ablating the neurons equals removing the MLP's weights (only its output bias remains)
    with torch.no_grad():
        model.blocks[0].mlp_in.weight.zero_()
        model.blocks[0].mlp_in.bias.fill_(-1.0)
    assert torch.allclose(model(x)[0], ablated, atol=1e-6)


def test_generate_is_seeded_and_greedy_is_deterministic():
    model = tiny_model()
    prompt = torch.randint(0, 300, (1, 5))
    g = lambda: torch.Generator().manual_seed(1)
    a = model.generate(prompt, 10, temperature=1.0, top_k=20, generator=g())
    b = model.generate(prompt, 10, temperature=1.0, top_k=20, generator=g())
    assert torch.equal(a, b) and a.shape == (1, 15) and torch.equal(a[:, :5], prompt)
    greedy = model.generate(prompt, 3, temperature=0)
    logits, _ = model(prompt)
    assert greedy[0, 5] == logits[0, -1].argmax()
    long = model.generate(prompt, 40, temperature=0)  # beyond the context: the window slides
    assert long.shape == (1, 45)


def test_fused_unembed_cross_entropy_equals_the_plain_loss_and_gradients():
    from lab.fused_ce import unembed_cross_entropy
    from train_lm import plain_cross_entropy
    model = tiny_model().train()
    x, y = torch.randint(0, 300, (20, 32)), torch.randint(0, 300, (20, 32))  # 640 rows: two chunks
    grads = []
    for lm_loss in (plain_cross_entropy, unembed_cross_entropy):
        loss = lm_loss(model(x, unembed=False), model.unembed.weight, y)
        loss.backward()
        grads.append((loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}))
        model.zero_grad()
    (l1, g1), (l2, g2) = grads
    assert torch.allclose(l1, l2, atol=1e-6) and torch.allclose(l1, model(x, y)[1], atol=1e-6)
    for k in g1:
        assert torch.allclose(g1[k], g2[k], atol=1e-6, rtol=1e-4), k
