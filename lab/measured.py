"""lab/measured.py: what every analysis step reads: the run (the LM, its SAEs, the held-out tokens) and
the streaming measurement of their units, cached in <analysis>/measure.pt.

    cfg = AnalyzeConfig(out="out")
    run = load_run(cfg)             # Run: the LM and every SAE on cfg.device, the held-out tokens
    m = load_or_measure(cfg, run)   # Measurement: {source: interp.UnitStats}, the predicates, the halves
    units = load_units(cfg, run)    # units.json: every scored unit's explanation (analyze.py's interp step)

analyze.py, lab/browser.py and lab/steer.py build on this file; it imports none of them.

Where tensors live: the LM, the SAEs and every pass over tokens are on run.device; what a pass is
reduced to (the per-unit statistics, unit indices, maxima, logit effects once computed) is on the
CPU. Each pass hands its result over with one .cpu(), so no expression mixes the two.
"""
import dataclasses
import glob
import json
import os
import sys
import time

import numpy as np
import torch

import data
from lab import interp
from lab.plumbing import Progress, UserError, arg, atomic_save, atomic_write_text, fmt_eta, pick_device
from model import Transformer, lm_fingerprint, load_lm
from lab.report import describe
from sae import SAE, load_sae


@dataclasses.dataclass
class AnalyzeConfig:
    out: str = arg("out", "artifact root: reads data/, <lm-dir>/, <sae-dir>/F*/; writes <analysis-dir>/")
    lm_dir: str = arg("lm", "the LM whose neurons the SAEs decomposed")
    sae_dir: str = arg("sae", "folder of SAE checkpoints under --out (every F<n>/ckpt.pt is analysed)")
    analysis_dir: str = arg("analysis", "this analysis' folder under --out (e.g. analysis_b for model B)")
    n_features: int = arg(0, "the dictionary analysed in detail (steps 3-4); 0: the largest found")
    device: str = arg("auto", "auto, cpu, cuda or cuda:N")
    seed: int = arg(0, "seed for the sampled units, the random contexts and the bootstrap")
    tokens: int = arg(0, "held-out tokens to analyse (0: the whole validation split)")
    loss_tokens: int = arg(2**17, "held-out tokens for the losses and the reconstruction error")
    context: int = arg(32, "tokens per context (must divide the LM's context length)")
    n_units: int = arg(512, "units of each kind compared on interpretability (at most the alive ones)")
    explain_contexts: int = arg(40, "top contexts (explain half) an explanation is read from")
    score_top: int = arg(20, "top contexts (score half) an explanation is scored on")
    score_random: int = arg(20, "random contexts (score half) it is also scored on")
    max_entries: int = arg(5, "rows in an explanation table, the same for features and neurons: a "
                           "handful of patterns, about what a one-sentence explanation names")
    explain: str = arg("contexts", "what an explanation row may name: tokens (token patterns only) or contexts "
                       "(token patterns and the context predicates of interp.PREDICATES)")
    bootstrap: int = arg(1000, "bootstrap resamples for the 95 percent intervals")
    remeasure: bool = arg(False, "redo the streaming pass even when analysis/measure.pt matches")


@dataclasses.dataclass
class LoadedSAE:
    sae: SAE
    ckpt: dict   # train_sae.py's checkpoint: config, seen, step, final (or status), history, ...
    path: str


@dataclasses.dataclass
class Run:
    """The LM, every SAE trained on it, the held-out tokens and the settings every step shares."""
    model: Transformer
    lm_ckpt: dict
    fingerprint: str      # model.lm_fingerprint of the LM
    saes: dict            # {n_features: LoadedSAE}, smallest first
    main: int             # the dictionary analysed in detail (--n-features)
    tokens: np.ndarray    # the first n_tokens held-out tokens, int64
    n_tokens: int         # whole LM windows
    meta: dict            # data.py's meta.json
    enc: object           # the tokenizer
    device: str
    batch: int            # tokens per batch of the streaming passes
    dir: str              # this analysis' folder

    @property
    def main_sae(self):
        return self.saes[self.main].sae

    @property
    def main_name(self):
        """The main SAE's name in the measurement and in units.json, e.g. F4096."""
        return f"F{self.main}"


@dataclasses.dataclass
class Measurement:
    """interp.measure over the held-out tokens, and what it was measured on."""
    key: dict             # what it depends on: a cached one is reused only when the key matches
    stats: dict           # {"neurons" or "F<n>": interp.UnitStats}, on the CPU
    proxies: np.ndarray   # (n_tokens, P) bool: which interp.PREDICATES hold on each token (interp.context_labels)
    halves: np.ndarray    # (n_tokens,) each token's half (interp.window_halves)
    seconds: float        # how long the pass took when it ran
    reused: bool = False  # read from measure.pt


def load_run(cfg):
    """The Run of cfg: loads everything on cfg.device and checks the flags against it."""
    device = pick_device(cfg.device)
    data_dir = os.path.join(cfg.out, "data")
    meta = data.load_meta(data_dir)
    model, lm_ckpt = load_lm(cfg.out, cfg.lm_dir, device)
    if lm_ckpt["tokenizer_hash"] != meta["tokenizer_hash"]:
        raise UserError(f"{cfg.out}/{cfg.lm_dir} was trained on other token shards than {data_dir}: "
                        "retrain it (python train_lm.py) after python data.py")
    paths = glob.glob(os.path.join(cfg.out, cfg.sae_dir, "F*", "ckpt.pt"))
    if not paths:
        raise UserError(f"no SAE checkpoints in {os.path.join(cfg.out, cfg.sae_dir)}/F*/: "
                        f"run python train_sae.py --out {cfg.out} first")
    fingerprint = lm_fingerprint(lm_ckpt)
    saes = {}
    for path in paths:
        sae, ckpt = load_sae(path, device)
        if ckpt["lm_fingerprint"] != fingerprint:
            raise UserError(f"{path} decomposed another LM than {cfg.out}/{cfg.lm_dir}: retrain it "
                            "(python train_sae.py) or pass the matching --lm-dir/--sae-dir")
        saes[sae.cfg.n_features] = LoadedSAE(sae=sae, ckpt=ckpt, path=path)
    saes = dict(sorted(saes.items()))
    main_n = cfg.n_features or max(saes)
    if main_n not in saes:
        raise UserError(f"--n-features {cfg.n_features}: no such SAE; found {list(saes)}")
    T = model.cfg.block_size
    tokens = data.load_tokens(data_dir, "val")
    n_tokens = (min(cfg.tokens or len(tokens), len(tokens)) // T) * T
    if n_tokens < 2 * T:
        raise UserError(f"--tokens {cfg.tokens}: need at least two windows of {T} held-out tokens")
    if T % cfg.context or cfg.context < 2:
        raise UserError(f"--context {cfg.context} must divide the LM's context length {T}")
    if cfg.explain not in ("tokens", "contexts"):
        raise UserError(f"--explain {cfg.explain}: use tokens or contexts")
    for name in ("n_units", "explain_contexts", "score_top", "max_entries", "bootstrap", "loss_tokens"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    tokens = np.asarray(tokens[:n_tokens]).astype(np.int64)
    return Run(model=model, lm_ckpt=lm_ckpt, fingerprint=fingerprint, saes=saes, main=main_n, tokens=tokens,
               n_tokens=n_tokens, meta=meta, enc=data.load_tokenizer(data_dir), device=device,
               batch=max(1, 1024 // T) * T,  # whole windows, ~1,000 tokens: a (tokens, features) batch stays in cache
               dir=os.path.join(cfg.out, cfg.analysis_dir))


def sources(run):
    """What the streaming pass measures: the neurons as they are, and each SAE's features."""
    return {"neurons": lambda h: h, **{f"F{n}": s.sae.encode for n, s in run.saes.items()}}


def measure_key(cfg, run):
    """What the measurement depends on. Each SAE is named by its path under --out and a hash of its
    weights (a retrained SAE with the same step count is another SAE), the data by its tokenizer
    and corpus hashes, so a run folder copied or moved elsewhere keeps its cache."""
    saes = [(os.path.relpath(s.path, cfg.out), lm_fingerprint({"model": s.ckpt["sae"]})) for s in run.saes.values()]
    return dict(lm=run.fingerprint, saes=saes, n_tokens=run.n_tokens, context=cfg.context,
                k=(cfg.explain_contexts, cfg.score_top), proxies=interp.PREDICATES,
                tokenizer=run.meta["tokenizer_hash"], corpus=run.meta.get("corpus_hash"),
                format=interp.MEASURE_FORMAT, python=sys.version.split()[0].rsplit(".", 1)[0])  # (its keywords)


def load_or_measure(cfg, run):
    """interp.measure over the held-out tokens, or its cached result when the inputs match.
    measure.pt holds plain dicts and tensors (the dataclasses as dataclasses.asdict writes them)."""
    key = measure_key(cfg, run)
    path = os.path.join(run.dir, "measure.pt")
    if os.path.exists(path) and not cfg.remeasure:
        try:
            cached = torch.load(path, weights_only=False)
        except Exception:  # a truncated or foreign cache is only a cache: measure again
            cached = {"key": None}
        if cached["key"] == key:
            print(f"measure: reusing {path} (--remeasure to redo)")
            stats = {name: interp.UnitStats.from_dict(s) for name, s in cached["stats"].items()}
            return Measurement(**{**cached, "stats": stats, "reused": True})
    t0 = time.time()
    n, eot = run.n_tokens, run.meta["eot"]
    proxies = interp.context_labels(run.tokens, n, run.enc, eot)
    halves = interp.window_halves(n, run.model.cfg.block_size)
    progress = Progress(None)

    def report(done):
        if progress.due() or done == n:
            rate = done / (time.time() - t0)
            progress.say(f"measure: {done:,}/{n:,} held-out tokens | {rate:,.0f} tok/s | "
                         f"ETA {fmt_eta((n - done) / rate)}")

    stats = interp.measure(interp.stream(run.model, run.tokens, n, sources(run), run.batch), n, halves,
                           proxies, cfg.context, (cfg.explain_contexts, cfg.score_top), report)
    result = Measurement(key=key, stats=stats, proxies=proxies, halves=halves, seconds=time.time() - t0)
    atomic_save(dataclasses.asdict(result), path)
    return result


# ----------------------------------------------------------------------------------------------
# units.json: every scored unit's explanation, for the browser, the steering and readers


def save_units(run, stats, results):
    """units.json: per unit its density, score, single-token flag and explanation (for the browser).
    stats: {kind: UnitStats}; results: {kind: interp.score_units' list}."""
    vocab, n = run.meta["vocab_size"], run.n_tokens
    out = {"n_tokens": n, "sae": run.main_name}
    for kind, rs in results.items():
        fired = stats[kind].fired
        entries = []
        for r in rs:
            rows, default = describe(r["explanation"], run.enc, vocab)
            entries.append(dict(unit=r["unit"], density=float(fired[r["unit"]]) / n, score=round(r["score"], 4),
                                single_token=r["single_token"], explanation=rows, otherwise=default))
        out[kind] = entries
    atomic_write_text(json.dumps(out), os.path.join(run.dir, "units.json"))


def load_units(cfg, run):
    """units.json, checked to describe this run's main SAE on these tokens."""
    path = os.path.join(run.dir, "units.json")
    if not os.path.exists(path):
        raise UserError(f"no {path}: run python analyze.py interp --out {cfg.out} first")
    units = json.load(open(path))
    if units["sae"] != run.main_name or units["n_tokens"] != run.n_tokens:
        raise UserError(f"{path} describes {units['sae']} on {units['n_tokens']:,} tokens, not {run.main_name} on "
                        f"{run.n_tokens:,}: rerun python analyze.py interp with the same flags")
    return units
