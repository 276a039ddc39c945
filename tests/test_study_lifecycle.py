"""fer study's lifecycle: one study per run folder (its lock), and a study stopped by Ctrl-C or SIGTERM."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fer_lib.cli import main
from fer_lib.io import pid_alive
from fer_lib.study import LOCK, StudyError, lock_run
from fer_lib.synthetic import write_synthetic_h5

ROOT = Path(__file__).resolve().parents[1]
STUBS = ROOT / "tests" / "fixtures" / "notebooks"
HOST = socket.gethostname()


def child_env() -> dict:
    """The environment of a `fer study` subprocess: this checkout's fer_lib first."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def write_lock(folder: Path, **held) -> bytes:
    (folder / LOCK).write_text(json.dumps({"host": HOST, "since": "2026-01-01T00:00:00+00:00", **held}))
    return (folder / LOCK).read_bytes()


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def test_lock_refuses_a_live_study_and_takes_over_a_dead_ones(tmp_path, capsys):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        held = write_lock(tmp_path, pid=sleeper.pid)
        with pytest.raises(StudyError, match=rf"a study is running there \(pid {sleeper.pid} on {HOST}, since 2026-"):
            with lock_run(tmp_path):
                pass
        assert (tmp_path / LOCK).read_bytes() == held            # the holder's lock untouched
    finally:
        sleeper.kill()
        sleeper.wait()
    with lock_run(tmp_path) as lock:                             # its process is gone: the lock is stale
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(StudyError, match=rf"pid {os.getpid()} on"):   # and now held, by us
            with lock_run(tmp_path):
                pass
    assert f"took over the lock of pid {sleeper.pid}, which no longer runs" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []                        # released; no temporary file left
    write_lock(tmp_path, host="elsewhere", pid=sleeper.pid)      # another machine's pid cannot be judged here
    with pytest.raises(StudyError, match=rf"remove {tmp_path / LOCK} if no study runs on elsewhere"):
        with lock_run(tmp_path):
            pass


def test_a_study_or_reindex_into_a_folder_in_use_is_refused_and_changes_nothing(tmp_path, capsys):
    report = tmp_path / "reports" / "r"
    report.mkdir(parents=True)
    (report / "manifest.json").write_text('{"run": "r", "status": "running", "notebooks": []}')
    (report / "01_make_stub.ipynb").write_text("{}")
    write_lock(report, pid=os.getppid())                          # a live process of this machine holds it
    before = snapshot(tmp_path)
    for argv in (["study", "--notebooks", str(STUBS), "--out", str(tmp_path / "reports"), "--work",
                  str(tmp_path / "runs"), "--run", "r"], ["study", "--reindex", str(report)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"fer study: error: {report}: a study is running there (pid {os.getppid()} on {HOST}")
        assert snapshot(tmp_path) == before                     # not a byte changed, no run folder made


def start_study(tmp_path: Path, wait_s: int = 300) -> tuple[subprocess.Popen, list]:
    """fer study --only 02 with the stand-in sleeping in a cell, as a terminal's job: SIGINT not ignored."""
    h5 = write_synthetic_h5(tmp_path / "s.h5", n_per_class=(3, 2, 2), seed=0)
    cmd = [sys.executable, "-m", "fer_lib.cli", "study", "--notebooks", str(STUBS), "--out", str(tmp_path / "reports"),
           "--work", str(tmp_path / "runs"), "--run", "r", "--h5", str(h5), "--only", "02", "-p", f"02.wait_s={wait_s}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return proc, cmd


def wait_for_kernel(proc: subprocess.Popen, pid_file: Path, timeout: float = 180) -> int:
    deadline = time.time() + timeout
    while not (pid_file.exists() and pid_file.read_text()):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the study ended or hung before its kernel ran the cell (rc {proc.returncode}):\n{out}\n{err}")
        time.sleep(0.2)
    return int(pid_file.read_text())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_study_kills_its_kernel_quietly_and_says_where_it_stopped(tmp_path, sig):
    proc, cmd = start_study(tmp_path)
    report, run_dir = tmp_path / "reports" / "r", tmp_path / "runs" / "r"
    try:
        kernel = wait_for_kernel(proc, run_dir / "train" / "kernel.pid")
        m = json.loads((report / "manifest.json").read_text())
        assert m["status"] == "running" and m["notebooks"][-1]["status"] == "running"
        if sig == signal.SIGINT:  # a second study into the run folder in use is refused, naming the first
            second = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
            assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
            assert f"a study is running there (pid {proc.pid} on {HOST}" in second.stderr
            assert json.loads((report / "manifest.json").read_text()) == m   # the first study's manifest stands
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    name = signal.Signals(sig).name
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and "ZMQError" not in err, err
    assert err.splitlines() == [f"fer study: interrupted by {name} during 02_use_stub; "
                                f"the manifest says so: {report.resolve() / 'manifest.json'}"]
    m = json.loads((report / "manifest.json").read_text())
    assert m["status"] == "interrupted" and m["end"] and m["wall_s"] is not None
    assert m["interrupted"]["step"] == "02_use_stub" and m["interrupted"]["signal"] == name
    assert m["interrupted"]["at"] >= m["start"]
    entry = m["notebooks"][-1]
    assert entry["status"] == "interrupted" and entry["ipynb"] == ".partial-02_use_stub.ipynb" and entry["html"] is None
    assert not (report / "02_use_stub.ipynb").exists() and not (report / "02_use_stub.html").exists()
    assert "val size: 14" in (report / ".partial-02_use_stub.ipynb").read_text()   # the cells that ran are kept
    assert "interrupted: by " + name + " during 02_use_stub" in (report / "index.md").read_text()
    assert not (report / LOCK).exists() and not (run_dir / LOCK).exists()
    deadline = time.time() + 10
    while pid_alive(kernel) and time.time() < deadline:
        time.sleep(0.1)
    assert not pid_alive(kernel), f"kernel {kernel} still runs"


def test_a_stopped_study_resumes_where_it_stopped_and_ends_as_an_unbroken_one(tmp_path, capsys):
    """Killed inside notebook 02, `fer study --resume` keeps 01 as it ran, finishes 02, and its result is an
    unbroken run's; a changed recipe, or a rerun without --resume or --overwrite, is refused (issue 34)."""
    h5 = tmp_path / "s.h5"
    common = ["study", "--notebooks", str(STUBS), "--out", str(tmp_path / "reports"), "--work", str(tmp_path / "runs"),
              "--h5", str(h5), "-p", "02.wait_s=300"]
    env = child_env()
    proc = subprocess.Popen([sys.executable, "-m", "fer_lib.cli", *common, "--run", "r"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    report = tmp_path / "reports" / "r"
    try:
        wait_for_kernel(proc, tmp_path / "runs" / "r" / "train" / "kernel.pid")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    stopped = json.loads((report / "manifest.json").read_text())
    assert [n["status"] for n in stopped["notebooks"]] == ["ok", "interrupted"]
    first = (report / "01_make_stub.ipynb").read_bytes()

    before = snapshot(tmp_path)
    for extra, why in ((["-p", "02.epochs=3", "--resume"], "was started with another overrides; finish it"),
                       ([], "holds a study report (interrupted, started ")):
        assert main([*common, "--run", "r", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and why in err, err
        assert snapshot(tmp_path) == before                   # refused before anything was touched

    assert main([*common, "--run", "r", "--resume"]) == 0
    assert "resuming r: 01_make_stub finished before; 1 to run" in capsys.readouterr().out
    m = json.loads((report / "manifest.json").read_text())
    assert m["status"] == "ok" and [n["status"] for n in m["notebooks"]] == ["ok", "ok"]
    assert m["notebooks"][0] == stopped["notebooks"][0] and m["start"] == stopped["start"]   # 01 did not run again
    assert m["resumed"][0]["kept"] == ["01_make_stub"] and m["resumed"][0]["previous_status"] == "interrupted"
    assert (report / "01_make_stub.ipynb").read_bytes() == first
    assert not (report / ".partial-02_use_stub.ipynb").exists() and (report / "02_use_stub.html").exists()
    assert m["wall_s"] >= m["notebooks"][0]["wall_s"] + m["notebooks"][1]["wall_s"] - 0.2

    assert main([*common, "--run", "r", "--resume"]) == 0     # a finished study: nothing left to run
    assert "resuming r: 01_make_stub, 02_use_stub finished before; 0 to run" in capsys.readouterr().out
    unbroken = [*common[:-2], "--run", "unbroken"]                       # no pause: the same recipe, at once
    assert main(unbroken) == 0
    assert (report / "metrics.json").read_text() == (tmp_path / "reports" / "unbroken" / "metrics.json").read_text()
    assert main([*unbroken, "--overwrite"]) == 0                           # asked for: replaced


def test_the_real_notebooks_killed_mid_training_resume_to_an_unbroken_runs_result(tmp_path):
    """Notebooks 01 and 02 (smoke, synthetic): SIGTERM after 02's first epoch, then --resume. The finished
    epoch is not trained again (its history row, time and all, is the stopped run's), and the result is the
    unbroken run's: the same epochs, losses and PublicTest accuracies (issue 34)."""
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    for name in ("01_preprocess.ipynb", "02_train_cnn.ipynb"):
        (nbs / name).write_bytes((ROOT / "notebooks" / name).read_bytes())
    env = child_env()

    def study(run, *extra):   # each run its own WORK: trainings are shared (and reused) within one
        return [sys.executable, "-m", "fer_lib.cli", "study", "--notebooks", str(nbs), "--out", str(tmp_path / "reports"),
                "--work", str(tmp_path / f"runs-{run}"), "--run", run, "-p", "train.epochs=3",
                "-p", "train.train_fraction=0.5", *extra]

    def history_of(run):   # the recipe's own training (seed 0), in its keyed folder
        found = sorted((tmp_path / f"runs-{run}" / "trainings").glob("vgg_small-s0-*/history.json"))
        return found[0] if found else None
    proc = subprocess.Popen(study("r"), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    try:
        while not ((history := history_of("r")) and len(json.loads(history.read_text() or "[]")) >= 1):
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"the study ended before its first epoch (rc {proc.poll()}): {proc.communicate()}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    stopped = json.loads(history.read_text())
    assert 1 <= len(stopped) < 3, "stopped after the last epoch: nothing left to resume"
    resumed = subprocess.run(study("r", "--resume"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming r: 01_preprocess finished before; 1 to run" in resumed.stdout
    unbroken = subprocess.run(study("u"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert unbroken.returncode == 0, unbroken.stderr
    got = json.loads(history.read_text())
    want = json.loads(history_of("u").read_text())
    assert got[:len(stopped)] == stopped                               # not trained again
    timeless = [{k: v for k, v in row.items() if k not in ("time_s", "ran_on")} for row in got]
    assert timeless == [{k: v for k, v in row.items() if k not in ("time_s", "ran_on")} for row in want]
    # a restarted study of the same recipe and data (another report, --overwrite too) trains nothing again
    again = subprocess.run(study("r", "--overwrite", "--only", "02"), cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stderr
    executed = json.loads((tmp_path / "reports" / "r" / "02_train_cnn.ipynb").read_text())
    printed = "".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
                      for c in executed["cells"] for o in c.get("outputs", []))
    assert printed.count("is finished (epoch 3") == 2 and "train loss" not in printed   # both seeds reused
    assert json.loads(history.read_text()) == got
    outputs = json.loads((tmp_path / "reports" / "r" / "manifest.json").read_text())["outputs"]
    assert set(outputs) == {"single", "ensemble", "live"} and all(len(o["sha256"]) == 64 for o in outputs.values())
    assert json.loads((tmp_path / "reports" / "r" / "manifest.json").read_text())["status"] == "ok"
