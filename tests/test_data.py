import collections
import gzip
import hashlib
import io
import json
import os
import random
import sysconfig

import numpy as np
import pytest

import tiktoken.load

import data
import lab.corpus
from lab import trained
from lab.plumbing import UserError


def random_unicode(rng, n):
    """Random text from several scripts, emoji, controls and whitespace (no lone surrogates,
    which UTF-8 cannot hold)."""
    ranges = [(0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x600, 0x6FF),
              (0x900, 0x97F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF),
              (0xE000, 0xF8FF), (0x10000, 0x10FFFF)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        c = rng.randint(lo, hi)
        out.append(chr(c) if not 0xD800 <= c <= 0xDFFF else " ")
    return "".join(out)


@pytest.fixture(scope="module")
def small_ranks():
    texts = [open(os.path.join(sysconfig.get_paths()["stdlib"], m), encoding="utf-8").read()
             for m in ("textwrap.py", "csv.py", "LICENSE.txt")] + ["日本語のテキスト。 Ελληνικά 😀😀 العربية"]
    return data.train_bpe(texts, 600)


def test_bpe_round_trips_any_unicode(small_ranks):
    enc = data.make_encoding(small_ranks)
    rng = random.Random(0)
    samples = ["", " ", "\n\n\t", "def f(x):\n    return x  # ok", "😀👍🏽 mixed عربى and 中文 and ελληνικά"]
    samples += [random_unicode(rng, rng.randint(1, 200)) for _ in range(300)]
    for s in samples:
        ids = enc.encode_ordinary(s)
        assert enc.decode(ids) == s
        assert all(0 <= i < enc.n_vocab - 1 for i in ids)
    assert enc.n_vocab == 600 and enc.eot_token == 599
    assert len(enc.encode_ordinary("    return self")) < len("    return self") / 2  # merges are used


def test_bpe_training_is_deterministic(small_ranks):
    texts = [open(os.path.join(sysconfig.get_paths()["stdlib"], m), encoding="utf-8").read()
             for m in ("textwrap.py", "csv.py", "LICENSE.txt")] + ["日本語のテキスト。 Ελληνικά 😀😀 العربية"]
    assert data.train_bpe(texts, 600) == small_ranks
    assert sorted(small_ranks.values()) == list(range(599))  # 256 bytes + merges, no gaps


def test_rank_file_round_trip(small_ranks, tmp_path):
    path = str(tmp_path / "t.tiktoken")
    lab.corpus.save_ranks(small_ranks, path)
    assert lab.corpus.load_ranks(path) == small_ranks


def test_split_is_stable_and_about_the_fraction():
    names = [f"lib/module_{i}.py" for i in range(20000)]
    first = [data.is_validation(n, 0.1) for n in names]
    assert first == [data.is_validation(n, 0.1) for n in reversed(names)][::-1]  # order-free
    assert 0.09 < np.mean(first) < 0.11
    # a document's split depends only on its name, not on which other documents exist
    assert [data.is_validation(n, 0.1) for n in names[::7]] == first[::7]


def test_prepare_shards_and_reuse(tiny_data, capsys):
    meta = json.load(open(os.path.join(tiny_data, "data", "meta.json")))
    enc = trained.load_tokenizer(os.path.join(tiny_data, "data"))
    train = data.load_tokens(os.path.join(tiny_data, "data"), "train")
    assert meta["vocab_size"] == 512 and train.dtype == np.uint16
    assert len(train) == meta["tokens"]["train"] > 10000
    assert train[0] == enc.eot_token and (np.asarray(train) == enc.eot_token).sum() == meta["documents"]["train"]
    # the shards decode back to the documents
    text = enc.decode(list(train[1:200]))
    assert len(text) > 200


def read_documents(paths, size=lab.corpus.PIECE):
    """[(name, text)] and the skip counts, as the corpus passes see them."""
    stats = collections.Counter()
    files = data.corpus_files(data.DataConfig(data=[str(p) for p in paths]))
    return [(name, "".join(ps)) for name, ps, _ in lab.corpus.documents(files, stats, size)], stats


def test_user_files_txt_jsonl_gz(tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 50)
    with open(tmp_path / "b.jsonl", "w") as f:
        for i in range(30):
            f.write(json.dumps({"text": f"document number {i} says hi " * 5}) + "\n")
        f.write("not json\n")
        f.write(json.dumps({"text": 42}) + "\n")
    with gzip.open(tmp_path / "c.txt.gz", "wt") as f:
        f.write("compressed text " * 40)
    docs, stats = read_documents([tmp_path])
    assert len(docs) == 32 and stats["bad jsonl lines"] == 2
    assert any("compressed text" in t for _, t in docs)
    docs_glob, _ = read_documents([tmp_path / "*.jsonl"])
    assert len(docs_glob) == 30
    # names (what the split hashes) do not depend on where the corpus lives
    assert sorted(n for n, _ in docs)[:3] == ["a.txt", "b.jsonl:0", "b.jsonl:1"] and docs_glob[0][0] == "b.jsonl:0"


def test_text_is_told_by_content_not_extension(tmp_path):
    (tmp_path / "notes.md").write_text("# Notes\n\nplain *markdown* text\n")
    (tmp_path / "README").write_text("no extension, still text\r\nwith CRLF line ends\r\n")
    (tmp_path / "blank.txt").write_text(" \n\n\t\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (tmp_path / ".hidden.txt").write_text("hidden files are skipped")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]\n")
    with gzip.open(tmp_path / "log.gz", "wt") as f:  # any .gz is decompressed, then told by content
        f.write("compressed plain text\n")
    docs, stats = read_documents([tmp_path])
    assert dict(docs) == {"README": "no extension, still text\r\nwith CRLF line ends\r\n",
                          "log.gz": "compressed plain text\n", "notes.md": "# Notes\n\nplain *markdown* text\n"}
    assert stats == {"binary": 1, "undecodable": 1}


def test_pieces_encode_to_the_tokens_of_the_whole_text(small_ranks):
    # documents are read and encoded in pieces, cut where the tokenizer's pre-tokens never
    # cross: the tokens are exactly those of the whole text
    enc = data.make_encoding(small_ranks)
    rng = random.Random(1)
    seps = ["\n", "\r\n", "\n\n", "\n    ", " \n", "\n\t", "\n\x1c", "\u2028", " ", "  ", ".\n", "\n\n\n  x"]
    code = [open(os.path.join(sysconfig.get_paths()["stdlib"], m), encoding="utf-8").read()
            for m in ("textwrap.py", "csv.py", "LICENSE.txt")] + ["word " * 1000]  # the last has no line to cut at
    noise = ["".join(random_unicode(rng, rng.randint(0, 40)) + rng.choice(seps) for _ in range(300)) for _ in range(20)]
    for texts, size in ((code, 1000), (code, 20000), (noise, 300), (noise, 3000), (["ab" * 1000], 300)):
        for text in texts:
            ps = list(lab.corpus.pieces(io.StringIO(text), size, "t"))
            assert "".join(ps) == text and all(0 < len(p) <= size for p in ps)
            if text != "ab" * 1000:  # a blob with no point to cut at is cut anywhere
                assert [t for p in ps for t in enc.encode_ordinary(p)] == enc.encode_ordinary(text)


def reference_documents(folder):
    """The corpus as today's in-memory path read it: whole files, .jsonl split into lines."""
    docs = []
    for path in sorted(str(p) for p in folder.rglob("*") if p.is_file()):
        raw = open(path, "rb").read()
        text = (gzip.decompress(raw) if path.endswith(".gz") else raw).decode("utf-8")
        name = os.path.relpath(path, folder)
        if ".jsonl" in path:
            docs += [(f"{name}:{i}", json.loads(line)["text"])
                     for i, line in enumerate(text.split("\n")) if line.strip()]
        else:
            docs.append((name, text))
    return [(name, text) for name, text in docs if text.strip()]


def encode_chunk_and_note_pid(chunk):
    with open(os.environ["ENCODE_PIDS"], "a") as f:
        f.write(f"{os.getpid()}\n")
    return ORIGINAL_ENCODE_CHUNK(chunk)


ORIGINAL_ENCODE_CHUNK = lab.corpus.encode_chunk


def test_streaming_gives_the_in_memory_shards_and_tokenizer(tmp_path, monkeypatch):
    stdlib = sysconfig.get_paths()["stdlib"]
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    for i, m in enumerate(["textwrap.py", "csv.py", "LICENSE.txt", "heapq.py", "bisect.py", "fnmatch.py",
                           "shlex.py", "getopt.py", "colorsys.py", "queue.py", "sched.py", "reprlib.py"]):
        text = open(os.path.join(stdlib, m), encoding="utf-8").read()
        (corpus / ("sub" if i % 3 else ".") / (m + ".txt")).write_text(text)
        with (gzip.open if i % 2 else open)(corpus / f"lines{i % 4}.jsonl{'.gz' if i % 2 else ''}", "at") as f:
            for j, para in enumerate(text.split("\n\n")[:40]):
                f.write(json.dumps({"text": para, "id": j}) + "\n")
    # small pieces and chunks: documents are cut into many pieces and the pool gets many tasks
    monkeypatch.setattr(lab.corpus, "PIECE", 2000)
    monkeypatch.setattr(lab.corpus, "CHUNK", 5000)
    monkeypatch.setattr(lab.corpus, "encode_chunk", encode_chunk_and_note_pid)
    monkeypatch.setenv("ENCODE_PIDS", str(tmp_path / "pids"))
    meta = data.prepare(data.DataConfig(out=str(tmp_path / "o"), data=[str(corpus)], vocab_size=400, val_fraction=0.2))
    pids = open(tmp_path / "pids").read().split()
    assert len(pids) > 10 and str(os.getpid()) not in pids

    docs = reference_documents(corpus)
    train = [text for name, text in docs if not data.is_validation(name, 0.2)]
    val = [text for name, text in docs if data.is_validation(name, 0.2)]
    ranks = data.train_bpe(train, 400)
    enc = data.make_encoding(ranks)
    out = tmp_path / "o" / "data"
    assert lab.corpus.load_ranks(str(out / "tokenizer.tiktoken")) == ranks
    for split, texts in (("train", train), ("val", val)):
        ids = [enc.encode_ordinary(doc) for doc in texts]  # today's format: an end-of-text before every document
        expected = np.fromiter((t for doc in ids for t in [enc.eot_token, *doc]), dtype=np.uint16)
        assert (out / f"{split}.bin").read_bytes() == expected.tobytes()
    corpus_hash = hashlib.sha256()
    for name, text in docs:
        corpus_hash.update(name.encode() + b"\0" + text.encode() + b"\0")
    assert meta["corpus_hash"] == corpus_hash.hexdigest() and meta["split"] == "by document name"
    assert meta["documents"] == {"train": len(train), "val": len(val)}
    assert meta["characters"] == sum(len(text) for _, text in docs)


def test_one_big_file_is_split_by_blocks(tmp_path, capsys):
    stdlib = sysconfig.get_paths()["stdlib"]
    text = "".join(open(os.path.join(stdlib, m), encoding="utf-8").read()
                   for m in ("LICENSE.txt", "textwrap.py", "difflib.py", "calendar.py", "argparse.py"))[:400_000]
    (tmp_path / "book.txt").write_text(text)
    meta = data.prepare(data.DataConfig(out=str(tmp_path / "o"), data=[str(tmp_path / "book.txt")], vocab_size=300))
    assert "splitting them into blocks" in capsys.readouterr().out and meta["split"].startswith("by blocks")
    enc = trained.load_tokenizer(str(tmp_path / "o" / "data"))
    blocks = {}
    for split in ("train", "val"):
        ids = np.asarray(data.load_tokens(str(tmp_path / "o" / "data"), split))
        starts = np.flatnonzero(ids == enc.eot_token)
        blocks[split] = [enc.decode(list(ids[a + 1:b])) for a, b in zip(starts, [*starts[1:], len(ids)])]
    assert meta["documents"] == {split: len(b) for split, b in blocks.items()} and all(blocks.values())
    assert 0.05 < sum(map(len, blocks["val"])) / len(text) < 0.2
    # the blocks of the two splits, interleaved in order, are the book: nothing lost or repeated
    pos, i = 0, {"train": 0, "val": 0}
    while pos < len(text):
        split = next(s for s in ("train", "val") if i[s] < len(blocks[s]) and text.startswith(blocks[s][i[s]], pos))
        pos, i[split] = pos + len(blocks[split][i[split]]), i[split] + 1
    assert i == {"train": len(blocks["train"]), "val": len(blocks["val"])}


def test_bad_input_is_one_clear_error(tmp_path):
    def error(**kw):
        with pytest.raises(UserError) as e:
            data.prepare(data.DataConfig(out=str(tmp_path / "o"), **kw))
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "nothing_here: no such file or folder" in error(data=[str(tmp_path / "nothing_here")])
    assert "no file matches" in error(data=[str(tmp_path / "*.nothing")])
    (tmp_path / "empty").mkdir()
    assert "empty: the folder is empty" in error(data=[str(tmp_path / "empty")])
    (tmp_path / "bin").mkdir()
    for i in range(3):
        (tmp_path / "bin" / f"{i}.txt").write_bytes(b"\x00\x01binary" if i else b"\xff\xfe not utf-8")
    assert "3 file(s), all binary or not UTF-8" in error(data=[str(tmp_path / "bin")])
    (tmp_path / "gz").mkdir()
    whole = gzip.compress(b"hello world\n" * 100000)
    (tmp_path / "gz" / "cut.txt.gz").write_bytes(whole[:len(whole) // 2])
    assert "cut.txt.gz: cannot be read to the end" in error(data=[str(tmp_path / "gz")])
    (tmp_path / "x.txt").write_text("some text")
    assert "too few" in error(data=[str(tmp_path / "x.txt")])
    assert "--vocab-size" in error(data=[str(tmp_path / "x.txt")], vocab_size=100)
    for bad in (float("nan"), 0.0, 0.5, -1.0):
        assert "--val-fraction" in error(data=[str(tmp_path / "x.txt")], val_fraction=bad)
    assert "--vocab-size" in error(data=[str(tmp_path / "x.txt")], vocab_size=float("nan"))
    assert "--bpe-sample-mb" in error(data=[str(tmp_path / "x.txt")], bpe_sample_mb=float("nan"))
    with pytest.raises(UserError, match="run python data.py"):
        data.load_meta(str(tmp_path / "missing"))


def test_changed_inputs_are_refused_unless_overwrite(tiny_data, tmp_path):
    corpus = os.path.join(os.path.dirname(tiny_data), "corpus")
    out = str(tmp_path / "o")
    m1 = data.prepare(data.DataConfig(out=out, data=[corpus], vocab_size=400, val_fraction=0.2))
    assert data.prepare(data.DataConfig(out=out, data=[corpus], vocab_size=400, val_fraction=0.2)) == m1
    shards = (tmp_path / "o" / "data" / "train.bin").read_bytes()
    with pytest.raises(UserError, match=r"--vocab-size 400 -> 450; add --overwrite"):
        data.prepare(data.DataConfig(out=out, data=[corpus], vocab_size=450, val_fraction=0.2))
    (tmp_path / "more.txt").write_text("one more document\n")
    with pytest.raises(UserError, match=r"the corpus .*--overwrite.*another --out"):
        data.prepare(data.DataConfig(out=out, data=[corpus, str(tmp_path / "more.txt")], vocab_size=400,
                                     val_fraction=0.2))
    assert data.load_meta(os.path.join(out, "data")) == m1  # nothing was touched
    assert (tmp_path / "o" / "data" / "train.bin").read_bytes() == shards
    m2 = data.prepare(data.DataConfig(out=out, data=[corpus], vocab_size=450, val_fraction=0.2, overwrite=True))
    assert m2["tokenizer_hash"] != m1["tokenizer_hash"] and m2["vocab_size"] == 450
    assert trained.load_tokenizer(os.path.join(out, "data")).n_vocab == 450


def test_named_tiktoken_encoding_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache: forces a download
    monkeypatch.setattr(tiktoken.load, "read_file", lambda *a: (_ for _ in ()).throw(ConnectionError("offline")))
    with pytest.raises(UserError, match="offline"):
        lab.corpus.named_encoding("gpt2")
    with pytest.raises(UserError, match="unknown"):
        lab.corpus.named_encoding("no_such_encoding")


@pytest.mark.parametrize("script", ["data.py", "train_lm.py", "train_sae.py", "analyze.py", "-m lab.compare",
                                    "-m lab.bench"])
def test_every_script_documents_its_flags(script):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, *script.split(), "--help"], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0 and "--out" in out.stdout or script == "-m lab.bench" and "--quick" in out.stdout


def test_damaged_or_missing_outputs_are_refused_then_rebuilt(tiny_data, tmp_path, capsys):
    """A shard that no longer matches meta.json (zeroed, truncated, missing) is refused by every stage
    in one line; data.py, with the same inputs, sees it and rebuilds the very same files; --overwrite
    always rebuilds; an id beyond the vocabulary is refused before anything trains on it."""
    import shutil
    corpus = os.path.join(os.path.dirname(tiny_data), "corpus")
    out = str(tmp_path / "o")
    cfg = data.DataConfig(out=out, data=[corpus], vocab_size=400, val_fraction=0.2)
    data.prepare(cfg)
    d = os.path.join(out, "data")
    good = {f: open(os.path.join(d, f), "rb").read() for f in ("train.bin", "val.bin", "tokenizer.tiktoken")}
    damages = {"zeroed": lambda p: open(p, "r+b").write(bytes(400)),
               "truncated": lambda p: os.truncate(p, os.path.getsize(p) - 4),
               "missing": os.remove}
    for name, damage in damages.items():
        for shard in ("train.bin", "val.bin"):
            damage(os.path.join(d, shard))
            with pytest.raises(UserError, match=rf"{shard}.* rerun python data.py"):
                data.load_shards(out)
            capsys.readouterr()
            data.prepare(cfg)
            assert "rebuilding the tokenizer and shards" in capsys.readouterr().out, name
            assert open(os.path.join(d, shard), "rb").read() == good[shard], (name, shard)
    os.remove(os.path.join(d, "tokenizer.tiktoken"))
    data.prepare(cfg)
    assert open(os.path.join(d, "tokenizer.tiktoken"), "rb").read() == good["tokenizer.tiktoken"]
    data.prepare(cfg)
    assert "up to date" in capsys.readouterr().out
    data.prepare(data.DataConfig(out=out, data=[corpus], vocab_size=400, val_fraction=0.2, overwrite=True))
    assert "--overwrite; rebuilding" in capsys.readouterr().out
    meta_path = os.path.join(d, "meta.json")
    meta = json.load(open(meta_path))
    shutil.copy(meta_path, str(tmp_path / "meta.json"))
    json.dump({**meta, "vocab_size": 300}, open(meta_path, "w"))
    with pytest.raises(UserError, match=r"train.bin holds token id 399, beyond the vocabulary of 300 in meta.json"):
        data.load_shards(out)


def test_a_big_shard_is_checked_by_samples(tmp_path, monkeypatch):
    """Above FULL_DIGEST_BYTES a shard's digest covers its size and 64 sampled blocks: a change inside a
    sampled block, or of the size, changes it."""
    monkeypatch.setattr(lab.corpus, "FULL_DIGEST_BYTES", 2**16)
    path = str(tmp_path / "big.bin")
    open(path, "wb").write(np.random.default_rng(0).integers(0, 256, 2**21, dtype=np.uint8).tobytes())
    first = lab.corpus.shard_digest(path)
    with open(path, "r+b") as f:
        f.seek(2**21 - 10)
        f.write(b"\x00" * 10)
    assert lab.corpus.shard_digest(path) != first
