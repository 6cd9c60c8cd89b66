"""data.py: a corpus that needs no download, a BPE tokenizer trained on it (bpe.py), token shards.

    python data.py                      # Python's own standard library as the corpus
    python data.py --data ~/pile/       # or your own text: files, folders, globs; any size

The paper trained on the Pile; a laptop with no network has a different corpus at hand: the
text files that ship with Python itself. It mixes code, English prose (docstrings, docs), legal
text (licenses), numbers, email and HTTP samples and non-Latin scripts: enough variety for a
one-layer model to learn many distinct features. Writes under <out>/data/:

    tokenizer.tiktoken   the BPE merges in tiktoken's rank-file format (served by tiktoken)
    train.bin, val.bin   token ids, uint16 (uint32 if the vocabulary needs it), an
                         end-of-text token before every document (every block, when
                         documents are split by blocks: see prepare below)
    meta.json            tokenizer hash, vocabulary size, token counts, corpus description

Your own corpus may be many GB: it is streamed, never held in memory. A first pass hashes it
and counts documents; the BPE trains on a bounded sample of the training split; a pool of
processes, one per core, encodes it and the shards grow as they go. Shards that a finished run
may depend on are never rebuilt from other inputs without --overwrite.
"""
import codecs
import dataclasses
import glob
import gzip
import hashlib
import io
import itertools
import json
import multiprocessing
import os
import sys
import sysconfig
import time
import zlib
from collections import Counter, deque

import numpy as np
import torch

import bpe
from lab.plumbing import UserError, arg, atomic_write_text, fmt_eta, parse_config, run_main

SNIFF = 8192          # bytes: a file is text if these have no NUL byte and are UTF-8 (as git and grep decide)
PIECE = 1 << 20       # characters: documents are read, hashed and encoded in pieces of at most this
CHUNK = 1 << 20       # characters of text per task sent to an encoding process
MIN_DOCUMENTS = 20    # fewer documents than this are split by blocks, not by name
REPORT_EVERY = 5.0    # seconds between progress lines


@dataclasses.dataclass
class DataConfig:
    out: str = arg("out", "artifact root; this stage writes <out>/data/")
    data: list = arg([], "files, folders or globs of text (any extension), .jsonl with a \"text\" field, "
                         ".gz of these; empty = Python's standard library")
    tokenizer: str = arg("bpe", "'bpe' trains our own; or a tiktoken encoding name such as gpt2")
    vocab_size: int = arg(4096, "BPE vocabulary size, the end-of-text token included")
    val_fraction: float = arg(0.1, "fraction of documents held out for validation, by path hash "
                              "(10%: the analysis wants a million held-out tokens)")
    bpe_sample_mb: float = arg(100.0, "the BPE trains on the first this many MB of the training split "
                               "(the standard library's 37 MB fit whole)")
    overwrite: bool = arg(False, "rebuild <out>/data/ even if it was made from other inputs "
                          "(what was trained on it then no longer matches)")


# ----------------------------------------------------------------------------------------------
# The corpus: (name, text) documents in a fixed order, read in pieces


def corpus_files(cfg):
    """[(path, name)] in a fixed order. A document's name (what the split hashes) is its path
    relative to the folder given, or the file's own name: moving the corpus elsewhere changes
    neither the split nor the shards."""
    if not cfg.data:  # every file of the running Python's standard library, in walk order
        root, files = sysconfig.get_paths()["stdlib"], []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
            files += [(os.path.join(dirpath, f), os.path.relpath(os.path.join(dirpath, f), root))
                      for f in sorted(filenames)]
        return files
    names = {}
    for pattern in cfg.data:
        pattern = os.path.expanduser(pattern)
        if os.path.exists(pattern):
            paths = [pattern]
        elif any(c in pattern for c in "*?["):
            paths = glob.glob(pattern)
            if not paths:
                raise UserError(f"--data {pattern}: no file matches this pattern")
        else:
            raise UserError(f"--data {pattern}: no such file or folder")
        for path in paths:
            if not os.path.isdir(path):
                names[path] = os.path.basename(path)
                continue
            found = {f: os.path.relpath(f, path) for f in walk(path)}
            if not found:
                raise UserError(f"--data {path}: the folder is empty")
            names.update(found)
    return sorted((p, n) for p, n in names.items() if os.path.isfile(p))  # no pipes or devices


def corpus_name(cfg):
    return " ".join(cfg.data) if cfg.data else f"Python {sys.version.split()[0]} standard library"


def walk(root):
    """The files under a folder, hidden ones (.git, .DS_Store) left out."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        yield from (os.path.join(dirpath, f) for f in filenames if not f.startswith("."))


def documents(files, stats, size):
    """Every document as (name, pieces, tell): pieces yields its text in consecutive pieces of at
    most `size` characters; tell() is how many input bytes are read so far (compressed bytes for
    .gz), for the progress line. Skipped files are counted in stats."""
    done = 0
    for path, name in files:
        try:
            raw = open(path, "rb")
        except OSError:
            stats["unreadable"] += 1
            continue
        with raw:
            for doc, ps in file_documents(raw, path, name, stats, size):
                yield doc, ps, lambda raw=raw, done=done: done + raw.tell()
        done += os.path.getsize(path)


def file_documents(raw, path, name, stats, size):
    """One file's documents as (name, pieces): a text file is one document, a .jsonl file one per
    line with a "text" field. Blank documents are left out."""
    f = open_text(raw, path, stats)
    if f is None:
        return
    if not path.endswith((".jsonl", ".jsonl.gz")):
        ps, head = pieces(f, size, path), []
        for p in ps:  # look past blank pieces: only a document that is all blank is left out
            head.append(p)
            if p.strip():
                yield name, itertools.chain(head, ps)
                return
        return
    try:
        for i, line in enumerate(f):  # lines end at "\n" only: JSON strings may hold U+2028
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError):
                text = None
            if not isinstance(text, str):
                stats["bad jsonl lines"] += 1
            elif text.strip():
                yield f"{name}:{i}", pieces(io.StringIO(text), size, path)
    except (OSError, EOFError, zlib.error) as e:
        raise damaged(path, e) from None


def open_text(raw, path, stats):
    """The open file as a text stream (decompressed if .gz; line endings kept as they are), or
    None, counted in stats, when its first bytes are binary or not UTF-8. A bad byte further in
    becomes U+FFFD rather than dropping a file already half read."""
    f = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
    try:
        head = f.read(SNIFF)
        f.seek(0)
    except (OSError, EOFError, zlib.error):
        stats["unreadable"] += 1
        return None
    if b"\x00" in head:
        stats["binary"] += 1
        return None
    try:  # a character cut in two at the end of the head is fine; the head of a short file must be whole
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < SNIFF)
    except UnicodeDecodeError:
        stats["undecodable"] += 1
        return None
    return io.TextIOWrapper(f, encoding="utf-8", errors="replace", newline="\n")


def pieces(f, size, path):
    """The text of stream f in consecutive pieces of at most `size` characters (see cut_point)."""
    buf = ""
    while True:
        try:
            more = f.read(size)
        except (OSError, EOFError, zlib.error) as e:
            raise damaged(path, e) from None
        buf += more
        while len(buf) > size or buf and not more:
            cut = cut_point(buf, size) if len(buf) > size else len(buf)
            yield buf[:cut]
            buf = buf[cut:]
        if not more:
            return


def cut_point(text, size):
    """Where to end a piece of at most `size` characters: just after a newline that a non-space
    follows, else just before a space that a non-space precedes. The tokenizer's pre-tokens
    (bpe.PATTERN) never cross either point, so the pieces encode to exactly the tokens of the whole
    text. (isspace is true for all of the pattern's \\s and a few more.)"""
    i = text.rfind("\n", 0, size)
    while i >= 0 and text[i + 1].isspace():
        i = text.rfind("\n", 0, i)
    if i >= 0:
        return i + 1
    i = text.rfind(" ", 1, size)
    while i > 0 and text[i - 1].isspace():
        i = text.rfind(" ", 1, i)
    return i if i > 0 else size  # a blob with neither (base64, say): cut anywhere


def damaged(path, e):
    return UserError(f"{path}: cannot be read to the end ({type(e).__name__}: {e}); repair or remove the file")


def is_validation(name, fraction):
    """Held out by a stable hash of the document's name, never by position: adding or removing
    other files never moves a document between the splits."""
    h = int.from_bytes(hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()[:8], "big")
    return h / 2**64 < fraction


# ----------------------------------------------------------------------------------------------
# The tokenizer of the shards (bpe.py trains ours)


def load_tokenizer(data_dir):
    """The tiktoken Encoding the shards in data_dir were made with."""
    meta = load_meta(data_dir)
    if meta["tokenizer"] != "bpe":
        return bpe.named_encoding(meta["tokenizer"])
    path = os.path.join(data_dir, "tokenizer.tiktoken")
    if file_sha256(path) != meta["tokenizer_hash"]:
        raise UserError(f"{path} does not match {data_dir}/meta.json: rerun python data.py")
    return bpe.make_encoding(bpe.load_ranks(path))


# ----------------------------------------------------------------------------------------------
# Token shards


def prepare(cfg):
    """Corpus -> tokenizer -> train.bin/val.bin/meta.json. Reuses what is already there."""
    if not 256 < cfg.vocab_size <= 2**32:
        raise UserError(f"--vocab-size {cfg.vocab_size}: must be above 256 (the byte alphabet) and fit uint32")
    if not 0 < cfg.val_fraction < 0.5:  # also refuses nan
        raise UserError(f"--val-fraction {cfg.val_fraction}: use a small fraction such as 0.02")
    if not cfg.bpe_sample_mb > 0:
        raise UserError(f"--bpe-sample-mb {cfg.bpe_sample_mb}: use a size in MB such as 100 (inf: the whole split)")
    data_dir = os.path.join(cfg.out, "data")
    meta_path = os.path.join(data_dir, "meta.json")
    files = corpus_files(cfg)
    old = json.load(open(meta_path)) if os.path.exists(meta_path) else None
    want = {"tokenizer": cfg.tokenizer, "vocab_size_requested": cfg.vocab_size,
            "val_fraction": cfg.val_fraction, "bpe_sample_mb": cfg.bpe_sample_mb}
    changes(old, want, cfg, meta_path)  # a changed flag is refused before reading the corpus
    scan = scan_corpus(files, cfg)
    want = {"corpus_hash": scan["hash"], **want}
    if old and not changes(old, want, cfg, meta_path):
        print(f"data: {data_dir} is up to date ({old['tokens']['train']:,} train tokens); nothing to do")
        return old
    if old:
        print(f"data: --overwrite: inputs changed since {meta_path} was written; rebuilding tokenizer and shards")

    # Split by document name when that gives a sensible split. Otherwise (a few large documents;
    # the commonest is one book as one .txt) cut every document into blocks of about a thousandth
    # of the corpus (4k-64k characters, at a line break) and hold out blocks by "name#block".
    block, share = 0, scan["val_characters"] / scan["characters"]
    if scan["documents"] < MIN_DOCUMENTS or not cfg.val_fraction / 4 <= share <= 0.5:
        block = min(65536, max(4096, scan["characters"] // 1000))
        print(f"data: {scan['documents']:,} document(s), {share:.0%} of the text held out by name: "
              f"splitting them into blocks of up to {block:,} characters, held out by name#block instead")
    os.makedirs(data_dir, exist_ok=True)
    # Remove the old meta first: a crash mid-way then leaves no meta.json claiming the old shards
    # go with a new tokenizer.
    if os.path.exists(meta_path):
        os.remove(meta_path)
    tok_path = os.path.join(data_dir, "tokenizer.tiktoken")
    if cfg.tokenizer == "bpe":
        print(f"data: training a {cfg.vocab_size}-token BPE on up to {cfg.bpe_sample_mb:g} MB of training text ...",
              flush=True)
        ranks = bpe.train_bpe(bpe_sample(corpus(files, block), cfg), cfg.vocab_size)
        bpe.save_ranks(ranks, tok_path)
        enc, tok_hash = bpe.make_encoding(ranks), file_sha256(tok_path)
    else:
        enc = bpe.named_encoding(cfg.tokenizer)
        tok_hash = hashlib.sha256(cfg.tokenizer.encode()).hexdigest()
    dtype = np.uint16 if enc.n_vocab <= 2**16 else np.uint32
    tokens, docs = write_shards(corpus(files, block), cfg, (cfg.tokenizer, tok_path, dtype), data_dir, scan["bytes"])
    if not docs["train"] or not docs["val"]:
        for split in ("train", "val"):
            os.remove(os.path.join(data_dir, f"{split}.bin.tmp"))
        raise UserError(f"--data: {scan['characters']:,} characters of text are too few to hold out "
                        f"--val-fraction {cfg.val_fraction} in blocks of {block:,}; add text or raise --val-fraction")
    for split in ("train", "val"):
        os.replace(os.path.join(data_dir, f"{split}.bin.tmp"), os.path.join(data_dir, f"{split}.bin"))
    meta = {**want, "tokenizer_hash": tok_hash, "vocab_size": enc.n_vocab, "eot": enc.eot_token,
            "dtype": np.dtype(dtype).name, "tokens": tokens, "documents": docs,
            "corpus": corpus_name(cfg),
            "skipped_files": scan["skipped"], "characters": scan["characters"],
            "split": f"by blocks of up to {block} characters" if block else "by document name"}
    atomic_write_text(json.dumps(meta, indent=1), meta_path)
    return meta


def changes(old, want, cfg, meta_path):
    """The keys of `want` that differ from the meta.json of an earlier run, if any. Refused unless
    --overwrite: the LM and SAEs trained on those shards would silently stop matching them."""
    # keys that an older meta.json lacks (bpe_sample_mb) are not held against it
    changed = [k for k, v in want.items() if old and old.get(k, v) != v]
    if changed and not cfg.overwrite:
        corpus = corpus_name(cfg)
        moved = f"the corpus ({old['corpus']} -> {corpus})" if old["corpus"] != corpus else f"the text of {corpus}"
        what = [moved if k == "corpus_hash" else
                f"--{k.replace('_requested', '').replace('_', '-')} {old[k]} -> {want[k]}" for k in changed]
        raise UserError(f"{meta_path} was made from other inputs: {'; '.join(what)}; add --overwrite to rebuild "
                        "it (the LM and SAEs trained on it will no longer match) or use another --out")
    return changed


def scan_corpus(files, cfg):
    """First pass: the corpus hash (of names and texts, so a corpus moved or copied is the same
    corpus and any edit is a change), how much the split by name would hold out, what was skipped."""
    stats, h = Counter(), hashlib.sha256()
    n = chars = val_chars = 0
    total, t0, last = sum(os.path.getsize(p) for p, _ in files), time.time(), time.time()
    for name, ps, tell in documents(files, stats, PIECE):
        size = 0
        h.update(name.encode("utf-8", "surrogateescape") + b"\0")
        for p in ps:
            h.update(p.encode("utf-8", "surrogatepass"))
            size += len(p)
            if time.time() - last > REPORT_EVERY:
                last = time.time()
                print(progress_line("reading", tell(), total, t0), flush=True)
        h.update(b"\0")
        n, chars, val_chars = n + 1, chars + size, val_chars + size * is_validation(name, cfg.val_fraction)
    if not n:
        where = " ".join(cfg.data)
        if sum(stats[k] for k in ("binary", "undecodable", "unreadable")) == len(files):
            raise UserError(f"--data {where}: {len(files)} file(s), all binary or not UTF-8 ({dict(stats)}); "
                            "give text files (any extension), .jsonl with a \"text\" field, or .gz of these")
        raise UserError(f"--data {where}: no text in {len(files)} file(s) (skipped {dict(stats) or 'none'}): "
                        "the text files are blank, or the .jsonl lines have no \"text\" field")
    print(f"data: read {n:,} documents, {chars / 1e6:,.1f}M characters ({total / 1e6:,.0f} MB of files) "
          f"in {time.time() - t0:.1f} s")
    return {"hash": h.hexdigest(), "documents": n, "characters": chars, "val_characters": val_chars,
            "skipped": dict(stats), "bytes": total}


def corpus(files, block):
    """(name, pieces, tell) for the second and third passes: the documents, or with a block size
    each block of each document as a document of its own, named name#k."""
    if not block:
        yield from documents(files, Counter(), PIECE)
        return
    for name, ps, tell in documents(files, Counter(), block):
        for k, p in enumerate(ps):
            yield f"{name}#{k}", [p], tell


def bpe_sample(docs, cfg):
    """The training split's text in corpus order, up to --bpe-sample-mb MB of UTF-8: the BPE's time
    and memory stay bounded whatever the corpus size."""
    left = cfg.bpe_sample_mb * 1e6
    for name, ps, _ in docs:
        if is_validation(name, cfg.val_fraction):
            continue
        for p in ps:
            b = p.encode("utf-8", "surrogatepass")
            if len(b) >= left:
                yield b[:int(left)].decode("utf-8", "ignore")
                return
            left -= len(b)
            yield p


def write_shards(docs, cfg, worker_args, data_dir, total):
    """Third pass: a pool of processes (one per core) encodes chunks of text while this one reads
    the corpus and appends their tokens, in order, to <split>.bin.tmp. At most two chunks per
    process are in flight, so memory does not grow with the corpus."""
    tokens, counts = {"train": 0, "val": 0}, {"train": 0, "val": 0}

    def chunks():  # [(split, starts a document, text)] of about CHUNK characters, and the bytes read
        chunk, size = [], 0
        for name, ps, tell in docs:
            split = "val" if is_validation(name, cfg.val_fraction) else "train"
            counts[split] += 1
            for i, p in enumerate(ps):
                chunk.append((split, i == 0, p))
                size, pos = size + len(p), tell()
                if size >= CHUNK:
                    yield chunk, pos
                    chunk, size = [], 0
        if chunk:
            yield chunk, pos

    workers = min(os.cpu_count() or 1, total // CHUNK + 1)  # a small corpus needs no 64 processes
    itemsize = np.dtype(worker_args[2]).itemsize
    t0, last, pending = time.time(), time.time(), deque()
    paths = {s: os.path.join(data_dir, f"{s}.bin.tmp") for s in tokens}
    with open(paths["train"], "wb") as train, open(paths["val"], "wb") as val, \
            multiprocessing.Pool(workers, init_worker, worker_args) as pool:

        def write_oldest():
            nonlocal last
            result, done = pending.popleft()
            for split, ids in result.get().items():
                (train if split == "train" else val).write(ids)
                tokens[split] += len(ids) // itemsize
            if time.time() - last > REPORT_EVERY:
                last = time.time()
                print(progress_line("encoding", done, total, t0, sum(tokens.values())), flush=True)

        for chunk, pos in chunks():
            pending.append((pool.apply_async(encode_chunk, (chunk,)), pos))
            if len(pending) > 2 * workers:
                write_oldest()
        while pending:
            write_oldest()
    seconds = time.time() - t0
    print(f"data: encoded {sum(tokens.values()):,} tokens in {seconds:.0f} s by {workers} process(es) "
          f"({sum(tokens.values()) / seconds / 1e6:.2f}M tokens/s)")
    return tokens, counts


_enc, _dtype = None, None  # each encoding process's tokenizer, rebuilt from the rank file


def init_worker(tokenizer, tok_path, dtype):
    global _enc, _dtype
    _enc = bpe.make_encoding(bpe.load_ranks(tok_path)) if tokenizer == "bpe" else bpe.named_encoding(tokenizer)
    _dtype = dtype


def encode_chunk(chunk):
    """In an encoding process: [(split, starts a document, text)] -> {split: token ids as bytes},
    an end-of-text token before every document."""
    out = {"train": [], "val": []}
    for split, first, text in chunk:
        if first:
            out[split].append(np.array([_enc.eot_token], dtype=_dtype))
        out[split].append(np.array(_enc.encode_ordinary(text), dtype=_dtype))
    return {split: np.concatenate(arrays).tobytes() for split, arrays in out.items() if arrays}


def progress_line(doing, done, total, t0, tokens=None):
    seconds = time.time() - t0
    speed = f"{tokens / seconds / 1e6:.2f}M tokens/s" if tokens is not None else f"{done / seconds / 1e6:.0f} MB/s"
    return (f"data: {doing} {done / 1e6:,.0f}/{total / 1e6:,.0f} MB ({done / max(total, 1):.0%}) | {speed} | "
            f"ETA {fmt_eta((total - done) * seconds / max(done, 1))}")


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
