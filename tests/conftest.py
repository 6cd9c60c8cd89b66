"""Shared fixtures: a tiny corpus, its shards and a tiny trained LM, made once per test session."""
import os
import sys
import sysconfig

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data  # noqa: E402
from lab.plumbing import from_dict  # noqa: E402
import train_lm  # noqa: E402

STDLIB = sysconfig.get_paths()["stdlib"]


def pytest_addoption(parser):
    parser.addoption("--impl", default=None, help="a student's exercises file (docs/course.md): its written "
                     "functions replace the reference's for the whole session")


def pytest_configure(config):
    """--impl FILE: swap the student's functions in before any test module imports them."""
    if config.getoption("--impl"):
        from lab import course
        from lab.plumbing import UserError
        try:
            student = course.load(config.getoption("--impl"))
        except UserError as e:   # pytest prints a UsageError as one line, not an internal error
            raise pytest.UsageError(str(e)) from None
        swapped = course.swap_in(student)
        print(f"--impl {config.getoption('--impl')}: the tests run on your {', '.join(swapped) or 'nothing yet'}")


@pytest.fixture
def impl(request):
    """The --impl file, or None."""
    return request.config.getoption("--impl")
MODULES = ["json/__init__.py", "json/decoder.py", "json/encoder.py", "csv.py", "textwrap.py", "string.py",
           "base64.py", "fractions.py", "heapq.py", "bisect.py", "colorsys.py", "calendar.py", "difflib.py",
           "shlex.py", "glob.py", "fnmatch.py", "html/__init__.py", "keyword.py", "getopt.py", "LICENSE.txt",
           "abc.py", "copy.py", "random.py", "statistics.py", "pprint.py", "reprlib.py", "queue.py", "sched.py",
           "this.py", "turtle.py", "numbers.py", "operator.py", "struct.py", "gettext.py", "locale.py",
           "ipaddress.py", "uuid.py", "wave.py", "zipapp.py", "tabnanny.py"]


def write_tiny_corpus(folder):
    """About 40 stdlib files copied as .txt documents: code, docstrings and a license."""
    os.makedirs(folder, exist_ok=True)
    for name in MODULES:
        text = open(os.path.join(STDLIB, name), encoding="utf-8").read()
        with open(os.path.join(folder, name.replace("/", "_") + ".txt"), "w", encoding="utf-8") as f:
            f.write(text)
    return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """<out> with data/ built from the tiny corpus: a 512-token BPE."""
    root = tmp_path_factory.mktemp("run")
    corpus = write_tiny_corpus(str(root / "corpus"))
    # the split hashes file names, so it is the same in every session: at 0.3, 6 of the 40 files
    # (150 kB of 890 kB) are held out, enough for the analysis tests
    cfg = data.DataConfig(out=str(root / "out"), data=[corpus], vocab_size=512, val_fraction=0.3)
    data.prepare(cfg)
    return cfg.out


def tiny_lm_config(out, **kw):
    base = dict(out=out, device="cpu", max_tokens=150 * 16 * 64, batch_size=16, block_size=64,
                eval_every=40, ckpt_every=40, warmup_steps=10, lr=3e-3)
    base.update(kw)
    return from_dict(train_lm.TrainConfig, base)  # flat: the model's fields too, as on the command line


@pytest.fixture(scope="session")
def tiny_lm(tiny_data):
    """<out> with data/ and lm/: the paper's shape (128 wide, 512 neurons), 150 steps of training."""
    train_lm.train(tiny_lm_config(tiny_data))
    return tiny_data


@pytest.fixture(scope="session")
def tiny_sae(tiny_lm):
    """<out> with data/, lm/ and sae/F1024/: a small SAE trained briefly on the tiny LM."""
    import train_sae
    train_sae.train(train_sae.SAETrainConfig(out=tiny_lm, device="cpu", max_activations=24 * 1024, batch_size=1024,
                                             buffer_size=8 * 1024, eval_activations=4096, eval_every=8,
                                             n_features=1024))
    return tiny_lm


def browse_config(out, **kw):
    """The analysis the browser, steering and rating tests read (8,192 held-out tokens, 32 units of each
    kind compared, 10 bootstrap resamples), in its own folder."""
    import analyze
    base = dict(out=out, device="cpu", tokens=8192, loss_tokens=4096, analysis_dir="analysis_browse", n_units=32,
                bootstrap=10)
    base.update(kw)
    return analyze.AnalyzeConfig(**base)


@pytest.fixture(scope="session")
def analysed_all(tiny_sae):
    """(config, results) of analyze.py's whole analysis of the tiny run (every step, report.md, the browser),
    run once per session: test_analyze.py's end-to-end test checks its results; test_browser.py,
    test_steer.py and test_rate.py read its measurement and units.json. Made before any of them runs,
    whichever runs first, so each finds the folder in the same state."""
    import analyze
    cfg = browse_config(tiny_sae)
    return cfg, analyze.analyze(cfg)
