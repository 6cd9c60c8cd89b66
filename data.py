"""data.py: a corpus that needs no download, a byte-level BPE tokenizer trained on it, token shards.

    python data.py                      # Python's own standard library as the corpus
    python data.py --data ~/pile/       # or your own text: files, folders, globs; any size

The paper trained on the Pile; a laptop with no network has a different corpus at hand: the
text files that ship with Python itself. It mixes code, English prose (docstrings, docs), legal
text (licenses), numbers, email and HTTP samples and non-Latin scripts: enough variety for a
one-layer model to learn many distinct features. Writes <out>/data/: tokenizer.tiktoken (the BPE's merges),
train.bin and val.bin (token ids, end-of-text before each document) and meta.json (what they hold).
"""
import dataclasses
import functools
import hashlib
import heapq
from collections import Counter, defaultdict

import numpy as np
import regex
import tiktoken
import torch

from lab import corpus
from lab.corpus import load_meta, load_shards, load_tokens  # noqa: F401 (the later stages read the shards as data.*)
from lab.plumbing import UserError, arg, flags, parse_config, run_main

# GPT-4's (cl100k) pre-tokenisation: BPE merges never cross these pieces (words, 1-3 digit
# numbers, punctuation runs, whitespace), which keeps tokens meaningful and training cheap.
PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
           r"""|\s*[\r\n]|\s+(?!\S)|\s+""")


@flags
class DataConfig:
    out: str = arg("out", "artifact root; this stage writes <out>/data/")
    data: list = arg([], "files, folders or globs of text, .jsonl (its \"text\" field), .gz; empty: Python's stdlib")
    tokenizer: str = arg("bpe", "'bpe' trains our own; or a tiktoken encoding name such as gpt2")
    vocab_size: int = arg(4096, "BPE vocabulary size, the end-of-text token included", at_least=257, at_most=2**32,
                          note=" (above the 256 bytes; ids fit uint32)")
    val_fraction: float = arg(0.1, "fraction of documents held out for validation (the analysis reads 1M tokens)",
                              check=(lambda v: 0 < v < 0.5, "must be a small fraction such as 0.02"))
    bpe_sample_mb: float = arg(100.0, "MB of the training split the BPE trains on (the stdlib's 37 MB fit whole)",
                               check=(lambda v: v > 0, "must be > 0 (inf: the whole split)"))
    overwrite: bool = arg(False, "rebuild <out>/data/ from other inputs (what was trained on it no longer matches)")


def prepare(cfg):
    """Corpus -> tokenizer -> train.bin/val.bin/meta.json. lab/corpus.py streams a corpus of any size (never
    held in memory) and keeps the books: what is up to date is reused, changed inputs are refused without
    --overwrite (a finished run may depend on them), meta.json records the shards' digests."""
    files, held_out = corpus_files(cfg), functools.partial(is_validation, fraction=cfg.val_fraction)
    meta, plan = corpus.plan_rebuild(cfg, files, held_out)
    if meta:
        return meta
    # documents, or (a few large ones: one book as one .txt) blocks of text, split by name
    documents = lambda: corpus.documents_or_blocks(files, plan["block"])
    if cfg.tokenizer == "bpe":  # our own BPE, trained on (a sample of) the training split; else tiktoken's by name
        print(f"data: training a {cfg.vocab_size}-token BPE on up to {cfg.bpe_sample_mb:g} MB of training text ...",
              flush=True)
        ranks = train_bpe(corpus.bpe_sample(documents(), held_out, cfg.bpe_sample_mb), cfg.vocab_size)
        corpus.save_bpe(ranks, plan["tok_path"], cfg.vocab_size)
    make_tokenizer = functools.partial(open_tokenizer, cfg.tokenizer, plan["tok_path"])  # made in each process
    return corpus.write_shards(documents(), held_out, make_tokenizer, plan)  # and meta.json


# ----------------------------------------------------------------------------------------------
# The corpus: (name, text) documents in a fixed order, and the split

def corpus_files(cfg):
    """[(path, name)] in a fixed order: the running Python's standard library, or the files --data names
    (lab/corpus.py lists both). A name (what the split hashes) is the path relative to the folder given,
    or the file's own name: moving the corpus elsewhere changes neither the split nor the shards."""
    return corpus.user_files(cfg.data) if cfg.data else corpus.stdlib_files()


def is_validation(name, fraction):
    """Held out by a stable hash of the document's name, never by position: adding or removing
    other files never moves a document between the splits."""
    h = int.from_bytes(hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()[:8], "big")
    return h / 2**64 < fraction


# ----------------------------------------------------------------------------------------------
# The tokenizer: a byte-level BPE trained from scratch, served by tiktoken

def train_bpe(texts, vocab_size):
    """Learn merges over UTF-8 bytes: start from the 256 byte values and repeatedly merge the most
    frequent adjacent pair of tokens into a new one, until the vocabulary is full. Returns tiktoken's
    mergeable ranks {token bytes: rank}: the 256 single bytes, then each merge in the order learned.

    Each distinct pre-token is counted once (a word seen 10,000 times is one entry with a count), pair
    counts are updated only around the words a merge touches, and a heap finds the most frequent pair."""
    counts = Counter(piece for text in texts for piece in regex.findall(PATTERN, text))
    words = [list(w.encode()) for w in counts]
    freq = list(counts.values())
    token_bytes = [bytes([i]) for i in range(256)]

    pair_count = defaultdict(int)
    where = defaultdict(set)  # pair -> indices of words that (may) contain it
    for i, w in enumerate(words):
        for pair in zip(w, w[1:]):
            pair_count[pair] += freq[i]
            where[pair].add(i)
    heap = [(-c, pair) for pair, c in pair_count.items()]
    heapq.heapify(heap)

    ranks = {b: i for i, b in enumerate(token_bytes)}
    while len(ranks) < vocab_size - 1 and heap:  # the last id is the end-of-text token
        negc, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -negc or negc == 0:
            continue  # stale entry: this pair's count changed since it was pushed
        merged = token_bytes[pair[0]] + token_bytes[pair[1]]
        if merged not in ranks:  # (else the same bytes were reached by another split: reuse that token)
            ranks[merged] = len(token_bytes)
            token_bytes.append(merged)
        new = ranks[merged]
        for p in merge_everywhere(words, freq, where, pair_count, pair, new):
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
            else:
                pair_count.pop(p)
    return ranks


def merge_everywhere(words, freq, where, pair_count, pair, new):
    """Merge pair into token new in every word that holds it, updating the pair counts (each word
    weighted by its frequency) and where each pair occurs; returns the pairs whose count changed."""
    changed = set()
    for i in where.pop(pair):
        w, out = words[i], merge(words[i], pair, new)
        if len(out) == len(w):
            continue
        for p in zip(w, w[1:]):
            pair_count[p] -= freq[i]
            changed.add(p)
        for p in zip(out, out[1:]):
            pair_count[p] += freq[i]
            where[p].add(i)
            changed.add(p)
        words[i] = out
    return changed


def merge(word, pair, new):
    """The word (a list of token ids) with each occurrence of pair, left to right, made the token new
    (never pair[0]: its bytes are longer, so a token just made is never merged again in this pass)."""
    out = []
    for t in word:
        if out and out[-1] == pair[0] and t == pair[1]:
            out[-1] = new
        else:
            out.append(t)
    return out


def make_encoding(ranks):
    return tiktoken.Encoding("bpe", pat_str=PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": max(ranks.values()) + 1})


def open_tokenizer(tokenizer, path):
    """The tiktoken Encoding of --tokenizer: ours from its rank file at path, or tiktoken's own by name."""
    return make_encoding(corpus.load_ranks(path)) if tokenizer == "bpe" else corpus.named_encoding(tokenizer)


# ----------------------------------------------------------------------------------------------
# Windows of the shards: every later stage cuts its LM inputs out of them here

def get_batch(tokens, batch_size, block_size, generator, device="cpu"):
    """Random windows of block_size+1 tokens: inputs x and next-token targets y, both (B, T)."""
    if len(tokens) <= block_size + 1:
        raise UserError(f"corpus of {len(tokens)} tokens is too small for a context of {block_size}: "
                        "add data or lower --block-size")
    starts = torch.randint(len(tokens) - block_size - 1, (batch_size,), generator=generator).numpy()
    w = windows(tokens, starts, block_size + 1, device)
    return w[:, :-1], w[:, 1:]


def windows(tokens, starts, length, device="cpu"):
    """(len(starts), length) int64 tensor of token windows tokens[s:s + length]: every stage cuts
    its LM inputs out of the memmapped shards through this one function."""
    return torch.from_numpy(np.stack([tokens[s:s + length] for s in starts]).astype(np.int64)).to(device)


def main():
    cfg = parse_config(DataConfig, description=__doc__.split("\n\n")[0])
    print(f"config: {dataclasses.asdict(cfg)}")
    corpus.report(prepare(cfg))


if __name__ == "__main__":
    run_main(main)
