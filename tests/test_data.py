import gzip
import json
import os
import random

import numpy as np
import pytest

import tiktoken.load

import data
from common import UserError


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
    texts = [open(os.path.join(data.sysconfig.get_paths()["stdlib"], m), encoding="utf-8").read()
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
    texts = [open(os.path.join(data.sysconfig.get_paths()["stdlib"], m), encoding="utf-8").read()
             for m in ("textwrap.py", "csv.py", "LICENSE.txt")] + ["日本語のテキスト。 Ελληνικά 😀😀 العربية"]
    assert data.train_bpe(texts, 600) == small_ranks
    assert sorted(small_ranks.values()) == list(range(599))  # 256 bytes + merges, no gaps


def test_rank_file_round_trip(small_ranks, tmp_path):
    path = str(tmp_path / "t.tiktoken")
    data.save_ranks(small_ranks, path)
    assert data.load_ranks(path) == small_ranks


def test_split_is_stable_and_about_the_fraction():
    names = [f"lib/module_{i}.py" for i in range(20000)]
    first = [data.is_validation(n, 0.1) for n in names]
    assert first == [data.is_validation(n, 0.1) for n in reversed(names)][::-1]  # order-free
    assert 0.09 < np.mean(first) < 0.11
    # a document's split depends only on its name, not on which other documents exist
    assert [data.is_validation(n, 0.1) for n in names[::7]] == first[::7]


def test_prepare_shards_and_reuse(tiny_data, capsys):
    meta = json.load(open(os.path.join(tiny_data, "data", "meta.json")))
    enc = data.load_tokenizer(os.path.join(tiny_data, "data"))
    train = data.load_tokens(os.path.join(tiny_data, "data"), "train")
    assert meta["vocab_size"] == 512 and train.dtype == np.uint16
    assert len(train) == meta["tokens"]["train"] > 10000
    assert train[0] == enc.eot_token and (np.asarray(train) == enc.eot_token).sum() == meta["documents"]["train"]
    # the shards decode back to the documents
    text = enc.decode(list(train[1:200]))
    assert len(text) > 200


def test_user_files_txt_jsonl_gz(tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 50)
    with open(tmp_path / "b.jsonl", "w") as f:
        for i in range(30):
            f.write(json.dumps({"text": f"document number {i} says hi " * 5}) + "\n")
        f.write("not json\n")
    with gzip.open(tmp_path / "c.txt.gz", "wt") as f:
        f.write("compressed text " * 40)
    stats = data.Counter()
    docs = list(data.file_documents([str(tmp_path)], stats))
    assert len(docs) == 32 and stats["bad jsonl lines"] == 1
    assert any("compressed text" in t for _, t in docs)
    docs_glob = list(data.file_documents([str(tmp_path / "*.jsonl")], data.Counter()))
    assert len(docs_glob) == 30
    # names (what the split hashes) do not depend on where the corpus lives
    assert sorted(n for n, _ in docs)[:3] == ["a.txt", "b.jsonl:0", "b.jsonl:1"] and docs_glob[0][0] == "b.jsonl:0"


def test_bad_input_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="--data"):
        data.prepare(data.DataConfig(out=str(tmp_path / "o"), data=[str(tmp_path / "nothing_here")]))
    (tmp_path / "x.txt").write_text("some text")
    with pytest.raises(UserError, match="--vocab-size"):
        data.prepare(data.DataConfig(out=str(tmp_path / "o"), data=[str(tmp_path / "x.txt")], vocab_size=100))
    with pytest.raises(UserError, match="empty train or validation"):
        data.prepare(data.DataConfig(out=str(tmp_path / "o"), data=[str(tmp_path / "x.txt")]))
    with pytest.raises(UserError, match="run python data.py"):
        data.load_meta(str(tmp_path / "missing"))


def test_changed_tokenizer_rebuilds_shards(tiny_data, tmp_path):
    corpus = os.path.join(os.path.dirname(tiny_data), "corpus")
    out = str(tmp_path / "o")
    m1 = data.prepare(data.DataConfig(out=out, data=[corpus], vocab_size=400, val_fraction=0.2))
    assert data.prepare(data.DataConfig(out=out, data=[corpus], vocab_size=400, val_fraction=0.2)) == m1
    m2 = data.prepare(data.DataConfig(out=out, data=[corpus], vocab_size=450, val_fraction=0.2))
    assert m2["tokenizer_hash"] != m1["tokenizer_hash"] and m2["vocab_size"] == 450
    assert data.load_tokenizer(os.path.join(out, "data")).n_vocab == 450


def test_named_tiktoken_encoding_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache: forces a download
    monkeypatch.setattr(tiktoken.load, "read_file", lambda *a: (_ for _ in ()).throw(ConnectionError("offline")))
    with pytest.raises(UserError, match="offline"):
        data.named_encoding("gpt2")
    with pytest.raises(UserError, match="unknown"):
        data.named_encoding("no_such_encoding")


@pytest.mark.parametrize("script", ["data.py", "train_lm.py", "train_sae.py", "analyze.py", "compare.py", "bench.py"])
def test_every_script_documents_its_flags(script):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, script, "--help"], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0 and "--out" in out.stdout or script == "bench.py" and "--quick" in out.stdout
