"""model.py: the paper's one-layer transformer, with its 512 MLP neurons exposed.

The paper's model (PAPER.md): one layer, residual stream of width 128, one MLP of 512 neurons
with a ReLU. The sparse autoencoder is trained on "the MLP activation vectors after the ReLU";
everything the project does with the model goes through that one point:

    acts = model.mlp_activations(idx)                  # read the 512 neurons (harvesting)
    logits, loss = model(idx, y, mlp_hook=fn)          # replace them: fn(layer, acts) -> acts
                                                       # (splicing in an SAE, ablating, steering)

What the paper does not state (heads, context, positions, norms) is ours: 4 heads of 32,
learned positions, pre-LayerNorm, a context of 128, untied embedding and unembedding.
"""
import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclasses.dataclass
class ModelConfig:
    vocab_size: int = 4096
    block_size: int = 128   # context length
    n_layer: int = 1        # the paper: one layer
    n_head: int = 4
    d_model: int = 128      # the paper: residual stream width 128
    d_mlp: int = 512        # the paper: 512 neurons
    activation: str = "relu"  # the paper: ReLU ("gelu" for comparison with other replications)

    def validate(self):
        if self.d_model % self.n_head:
            raise ValueError(f"--d-model {self.d_model} must be divisible by --n-head {self.n_head}")
        if self.activation not in ("relu", "gelu"):
            raise ValueError(f"--activation {self.activation}: use relu (the paper) or gelu")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model", "d_mlp"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """Pre-LayerNorm block: x + attn(ln(x)), then x + W_out act(W_in ln(x))."""

    def __init__(self, cfg):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp_in = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.mlp_out = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.act = F.relu if cfg.activation == "relu" else F.gelu

    def neurons(self, x):
        """The MLP's hidden activations (B, T, d_mlp): the 'neurons' of the paper."""
        return self.act(self.mlp_in(self.ln2(x)))

    def forward(self, x, hook=None):
        x = x + self.attn(self.ln1(x))
        h = self.neurons(x)
        if hook is not None:
            h = hook(h)
        return x + self.mlp_out(h)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init)
        # GPT-2's scaled init for the projections that write into the residual stream
        for block in self.blocks:
            for w in (block.attn.proj.weight, block.mlp_out.weight):
                nn.init.normal_(w, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def embed(self, idx):
        T = idx.shape[1]
        if T > self.cfg.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than the context {self.cfg.block_size}")
        return self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device))

    def forward(self, idx, targets=None, mlp_hook=None, logits=True):
        """Logits (B, T, vocab), and the mean next-token cross-entropy when targets are given.

        mlp_hook(layer, acts) -> acts, if given, sees each layer's MLP activations after the
        nonlinearity and returns what the layer uses instead (the same tensor to only read).
        logits=False (training): return (None, loss), computed by unembed_cross_entropy without
        ever holding the (B*T, vocab) logits."""
        x = self.embed(idx)
        for i, block in enumerate(self.blocks):
            x = block(x, None if mlp_hook is None else (lambda h, i=i: mlp_hook(i, h)))
        x = self.ln_f(x)
        if not logits:
            dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
            return None, UnembedCrossEntropy.apply(x.flatten(0, 1), self.unembed.weight, targets.flatten(), dtype)
        out = self.unembed(x)
        loss = None if targets is None else F.cross_entropy(out.flatten(0, 1).float(), targets.flatten())
        return out, loss

    def mlp_activations(self, idx, layer=-1):
        """The chosen layer's MLP activations (B, T, d_mlp), computing nothing after them."""
        layer = layer % len(self.blocks)
        x = self.embed(idx)
        for block in self.blocks[:layer]:
            x = block(x)
        block = self.blocks[layer]
        return block.neurons(x + block.attn(block.ln1(x)))

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None, mlp_hook=None):
        """Sample continuations of idx (B, T); temperature 0 means greedy."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.cfg.block_size:], mlp_hook=mlp_hook)
            logits = logits[:, -1].float()
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, -1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


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


def flops_per_token(cfg):
    """Forward+backward matmul FLOPs per token (6 per weight, plus attention's scores)."""
    d, L = cfg.d_model, cfg.n_layer
    weights = L * (4 * d * d + 2 * d * cfg.d_mlp) + d * cfg.vocab_size
    return 6 * weights + L * 6 * cfg.block_size * d  # QK^T and AV: 2*T*d each, forward, x3 with backward
