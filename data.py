"""data.py: a corpus that needs no download, a BPE tokenizer trained from scratch, token shards.

    python data.py                      # Python's own standard library as the corpus
    python data.py --data ~/pile.jsonl  # or your own .txt / .jsonl / .gz files, folders, globs

The paper trained on the Pile; a laptop with no network has a different corpus at hand: the
text files that ship with Python itself. It mixes code, English prose (docstrings, docs), legal
text (licenses), numbers, email and HTTP samples and non-Latin scripts: enough variety for a
one-layer model to learn many distinct features. Writes under <out>/data/:

    tokenizer.tiktoken   the BPE merges in tiktoken's rank-file format (served by tiktoken)
    train.bin, val.bin   token ids, uint16 (uint32 if the vocabulary needs it), an
                         end-of-text token before every document
    meta.json            tokenizer hash, vocabulary size, token counts, corpus description
"""
import base64
import dataclasses
import glob
import gzip
import hashlib
import heapq
import json
import os
import sys
import sysconfig
from collections import Counter, defaultdict

import numpy as np
import regex
import tiktoken
import torch

from common import UserError, arg, parse_config, run_main

# GPT-4's (cl100k) pre-tokenisation: BPE merges never cross these pieces (words, 1-3 digit
# numbers, punctuation runs, whitespace), which keeps tokens meaningful and training cheap.
PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"


@dataclasses.dataclass
class DataConfig:
    out: str = arg("out", "artifact root; this stage writes <out>/data/")
    data: list = arg([], "files, folders or globs of .txt/.jsonl(.gz); empty = Python's standard library")
    tokenizer: str = arg("bpe", "'bpe' trains our own; or a tiktoken encoding name such as gpt2")
    vocab_size: int = arg(4096, "BPE vocabulary size, the end-of-text token included")
    val_fraction: float = arg(0.1, "fraction of documents held out for validation, by path hash "
                              "(10%: the analysis wants a million held-out tokens)")


# ----------------------------------------------------------------------------------------------
# The corpus: (name, text) documents in a fixed order


def stdlib_documents(stats):
    """Every UTF-8 text file of the running Python's standard library, in sorted path order."""
    root = sysconfig.get_paths()["stdlib"]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            text = read_text(path, stats)
            if text is not None:
                yield os.path.relpath(path, root), text


def read_text(path, stats):
    """The file's text, or None (counted in stats) for binaries and undecodable files."""
    try:
        raw = open(path, "rb").read()
        if path.endswith(".gz"):
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile):
        stats["unreadable"] += 1
        return None
    if b"\x00" in raw:
        stats["binary"] += 1
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats["undecodable"] += 1
        return None


def file_documents(patterns, stats):
    """Documents from the user's files: .txt (one document per file) or .jsonl (one per line)."""
    # A document's name (what the split hashes) is its path relative to the folder given, or the
    # file's own name: moving the corpus elsewhere changes neither the split nor the shards.
    names = {}
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if os.path.isdir(pattern):
            names.update((os.path.join(d, f), os.path.relpath(os.path.join(d, f), pattern))
                         for d, _, fs in os.walk(pattern) for f in fs)
        else:
            names.update((p, os.path.basename(p))
                         for p in (glob.glob(pattern) if any(c in pattern for c in "*?[") else [pattern]))
    paths = sorted(p for p in names if p.endswith((".txt", ".jsonl", ".txt.gz", ".jsonl.gz")))
    for path in paths:
        text = read_text(path, stats)
        if text is None:
            continue
        if ".jsonl" not in path:
            yield names[path], text
            continue
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    yield f"{names[path]}:{i}", json.loads(line)["text"]
                except (ValueError, KeyError, TypeError):
                    stats["bad jsonl lines"] += 1


def load_corpus(cfg):
    """[(name, text)] in a fixed order, plus counts of what was skipped."""
    stats = Counter()
    docs = list(file_documents(cfg.data, stats) if cfg.data else stdlib_documents(stats))
    docs = [(name, text) for name, text in docs if text.strip()]
    if not docs:
        where = " ".join(cfg.data) if cfg.data else "the standard library"
        raise UserError(f"--data: no readable .txt/.jsonl(.gz) text found in {where}; check the paths")
    return docs, dict(stats)


def is_validation(name, fraction):
    """Held out by a stable hash of the document's name, never by position: adding or removing
    other files never moves a document between the splits."""
    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


# ----------------------------------------------------------------------------------------------
# Byte-level BPE, trained from scratch


def train_bpe(texts, vocab_size):
    """Learn merges over UTF-8 bytes. Returns tiktoken's mergeable ranks {token bytes: rank}:
    the 256 single bytes, then each merge in the order learned.

    Each distinct pre-token is counted once (a word seen 10,000 times is one entry with a count),
    and pair counts are updated only around the words a merge touches; a heap finds the most
    frequent pair (stale heap entries are skipped when popped)."""
    counts = Counter()
    pattern = regex.compile(PATTERN)
    for text in texts:
        counts.update(pattern.findall(text))
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
        if merged in ranks:  # same bytes reached by another split: reuse that token
            new = ranks[merged]
        else:
            new = len(token_bytes)
            token_bytes.append(merged)
            ranks[merged] = new
        changed = set()
        for i in where.pop(pair):
            w = words[i]
            out, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == pair[0] and w[j + 1] == pair[1]:
                    out.append(new)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
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
        for p in changed:
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
            else:
                pair_count.pop(p)
    return ranks


def make_encoding(ranks, name="bpe"):
    return tiktoken.Encoding(name, pat_str=PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: max(ranks.values()) + 1})


def named_encoding(name):
    """One of tiktoken's own encodings (gpt2, cl100k_base, ...); it downloads its file once."""
    try:
        return tiktoken.get_encoding(name)
    except ValueError:
        raise UserError(f"--tokenizer {name}: unknown; use 'bpe' or one of {tiktoken.list_encoding_names()}") from None
    except Exception as e:
        raise UserError(f"--tokenizer {name}: tiktoken could not load it offline ({type(e).__name__}); "
                        "run once with network (or set TIKTOKEN_CACHE_DIR to a folder holding its file), "
                        "or use the default --tokenizer bpe") from None


def load_tokenizer(data_dir):
    """The tiktoken Encoding the shards in data_dir were made with."""
    meta = load_meta(data_dir)
    if meta["tokenizer"] != "bpe":
        return named_encoding(meta["tokenizer"])
    path = os.path.join(data_dir, "tokenizer.tiktoken")
    if file_sha256(path) != meta["tokenizer_hash"]:
        raise UserError(f"{path} does not match {data_dir}/meta.json: rerun python data.py")
    return make_encoding(load_ranks(path))


# tiktoken's rank-file format: one "base64(token bytes) rank" per line. Written and read here
# rather than by tiktoken.load, which caches files by path in a temp folder (a retrained
# tokenizer at the same path would come back stale).
def save_ranks(ranks, path):
    with open(path + ".tmp", "w") as f:
        f.writelines(f"{base64.b64encode(b).decode()} {r}\n" for b, r in sorted(ranks.items(), key=lambda x: x[1]))
    os.replace(path + ".tmp", path)


def load_ranks(path):
    lines = open(path).read().split()
    return {base64.b64decode(t): int(r) for t, r in zip(lines[::2], lines[1::2])}


# ----------------------------------------------------------------------------------------------
# Token shards


def prepare(cfg):
    """Corpus -> tokenizer -> train.bin/val.bin/meta.json. Reuses what is already there."""
    if not 256 < cfg.vocab_size <= 2**32:
        raise UserError(f"--vocab-size {cfg.vocab_size}: must be above 256 (the byte alphabet) and fit uint32")
    if not 0 < cfg.val_fraction < 0.5:
        raise UserError(f"--val-fraction {cfg.val_fraction}: use a small fraction such as 0.02")
    data_dir = os.path.join(cfg.out, "data")
    docs, skipped = load_corpus(cfg)
    corpus_hash = hashlib.sha256()
    for name, text in docs:
        corpus_hash.update(name.encode() + b"\0" + text.encode("utf-8", "surrogatepass") + b"\0")
    want = {"corpus_hash": corpus_hash.hexdigest(), "tokenizer": cfg.tokenizer,
            "vocab_size_requested": cfg.vocab_size, "val_fraction": cfg.val_fraction}
    meta_path = os.path.join(data_dir, "meta.json")
    if os.path.exists(meta_path):
        old = json.load(open(meta_path))
        if all(old.get(k) == v for k, v in want.items()):
            print(f"data: {data_dir} is up to date ({old['tokens']['train']:,} train tokens); nothing to do")
            return old
        print(f"data: inputs changed since {meta_path} was written; rebuilding tokenizer and shards")

    train = [text for name, text in docs if not is_validation(name, cfg.val_fraction)]
    val = [text for name, text in docs if is_validation(name, cfg.val_fraction)]
    if not train or not val:
        raise UserError(f"--data: {len(docs)} document(s) give an empty train or validation split; "
                        "add more documents or raise --val-fraction")
    os.makedirs(data_dir, exist_ok=True)
    # Remove the old meta first: a crash mid-way then leaves no meta.json claiming the old shards
    # go with a new tokenizer.
    if os.path.exists(meta_path):
        os.remove(meta_path)
    tok_path = os.path.join(data_dir, "tokenizer.tiktoken")
    if cfg.tokenizer == "bpe":
        print(f"data: training a {cfg.vocab_size}-token BPE on {len(train):,} documents ...", flush=True)
        ranks = train_bpe(train, cfg.vocab_size)
        save_ranks(ranks, tok_path)
        enc, tok_hash = make_encoding(ranks), file_sha256(tok_path)
    else:
        enc = named_encoding(cfg.tokenizer)
        tok_hash = hashlib.sha256(cfg.tokenizer.encode()).hexdigest()
    dtype = np.uint16 if enc.n_vocab <= 2**16 else np.uint32
    counts = {}
    for split, texts in (("train", train), ("val", val)):
        ids = enc.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)
        flat = np.fromiter((t for doc in ids for t in [enc.eot_token, *doc]), dtype=dtype)
        flat.tofile(os.path.join(data_dir, f"{split}.bin.tmp"))
        os.replace(os.path.join(data_dir, f"{split}.bin.tmp"), os.path.join(data_dir, f"{split}.bin"))
        counts[split] = int(flat.size)
    meta = {**want, "tokenizer_hash": tok_hash, "vocab_size": enc.n_vocab, "eot": enc.eot_token,
            "dtype": np.dtype(dtype).name, "tokens": counts, "documents": {"train": len(train), "val": len(val)},
            "corpus": (" ".join(cfg.data) if cfg.data else f"Python {sys.version.split()[0]} standard library"),
            "skipped_files": skipped, "characters": sum(len(t) for t in train + val)}
    with open(meta_path + ".tmp", "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(meta_path + ".tmp", meta_path)
    return meta


def file_sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def load_meta(data_dir):
    path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(path):
        raise UserError(f"no token shards in {data_dir}: run python data.py first (with the same --out)")
    return json.load(open(path))


def load_tokens(data_dir, split):
    """The split's token ids as a read-only numpy memmap (nothing is read until used)."""
    meta = load_meta(data_dir)
    return np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=meta["dtype"], mode="r")


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
    meta = prepare(cfg)
    print(f"corpus: {meta['corpus']}: {meta['documents']['train']:,} train / {meta['documents']['val']:,} val "
          f"documents, {meta['characters'] / 1e6:.1f}M characters; skipped {meta['skipped_files'] or 'nothing'}")
    print(f"tokens: {meta['tokens']['train']:,} train | {meta['tokens']['val']:,} val | "
          f"vocabulary {meta['vocab_size']} ({meta['dtype']})")


if __name__ == "__main__":
    run_main(main)
