"""lab/corpus.py: data.py's machinery for a corpus of any size, the streaming reader and the parallel encoder.

Your own corpus may be many GB: it is streamed, never held in memory. Every document is read as
(name, pieces, tell): its text in consecutive pieces, cut where the tokenizer's pre-tokens never
cross. data.py reads the corpus three times: a first pass hashes it and counts documents
(scan_corpus); the BPE trains on a bounded sample of the training split (bpe_sample); a pool of
processes, one per core, encodes it and the shards grow as they go (write_shards).

The split and the BPE are data.py's; they come in as arguments (held_out, make_tokenizer), so that
this module imports nothing from data.py and the imports flow one way. The files are this module's:
the standard library's listing (stdlib_files), the tokenizer's rank file (save_bpe, load_ranks,
tokenizer_file), the shards and meta.json with its digests (write_shards, write_meta).
"""
import base64
import codecs
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
import tiktoken

from lab.plumbing import UserError, atomic_write_text, fmt_eta, make_folder, removed_on_failure

SNIFF = 8192          # bytes: a file is text if these have no NUL byte and are UTF-8 (as git and grep decide)
PIECE = 1 << 20       # characters: documents are read, hashed and encoded in pieces of at most this
CHUNK = 1 << 20       # characters of text per task sent to an encoding process
REPORT_EVERY = 5.0    # seconds between progress lines
MIN_DOCUMENTS = 20    # fewer documents than this are split by blocks, not by name


# ----------------------------------------------------------------------------------------------
# The three passes over the corpus


def scan_corpus(files, held_out, patterns):
    """First pass: the corpus hash (of names and texts, so a corpus moved or copied is the same
    corpus and any edit is a change), how much the split by name would hold out, what was skipped.
    held_out(name) says whether a document is in the validation split; patterns are the --data
    flags, for the error when there is no text."""
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
        n, chars, val_chars = n + 1, chars + size, val_chars + size * held_out(name)
    if not n:
        where = " ".join(patterns)
        if sum(stats[k] for k in ("binary", "undecodable", "unreadable")) == len(files):
            raise UserError(f"--data {where}: {len(files)} file(s), all binary or not UTF-8 ({dict(stats)}); "
                            "give text files (any extension), .jsonl with a \"text\" field, or .gz of these")
        raise UserError(f"--data {where}: no text in {len(files)} file(s) (skipped {dict(stats) or 'none'}): "
                        "the text files are blank, or the .jsonl lines have no \"text\" field")
    print(f"data: read {n:,} documents, {chars / 1e6:,.1f}M characters ({total / 1e6:,.0f} MB of files) "
          f"in {time.time() - t0:.1f} s")
    return {"hash": h.hexdigest(), "documents": n, "characters": chars, "val_characters": val_chars,
            "skipped": dict(stats), "bytes": total}


def block_size(scan, fraction):
    """0 to split by document name, when that gives a sensible split. Otherwise (a few large documents;
    the commonest is one book as one .txt) the size of the blocks every document is cut into, about a
    thousandth of the corpus (4k-64k characters, at a line break), held out by "name#block"."""
    share = scan["val_characters"] / scan["characters"]
    if scan["documents"] >= MIN_DOCUMENTS and fraction / 4 <= share <= 0.5:
        return 0
    block = min(65536, max(4096, scan["characters"] // 1000))
    print(f"data: {scan['documents']:,} document(s), {share:.0%} of the text held out by name: "
          f"splitting them into blocks of up to {block:,} characters, held out by name#block instead")
    return block


def documents_or_blocks(files, block):
    """(name, pieces, tell) for the second and third passes: the documents, or with a block size
    each block of each document as a document of its own, named name#k."""
    if not block:
        yield from documents(files, Counter(), PIECE)
        return
    for name, ps, tell in documents(files, Counter(), block):
        for k, p in enumerate(ps):
            yield f"{name}#{k}", [p], tell


def bpe_sample(docs, held_out, mb):
    """The training split's text in corpus order, up to `mb` MB of UTF-8 (--bpe-sample-mb): the
    BPE's time and memory stay bounded whatever the corpus size."""
    left = mb * 1e6
    for name, ps, _ in docs:
        if held_out(name):
            continue
        for p in ps:
            b = p.encode("utf-8", "surrogatepass")
            if len(b) >= left:
                yield b[:int(left)].decode("utf-8", "ignore")
                return
            left -= len(b)
            yield p


def write_shards(docs, held_out, make_tokenizer, plan):
    """Third pass: a pool of processes (one per core) encodes chunks of text while this one reads
    the corpus and appends their tokens, in order, to <split>.bin.tmp in plan's folder. At most two
    chunks per process are in flight, so memory does not grow with the corpus. Each process makes its
    own tokenizer by calling make_tokenizer(). Returns meta.json's dict, once written (write_meta)."""
    enc = make_tokenizer()
    dtype = np.uint16 if enc.n_vocab <= 2**16 else np.uint32  # token ids: uint32 only where the vocabulary needs it
    data_dir, total = plan["data_dir"], plan["scan"]["bytes"]  # total: the corpus's bytes, for the progress line
    tokens, counts = {"train": 0, "val": 0}, {"train": 0, "val": 0}

    def chunks():  # [(split, starts a document, text)] of about CHUNK characters, and the bytes read
        chunk, size = [], 0
        for name, ps, tell in docs:
            split = "val" if held_out(name) else "train"
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
    itemsize = np.dtype(dtype).itemsize
    t0, last, pending = time.time(), time.time(), deque()
    paths = {s: os.path.join(data_dir, f"{s}.bin.tmp") for s in tokens}
    with removed_on_failure(paths.values(), paths["train"]), open(paths["train"], "wb") as train, \
            open(paths["val"], "wb") as val, \
            multiprocessing.Pool(workers, init_worker, (make_tokenizer, dtype)) as pool:

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
    return write_meta(plan, enc, dtype, tokens, counts)


_enc, _dtype = None, None  # each encoding process's tokenizer, made once by init_worker


def init_worker(make_tokenizer, dtype):
    global _enc, _dtype
    _enc = make_tokenizer()
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


# ----------------------------------------------------------------------------------------------
# Reading: (name, text) documents in a fixed order, in pieces


def user_files(patterns):
    """The files that --data names (files, folders or globs) as [(path, name)], sorted; a name is
    the path relative to the folder given, or the file's own name (see data.corpus_files). A name
    that matches nothing, or an empty folder, is an error."""
    names = {}
    for pattern in patterns:
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


def stdlib_files():
    """data.py's default corpus: every file of the running Python's standard library as [(path, name)],
    in walk order (folders and files sorted), its installed packages and caches left out."""
    root, files = sysconfig.get_paths()["stdlib"], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
        files += [(os.path.join(dirpath, f), os.path.relpath(os.path.join(dirpath, f), root))
                  for f in sorted(filenames)]
    return files


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
    (data.PATTERN) never cross either point, so the pieces encode to exactly the tokens of the whole
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


# ----------------------------------------------------------------------------------------------
# data.prepare's books: what is reused, what is refused, what meta.json records


def plan_rebuild(cfg, files, held_out):
    """(meta, None) when <out>/data/ is up to date with these inputs; else (None, plan), the folder
    emptied of its meta.json and the plan of the build: its paths, the corpus' scan, the block size
    (0: split by document name) and the inputs meta.json records. A changed flag is refused before
    the corpus is read, a changed text once the scan has hashed it (unless --overwrite); a damaged
    output is rebuilt."""
    name = " ".join(cfg.data) if cfg.data else f"Python {sys.version.split()[0]} standard library"
    data_dir = os.path.join(cfg.out, "data")
    meta_path = os.path.join(data_dir, "meta.json")
    old = json.load(open(meta_path)) if os.path.exists(meta_path) else None
    want = {"tokenizer": cfg.tokenizer, "vocab_size_requested": cfg.vocab_size,
            "val_fraction": cfg.val_fraction, "bpe_sample_mb": cfg.bpe_sample_mb}
    changed_inputs(old, want, name, cfg.overwrite, meta_path)
    scan = scan_corpus(files, held_out, cfg.data)
    want = {"corpus_hash": scan["hash"], **want}
    changed = changed_inputs(old, want, name, cfg.overwrite, meta_path)
    damaged = old and outputs_problem(data_dir, old)
    if old and not (changed or damaged or cfg.overwrite):
        print(f"data: {data_dir} is up to date ({old['tokens']['train']:,} train tokens); nothing to do")
        return old, None
    if old:  # the same inputs give the same tokenizer and shards, so what was trained on them still matches
        why = "inputs changed since it was written" if changed else damaged or "--overwrite"
        print(f"data: {meta_path}: {why}; rebuilding the tokenizer and shards")
    block = block_size(scan, cfg.val_fraction)
    make_folder(data_dir)
    # Remove the old meta first: a crash mid-way then leaves no meta.json claiming the old shards
    # go with a new tokenizer.
    if os.path.exists(meta_path):
        os.remove(meta_path)
    return None, dict(data_dir=data_dir, meta_path=meta_path, tok_path=os.path.join(data_dir, "tokenizer.tiktoken"),
                      scan=scan, block=block, want=want, name=name, val_fraction=cfg.val_fraction)


def write_meta(plan, enc, dtype, tokens, docs):
    """The shards moved into place with their digests, and meta.json written last; returns it. The
    tokenizer's hash, which every later stage checks: its rank file's, or a tiktoken encoding's name's."""
    scan, block, tokenizer = plan["scan"], plan["block"], plan["want"]["tokenizer"]
    tok_hash = file_sha256(plan["tok_path"]) if tokenizer == "bpe" else hashlib.sha256(tokenizer.encode()).hexdigest()
    digests = finish_shards(plan["data_dir"], docs, f"--data: {scan['characters']:,} characters of text are too few "
                            f"to hold out --val-fraction {plan['val_fraction']} in blocks of {block:,}; add text or "
                            "raise --val-fraction")
    meta = {**plan["want"], "tokenizer_hash": tok_hash, "digests": digests, "vocab_size": enc.n_vocab,
            "eot": enc.eot_token, "dtype": np.dtype(dtype).name, "tokens": tokens, "documents": docs,
            "corpus": plan["name"], "skipped_files": scan["skipped"], "characters": scan["characters"],
            "split": f"by blocks of up to {block} characters" if block else "by document name"}
    atomic_write_text(json.dumps(meta, indent=1), plan["meta_path"])
    return meta


def report(meta):
    """data.py's last lines: the corpus and the tokens."""
    print(f"corpus: {meta['corpus']}: {meta['documents']['train']:,} train / {meta['documents']['val']:,} val "
          f"documents, {meta['characters'] / 1e6:.1f}M characters; skipped {meta['skipped_files'] or 'nothing'}")
    print(f"tokens: {meta['tokens']['train']:,} train | {meta['tokens']['val']:,} val | "
          f"vocabulary {meta['vocab_size']} ({meta['dtype']})")


# ----------------------------------------------------------------------------------------------
# Reading the shards back: what the later stages call (data.py names them too)


def file_sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def tokenizer_file(data_dir):
    """(--tokenizer, the path of its rank file) of the shards in data_dir, once the file matches meta.json."""
    meta = load_meta(data_dir)
    path = os.path.join(data_dir, "tokenizer.tiktoken")
    if meta["tokenizer"] == "bpe" and file_sha256(path) != meta["tokenizer_hash"]:
        raise UserError(f"{path} does not match {data_dir}/meta.json: rerun python data.py")
    return meta["tokenizer"], path


def load_meta(data_dir):
    path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(path):
        raise UserError(f"no token shards in {data_dir}: run python data.py first (with the same --out)")
    return json.load(open(path))


def load_tokens(data_dir, split):
    """The split's token ids as a read-only numpy memmap, once its size and digest match meta.json."""
    meta = load_meta(data_dir)
    problem = shard_problem(data_dir, meta, split)
    if problem:
        raise UserError(f"{problem}: rerun python data.py (with the same flags: it rebuilds what is damaged)")
    return np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=meta["dtype"], mode="r")


def load_shards(out):
    """meta.json and both splits' token ids, from <out>/data/: what the training stages read. Every id
    is checked against the vocabulary before anything trains on it."""
    data_dir = os.path.join(out, "data")
    meta = load_meta(data_dir)
    shards = [load_tokens(data_dir, split) for split in ("train", "val")]
    for split, tokens in zip(("train", "val"), shards):
        top = int(tokens.max()) if len(tokens) else 0
        if top >= meta["vocab_size"]:
            raise UserError(f"{data_dir}/{split}.bin holds token id {top:,}, beyond the vocabulary of "
                            f"{meta['vocab_size']:,} in meta.json: rerun python data.py --overwrite")
    return (meta, *shards)


# ----------------------------------------------------------------------------------------------
# An earlier run's shards


def changed_inputs(old, want, name, overwrite, meta_path):
    """The keys of `want` that differ from the meta.json of an earlier run, if any. Refused unless
    --overwrite: the LM and SAEs trained on those shards would silently stop matching them. name
    is the corpus's description, as meta.json holds it."""
    # keys that an older meta.json lacks (bpe_sample_mb) are not held against it
    changed = [k for k, v in want.items() if old and old.get(k, v) != v]
    if changed and not overwrite:
        moved = f"the corpus ({old['corpus']} -> {name})" if old["corpus"] != name else f"the text of {name}"
        what = [moved if k == "corpus_hash" else
                f"--{k.replace('_requested', '').replace('_', '-')} {old[k]} -> {want[k]}" for k in changed]
        raise UserError(f"{meta_path} was made from other inputs: {'; '.join(what)}; add --overwrite to rebuild "
                        "it (the LM and SAEs trained on it will no longer match) or use another --out")
    return changed


# Each shard's digest is in meta.json, checked whenever a stage opens it: a whole-file sha256 up to
# FULL_DIGEST_BYTES (the standard library's 21 MB hash in under a tenth of a second); above it,
# so that opening a corpus of many GB stays instant, the sha256 of 64 blocks of 64 KB spread evenly
# over the file. The size is always checked whole.
FULL_DIGEST_BYTES = 2**28


def finish_shards(data_dir, docs, too_few):
    """The written <split>.bin.tmp moved into place, once both splits hold a document (else the error
    too_few); returns their digests, for meta.json."""
    if not docs["train"] or not docs["val"]:
        for split in ("train", "val"):
            os.remove(os.path.join(data_dir, f"{split}.bin.tmp"))
        raise UserError(too_few)
    for split in ("train", "val"):
        os.replace(os.path.join(data_dir, f"{split}.bin.tmp"), os.path.join(data_dir, f"{split}.bin"))
    return {split: shard_digest(os.path.join(data_dir, f"{split}.bin")) for split in ("train", "val")}


def shard_digest(path):
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= FULL_DIGEST_BYTES:
            for block in iter(lambda: f.read(2**22), b""):
                h.update(block)
        else:
            for i in range(64):
                f.seek(i * (size - 2**16) // 63)
                h.update(f.read(2**16))
    return h.hexdigest()


def shard_problem(data_dir, meta, split):
    """What is wrong with <split>.bin beside its meta.json (missing, another size, another digest), or None."""
    path = os.path.join(data_dir, f"{split}.bin")
    if not os.path.exists(path):
        return f"{path} is missing"
    size, want = os.path.getsize(path), meta["tokens"][split] * np.dtype(meta["dtype"]).itemsize
    if size != want:
        return f"{path} holds {size:,} bytes, not the {want:,} of its {meta['tokens'][split]:,} tokens"
    if "digests" in meta and shard_digest(path) != meta["digests"][split]:
        return f"{path} is damaged (its bytes no longer match the digest in meta.json)"
    return None


def outputs_problem(data_dir, meta):
    """What is missing or damaged among data.py's outputs, or None: the tokenizer, then the shards."""
    path = os.path.join(data_dir, "tokenizer.tiktoken")
    if meta["tokenizer"] == "bpe" and not (os.path.exists(path) and file_sha256(path) == meta["tokenizer_hash"]):
        return f"{path} is missing or does not match meta.json"
    return shard_problem(data_dir, meta, "train") or shard_problem(data_dir, meta, "val")


# ----------------------------------------------------------------------------------------------
# The tokenizer's file: tiktoken's rank-file format, one "base64(token bytes) rank" per line. Written
# and read here rather than by tiktoken.load, which caches files by path in a temp folder (a retrained
# tokenizer at the same path would come back stale).


def save_bpe(ranks, path, vocab_size):
    """data.py's trained BPE saved at path, with a note when it stopped short of --vocab-size."""
    if len(ranks) + 1 < vocab_size:  # (+1: the end-of-text token)
        print(f"note: the BPE stopped at {len(ranks) + 1:,} tokens, fewer than --vocab-size {vocab_size:,}: "
              "every word of its sample is one token by then (more, or more varied, text gives more)")
    save_ranks(ranks, path)


def save_ranks(ranks, path):
    atomic_write_text("".join(f"{base64.b64encode(b).decode()} {r}\n"
                              for b, r in sorted(ranks.items(), key=lambda x: x[1])), path)


def load_ranks(path):
    lines = open(path).read().split()
    return {base64.b64decode(t): int(r) for t, r in zip(lines[::2], lines[1::2])}


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
