"""lab/fused_ce.py: the LM's unembedding and cross-entropy, fused, for a fast training step on a CPU.

train_lm.py (--fused, the default) calls unembed_cross_entropy on the final residual stream: the loss of
F.cross_entropy(ln_f(x) @ W.T, targets) and the same gradients (tests/test_model.py checks both),
without ever holding the (tokens, vocabulary) logits, which are the largest tensor of the whole step.
"""
import torch


def unembed_cross_entropy(h, W, targets):
    """mean CE(h @ W.T, targets) for h (B, T, d), targets (B, T), under autocast if it is on."""
    device = h.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
    return UnembedCrossEntropy.apply(h.flatten(0, 1), W, targets.flatten(), dtype)


class UnembedCrossEntropy(torch.autograd.Function):
    """mean CE(h @ W.T, targets), and its gradients, a chunk of rows at a time.

    With a 4,096-token vocabulary the (B*T, vocab) logits are the largest tensor of the whole
    step: materialising them, casting them to float32, their log-softmax and its backward cost
    more than all the other layers together on a CPU. Here each chunk's logits live in cache only:
    the forward pass already computes the gradients (softmax - onehot) / N, and backward just
    scales them. The matmuls run in `dtype` (bf16 under autocast), the softmax in float32."""

    @staticmethod
    def forward(ctx, h, W, targets, dtype, chunk=512):
        N = h.shape[0]
        hc, Wc = h.to(dtype), W.to(dtype)
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device)
        grad_W = torch.zeros(W.shape, dtype=torch.float32, device=h.device)
        for s in range(0, N, chunk):
            rows, t = hc[s:s + chunk], targets[s:s + chunk]
            logits = (rows @ Wc.T).float()
            lse = logits.logsumexp(1)
            loss += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            p = torch.exp_(logits - lse[:, None])   # softmax, in place
            p[torch.arange(len(t), device=p.device), t] -= 1
            p = (p / N).to(dtype)
            grad_h[s:s + chunk] = p @ Wc
            grad_W += p.T @ rows
        ctx.save_for_backward(grad_h.to(h.dtype), grad_W.to(W.dtype))
        return loss / N

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_W = ctx.saved_tensors
        return grad_h * grad_loss, grad_W * grad_loss, None, None, None
