"""The blind rating: the deck hides the kinds, the page works by keyboard alone in a real browser, and
the unblinding's statistics and checks give known answers."""
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time

import numpy as np
import pytest

import analyze
from lab import rate, ratings, stats
from lab.plumbing import UserError

RUBRIC = [q[1] for q in rate.RUBRIC]


# ----------------------------------------------------------------------------------------------
# The statistics, on known values


def test_krippendorffs_alpha_and_spearman_on_known_values():
    # Krippendorff's own example (Computing Krippendorff's Alpha-Reliability, 2011): 4 coders, 12
    # units, gaps where a coder gave no value; alpha for interval data is 0.849
    nan = np.nan
    R = [[1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
         [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
         [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
         [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan]]
    assert ratings.krippendorff_alpha(R) == pytest.approx(0.849, abs=5e-4)
    assert ratings.krippendorff_alpha([[1, 2, 3], [1, 2, 3]]) == 1.0
    # by hand: observed disagreement (1 + 1 per unit, twice, over 4 values) = 1; expected (8 ordered
    # pairs of a 1 and a 2 among 4 * 3) = 2/3; alpha = 1 - 1 / (2/3): worse than chance
    assert ratings.krippendorff_alpha([[1, 2], [2, 1]]) == pytest.approx(-0.5)
    assert ratings.krippendorff_alpha([[5, 5], [5, 5]]) is None     # no variation: undefined
    assert stats.mean_ranks([10, 30, 20, 20]).tolist() == [1, 4, 2.5, 2.5]
    assert ratings.spearman([1, 2, 3, 4], [10, 20, 30, 400]) == pytest.approx(1.0)
    assert ratings.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # with ties, by hand: ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4)
    a, b = np.array([1, 2.5, 2.5, 4]) - 2.5, np.arange(1, 5) - 2.5
    by_hand = (a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())
    assert ratings.spearman([0, 5, 5, 9], [1, 2, 3, 4]) == pytest.approx(by_hand)
    assert ratings.spearman([3, 3, 3], [1, 2, 3]) is None


def write_key(folder, kinds, deck="0123456789ab"):
    """A deck's key as rate.py writes it: card i is unit i of its kind, its lexical score i / len; every
    fourth card a single-token unit."""
    cards = [dict(id=f"c{i:03d}", kind=k, unit=i, lexical=i / len(kinds), single_token=i % 4 == 0)
             for i, k in enumerate(kinds)]
    os.makedirs(os.path.join(folder, "rate_keys"), exist_ok=True)
    with open(os.path.join(folder, "rate_keys", f"{deck}.json"), "w") as f:
        json.dump(dict(deck=deck, rubric=RUBRIC, cards=cards), f)
    return cards


def ratings_file(path, cards, rater, scores, deck="0123456789ab", seconds=None):
    """A ratings file as the page downloads it (its check computed as the page's script does)."""
    seconds = seconds or [12.5] * len(cards)
    rows = [dict(id=c["id"], scores=[int(x) for x in s], seconds=t) for c, s, t in zip(cards, scores, seconds)]
    body = f"{deck}|{rater}|" + ";".join(f"{r['id']}:{','.join(map(str, r['scores']))}:{round(r['seconds'] * 10)}"
                                         for r in rows)
    with open(path, "w") as f:
        json.dump(dict(format=rate.FORMAT, deck=deck, rater=rater, cards=rows, check=ratings.fnv(body)), f)
    return str(path)


def split(total):
    """A total as the rubric's three answers."""
    a = min(total, RUBRIC[0])
    b = min(total - a, RUBRIC[1])
    return [a, b, total - a - b]


def unblind(folder, files):
    raters = [ratings.read(str(p), str(folder)) for p in files]
    ratings.check_raters(raters)
    return ratings.unblind(raters[0]["key"], raters, n_boot=200, seed=0)


def test_known_answers_the_papers_raters_and_random_raters(tmp_path):
    kinds = ["features", "neurons"] * 20 + ["control"] * 6
    cards = write_key(str(tmp_path), kinds)
    paper = {"features": 12, "neurons": 0, "control": 3}
    files = [ratings_file(tmp_path / f"r{i}.json", cards, f"rater {i}", [split(paper[k]) for k in kinds])
             for i in range(2)]
    res = unblind(tmp_path, files)
    assert {k: r["median"] for k, r in res["by_kind"].items()} == paper
    assert res["by_kind"]["features"]["median_ci"] == [12, 12] and res["by_kind"]["features"]["quite"] == 1
    assert res["difference"] == res["difference_multi"] == dict(value=12.0, ci=[12.0, 12.0])
    assert res["by_kind"]["features"]["single_token"] == 10 and res["by_kind"]["neurons"]["single_token"] == 0
    assert res["agreement"] == 1.0
    assert res["by_kind"]["neurons"]["distribution"] == [40] + [0] * 14   # 2 raters x 20 cards, all 0
    assert res["seconds_per_card"] == {"rater 0": 12.5, "rater 1": 12.5}
    # the lexical scores here rise with the card's position, whatever its kind: a rank correlation near 0
    assert abs(res["lexical_spearman"]["rater 0"]) < 0.3
    # two raters at random: no difference, no agreement
    rng = np.random.default_rng(0)
    many = ["features", "neurons"] * 150
    cards = write_key(str(tmp_path / "random"), many)
    files = [ratings_file(tmp_path / "random" / f"r{i}.json", cards, f"rater {i}",
                          [split(t) for t in rng.integers(0, 15, len(many))]) for i in range(2)]
    res = unblind(tmp_path / "random", files)
    assert abs(res["agreement"]) < 0.1
    lo, hi = res["difference"]["ci"]
    assert lo <= 0 <= hi and hi - lo < 5
    assert 5 <= res["by_kind"]["features"]["median"] <= 9 and 5 <= res["by_kind"]["neurons"]["median"] <= 9
    # the report's section and summary.json: added to those there, and kept for the next report
    for name in ("report.md", "summary.json"):
        (tmp_path / name).write_text("# Report\n\n## 5. Browser\n\ntext\n\n## Settings\n\n`{}`\n" if name == "report.md"
                                     else json.dumps({"sae": "F8"}))
    folder = str(tmp_path)
    files = [str(tmp_path / "r0.json"), str(tmp_path / "r1.json")]
    for _ in range(2):    # twice: the second replaces the first
        analyze.main(["ratings", *files, "--out", folder, "--analysis-dir", "."])
    text = (tmp_path / "report.md").read_text()
    assert text.count("## 8. The blind rating") == 1 and text.index("## 8.") < text.index("## Settings")
    assert "**+12.0**, 95% CI [+12.0, +12.0]" in text and "Krippendorff's alpha, interval, on the totals): 1.00" in text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sae"] == "F8" and summary["ratings"]["difference"]["value"] == 12
    assert os.path.getsize(tmp_path / "ratings.png") > 10_000 and "## 8." in (tmp_path / "ratings.md").read_text()


def test_bad_ratings_files_are_one_line_errors_naming_the_file_and_the_fix(tmp_path):
    kinds = ["features", "neurons"] * 3
    cards = write_key(str(tmp_path), kinds)
    good = ratings_file(tmp_path / "ann.json", cards, "Ann", [split(5)] * 6)
    text = open(good).read()

    def error(path, *others):
        with pytest.raises(UserError) as e:
            unblind(tmp_path, [path, *others])
        assert "\n" not in str(e.value)
        return str(e.value)

    (tmp_path / "cut.json").write_text(text[:len(text) // 2])
    assert "cut.json is not whole JSON" in error(tmp_path / "cut.json") and "download it again" in error(
        tmp_path / "cut.json")
    edited = json.loads(text)
    edited["cards"][0]["scores"][0] = 5 - edited["cards"][0]["scores"][0] + 1    # one answer changed by hand
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    assert "edited.json was changed after it was downloaded" in error(tmp_path / "edited.json")
    (tmp_path / "other.json").write_text("[1, 2]")
    assert "other.json is not a ratings file" in error(tmp_path / "other.json")
    stranger = ratings_file(tmp_path / "stranger.json", cards, "Ann", [split(5)] * 6, deck="ffffffffffff")
    assert "stranger.json rates deck ffffffffffff, which was not made in" in error(stranger)
    assert "--out" in error(stranger) and "0123456789ab" in error(stranger)
    twin = ratings_file(tmp_path / "twin.json", cards, "ann ", [split(9)] * 6)
    assert "ann.json and " in error(good, twin) and "are both rater" in error(good, twin)
    short = ratings_file(tmp_path / "short.json", cards[:4], "Bob", [split(5)] * 4)
    assert "short.json rates 4 cards, the deck 0123456789ab has 6" in error(short)
    wild = ratings_file(tmp_path / "wild.json", cards, "Cy", [[9, 0, 0]] * 6)   # 9 > the first question's 5
    assert "wild.json holds scores outside the rubric" in error(wild)
    assert "cannot read" in error(tmp_path / "nowhere.json") and "nowhere.json" in error(tmp_path / "nowhere.json")
    other_deck = write_key(str(tmp_path), kinds, deck="aaaaaaaaaaaa")
    mixed = ratings_file(tmp_path / "mixed.json", other_deck, "Dee", [split(5)] * 6, deck="aaaaaaaaaaaa")
    assert "unblind one deck at a time" in error(good, mixed)
    with pytest.raises(UserError, match="name the ratings files"):
        analyze.main(["ratings", "--out", str(tmp_path)])


# ----------------------------------------------------------------------------------------------
# The deck and its page, on the tiny run


@pytest.fixture(scope="module")
def analysed(analysed_all):
    """analysis_browse/ of the tiny run: its measure.pt and units.json (conftest.py's analysed_all, the whole
    analysis, shared with test_analyze.py's end-to-end test and with test_browser.py and test_steer.py)."""
    return analysed_all[0]


def deck(analysed, tmp_path, **kw):
    cfg = rate.Config(**{"cards": 8, "pool_tokens": 4096, "control": False, "secret": "s3cret-for-the-test",
                         "html": str(tmp_path / "rate.html"), **kw})
    return rate.write_deck(cfg, analysed, analyze.measured)


def test_the_page_does_not_say_which_card_is_a_feature(analysed, tmp_path):
    made = deck(analysed, tmp_path)
    key = json.load(open(made["key_path"]))
    kinds = [c["kind"] for c in key["cards"]]
    assert kinds.count("features") == 4 == kinds.count("neurons") and key["secret"] == "s3cret-for-the-test"
    assert made["key_path"].startswith(os.path.join(analysed.out, "analysis_browse", "rate_keys"))
    text = open(made["path"], encoding="utf-8").read()
    page = json.loads(text.split('id="data">')[1].split("</script>")[0])
    assert "s3cret" not in text and page["deck"] == made["deck"] and "http" not in text
    cards = page["cards"]
    assert [c["id"] for c in cards] == [c["id"] for c in key["cards"]]
    # every card alike: the same fields, the same section titles, no unit, no kind, no raw activation
    assert {tuple(sorted(c)) for c in cards} == {("id", "sections", "tokens")}
    assert len({tuple(t for t, _ in c["sections"]) for c in cards}) == 1
    data = text.split('id="data">')[1].split("</script>")[0].lower()
    assert "feature" not in data and "neuron" not in data and "unit" not in data
    for c, k in zip(cards, key["cards"]):
        percents = [p for _, exs in c["sections"] for ex in exs for p in ex[1]] + [p for _, p in c["tokens"]]
        assert all(isinstance(p, int) and 0 <= p <= 100 for p in percents) and max(percents) == 100
        # the card's id is salted: the kind and unit alone do not give it
        for kind in ("features", "neurons"):
            assert c["id"] not in hashlib.sha256(f"{kind}:{k['unit']}".encode()).hexdigest()
    # the page's own text says features and neurons are in the deck, never which card is which
    visible = text.split('<script type="application/json"')[0]
    assert "neurons of the model" in visible and "never trained" not in visible
    # another secret: another deck (a student rerunning the command does not get the teacher's key)
    again = deck(analysed, tmp_path, secret="another", html=str(tmp_path / "again.html"))
    assert again["deck"] != made["deck"] and not set(c["id"] for c in again["cards"]) & set(c["id"] for c in cards)
    with pytest.raises(UserError, match="--cards"):
        deck(analysed, tmp_path, cards=10_000)
    bare = deck(analysed, tmp_path, cards=2, random_contexts=0, html=str(tmp_path / "bare.html"))   # none asked
    page = json.loads(open(bare["path"], encoding="utf-8").read().split('id="data">')[1].split("</script>")[0])
    assert [t for t, _ in page["cards"][0]["sections"]][-1] != "Random contexts"


def test_the_random_weights_control_takes_its_share_when_compare_has_analysed_one(analysed, tmp_path):
    """lab/compare.py leaves lm_random/, sae_random/ and compare/analysis_random/; here copies of the
    main run stand in for them (the plumbing is what is tested, not what a random model learns)."""
    out = tmp_path / "run"
    for d in ("data", "lm", "sae"):
        shutil.copytree(os.path.join(analysed.out, d), out / d)
    shutil.copytree(out / "lm", out / "lm_random")
    shutil.copytree(out / "sae", out / "sae_random")
    shutil.copytree(os.path.join(analysed.out, analysed.analysis_dir), out / "analysis_browse")
    shutil.copytree(out / "analysis_browse", out / "compare" / "analysis_random",
                    ignore=shutil.ignore_patterns("rate*", "pair.json"))   # (compare's own names its pair)
    acfg = dataclasses.replace(analysed, out=str(out))
    made = deck(acfg, tmp_path, cards=9, control=True)
    kinds = [c["kind"] for c in made["cards"]]
    assert sorted(kinds) == ["control"] * 3 + ["features"] * 3 + ["neurons"] * 3
    assert "never trained" in open(made["path"], encoding="utf-8").read().split('<script type="application/json"')[0]
    files = [ratings_file(tmp_path / f"r{i}.json", made["cards"], f"r{i}",
                          [split({"features": 12, "neurons": 0, "control": 5}[k]) for k in kinds], deck=made["deck"])
             for i in range(2)]
    res = unblind(out / "analysis_browse", files)
    assert {k: r["median"] for k, r in res["by_kind"].items()} == {"features": 12, "neurons": 0, "control": 5}
    assert "| random-weights features | 3 | 5.0" in "\n".join(ratings.markdown(res))


def test_rate_and_ratings_steps_document_their_flags(capsys):
    for step, flag in (("rate", "--cards"), ("ratings", "--files")):
        with pytest.raises(SystemExit) as done:
            analyze.main([step, "--help"])
        out = capsys.readouterr().out
        assert done.value.code == 0 and flag in out and "--out" in out


# ----------------------------------------------------------------------------------------------
# The page in a real browser, driven by keystrokes only


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: commands
    on its fd 3, replies on its fd 4, each a JSON message ended by a NUL byte). Keys go in as the
    browser's own input events, as a keyboard's would; no mouse, no package needed."""

    def __init__(self, binary, profile):
        cmd_r, self.cmd_w = os.pipe()
        self.reply_r, reply_w = os.pipe()

        def fds():   # the child's fds 3 and 4 (copied above 10 first: a pipe may already be fd 3 or 4)
            r, w = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(reply_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen([binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                      f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
                                     preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(reply_w)
        self.buffer, self.next_id, self.session = b"", 0, None

    def send(self, method, session=True, **params):
        self.next_id += 1
        msg = dict(id=self.next_id, method=method, params=params)
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                chunk = os.read(self.reply_r, 1 << 16)
                assert chunk, "chromium closed its pipe"
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(line)
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply
                return reply["result"]

    def open(self, url):
        target = self.send("Target.createTarget", url=url)["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Emulation.setFocusEmulationEnabled", enabled=True)
        self.wait_loaded()

    def wait_loaded(self):
        """Until the page has loaded and painted: Chromium drops key events that come before a page's first
        paint, which on a slow or busy machine lags its load (keys typed at once went missing)."""
        self.wait("document.readyState === 'complete' && performance.getEntriesByType('paint').length > 0")

    def wait(self, expression, seconds=10):
        """Until a script expression holds (a page's load or a keystroke's effect may lag the protocol's reply)."""
        for _ in range(int(seconds / 0.05)):
            if self.js(expression):
                return
            time.sleep(0.05)
        raise AssertionError(f"never true in the page: {expression}")

    def js(self, expression):
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def key(self, key):
        """One key press: a character (a digit, a letter) or a named key (Enter, ArrowRight, ...)."""
        codes = {"Enter": 13, "ArrowLeft": 37, "ArrowUp": 38, "ArrowRight": 39, "ArrowDown": 40}
        if key in codes:
            down = dict(key=key, code=key, windowsVirtualKeyCode=codes[key])
            if key == "Enter":
                down["text"] = "\r"
        else:
            down = dict(key=key, text=key, windowsVirtualKeyCode=ord(key.upper()))
        self.send("Input.dispatchKeyEvent", type="keyDown" if "text" in down else "rawKeyDown", **down)
        self.send("Input.dispatchKeyEvent", type="keyUp", **{k: v for k, v in down.items() if k != "text"})

    def close(self):
        self.proc.kill()
        self.proc.wait()
        os.close(self.cmd_w)
        os.close(self.reply_r)


def chromium():
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
    return next((shutil.which(n) for n in names if shutil.which(n)), None)


def test_a_rater_rates_the_deck_by_keyboard_resumes_after_a_reload_and_the_ratings_unblind(analysed, tmp_path):
    binary = chromium()
    if binary is None:
        pytest.skip("no chromium or chrome on PATH (apt-get install chromium)")
    made = deck(analysed, tmp_path)
    n = len(made["cards"])
    browser = Chromium(binary, str(tmp_path / "profile"))
    try:
        downloads = tmp_path / "downloads"
        browser.send("Browser.setDownloadBehavior", session=False, behavior="allow", downloadPath=str(downloads))
        browser.open("file://" + made["path"])
        browser.wait("document.activeElement === document.getElementById('name')")
        for c in "Ann B":
            browser.key(c)
        browser.key("Enter")
        stored = f"localStorage.getItem('rate:{made['deck']}')"
        browser.wait(stored)
        state = lambda: json.loads(browser.js(stored))
        assert state()["rater"] == "Ann B"
        typed = {}
        for i in range(n):
            if i == n // 2:   # half-way: reload, and the page comes back where it was
                before = state()
                browser.send("Page.reload")
                browser.wait_loaded()
                browser.wait("!document.getElementById('rate').hidden")
                assert state()["scores"] == before["scores"] and state()["pos"] == i
                progress = browser.js("document.getElementById('progress').textContent")
                assert progress == f"Card {i + 1} of {n} · {i} rated"
            text = browser.js("document.getElementById('card').textContent").lower()
            assert "feature" not in text and "neuron" not in text
            answers = [i % 6, (2 * i) % 6, i % 5]
            browser.key("ArrowRight")           # not yet answered: the page stays on the card
            assert state()["pos"] == i
            browser.key("9")                    # out of the first question's 0-5: refused, said
            assert "0 to 5" in browser.js("document.getElementById('note').textContent")
            for a in answers:
                browser.key(str(a))
            if i == 0:                          # a change of mind: up to the first question, answered again
                browser.key("ArrowUp")
                browser.key("ArrowUp")
                answers[0] = 1
                browser.key("1")
            typed[made["cards"][i]["id"]] = answers
            browser.key("ArrowRight")
        browser.key("ArrowLeft")                # back from the end to the last card, and forward again
        assert state()["pos"] == n - 1
        browser.key("ArrowRight")
        for _ in range(400):                    # reaching the end downloads the file (slowly on a busy machine)
            if (downloads / "ratings-ann-b.json").exists():
                break
            time.sleep(0.05)
        assert browser.js("document.getElementById('done').hidden") is False
    finally:
        browser.close()
    r = ratings.read(str(downloads / "ratings-ann-b.json"), os.path.join(analysed.out, analysed.analysis_dir))
    assert r["rater"] == "Ann B" and r["deck"] == made["deck"]
    key = made["cards"]
    assert r["scores"].tolist() == [typed[c["id"]] for c in key]
    assert (r["seconds"] >= 0).all() and r["seconds"].sum() > 0
    res = ratings.unblind(r["key"], [r], n_boot=50)
    for kind in ("features", "neurons"):    # the unblinded kinds are the key's
        mine = [sum(typed[c["id"]]) for c in key if c["kind"] == kind]
        assert res["by_kind"][kind]["cards"] == len(mine) and res["by_kind"][kind]["median"] == np.median(mine)
    assert res["agreement"] is None and list(res["lexical_spearman"]) == ["Ann B"]


def test_a_ratings_file_with_infinite_seconds_is_one_line(tmp_path):
    path = tmp_path / "ratings-x.json"
    path.write_text(json.dumps({"format": rate.FORMAT, "deck": "0123456789ab", "rater": "x", "check": 0,
                                "cards": [{"id": 1, "scores": [1], "seconds": float("inf")}]}))
    with pytest.raises(UserError, match="was changed after it was downloaded"):
        ratings.read(str(path), str(tmp_path))
