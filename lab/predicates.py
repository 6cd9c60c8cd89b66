"""lab/predicates.py: a fixed vocabulary of per-token context predicates, read from the decoded text.

Which of "inside a Python comment", "base64", "a URL", "a Cyrillic character", ... holds on each
held-out token (context_labels). They serve twice: as contexts an explanation row may name (the
paper's explanations are sentences about contexts; analyze.py's score), and as the proxies of
activation specificity (the paper's Arabic, base64 and DNA features; lab/specificity.py).
"""
import ast
import io
import keyword
import re
import tokenize
import warnings

import numpy as np

# The list and its definitions were declared before any score was seen and are not tuned to the
# results. Python's own tokenizer reads the code of each document that parses; documents that are not
# valid Python (test data, text files) get no Python labels rather than wrong ones. Every other
# predicate is a regular expression over any document. The order matters in one place: when several
# predicates hold on a token, an explanation row of the first in this list explains it (lab/explainer.py's match).

PREDICATE_HELP = {
    "comment": "inside a Python # comment",
    "docstring": "inside a docstring (a Python string that is a statement of its own)",
    "string": "inside any other Python string literal",
    "number": "part of a number literal (any document)",
    "identifier": "a Python name that is not a keyword",
    "keyword": "a Python keyword or soft keyword (def, return, None, match, _)",
    "url": "http://, https:// or www. and the non-space characters after it",
    "email_header": "a line that starts with an email header name and ':' (From:, Subject:, Content-Type:, X-...:)",
    "hexadecimal": r"\x escapes, 0x literals, runs of 8+ hex digits with a digit and a letter a-f",
    "base64": "a run of 24+ characters of A-Z a-z 0-9 + / (= padded) with a digit, an upper- and a lower-case letter",
    "unicode_name": r"a \N{...} escape or a Unicode character name (LATIN SMALL LETTER A, GREEK CAPITAL LETTER OMEGA)",
    "latin_extended": "a non-ASCII Latin character (U+0080-U+024F, U+1E00-U+1EFF: é, ß, ő)",
    "greek": "a Greek character (U+0370-U+03FF)",
    "cyrillic": "a Cyrillic character (U+0400-U+04FF)",
    "hebrew_arabic": "a Hebrew or Arabic character (U+0590-U+06FF)",
    "cjk": "a kana, CJK ideograph, hangul or fullwidth character (U+3040-U+30FF, U+3400-U+9FFF, U+AC00-U+D7AF, "
           "U+FF00-U+FFEF)",
    "other_non_ascii": "any other non-ASCII character (symbols, dashes, emoji, other scripts)",
    "rest_markup": "reST markup: a :role:`text`, a .. directive::, a ``literal``, a section underline (a line of "
                   "3+ of one of = - ~ ^ \" ' * + #)",
    "html_markup": "an HTML/XML tag <...> or an entity (&amp;, &#39;)",
    "license": "a line mentioning a copyright, a licence, a warranty, all rights reserved, permission is hereby "
               "granted or redistribution and use",
    "doctest": "a doctest line: a >>> or ... prompt and the rest of its line",
}
PREDICATES = list(PREDICATE_HELP)

NUMBER = re.compile(r"(?<![\w.])(?:0[xXoObB][0-9a-fA-F_]+|\d[\d_]*(?:\.\d*)?(?:[eE][-+]?\d+)?)")
BLOCKS = {"latin_extended": r"\u0080-\u024f\u1e00-\u1eff", "greek": r"\u0370-\u03ff", "cyrillic": r"\u0400-\u04ff",
          "hebrew_arabic": r"\u0590-\u06ff", "cjk": r"\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uff00-\uffef"}
HEADERS = ("From|To|Cc|Subject|Date|Message-ID|MIME-Version|Received|Return-Path|Reply-To|References|In-Reply-To"
           r"|Content-[\w-]+|X-[\w-]+")
SCRIPTS = "LATIN|GREEK|CYRILLIC|ARABIC|HEBREW|CJK|HANGUL|HIRAGANA|KATAKANA|DIGIT|FULLWIDTH|COMBINING"
# a pattern with a group labels only the group (a doctest's prompt and line, not its indentation)
TEXT_PATTERNS = {
    "number": NUMBER,
    "url": re.compile(r"(?:https?://|www\.)\S+"),
    "email_header": re.compile(rf"^(?:{HEADERS}):.*", re.M | re.I),   # header names are case-insensitive
    "hexadecimal": re.compile(r"(?:\\x[0-9a-fA-F]{2})+|(?<![\w.])0[xX][0-9a-fA-F_]+"
                              r"|(?<![0-9A-Za-z])(?=[0-9a-fA-F]*[0-9])(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}"
                              r"(?![0-9A-Za-z])"),
    "base64": re.compile(r"(?<![A-Za-z0-9+/])(?=[A-Za-z0-9+/]*[0-9])(?=[A-Za-z0-9+/]*[A-Z])(?=[A-Za-z0-9+/]*[a-z])"
                         r"[A-Za-z0-9+/]{24,}={0,2}(?![A-Za-z0-9+/])"),
    "unicode_name": re.compile(rf"\\N\{{[^}}\n]*\}}|\b(?:{SCRIPTS})(?: [A-Z][A-Z0-9-]*){{2,}}\b"),
    **{name: re.compile(f"[{chars}]+") for name, chars in BLOCKS.items()},
    "other_non_ascii": re.compile(r"[^\x00-\x7f" + "".join(BLOCKS.values()) + "]+"),
    "rest_markup": re.compile(r":[A-Za-z][\w.+:-]*:`[^`\n]+`|(?<!\S)\.\. [A-Za-z][\w.+:-]*::|``[^`\n]+``|^(?:"
                              + "|".join(re.escape(c) + "{3,}" for c in "=-~^\"'*+#") + r")[ \t]*$", re.M),
    "html_markup": re.compile(r"<[A-Za-z/!?][^<>\n]*>|&[A-Za-z]+;|&#[0-9]+;"),
    "license": re.compile(r"^.*(?:copyright|licen[cs]e|warrant(?:y|ies)|permission is hereby granted"
                          r"|redistribution and use|all rights reserved).*", re.M | re.I),
    "doctest": re.compile(r"^[ \t]*((?:>>>|\.\.\.) .*)", re.M),
}


def context_labels(tokens, n_tokens, enc, eot):
    """(n_tokens, len(PREDICATES)) bool: which predicates hold on each of the first n_tokens
    held-out tokens. A token is labelled when any character it covers is inside a predicate's span."""
    tokens = np.asarray(tokens[:n_tokens])
    labels = np.zeros((n_tokens, len(PREDICATES)), dtype=bool)
    starts = np.flatnonzero(tokens == eot).tolist() + [n_tokens]
    for s, e in zip(starts[:-1], starts[1:]):
        text, offsets = enc.decode_with_offsets(tokens[s + 1:e].tolist())
        spans = python_spans(text)
        for name, pattern in TEXT_PATTERNS.items():
            spans[name] = [m.span(1 if pattern.groups else 0) for m in pattern.finditer(text)]
        # a token covers [its offset, the next one's), at least the character its bytes are part of
        begin = np.asarray(offsets, dtype=np.int64)
        end = np.minimum(np.maximum(np.append(begin[1:], len(text)), begin + 1), len(text))
        for j, name in enumerate(PREDICATES):
            if spans.get(name):
                inside = np.concatenate([[0], np.cumsum(char_mask(spans[name], len(text)))])
                labels[s + 1:e, j] = inside[end] > inside[begin]    # some character of the token is inside
    return labels


def alone_labels(enc, vocab, eot):
    """(vocab, len(PREDICATES)) bool: the predicates on each token read alone, as a document of its own;
    none on a token whose bytes are not text by themselves (a piece of a multi-byte character)."""
    def text(t):
        try:
            return enc.decode_single_token_bytes(t).decode("utf-8")
        except UnicodeDecodeError:
            return None
    whole = np.array([t != eot and text(t) is not None for t in range(vocab)])
    ids = np.flatnonzero(whole)
    labels = np.zeros((vocab, len(PREDICATES)), dtype=bool)
    labels[ids] = context_labels(np.stack([np.full(len(ids), eot), ids], 1).ravel(), 2 * len(ids), enc, eot)[1::2]
    return labels


def char_mask(spans, length):
    """(length,) bool: characters inside any of the [start, end) spans."""
    depth = np.zeros(length + 1, dtype=np.int64)
    for a, b in spans:
        depth[a] += 1
        depth[b] -= 1
    return np.cumsum(depth[:length]) > 0


def python_spans(text):
    """{comment, docstring, string, identifier, keyword: [(start, end) character spans]} of a Python
    source, or {} if the text is not Python (ast.parse fails)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # old escape sequences in test files warn
        try:
            ast.parse(text)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return {}
    lines = io.StringIO(text, newline="").readlines()  # split exactly as tokenize will read them
    line_start = np.cumsum([0] + [len(line) for line in lines])
    spans = {"comment": [], "docstring": [], "string": [], "identifier": [], "keyword": []}
    previous = tokenize.NEWLINE
    try:
        for tok in tokenize.generate_tokens(iter(lines).__next__):
            a = line_start[tok.start[0] - 1] + tok.start[1]
            b = line_start[tok.end[0] - 1] + tok.end[1]
            if tok.type == tokenize.COMMENT:
                spans["comment"].append((a, b))
            elif tok.type == tokenize.STRING:
                statement = previous in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
                spans["docstring" if statement else "string"].append((a, b))
            elif tok.type == tokenize.NAME:
                word = keyword.iskeyword(tok.string) or keyword.issoftkeyword(tok.string)
                spans["keyword" if word else "identifier"].append((a, b))
            if tok.type not in (tokenize.COMMENT, tokenize.NL):
                previous = tok.type
    except (tokenize.TokenError, SyntaxError):
        pass  # keep the spans read so far
    return spans
