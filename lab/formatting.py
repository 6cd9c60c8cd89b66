"""lab/formatting.py: a token, an explanation row and an interval written as text, the same wherever
they are shown: report.md and compare's report (markdown), the browser's pages, the steering table.
A token may hold a line break, a tab, a backtick or a |: each is drawn so that it stays visible and
cannot end a line, a code span or a markdown table cell.
"""


def token_text(enc, t):
    return enc.decode_single_token_bytes(int(t)).decode("utf-8", "replace")


# Line breaks, tabs and other control characters drawn as symbols, so a context stays on one line
# and no token is invisible (the browser's pages, the steering table).
VISIBLE = {**{c: 0x2400 + c for c in range(32)}, 0x7F: 0x2421, ord("\n"): "↵", ord("\t"): "⇥"}


def visible(text):
    return text.translate(VISIBLE)


def shown(text):
    """A token's text, visible in markdown: whitespace spelled out, backticks kept inside code."""
    text = text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t").replace("`", "'")
    return "`" + text.replace("|", "\\|") + "`"  # a bare | would end a markdown table cell


def pattern(row, token, arrow=" → "):
    """One row of describe() as text: ⟨predicate⟩, or its tokens written by token(text), `a → b` being
    token b after token a. (Rows of a units.json from before context rows have no "context" key.)"""
    if row.get("context"):
        return f"⟨{row['context']}⟩"
    return (token(row["prev"]) + arrow if row["prev"] is not None else "") + token(row["token"])


def signed(d):
    """A difference with its 95% interval: +0.12, 95% CI [+0.05, +0.19]."""
    return f"{d['value']:+.2f}, 95% CI [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]"
