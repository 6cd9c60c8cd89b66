"""lab/steer.py: turn a feature on and watch the model change.

    python analyze.py steer --feature 3383 --value 30 --prompt "import os"  # one prompt, steered and not
    python analyze.py steer                                                 # the effect, measured on many prompts

The paper: "artificially activating a feature causes the model's behaviour to change in predictable
ways". What we do, exactly: add V times the feature's decoder direction to the MLP activations
(after the ReLU, before mlp_out) at every position. Decoder rows live in the SAE's normalised units
(sae.py), so the vector added is V * W_dec[feature] / act_scale, and V is in the units of the
feature's own activations (those on the browser's pages). The SAE is not spliced in: the
activations keep everything the SAE misses, so V = 0 is exactly the unsteered model. (Clamping the
feature inside the SAE's reconstruction would also swap in the SAE's reconstruction error.)

"Predictable": the browser lists each feature's logit effects, the output tokens its direction
raises most. measure_steering checks that prediction on held-out contexts: the probability the model
gives to a feature's top logit-effect tokens, with and without steering, at every position.
"""
import dataclasses
import os

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

import data
from lab.plumbing import UserError, arg, finite, require, save_figure
from lab.formatting import pattern, token_text, visible

# Features rarer than this (a few held-out tokens) have tiny largest activations: steering them by a
# multiple of it barely moves the model, which says little about the feature.
MIN_DENSITY = 1e-4
DEFAULT_PROMPT = "def "


@dataclasses.dataclass
class Config:
    feature: int = arg(-1, "the feature to steer on --prompt (-1: measure a few features' effect on many prompts)")
    value: float = arg(0.0, "V: add V times the feature's direction, in its activation units (0: no change)")
    prompt: str = arg(DEFAULT_PROMPT, "the text to continue, with --feature")
    new_tokens: int = arg(40, "tokens to generate")
    temperature: float = arg(1.0, "sampling temperature (0: greedy)")
    top_k: int = arg(50, "sample among the k likeliest tokens (0: all)")
    show: int = arg(8, "largest next-token probability changes printed")
    steer_features: int = arg(4, "features measured: the best-scoring ones in units.json, distinct top logit tokens")
    steer_prompts: int = arg(50, "held-out contexts the effect is measured on")
    steer_scale: float = arg(4.0, "measured steering value, in multiples of each feature's largest held-out activation")
    effect_tokens: int = arg(5, "a feature's top logit-effect tokens whose probability is measured")

    def __post_init__(self):  # every flag checked before the run is loaded
        require(self.feature >= -1, f"--feature {self.feature}", "must be a feature number (the browser lists "
                "them), or -1 to measure a few features on many prompts")
        if self.feature < 0:  # (else they would be silently ignored)
            require(self.prompt == DEFAULT_PROMPT, "--prompt", "needs --feature N (a feature number from the browser)")
            require(self.value == 0, "--value", "needs --feature N (a feature number from the browser)")
        require(finite(self.value), f"--value {self.value}", "must be a finite number (the feature's activations "
                "on the browser's pages show its scale)")
        require(self.new_tokens >= 1, f"--new-tokens {self.new_tokens}", "must be at least 1")
        require(finite(self.temperature) and self.temperature >= 0, f"--temperature {self.temperature}",
                "must be a number >= 0 (0: greedy)")
        require(self.top_k >= 0, f"--top-k {self.top_k}", "must be >= 0 (0: all tokens)")
        require(self.show >= 1, f"--show {self.show}", "must be at least 1")
        for name in ("steer_features", "steer_prompts", "effect_tokens"):
            require(getattr(self, name) >= 1, f"--{name.replace('_', '-')} {getattr(self, name)}", "must be at least 1")
        require(finite(self.steer_scale) and self.steer_scale > 0, f"--steer-scale {self.steer_scale}",
                "must be a positive number, e.g. 4")

    @property
    def figure(self):
        """Where the measurement's figure goes: the default run's steering.png, or beside it, named by
        the settings, when python analyze.py steer measures with flags of its own."""
        settings = lambda c: (c.steer_features, c.steer_prompts, c.steer_scale, c.effect_tokens)
        if settings(self) == settings(Config()):
            return "steering.png"
        return (f"steering_{self.steer_features}f_{self.steer_prompts}p_x{self.steer_scale:g}_"
                f"{self.effect_tokens}t.png")


def main(cfg, run, measured):
    """python analyze.py steer: one prompt steered (--feature), or the measurement on many prompts
    (measured() gives the streaming pass's Measurement and units.json, analyze.py's)."""
    if cfg.feature >= 0:
        print(demo(cfg, run))
    else:
        res = measure_steering(cfg, run, *measured())
        print("\n".join(res["report"]))


def steering_hook(sae, feature, value, layer):
    """An mlp_hook (model.py) adding value * the feature's direction to layer's MLP activations."""
    add = value * sae.directions()[feature]
    return lambda i, h: h + add if i == layer else h


def generate(model, ids, cfg, seed, hook=None):
    """A sampled continuation; the generator is seeded afresh, so runs differ only by the hook."""
    g = torch.Generator(device=ids.device).manual_seed(seed)
    return model.generate(ids, cfg.new_tokens, cfg.temperature, cfg.top_k or None, generator=g, mlp_hook=hook)


@torch.no_grad()
def next_token_probs(model, ids, hook=None):
    return F.softmax(model(ids[:, -model.cfg.block_size:], mlp_hook=hook)[0][0, -1].float(), -1)


# ----------------------------------------------------------------------------------------------
# Logit effects (the paper's "logit weights": a direction in the MLP's activations through the
# MLP's output weights and the unembedding, "the final layer norm linearised")


@torch.no_grad()
def logit_effects(model, directions, scale):
    """(U, vocab): the change of every output logit per unit of activation along each direction
    (U, d_mlp) of the last MLP's activations. The MLP adds mlp_out(d) to the residual stream; ln_f
    subtracts its mean, divides by the stream's scale and multiplies by its gain; unembed maps that
    to logits. Linearised: the division is by `scale`, the harmonic mean of the scale over held-out
    tokens (residual_scale), which makes this the token-averaged derivative of the logits, except
    for the small change the direction itself makes to each token's scale, which is dropped. The
    bias of mlp_out and ln_f's bias do not depend on the unit, and neither does a shift of all
    logits, which the softmax ignores."""
    r = directions.to(model.unembed.weight) @ model.blocks[-1].mlp_out.weight.T  # (U, d_model): into the stream
    r = r - r.mean(1, keepdim=True)
    return (r * model.ln_f.weight / scale) @ model.unembed.weight.T


@torch.no_grad()
def residual_scale(model, tokens, n_windows=32):
    """The harmonic mean over held-out tokens of ln_f's divisor sqrt(var(x) + eps), x the residual
    stream entering ln_f (n_windows LM windows spread evenly over tokens)."""
    T = model.cfg.block_size
    starts = np.linspace(0, len(tokens) - T, n_windows).astype(np.int64)
    x = model.embed(data.windows(tokens, starts, T, model.unembed.weight.device))
    for block in model.blocks:
        x = block(x)
    sigma = (x.var(-1, unbiased=False) + model.ln_f.eps).sqrt()
    return (1 / (1 / sigma).mean()).item()


# ----------------------------------------------------------------------------------------------
# One prompt: steered beside unsteered


@torch.no_grad()
def demo(cfg, run):
    """The text to print: the feature's predicted effect, both generations, the largest changes."""
    model, sae, enc = run.model, run.main_sae, run.enc
    if not 0 <= cfg.feature < sae.cfg.n_features:
        raise UserError(f"--feature {cfg.feature}: {run.main_name} has features 0..{sae.cfg.n_features - 1}")
    ids = torch.tensor([[run.meta["eot"]] + enc.encode_ordinary(cfg.prompt)], device=run.device)
    cut = ids.shape[1] > model.cfg.block_size
    ids = ids[:, -model.cfg.block_size:]
    hook = steering_hook(sae, cfg.feature, cfg.value, len(model.blocks) - 1)
    p0, p1 = next_token_probs(model, ids), next_token_probs(model, ids, hook)
    if not torch.isfinite(p1).all():   # (sampling would fail on them with a RuntimeError)
        raise UserError(f"--value {cfg.value:g} is too large: the steered logits overflow; use a value within a few "
                        "hundred times the feature's largest activation (the browser lists it)")
    scale = residual_scale(model, run.tokens)
    effects = logit_effects(model, sae.directions()[cfg.feature:cfg.feature + 1], scale)[0].cpu()
    on_prompt = sae.encode(model.mlp_activations(ids)[0])[:, cfg.feature].max().item()
    show = lambda t: repr(visible(token_text(enc, t)))
    text = lambda out: enc.decode(out[0, 1:].tolist())
    lines = [f"note: the prompt is longer than the model's context; it reads the last {ids.shape[1]} tokens"] * cut
    lines += [f"feature {cfg.feature} of {run.main_name}: steering value {cfg.value:+g} (its activation on the prompt "
             f"peaks at {on_prompt:.3g}); its direction raises "
             + ", ".join(f"{show(t)} {v:+.2f}" for v, t in zip(*effects.topk(5))) + " logits per unit (linearised)",
             f"\n--- unsteered (seed {run.seed})", text(generate(model, ids, cfg, run.seed)),
             f"\n--- steered (seed {run.seed})", text(generate(model, ids, cfg, run.seed, hook)),
             "\n--- largest next-token probability changes after the prompt"]
    p0, p1 = p0.cpu(), p1.cpu()
    change = p1 - p0
    for t in torch.cat([change.topk(cfg.show).indices, (-change).topk(cfg.show).indices]).tolist():
        lines.append(f"{show(t):>24} {p0[t].item():.4f} -> {p1[t].item():.4f} ({change[t].item():+.4f})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Many prompts: does steering raise the tokens the logit effects predict?


@torch.no_grad()
def measure_steering(cfg, run, m, units):
    """For a few of the best-scoring features: the mean probability, over every position of
    steer_prompts held-out contexts, of the feature's top (and bottom) logit-effect tokens, at
    steering values from 0 to steer_scale times its largest held-out activation; writes cfg.figure."""
    model, sae = run.model, run.main_sae
    effects = logit_effects(model, sae.directions(), residual_scale(model, run.tokens))   # on the model's device
    features = choose_features(units["features"], effects, cfg.steer_features)
    maxima = m.stats[run.main_name].max_activation()
    rng = np.random.default_rng(run.seed)
    ctx = rng.choice(run.n_tokens // run.context, min(cfg.steer_prompts, run.n_tokens // run.context),
                     replace=False)
    x = data.windows(run.tokens, ctx * run.context, run.context, run.device)
    fractions = np.linspace(0, cfg.steer_scale, 9)
    rows = []
    for f, r in features:
        up, down = effects[f].topk(cfg.effect_tokens).indices, (-effects[f]).topk(cfg.effect_tokens).indices
        p_up, p_down = [], []
        for frac in fractions:
            hook = steering_hook(sae, f, frac * maxima[f].item(), len(model.blocks) - 1)
            p = F.softmax(model(x, mlp_hook=hook)[0].float(), -1)
            p_up.append(p[..., up].sum(-1).flatten().cpu())
            p_down.append(p[..., down].sum(-1).flatten().cpu())
        rows.append(dict(feature=f, unit=r, max=maxima[f].item(), up=up.tolist(), down=down.tolist(),
                         p_up=[p.mean().item() for p in p_up], p_down=[p.mean().item() for p in p_down],
                         raised=(p_up[-1] > p_up[0]).float().mean().item()))
    plot_steering(rows, fractions, os.path.join(run.dir, cfg.figure))
    out = dict(rows=rows, fractions=fractions, positions=x.numel(), prompts=len(x))
    out["report"] = report_lines(cfg, out, run.enc, run.context)
    return out


def choose_features(scored, effects, n):
    """The n best-scoring features of units.json that fire on at least MIN_DENSITY of the tokens,
    with distinct top logit-effect tokens (features that all predict one token would make one point)."""
    chosen, seen = [], set()
    for r in sorted((r for r in scored if r["density"] >= MIN_DENSITY), key=lambda r: -r["score"]):
        top = effects[r["unit"]].argmax().item()
        if top not in seen:
            chosen.append((r["unit"], r))
            seen.add(top)
        if len(chosen) == n:
            break
    if not chosen:
        raise UserError(f"units.json scores no feature of density {MIN_DENSITY:g} or more: analyse more --tokens")
    return chosen


def plot_steering(rows, fractions, path):
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.subplots()
    for i, r in enumerate(rows):
        color = f"C{i}"
        ax.plot(fractions, r["p_up"], color=color, marker="o", markersize=3, label=f"feature {r['feature']}")
        ax.plot(fractions, r["p_down"], color=color, linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("steering value / the feature's largest held-out activation")
    ax.set_ylabel("mean probability")
    ax.set_title("solid: its top logit-effect tokens; dashed: its bottom ones", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def change(p):
    """A probability unsteered -> steered, with the ratio that says how much it moved."""
    ratio = f"×{p[-1] / p[0]:.3g}" if p[0] > 0 else "from 0"
    return f"{p[0]:.3g} → {p[-1]:.3g} ({ratio})"


def report_lines(cfg, res, enc, context):
    # a token in a markdown table cell: line breaks drawn, and no ` or | to end the code span or the cell
    cell = lambda text: "`" + visible(text).replace("`", "'").replace("|", "\\|") + "`"
    tokens = lambda ids: " ".join(cell(token_text(enc, t)) for t in ids)
    L = ["## 6. Steering", "",
         "The paper: \"artificially activating a feature causes the model's behaviour to change in predictable "
         "ways\". We add V times a feature's decoder direction (divided by the SAE's act_scale, to be in the MLP's "
         "units) to the MLP activations at every position, the SAE itself not spliced in, so V = 0 is the unsteered "
         f"model. For the {len(res['rows'])} best-scoring feature{'s' * (len(res['rows']) != 1)} of section 3 with distinct top logit-effect tokens "
         f"(the browser's 'logits raised most'), with V = {cfg.steer_scale:g} times the feature's largest held-out "
         f"activation: the probability of its {cfg.effect_tokens} top logit-effect tokens (and of its "
         f"{cfg.effect_tokens} bottom ones), averaged over every next-token prediction of {res['prompts']} random "
         f"held-out contexts of {context} tokens ({res['positions']:,} positions). Try one yourself: "
         "`python analyze.py steer --feature N --value V --prompt \"...\"`.", "",
         "A position where the probability rose may have risen by little: the ratio steered / unsteered of the mean "
         "probability says by how much.", "",
         "| feature | explanation (top rows) | V | top logit-effect tokens | their probability: unsteered → steered "
         "(ratio) | positions where it rose | bottom tokens: unsteered → steered (ratio) |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["rows"]:
        expl = "; ".join(pattern(x, cell) for x in r["unit"]["explanation"][:2])
        L.append(f"| #{r['feature']} (score {r['unit']['score']:.2f}) | {expl} | {cfg.steer_scale * r['max']:.2f} | "
                 f"{tokens(r['up'])} | {change(r['p_up'])} | {100 * r['raised']:.0f}% | {change(r['p_down'])} |")
    return L + ["", f"![steering]({cfg.figure})", ""]

