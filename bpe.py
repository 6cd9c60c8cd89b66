"""bpe.py: a byte-level BPE tokenizer, trained from scratch and served by tiktoken.

Start from the 256 byte values; repeatedly merge the most frequent adjacent pair of tokens into a
new token, until the vocabulary is full. The merges are saved in tiktoken's rank-file format and
served by tiktoken.Encoding (fast, written in Rust), with one end-of-text special token that
data.py puts before every document.
"""
import base64
import heapq
from collections import Counter, defaultdict

import regex
import tiktoken

from lab.plumbing import UserError, atomic_write_text

# GPT-4's (cl100k) pre-tokenisation: BPE merges never cross these pieces (words, 1-3 digit
# numbers, punctuation runs, whitespace), which keeps tokens meaningful and training cheap.
PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"



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


# tiktoken's rank-file format: one "base64(token bytes) rank" per line. Written and read here
# rather than by tiktoken.load, which caches files by path in a temp folder (a retrained
# tokenizer at the same path would come back stale).
def save_ranks(ranks, path):
    atomic_write_text("".join(f"{base64.b64encode(b).decode()} {r}\n"
                              for b, r in sorted(ranks.items(), key=lambda x: x[1])), path)


def load_ranks(path):
    lines = open(path).read().split()
    return {base64.b64decode(t): int(r) for t, r in zip(lines[::2], lines[1::2])}
