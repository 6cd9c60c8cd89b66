"""What a student's laptop throws at a run: a damaged file, a full disk, a folder that cannot be
written. Nothing finished is lost, damage is never loaded, and each fault is one line naming the file."""
import errno
import os
import shutil

import pytest
import torch

import analyze
import data
from lab import plumbing, trained
from lab.plumbing import UserError, atomic_save, load_checkpoint


@pytest.fixture
def sae_copy(tiny_sae, tmp_path):
    path = str(tmp_path / "ckpt.pt")
    shutil.copy(os.path.join(tiny_sae, "sae", "F1024", "ckpt.pt"), path)
    return path


def test_a_damaged_checkpoint_is_refused_by_name(sae_copy):
    trained.load_sae(sae_copy)   # intact: loads
    size = os.path.getsize(sae_copy)
    with open(sae_copy, "r+b") as f:  # random bytes over the middle of the file (the weights' data)
        f.seek(size // 2)
        f.write(os.urandom(4096))
    with pytest.raises(UserError, match=f"^SAE checkpoint {sae_copy} is damaged .*: restore a copy, or run python train_sae"):
        trained.load_sae(sae_copy)


def test_non_finite_weights_are_refused_on_load(sae_copy):
    ckpt = torch.load(sae_copy, weights_only=False)
    ckpt["sae"]["W_dec"][3, :5] = float("nan")
    atomic_save(ckpt, sae_copy)   # a valid digest: the NaNs were saved as they are
    with pytest.raises(UserError, match=f"^SAE checkpoint {sae_copy} holds 5 non-finite weights"):
        trained.load_sae(sae_copy)


def full_disk(*args, **kwargs):
    """torch.save on a full disk: half a file written, then the error PyTorch's zip writer raises."""
    with open(args[1], "wb") as f:
        f.write(b"PK" + b"\0" * 1000)
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")


def test_a_full_disk_leaves_no_temporary_file_and_one_line(tmp_path, monkeypatch):
    path = str(tmp_path / "run" / "ckpt.pt")
    atomic_save({"w": torch.ones(3)}, path)
    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(UserError, match=f"^cannot write {path}: no space left on {tmp_path / 'run'}: free some space"):
        atomic_save({"w": torch.zeros(3)}, path)
    assert os.listdir(tmp_path / "run") == ["ckpt.pt"]   # no temporary file, and the good one kept
    assert torch.equal(load_checkpoint(path, "checkpoint", "")["w"], torch.ones(3))


def test_the_crash_label_says_when_it_cannot_be_written(tmp_path, monkeypatch, capsys):
    path = str(tmp_path / "ckpt.pt")
    atomic_save({"status": "running"}, path)
    monkeypatch.setattr(torch, "save", full_disk)
    plumbing.mark_crashed([path], RuntimeError("disk full"), since=0)
    assert f"note: could not label {path} crashed" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_shards_written_to_a_full_disk_leave_nothing_behind(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"doc{i}.txt").write_text(f"document {i}: " + "some text to encode. " * 200)
    real_open = open

    def failing_open(path, mode="r", *args, **kwargs):  # the shards' files take one write, then the disk is full
        f = real_open(path, mode, *args, **kwargs)
        if str(path).endswith(".bin.tmp"):
            def write(b):
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            f.write = write
        return f
    monkeypatch.setattr("builtins.open", failing_open)
    out = str(tmp_path / "out")
    with pytest.raises(UserError, match=r"^cannot write .*\.bin\.tmp: no space left on"):
        data.prepare(data.DataConfig(out=out, data=[str(corpus)], vocab_size=300))
    assert sorted(os.listdir(os.path.join(out, "data"))) == ["tokenizer.tiktoken"]


@pytest.mark.parametrize("problem", ["a file", "read-only"])
def test_an_out_that_cannot_be_written_is_one_line(tiny_sae, tmp_path, monkeypatch, problem):
    out = str(tmp_path / "out")
    shutil.copytree(tiny_sae, out, ignore=shutil.ignore_patterns("analysis*", "compare", "*_b", "*_random", "*sweep"))
    analysis = os.path.join(out, "analysis")
    if problem == "a file":
        open(analysis, "w").close()
        expected = f"^cannot write {analysis}: {analysis} is a file, not a folder: choose another --out"
    else:
        os.chmod(out, 0o555)
        if os.geteuid() == 0:  # root writes anywhere: what the kernel tells anyone else
            def makedirs(path, *a, **k):
                raise PermissionError(errno.EACCES, "Permission denied", path)
            monkeypatch.setattr(os, "makedirs", makedirs)
        expected = f"^cannot write {analysis}: {out} is not writable: choose another --out"
    try:
        with pytest.raises(UserError, match=expected):
            analyze.analyze(analyze.AnalyzeConfig(out=out, device="cpu", tokens=4096, n_units=8, bootstrap=10),
                            "density")
    finally:
        os.chmod(out, 0o755)


def test_memory_sized_flags_are_checked_before_anything_is_allocated(tiny_lm, monkeypatch):
    import train_lm
    import train_sae
    from conftest import tiny_lm_config
    from test_train_sae import sae_config
    for cfg in (dict(batch_size=10**8), dict(d_mlp=2 * 10**9)):
        with pytest.raises(UserError, match=r"^training this LM needs about [\d,.]+ GiB, more than the [\d,.]+ GiB free "
                                            r"on cpu: lower --batch-size"):
            train_lm.train(tiny_lm_config(tiny_lm, lm_dir="lm_huge", **cfg))
    for cfg in (dict(n_features=10**9), dict(buffer_size=10**9), dict(sweep=[64, 10**9])):
        with pytest.raises(UserError, match=r"^training these SAEs needs about [\d,.]+ GiB"):
            train_sae.train(sae_config(tiny_lm, sae_dir="sae_huge", **cfg))
    # the estimates are what a step holds: the tiny runs' are a few MB, and a machine with less is told
    monkeypatch.setattr(plumbing, "free_memory", lambda device: 2**20)
    with pytest.raises(UserError, match=r"^training this LM needs about 0.0 GiB, more than the 0.0 GiB free"):
        train_lm.train(tiny_lm_config(tiny_lm, lm_dir="lm_huge"))
    assert not os.path.exists(os.path.join(tiny_lm, "lm_huge")) and not os.path.exists(os.path.join(tiny_lm, "sae_huge"))


def test_the_step_may_follow_the_flags(tmp_path):
    with pytest.raises(UserError, match="^no token shards in"):   # density was taken as the step, not refused
        analyze.main(["--out", str(tmp_path), "--device", "cpu", "density"])


def test_a_smaller_vocabulary_than_asked_is_said(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"doc{i}.txt").write_text("a" * 2000)
    meta = data.prepare(data.DataConfig(out=str(tmp_path / "out"), data=[str(corpus)], vocab_size=4096))
    assert meta["vocab_size"] < 300
    assert f"note: the BPE stopped at {meta['vocab_size']} tokens, fewer than --vocab-size 4,096" in capsys.readouterr().out


def test_an_eta_no_one_should_wait_for_reads_in_days_or_years():
    assert plumbing.fmt_eta(125) == "2m05s" and plumbing.fmt_eta(47 * 3600) == "2820m00s"
    assert plumbing.fmt_eta(3 * 86400) == "3 days" and plumbing.fmt_eta(515e6 * 60) == "980 years"


ENTRY_POINTS = ["train_lm", "train_sae", "analyze", "lab.compare", "lab.course"]


@pytest.fixture(scope="module")
def entry_point_probes():
    """probe(module) -> (returncode, stdout, stderr) of a python of its own importing the module, as running it
    does, which records OMP_WAIT_POLICY when torch is first looked for. Asked for one module, it starts the
    next one's too, so on a machine of two cores one probe imports while the test waits for the other
    (never more than two at once)."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    started = {}

    def start(module):
        probe = ("import os, sys\n"
                 "class Probe:  # records the variable when torch is first looked for\n"
                 "    def find_spec(self, name, path=None, target=None):\n"
                 "        if name == 'torch':\n"
                 "            print('at torch:', os.environ.get('OMP_WAIT_POLICY'), flush=True)\n"
                 "            sys.meta_path.remove(self)\n"
                 "sys.meta_path.insert(0, Probe())\n"
                 f"import {module}\n")
        return subprocess.Popen([sys.executable, "-c", probe], cwd=root, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def probe(module):
        i = ENTRY_POINTS.index(module)
        for m in ENTRY_POINTS[i:i + 2]:
            if m not in started:
                started[m] = start(m)
        stdout, stderr = started[module].communicate()
        return started[module].returncode, stdout, stderr
    yield probe
    for p in started.values():   # (a next one that a -k selection left unread)
        if p.poll() is None:
            p.kill()
            p.communicate()


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_entry_point_lets_waiting_threads_sleep_before_torch_loads(module, entry_point_probes):
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads: importing each entry point (as running it
    does) must have set it by the time torch is first imported (lab/bench_busy.py measures why)."""
    returncode, stdout, stderr = entry_point_probes(module)
    assert returncode == 0, stderr
    assert stdout.splitlines()[0] == "at torch: PASSIVE", stdout


# A run is continued or refused, never silently replaced; one writer per run folder; the log says
# what the checkpoint holds.

def small_lm(out, lm_dir, **kw):
    from conftest import tiny_lm_config
    return tiny_lm_config(out, lm_dir=lm_dir, **{**dict(max_tokens=30 * 8 * 32, batch_size=8, block_size=32,
                                                         eval_every=5, ckpt_every=10), **kw})


def stop_at(n, error=RuntimeError):
    def on_step(step):
        if step == n:
            raise error()
    return on_step


def test_an_unfinished_run_is_refused_without_resume_and_ctrl_c_says_what_is_kept(tiny_data, capsys):
    import train_lm
    with pytest.raises(KeyboardInterrupt, match="^no checkpoint was written yet: rerun to start over$"):
        train_lm.train(small_lm(tiny_data, "lm_ctrl_c"), on_step=stop_at(3, KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt, match=r"^the checkpoint of step 10 is intact: rerun with --resume to go on"):
        train_lm.train(small_lm(tiny_data, "lm_ctrl_c"), on_step=stop_at(13, KeyboardInterrupt))
    with pytest.raises(UserError, match=r"lm_ctrl_c/ckpt.pt holds an unfinished run \(running at step 10 of 30\): "
                                        r"--resume continues it, --overwrite replaces it"):
        train_lm.train(small_lm(tiny_data, "lm_ctrl_c", max_tokens=50000))
    with pytest.raises(RuntimeError):
        train_lm.train(small_lm(tiny_data, "lm_ctrl_c", resume=True), on_step=stop_at(17))
    with pytest.raises(UserError, match=r"unfinished run \(crashed at step 10 of 30\)"):
        train_lm.train(small_lm(tiny_data, "lm_ctrl_c"))
    assert train_lm.train(small_lm(tiny_data, "lm_ctrl_c", overwrite=True))["final"]
    # the scripts without --resume say only that they were interrupted
    capsys.readouterr()
    with pytest.raises(SystemExit):
        plumbing.run_main(lambda: stop_at(0, KeyboardInterrupt)(0))
    assert capsys.readouterr().err == "\ninterrupted\n"


def test_a_resume_rewrites_the_log_from_its_checkpoint(tiny_data):
    """A crash after the checkpoint leaves records the resumed run writes again, and perhaps half a line:
    the resumed log is the uninterrupted run's, record for record."""
    import train_lm
    train_lm.train(small_lm(tiny_data, "lm_log_whole"))
    with pytest.raises(RuntimeError):   # checkpoint at step 10; records at 15 logged, then it dies at 17
        train_lm.train(small_lm(tiny_data, "lm_log_crash"), on_step=stop_at(17))
    log = os.path.join(tiny_data, "lm_log_crash", "log.jsonl")
    text = open(log).read()
    assert '"step": 15' in text
    open(log, "w").write(text[:-20])        # the last line cut in half
    train_lm.train(small_lm(tiny_data, "lm_log_crash", resume=True))
    assert open(log).read() == open(os.path.join(tiny_data, "lm_log_whole", "log.jsonl")).read()


def test_two_processes_cannot_write_one_run_folder(tiny_data):
    import subprocess
    import sys
    import train_lm
    folder = os.path.join(tiny_data, "lm_locked")
    os.makedirs(folder)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        open(os.path.join(folder, "lock"), "w").write(str(other.pid))
        with pytest.raises(UserError, match=r"lm_locked is being written by another process \(pid \d+\): wait"):
            train_lm.train(small_lm(tiny_data, "lm_locked"))
    finally:
        other.kill()
        other.wait()
    # a lock whose process is gone (a crash, a kill) is taken over; a finished run leaves none
    assert train_lm.train(small_lm(tiny_data, "lm_locked"))["final"]
    assert not os.path.exists(os.path.join(folder, "lock"))


def test_a_sweep_naming_a_size_twice_is_refused():
    import train_sae
    with pytest.raises(UserError, match=r"^--sweep 512 512 names a size twice"):
        train_sae.SAETrainConfig(sweep=["512", "512"])


def test_an_sae_on_an_unfinished_lm_says_so(tiny_data, capsys):
    import train_lm
    import train_sae
    from test_train_sae import sae_config
    with pytest.raises(RuntimeError):
        train_lm.train(small_lm(tiny_data, "lm_half"), on_step=stop_at(12))
    train_sae.train(sae_config(tiny_data, lm_dir="lm_half", sae_dir="sae_on_half", max_activations=2 * 1024,
                               n_features=256))
    assert ("warning: " + tiny_data + "/lm_half is an unfinished run (crashed at step 10 of 30)") in capsys.readouterr().out


def test_a_temporary_file_left_by_a_killed_writer_is_removed(tmp_path):
    """A writer killed mid-save (SIGKILL) leaves <file>.tmp<pid>; the next write of that file removes it,
    never one whose process still runs."""
    import subprocess
    import sys
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    living = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = str(tmp_path / "measure.pt")
        for pid in (dead.pid, living.pid):
            open(f"{path}.tmp{pid}", "wb").write(bytes(100))
        atomic_save({"x": torch.zeros(3)}, path)
        assert sorted(os.listdir(tmp_path)) == ["measure.pt", f"measure.pt.tmp{living.pid}"]
    finally:
        living.kill()
        living.wait()
