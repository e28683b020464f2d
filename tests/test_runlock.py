"""One writer per run directory (issue 11 B): a second `distillora run` into a directory another one
is writing refuses at once, naming the first's PID and host, with exit code 2; a lock left by a
process that is gone is taken over with a message; in a data-parallel run only the main process
takes it."""

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from conftest import REPO
from distillora.cli import main
from distillora.errors import UserError
from distillora.runlock import LOCK_NAME, RunLock

# the first run: a real `distillora run` that takes the lock and then stalls where training starts
STALLED = """
import sys, time
from distillora import study
study._train_models = lambda *a, **k: time.sleep(600)
from distillora.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _args(out, data, teacher, *extra):
    return ["run", "--output", str(out), "--quiet", *[e for e in extra if e.startswith("--")],
            f"data.source={data}", f"teacher.source={teacher}", "data.validation_fraction=0.25",
            "data.max_length=32", *[e for e in extra if not e.startswith("--")]]


def test_second_run_refuses_then_stale_lock_is_taken_over(tmp_path, tiny_teacher_dir, small_data, capsys, caplog,
                                                         monkeypatch):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-c", STALLED, *_args(out, small_data, tiny_teacher_dir)], cwd=REPO,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and str(first.pid) not in ((out / LOCK_NAME).read_text()
                                                                if (out / LOCK_NAME).exists() else ""):
            assert first.poll() is None, "the first run ended early"
            time.sleep(0.1)
        # the case: --force and another learning rate
        code = main(_args(out, small_data, tiny_teacher_dir, "--force", "teacher.train.learning_rate=1e-4"))
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"PID {first.pid} on host {socket.gethostname()}" in err and "Traceback" not in err
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == first.pid  # its lock is untouched
        assert (out / "config.yaml").exists()  # the first run's, not overwritten
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()

    # the killed run's lock names a process that is gone: the next run takes it over and says so
    from distillora import study

    reached = []
    monkeypatch.setattr(study, "_train_models", lambda *a, **k: reached.append(1) or (_ for _ in ()).throw(KeyboardInterrupt))
    caplog.set_level("WARNING", logger="distillora")
    code = main(_args(out, small_data, tiny_teacher_dir))
    assert code == 130 and reached  # past the lock: training was reached
    assert f"taking over the lock of `distillora run` (PID {first.pid} on host {socket.gethostname()}" in caplog.text
    assert (out / LOCK_NAME).read_text() == ""  # released when the run ended


def test_lock_without_flock_judges_by_pid(tmp_path, monkeypatch):
    """On a filesystem without flock: a lock of this host whose PID is not running is stale; a running
    PID's, or another host's, is not."""
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "no locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for holder, refused in [({"pid": dead.pid, "host": socket.gethostname()}, False),
                            ({"pid": os.getppid(), "host": socket.gethostname()}, True),
                            ({"pid": dead.pid, "host": "elsewhere"}, True)]:
        (tmp_path / LOCK_NAME).write_text(json.dumps(holder))
        lock = RunLock(tmp_path)
        if refused:
            with pytest.raises(UserError, match=f"PID {holder['pid']} on host {holder['host']}"):
                lock.acquire()
        else:
            with lock:
                assert lock.took_over == holder
                assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_only_the_main_process_takes_the_lock(tmp_path):
    """Data-parallel helpers (accelerate ranks > 0) neither take nor check the lock the main process holds."""
    from distillora.study import _take_lock

    with RunLock(tmp_path):
        helper = SimpleNamespace(is_main_process=False, num_processes=1)
        assert _take_lock(tmp_path, helper) is None
        with pytest.raises(UserError, match=f"PID {os.getpid()}"):
            _take_lock(tmp_path, SimpleNamespace(is_main_process=True, num_processes=1))
