"""model.py: the paper's one-layer transformer (residual stream 128, one MLP of 512 ReLU neurons).

The sparse autoencoder is trained on "the MLP activation vectors after the ReLU"; everything the
project does with the model goes through that one point:

    acts = model.mlp_activations(idx)           # read the 512 neurons (harvesting)
    logits, loss = model(idx, y, mlp_hook=fn)   # replace them: fn(layer, acts) -> acts (an SAE, ablation, steering)

Ours where the paper is silent: 4 heads of 32, learned positions, pre-LayerNorm, context 128, untied unembedding.
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import data
from lab.plumbing import UserError, arg, flags, require


@flags
class ModelConfig:
    vocab_size: int = arg(4096, "tokens in the vocabulary (not a flag: data.py's meta.json says)", False, at_least=1)
    block_size: int = arg(128, "context length", at_least=1)
    n_layer: int = arg(1, "transformer layers (the paper: 1)", at_least=1)
    n_head: int = arg(4, "attention heads", at_least=1)
    d_model: int = arg(128, "residual stream width (the paper: 128)", at_least=1)
    d_mlp: int = arg(512, "MLP neurons (the paper: 512)", at_least=1)
    activation: str = arg("relu", "MLP nonlinearity: relu (the paper) or gelu (other replications)",
                          one_of=("relu", "gelu"))

    def __post_init__(self):  # after each field's own check (@flags)
        require(self.d_model % self.n_head == 0, f"--d-model {self.d_model}",
                f"must be divisible by --n-head {self.n_head}")


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
        return x + self.mlp_out(h if hook is None else hook(h))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        for m in self.modules():  # GPT-2's init: weights N(0, 0.02), biases 0
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        # and its scaled init for the projections that write into the residual stream
        for block in self.blocks:
            for w in (block.attn.proj.weight, block.mlp_out.weight):
                nn.init.normal_(w, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def embed(self, idx):
        T = idx.shape[1]
        if T > self.cfg.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than the context {self.cfg.block_size}")
        return self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device))

    def forward(self, idx, targets=None, mlp_hook=None, unembed=True):
        """Logits (B, T, vocab) and, given targets, the mean next-token cross-entropy. mlp_hook: see the top
        of the file (return the same tensor to only read). unembed=False: the final residual stream alone."""
        x = self.embed(idx)
        for i, block in enumerate(self.blocks):
            x = block(x, None if mlp_hook is None else (lambda h, i=i: mlp_hook(i, h)))
        x = self.ln_f(x)
        if not unembed:
            return x
        out = self.unembed(x)
        loss = None if targets is None else F.cross_entropy(out.flatten(0, 1).float(), targets.flatten())
        return out, loss

    def mlp_activations(self, idx):
        """The last layer's MLP activations (B, T, d_mlp), computing nothing after them."""
        x = self.embed(idx)
        for block in self.blocks[:-1]:
            x = block(x)
        block = self.blocks[-1]
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


# ----------------------------------------------------------------------------------------------
# Tokens -> MLP activations: what the SAE trains on and what the analysis measures

@torch.no_grad()
def harvest(model, tokens, count, generator=None, batch_windows=64, device="cpu"):
    """MLP activations (after the ReLU) at `count` token positions, with their token ids and their
    positions in `tokens`. generator given: random windows (training); None: consecutive windows
    from the start of `tokens` (analysis, reproducible). Every position of a window is used (the paper samples
    250 of each context; a shuffled buffer, train_sae.py's, mixes the windows all the same)."""
    T = model.cfg.block_size
    n_windows = math.ceil(count / T)
    if generator is not None:
        starts = torch.randint(len(tokens) - T, (n_windows,), generator=generator).numpy()
    else:
        if n_windows * T > len(tokens):
            raise UserError(f"asked for {count:,} activations but the split holds {len(tokens):,} tokens")
        starts = np.arange(n_windows) * T
    acts, ids = [], []
    for i in range(0, n_windows, batch_windows):
        w = data.windows(tokens, starts[i:i + batch_windows], T)
        acts.append(model.mlp_activations(w.to(device)).flatten(0, 1).float())
        ids.append(w.flatten())
    positions = torch.from_numpy(starts[:, None] + np.arange(T)[None]).flatten()
    return torch.cat(acts)[:count], torch.cat(ids)[:count], positions[:count]
