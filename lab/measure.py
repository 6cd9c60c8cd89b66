"""lab/measure.py: the run an analysis reads, and one streaming pass over its held-out tokens.

A million held-out tokens of 4,096 features do not fit in memory as a dense matrix, so each batch of
LM windows is reduced to counts, sums and a running top-k of contexts per unit, then thrown away:

    run = load_run(cfg)             # Run: the LM and every SAE on cfg.device, the held-out tokens
    m = analyze.measured(cfg, run)  # load_or_measure's Measurement: {"neurons" or "F<n>": UnitStats}, ...
    m.stats["F4096"].fired          # (U,) held-out tokens on which each feature fires: its density
    m.stats["F4096"].top[EXPLAIN]   # TopContexts: each unit's top-activating contexts in one half
    m.stats["sparse_neurons"]       # the neurons sparsified to the features' density (analyze.sparsify)

A "unit" is one column of an activation matrix (tokens, units): one of the 512 neurons, one SAE
feature, or a neuron of another model; all go through the same code. The result is cached in
<analysis>/measure.pt and reused while its inputs are the same.

Contexts are the held-out tokens cut into pieces of `ctx` tokens inside the LM's windows (harvest's
consecutive windows): context c covers positions [c*ctx, (c+1)*ctx). What is measured is analyze.py's
to say, and it says it to load_or_measure: each token's half (EXPLAIN or SCORE, analyze.window_halves)
and the kinds of units (the neurons, the sparsified neurons, each SAE's features).

Where tensors live: the LM, the SAEs and every pass over tokens are on run.device; what a pass is
reduced to (the per-unit statistics) is on the CPU, handed over with one .cpu().
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
from lab import predicates
from lab.plumbing import (Progress, UserError, atomic_save, atomic_write_text, fmt_eta, lm_fingerprint, make_folder,
                          pick_device, tensor_digest)
from lab.trained import load_lm, load_sae, load_tokenizer
from model import harvest

EXPLAIN, SCORE = 0, 1     # the two halves of the held-out windows
FEW_TOKENS = 2**16        # fewer held-out tokens than this: every number of the analysis is said to rest on too few
MEASURE_FORMAT = 7        # bump when what measure() computes or stores changes: measure.pt is keyed on it
MIN_ACTIVE = 10           # a unit must fire on this many held-out tokens to be explained, scored or a specialist
MAX_NEXT = 4096           # next tokens counted per unit (the commonest; lab/grounding.py): memory for big vocabularies
INTERVALS = 13            # the paper's activation intervals: the top one and 12 below it (equal fractions of the max)
PER_INTERVAL = 2          # contexts drawn from each of the 12, per half: the paper's 2
MIN_NEXT = 10             # ... and each must follow at least this many held-out tokens, or its lift is noise


# ----------------------------------------------------------------------------------------------
# The run: the LM, every SAE trained on it, the held-out tokens (cfg: analyze.AnalyzeConfig)


@dataclasses.dataclass
class LoadedSAE:
    sae: object
    ckpt: dict   # train_sae.py's checkpoint: config, seen, step, final (or status), history, ...
    path: str


@dataclasses.dataclass
class Run:
    """The LM, every SAE trained on it, the held-out tokens and the settings every step shares."""
    model: object         # model.Transformer
    lm_ckpt: dict
    fingerprint: str      # lab.plumbing.lm_fingerprint of the LM
    saes: dict            # {n_features: LoadedSAE}, smallest first
    n_features: int       # the main SAE's dictionary size: the one analysed in detail (--n-features)
    tokens: np.ndarray    # the first n_tokens held-out tokens, int64
    n_tokens: int         # whole LM windows
    meta: dict            # data.py's meta.json
    enc: object           # the tokenizer
    device: str
    batch: int            # tokens per batch of the streaming passes
    dir: str              # this analysis' folder
    context: int          # tokens per context (AnalyzeConfig.context)
    seed: int

    @property
    def main_sae(self):
        return self.saes[self.n_features].sae

    @property
    def main_name(self):
        """The main SAE's name in the measurement and in units.json, e.g. F4096."""
        return f"F{self.n_features}"


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
    fingerprint, saes = lm_fingerprint(lm_ckpt), {}
    for path in paths:
        sae, ckpt = load_sae(path, device)
        if ckpt["lm_fingerprint"] != fingerprint:
            raise UserError(f"{path} decomposed another LM than {cfg.out}/{cfg.lm_dir}: retrain it "
                            "(python train_sae.py) or pass the matching --lm-dir/--sae-dir")
        saes[sae.cfg.n_features] = LoadedSAE(sae=sae, ckpt=ckpt, path=path)
    main_n = cfg.n_features or max(saes)
    if main_n not in saes:
        raise UserError(f"--n-features {cfg.n_features}: no such SAE; found {sorted(saes)}")
    T = model.cfg.block_size
    tokens = data.load_tokens(data_dir, "val")
    n_tokens = (min(cfg.tokens or len(tokens), len(tokens)) // T) * T
    if n_tokens < 2 * T:
        raise UserError(f"--tokens {cfg.tokens}: need at least two windows of {T} held-out tokens")
    if T % cfg.context or cfg.context < 2:
        raise UserError(f"--context {cfg.context} must divide the LM's context length {T}")
    make_folder(os.path.join(cfg.out, cfg.analysis_dir))   # a folder that cannot be written: said now, not after
    claim_folder(cfg)
    if n_tokens < FEW_TOKENS:
        print(f"warning: {n_tokens:,} held-out tokens (--tokens {cfg.tokens}) are too few for the loss recovered, the "
              f"densities and the scores to mean much: the report says so beside them (the default analyses the "
              f"whole validation split)", flush=True)
    return Run(model=model, lm_ckpt=lm_ckpt, fingerprint=fingerprint, saes=dict(sorted(saes.items())),
               n_features=main_n, tokens=np.asarray(tokens[:n_tokens]).astype(np.int64), n_tokens=n_tokens, meta=meta,
               enc=load_tokenizer(data_dir), device=device,
               batch=max(1, 1024 // T) * T,  # whole windows, ~1,000 tokens: a (tokens, features) batch stays in cache
               dir=os.path.join(cfg.out, cfg.analysis_dir), context=cfg.context, seed=cfg.seed)


def claim_folder(cfg):
    """One LM/SAE pair's analysis per folder: pair.json names the pair an analysis folder holds, and
    another pair is refused there (its report, figures and cache would replace this one's)."""
    path, pair = os.path.join(cfg.out, cfg.analysis_dir, "pair.json"), {"lm_dir": cfg.lm_dir, "sae_dir": cfg.sae_dir}
    try:
        held = json.load(open(path)) if os.path.exists(path) else None
    except (OSError, ValueError):
        held = None   # unreadable: claimed anew
    if held and held != pair:
        raise UserError(f"{os.path.dirname(path)} holds the analysis of --lm-dir {held['lm_dir']} --sae-dir "
                        f"{held['sae_dir']}: give this pair a folder of its own, e.g. --analysis-dir "
                        f"analysis_{cfg.sae_dir.replace(os.sep, '_')}")
    if held != pair:
        atomic_write_text(json.dumps(pair), path)


# ----------------------------------------------------------------------------------------------
# The streaming pass


@torch.no_grad()
def stream(model, tokens, n_tokens, sources, batch_tokens=1024):
    """Yield (start, {name: acts (n, U)}) for the first n_tokens of tokens, batch by batch, in
    harvest's consecutive windows. sources: {name: fn(neurons (n, d_mlp)) -> acts (n, U)}."""
    for start in range(0, n_tokens, batch_tokens):
        n = min(batch_tokens, n_tokens - start)
        h = harvest(model, tokens[start:start + n], n, device=model.unembed.weight.device)[0]
        yield start, {name: fn(h) for name, fn in sources.items()}


@torch.no_grad()
def context_acts(model, tokens, ids, ctx, sources):
    """{name: (len(ids), ctx, U)}: the activations at the given contexts, each recomputed inside
    its own LM window (the same numbers the streaming pass saw)."""
    T = model.cfg.block_size
    windows = np.unique(ids * ctx // T)
    h = torch.cat([harvest(model, tokens[w * T:(w + 1) * T], T, device=model.unembed.weight.device)[0]
                   for w in windows])
    rows = torch.from_numpy((np.searchsorted(windows, ids * ctx // T) * T + ids * ctx % T)[:, None]
                            + np.arange(ctx))
    return {name: fn(h)[rows.to(h.device)].float().cpu() for name, fn in sources.items()}


def random_contexts(run, m, sources, half, n, rng, ctx):
    """n contexts of one half (m: a Measurement) drawn at random, with the activations of sources there:
    dict(ctx (n,), and per source (n, ctx, U)): the pools of analyze.py's random examples."""
    ids = np.flatnonzero(m.halves[::ctx] == half)
    ids = np.sort(rng.choice(ids, min(len(ids), n), replace=False))
    return dict(ctx=ids, **context_acts(run.model, run.tokens, ids, ctx, sources))


@dataclasses.dataclass
class TopContexts:
    """A running top-k of contexts per unit: val (U, k) each context's max activation, ctx (U, k)
    its context id, acts (U, k, ctx) its activations. Unordered while streaming; sort_top orders it."""
    val: torch.Tensor
    ctx: torch.Tensor
    acts: torch.Tensor


def new_top(U, k, ctx):
    return TopContexts(val=torch.full((U, k), -float("inf")), ctx=torch.full((U, k), -1, dtype=torch.long),
                       acts=torch.zeros(U, k, ctx))


@dataclasses.dataclass
class UnitStats:
    """What the streaming pass keeps of one source's units (all on the CPU):
        fired_half (2, U)  tokens of each half on which the unit is > 0; fired (U,) their sum
        sum, sumsq (U,)    sums of the activation and of its square
        proxy_sum (U, P)   sums of the activation over the tokens where each proxy holds
        proxy_fired_half (2, U, P) tokens of each half where the unit is > 0 and each proxy holds;
                           proxy_fired (U, P) their sum
        next_counts (K + 1, U) float32: how often each counted next token follows a token where the
                           unit is > 0 (row K: any other token, or none); exact below 2**24 tokens
        top[h]             TopContexts: the contexts of half h with the largest activation
        proxy_count (P,)   tokens where each proxy holds; n_tokens: tokens measured"""
    fired_half: torch.Tensor
    sum: torch.Tensor
    sumsq: torch.Tensor
    proxy_sum: torch.Tensor
    proxy_fired_half: torch.Tensor
    next_counts: torch.Tensor
    top: list
    fired: torch.Tensor = None
    proxy_fired: torch.Tensor = None
    proxy_count: torch.Tensor = None
    n_tokens: int = 0

    def max_activation(self):
        """(U,) each unit's largest activation: the first of its sorted top contexts, either half."""
        return torch.maximum(self.top[0].val[:, 0], self.top[1].val[:, 0]).clamp_min(0)

    @staticmethod
    def from_dict(d):
        """The inverse of dataclasses.asdict (measure.pt stores plain dicts and tensors)."""
        return UnitStats(**{**d, "top": [TopContexts(**t) for t in d["top"]]})


@torch.no_grad()
def measure(batches, n_tokens, halves, proxies, ctx=32, k=(40, 20), progress=None, next_ids=None, n_next=0):
    """Reduce a stream of (start, {name: acts}) batches to {name: UnitStats}, the top contexts
    keeping k[h] contexts of half h per unit. halves: (n_tokens,) the half of each token (constant
    within a context); proxies: (n_tokens, P) bool; next_ids: (n_tokens,) the row of next_counts
    each token's next token is counted in, of n_next + 1 rows (next_rows), or None. Every statistic
    is a reduction over tokens (a matmul or a sum), so the (tokens, U) matrix of a batch is read a
    few times and dropped; a batch of ~1,000 tokens keeps it in cache. The activations may come from any
    device; the statistics are kept on the CPU."""
    halves_t = torch.from_numpy(halves)
    proxies_t = torch.from_numpy(np.asarray(proxies, dtype=np.float32))
    P = proxies_t.shape[1]
    n_rows = n_next + 1
    next_t = None if next_ids is None else torch.from_numpy(next_ids)
    stats = {}
    for start, acts in batches:
        n = next(iter(acts.values())).shape[0]
        half = halves_t[start:start + n]
        which = torch.nn.functional.one_hot(half, 2).T.float()                  # (2, n)
        p = proxies_t[start:start + n].T
        where = torch.cat([which, p * which[:1], p * which[1:]])                # (2 + 2P, n)
        weights = torch.cat([torch.ones(1, n), proxies_t[start:start + n].T])    # (1 + P, n)
        ctx_ids = torch.arange(start // ctx, (start + n) // ctx)
        ctx_half = half[::ctx]                                  # a context's half: its first token's
        for name, a in acts.items():
            a = a.float().cpu()
            if name not in stats:
                stats[name] = new_stats(a.shape[1], P, ctx, k, n_rows)
            s = stats[name]
            # (rows, n) @ (n, U) products: the fastest reductions over tokens here (bench: 4x (a > 0).sum(0))
            fires = a.sign().clamp_(min=0)
            counts = (where @ fires).long()   # exact: a batch's counts are far below 2**24
            s.fired_half += counts[:2]
            s.proxy_fired_half += counts[2:].view(2, P, fires.shape[1]).transpose(1, 2)
            if next_t is not None:   # (a dense index_add: 6 ms a batch of 1,024 tokens x 4,096 units)
                s.next_counts.index_add_(0, next_t[start:start + n], fires)
            sums = (weights @ a).double()
            s.sum += sums[0]
            s.proxy_sum += sums[1:].T
            s.sumsq += torch.linalg.vecdot(a, a, dim=0).double()
            cacts = a.view(-1, ctx, a.shape[1])                 # (contexts, ctx, U)
            cmax = cacts.amax(1)
            for h in (EXPLAIN, SCORE):
                update_top(s.top[h], cmax.masked_fill((ctx_half != h)[:, None], -float("inf")), ctx_ids, cacts)
        if progress is not None:
            progress(start + n)
    for s in stats.values():
        for top in s.top:
            sort_top(top)
        s.fired = s.fired_half.sum(0)
        s.proxy_fired = s.proxy_fired_half.sum(0)
        s.n_tokens = n_tokens
        s.proxy_count = proxies_t.sum(0).double()
    return stats


def new_stats(U, P, ctx, k, n_rows=1):
    return UnitStats(fired_half=torch.zeros(2, U, dtype=torch.long), sum=torch.zeros(U, dtype=torch.float64),
                     sumsq=torch.zeros(U, dtype=torch.float64), proxy_sum=torch.zeros(U, P, dtype=torch.float64),
                     proxy_fired_half=torch.zeros(2, U, P, dtype=torch.long), next_counts=torch.zeros(n_rows, U),
                     top=[new_top(U, kh, ctx) for kh in k])


def next_rows(tokens, eot):
    """(next_ids (n,), counted (K,)): the next-token vocabulary lab/grounding.py reads. counted: the
    tokens that follow at least MIN_NEXT held-out tokens, at most the MAX_NEXT commonest (a lift
    measured on fewer is noise); next_ids: each token's next token as a row of next_counts, row K
    for any other next token, for the last token and for an end of text (no next token to predict)."""
    nxt = np.append(tokens[1:], eot)
    freq = np.bincount(nxt, minlength=eot + 1)
    freq[eot] = 0
    order = np.argsort(-freq, kind="stable")[:MAX_NEXT]
    counted = np.sort(order[freq[order] >= MIN_NEXT])
    row = np.full(len(freq), len(counted))
    row[counted] = np.arange(len(counted))
    return row[nxt], counted


def update_top(top, cmax, ids, cacts):
    """Merge a batch's contexts into a running top-k per unit (TopContexts). cmax (n, U) each
    context's max activation; ids (n,) their ids; cacts (n, ctx, U) their activations. The k slots
    of a unit are kept unordered (sort_top orders them at the end): a context that makes the cut
    takes the slot of one it pushes out, so only new entries are ever copied, and only units with
    one are touched."""
    k = top.val.shape[1]
    units = (cmax > top.val.amin(1)).any(0).nonzero().squeeze(1)
    if len(units) == 0:
        return
    val = torch.cat([top.val[units], cmax[:, units].T], 1)            # (m, k + n)
    chosen = torch.zeros(val.shape, dtype=torch.bool).scatter_(1, val.topk(k, dim=1).indices, True)
    out_u, slot = (~chosen[:, :k]).nonzero().unbind(1)   # old entries pushed out, row by row ...
    _, new = chosen[:, k:].nonzero().unbind(1)            # ... and as many new contexts let in, in the same rows
    u = units[out_u]
    top.val[u, slot] = cmax[new, u]
    top.ctx[u, slot] = ids[new]
    top.acts[u, slot] = cacts[new, :, u]


def sort_top(top):
    """Order each unit's slots by activation, largest first."""
    order = top.val.argsort(1, descending=True)
    top.val, top.ctx = top.val.gather(1, order), top.ctx.gather(1, order)
    top.acts = top.acts.gather(1, order[..., None].expand_as(top.acts))


def stack_intervals(tops):
    """A half's per-interval samples below the top interval (the top one is the top contexts'), as one
    TopContexts with val, ctx (U, 12 x 2) and acts (U, 12 x 2, ctx)."""
    return TopContexts(*(torch.cat([getattr(t, f) for t in tops[:-1]], 1) for f in ("val", "ctx", "acts")))


def sample_intervals(tops, cacts, mx, ids, g):
    """Merge a batch's contexts into a random sample per activation interval, the one sampler of the
    score (analyze.py) and of the browser's and rating cards' interval examples. tops: K TopContexts,
    the i-th for the contexts whose peak lies in (i/K, (i+1)/K] of the unit's largest activation mx
    (U,), the paper's intervals; cacts (n, ctx, U) the batch's contexts, ids (n,) their ids. Each
    (context, unit) gets a random priority and update_top keeps the largest: a streaming sample
    without replacement (val then holds priorities, not activations)."""
    K = len(tops)
    cmax = cacts.amax(1)
    interval = (cmax / mx * K).ceil().long().clamp(1, K) - 1
    priority = torch.rand(cmax.shape, generator=g).masked_fill_(cmax <= 0, -float("inf"))
    for i in range(K):
        update_top(tops[i], priority.masked_fill(interval != i, -float("inf")), ids, cacts)


@torch.no_grad()
def interval_pass(batches, maxima, halves, ctx, K, per_interval, seed, progress=None):
    """A second streaming pass, once each unit's largest activation is known: per source and half,
    per_interval contexts drawn at random from each of the K intervals (sample_intervals).
    maxima: {name: (U,)}; progress(tokens done), if given, after each batch; returns {name:
    [half][interval] TopContexts}, each sorted by priority."""
    g, halves_t, out = torch.Generator().manual_seed(seed), torch.from_numpy(halves), {}
    for start, acts in batches:
        n = next(iter(acts.values())).shape[0]
        ids = torch.arange(start // ctx, (start + n) // ctx)
        ctx_half = halves_t[start:start + n][::ctx]
        for name, a in acts.items():
            tops = out.setdefault(name, [[new_top(a.shape[1], per_interval, ctx) for _ in range(K)] for _ in (0, 1)])
            cacts = a.float().cpu().view(-1, ctx, a.shape[1])
            for h in (EXPLAIN, SCORE):
                mine = ctx_half == h
                sample_intervals(tops[h], cacts[mine], maxima[name].clamp_min(1e-12), ids[mine], g)
        if progress is not None:
            progress(start + n)
    for tops in out.values():
        for top in (t for half in tops for t in half):
            sort_top(top)
    return out


@torch.no_grad()
def alone_acts(model, vocab, sources):
    """{name: (vocab, U)}: every token's activations out of context, the LM reading it alone (the
    paper's "top tokens out of context")."""
    h = model.mlp_activations(torch.arange(vocab, device=model.unembed.weight.device)[:, None]).flatten(0, 1)
    return {name: fn(h).float().cpu() for name, fn in sources.items()}


def select_encoder(sae, units):
    """An encoder computing only some features: a ReLU SAE needs only their encoder rows; TopK
    needs every pre-activation to know which k win."""
    units = units.to(sae.W_enc.device)   # (unit indices come from the CPU statistics)
    if sae.cfg.activation == "topk":
        return lambda h: sae.encode(h)[:, units]
    W, b = sae.W_enc[units], sae.b_enc[units]
    return lambda h: ((h * sae.act_scale - sae.b_dec) @ W.T + b).relu()


# ----------------------------------------------------------------------------------------------
# The cache: measure.pt


@dataclasses.dataclass
class Measurement:
    """measure() over the held-out tokens, and what it was measured on."""
    key: dict             # what it depends on: a cached one is reused only when the key matches
    stats: dict           # {"neurons" or "F<n>": UnitStats}, on the CPU
    proxies: np.ndarray   # (n_tokens, P) bool: which predicates hold on each token (predicates.context_labels)
    halves: np.ndarray    # (n_tokens,) each token's half (analyze.window_halves)
    sparse_k: int         # neurons kept per token in "sparse_neurons" (analyze.matched_k)
    next_tokens: np.ndarray   # (K,) the next tokens next_counts counts, row by row (next_rows)
    intervals: dict       # {"neurons", "sparse_neurons", main SAE's name: [half][interval] TopContexts} (interval_pass)
    seconds: float        # how long the pass took when it ran
    reused: bool = False  # read from measure.pt


def measure_key(cfg, run):
    """What the measurement depends on. Each SAE is named by its path under --out and a hash of its
    weights (a retrained SAE with the same step count is another SAE), the data by its tokenizer,
    corpus and shards' hashes, so a run folder copied or moved elsewhere keeps its cache."""
    saes = [(os.path.relpath(s.path, cfg.out), lm_fingerprint({"model": s.ckpt["sae"]})) for s in run.saes.values()]
    return dict(lm=run.fingerprint, saes=saes, n_tokens=run.n_tokens, context=cfg.context,
                k=(cfg.explain_contexts, cfg.score_top), intervals=(INTERVALS, PER_INTERVAL, run.seed),
                proxies=predicates.PREDICATES,
                tokenizer=run.meta["tokenizer_hash"], corpus=run.meta.get("corpus_hash"),
                shards=run.meta.get("digests"),
                format=MEASURE_FORMAT, python=sys.version.split()[0].rsplit(".", 1)[0])  # (its keywords)


def progress_lines(what, n):
    """progress(done) for a pass over n held-out tokens: a line every few seconds, with the rate and the ETA."""
    t0, printer = time.time(), Progress(None)

    def progress(done):
        if printer.due() or done == n:
            rate = done / max(time.time() - t0, 1e-9)
            printer.say(f"measure: {what}: {done:,}/{n:,} held-out tokens | {rate:,.0f} tok/s | "
                        f"ETA {fmt_eta((n - done) / max(rate, 1e-9))}")
    return progress


def load_or_measure(cfg, run, halves, units):
    """measure() over the held-out tokens, or its cached result when the inputs match. halves:
    (n_tokens,) each token's half; units() -> (k, {name: fn(neurons (n, d_mlp)) -> acts (n, U)}): what
    is measured, asked on a cache miss only, k the neurons kept per token in "sparse_neurons".
    measure.pt holds plain dicts and tensors (the dataclasses as dataclasses.asdict writes them)."""
    key = measure_key(cfg, run)
    path = os.path.join(run.dir, "measure.pt")
    if os.path.exists(path) and not cfg.remeasure:
        try:
            cached = torch.load(path, weights_only=False)
            if cached.pop("digest", None) != tensor_digest(cached):
                raise ValueError("damaged")
        except Exception:  # a truncated, damaged or foreign cache is only a cache: measure again
            cached = {"key": None}
        if cached["key"] == key:
            print(f"measure: reusing {path} (--remeasure to redo)")
            stats = {name: UnitStats.from_dict(s) for name, s in cached["stats"].items()}
            intervals = {name: [[TopContexts(**t) for t in half] for half in tops]
                         for name, tops in cached["intervals"].items()}
            return Measurement(**{**cached, "stats": stats, "intervals": intervals, "reused": True})
    t0 = time.time()
    n, eot = run.n_tokens, run.meta["eot"]
    proxies = predicates.context_labels(run.tokens, n, run.enc, eot)
    next_ids, counted = next_rows(run.tokens, eot)
    k, sources = units()
    print(f"measure: the neurons sparsified to {k} per token match the features' mean density")
    stats = measure(stream(run.model, run.tokens, n, sources, run.batch), n, halves, proxies, cfg.context,
                    (cfg.explain_contexts, cfg.score_top), progress_lines("the first pass", n), next_ids, len(counted))
    sampled = {name: fn for name, fn in sources.items() if name in ("neurons", "sparse_neurons", run.main_name)}
    intervals = interval_pass(stream(run.model, run.tokens, n, sampled, run.batch),
                              {name: stats[name].max_activation() for name in sampled}, halves, cfg.context,
                              INTERVALS, PER_INTERVAL, run.seed,
                              progress_lines(f"the second pass (contexts from {INTERVALS} activation intervals)", n))
    result = Measurement(key=key, stats=stats, proxies=proxies, halves=halves, sparse_k=k, next_tokens=counted,
                         intervals=intervals, seconds=time.time() - t0)
    atomic_save(dataclasses.asdict(result), path)
    return result
