"""lab/bench_data.py: how fast does data.py tokenize a corpus of realistic size, in how much memory?

    python -m lab.bench_data             # 1 GB of text: about 2 minutes on 2 cores
    python -m lab.bench_data --mb 300    # a smaller one; compare the peaks: they should not grow

A benchmark, not a test. It writes a corpus made of the standard library's text into a temporary
folder (the files in turn as a .txt file, a line of a .jsonl, a line of a .jsonl.gz; the whole
library again under another folder name until the size is reached), runs data.prepare on it with
the default settings, and prints one line: tokens/s and MB/s of text over the whole run (the
three passes and the BPE), and peak resident memory of this process and of the largest encoding
process (resource.getrusage ru_maxrss).
"""
import argparse
import gzip
import json
import os
import resource
import shutil
import tempfile
import time
from collections import Counter

import data
from lab.corpus import PIECE, documents


def make_corpus(folder, mb):
    """About `mb` MB of UTF-8 text under folder, read from the standard library file by file, so
    that writing it takes little memory. Returns (text bytes, files)."""
    stdlib = data.corpus_files(data.DataConfig())
    written, files, r = 0, 0, 0
    while written < mb * 1e6:
        part = os.path.join(folder, f"copy{r:03d}")
        os.makedirs(part)
        with open(os.path.join(part, "docs.jsonl"), "w") as jl, \
                gzip.open(os.path.join(part, "docs.jsonl.gz"), "wt") as gz:
            for i, (name, ps, _) in enumerate(documents(stdlib, Counter(), PIECE)):
                text = "".join(ps)
                if i % 3 == 0:
                    with open(os.path.join(part, name.replace(os.sep, "_") + ".txt"), "w") as f:
                        f.write(text)
                    files += 1
                else:
                    (jl if i % 3 == 1 else gz).write(json.dumps({"text": text}) + "\n")
                written += len(text.encode("utf-8", "surrogatepass"))
                if written >= mb * 1e6:
                    break
        files, r = files + 2, r + 1
    return written, files


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=1000, help="size of the corpus in MB of text")
    p.add_argument("--dir", default=None, help="where to write the temporary corpus and shards "
                                               "(default: the system's temp folder)")
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="bench_data_", dir=args.dir)
    corpus = os.path.join(root, "corpus")
    try:
        t0 = time.time()
        text_bytes, files = make_corpus(corpus, args.mb)
        disk = sum(os.path.getsize(path) for path, _ in data.corpus_files(data.DataConfig(data=[corpus])))
        print(f"bench_data: wrote {text_bytes / 1e6:,.0f} MB of text in {files:,} files ({disk / 1e6:,.0f} MB on disk) "
              f"in {time.time() - t0:.0f} s", flush=True)
        t0, cpu0 = time.time(), cpu_seconds()
        meta = data.prepare(data.DataConfig(out=os.path.join(root, "out"), data=[corpus]))
        seconds, cpu = time.time() - t0, cpu_seconds() - cpu0
    finally:
        shutil.rmtree(root, ignore_errors=True)
    tokens = meta["tokens"]["train"] + meta["tokens"]["val"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    # on a shared machine, the share of the cores this run got says how far to trust the speed
    print(f"bench_data: {text_bytes / 1e6:,.0f} MB of text, {tokens / 1e6:,.1f}M tokens in {seconds:.0f} s on "
          f"{os.cpu_count()} cores ({cpu / seconds / os.cpu_count():.0%} of them used): "
          f"{tokens / seconds / 1e6:.2f}M tokens/s, {text_bytes / seconds / 1e6:.1f} MB/s; "
          f"peak memory {peak:,.0f} MB (main process), {workers:,.0f} MB (largest encoding process)")


def cpu_seconds():
    """User + system time of this process and of its finished children."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(r.ru_utime + r.ru_stime for r in usage)


if __name__ == "__main__":
    main()
