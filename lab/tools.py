"""lab/tools.py: the lab's tools on analyze.py's command line, each with flags of its own beside analyze.py's.

    python analyze.py browse --features 12 40    # the feature browser for some units (lab/browser.py)
    python analyze.py steer --feature N --value V --prompt "..."   # steer the model (lab/steer.py)
    python analyze.py rate             # a deck of units to rate blind (lab/rate.py); then, with the files it gives:
    python analyze.py ratings FILE...  # unblind: features against neurons, by people (lab/ratings.py)

analyze.py hands over its config class and its measurement (analyze.measured), so a tool reads the
run exactly as the analysis does.
"""
import sys

from lab import browser, rate, ratings, steer
from lab.measure import load_run
from lab.plumbing import UserError, parse_configs
from lab.summary import load_units

TOOLS = {"browse": browser, "steer": steer, "rate": rate, "ratings": ratings}


def split_step(argv, steps):
    """(step, the flags): the first word, or the last one after the flags (python analyze.py --out X
    density); no step: "all". argv None: the command line's. steps: analyze.py's own, beside TOOLS."""
    argv, every = list(sys.argv[1:] if argv is None else argv), list(steps) + list(TOOLS)
    if len(argv) > 1 and argv[0].startswith("-") and argv[-1] in every:
        argv = [argv[-1], *argv[:-1]]
    step = argv[0] if argv and not argv[0].startswith("-") else "all"
    if step not in every:
        raise UserError(f"unknown step {step!r}: use one of {', '.join(every)} (or none: all)")
    return step, argv[1:] if argv and argv[0] == step else argv


def usage(doc, steps):
    """analyze.py's --help description: its docstring's first paragraph and how to name a step."""
    return (doc.split("\n\n")[0] + f" Usage: python analyze.py [{'|'.join(list(steps) + list(TOOLS))}] [flags]; "
            "no step: all of them and the report.")


def run(step, argv, config_class, measured):
    """python analyze.py <tool> [flags]: the tool's flags parsed beside config_class's (analyze.py's),
    then the tool run on the run they name. measured(cfg, run): analyze.measured."""
    tool = TOOLS[step]
    if tool is ratings:   # python analyze.py ratings FILE... [flags]: the files are the --files flag's
        argv = ["--files", *argv]
    cfg, tool_cfg = parse_configs([config_class, tool.Config], argv, tool.__doc__.split("\n\n")[0])
    if tool is ratings:
        return ratings.main(tool_cfg, cfg)
    if tool is rate:
        return rate.main(tool_cfg, cfg, measured)
    run = load_run(cfg)
    return tool.main(tool_cfg, run, lambda: (measured(cfg, run), load_units(cfg, run)))
