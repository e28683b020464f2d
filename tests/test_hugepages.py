"""The console entry point's re-start with glibc's huge-page tunable (distillora.hugepages)."""

import os
import platform
import subprocess
import sys

import pytest

from distillora import hugepages
from distillora.hugepages import TUNABLE, huge_pages_env

glibc_linux = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                                 reason="the tunable is glibc's, on Linux")
MADVISE = "always [madvise] never"


@glibc_linux
def test_env_adds_the_tunable_and_keeps_the_rest():
    env = huge_pages_env({"PATH": "/bin"}, MADVISE)
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": TUNABLE}
    other = huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "[always] madvise never")
    assert other["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{TUNABLE}"


@pytest.mark.parametrize("environ, mode", [
    ({"DISTILLORA_HUGE_PAGES": "0"}, MADVISE),                   # opted out
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, MADVISE),      # the user chose already
    ({"GLIBC_TUNABLES": TUNABLE}, MADVISE),                       # the re-started process itself
    ({}, "always madvise [never]"),                               # the kernel gives none
])
def test_env_is_none_where_nothing_is_to_be_done(environ, mode):
    assert huge_pages_env(environ, mode) is None


@glibc_linux
def test_restart_execs_python_m_distillora_with_the_same_arguments(monkeypatch):
    calls = []
    monkeypatch.setattr(hugepages, "huge_pages_env", lambda environ: {**environ, "GLIBC_TUNABLES": TUNABLE})
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    monkeypatch.setattr(sys, "argv", ["/venv/bin/distillora", "run", "--config", "c.yaml", "a.b=1"])
    hugepages.restart_with_huge_pages()
    (path, argv, env), = calls
    assert path == sys.executable
    assert argv == [sys.executable, "-m", "distillora", "run", "--config", "c.yaml", "a.b=1"]
    assert env["GLIBC_TUNABLES"] == TUNABLE


@glibc_linux
def test_python_m_distillora_restarts_once_with_the_tunable(tmp_path):
    """End to end: a sitecustomize on PYTHONPATH records each Python start's GLIBC_TUNABLES; `python -m
    distillora --help` starts twice, the second time with the tunable, and not a third time."""
    if huge_pages_env({}) is None:
        pytest.skip("the kernel gives no transparent huge pages here")
    log = tmp_path / "starts.txt"
    (tmp_path / "sitecustomize.py").write_text(
        "import os\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(os.environ.get('GLIBC_TUNABLES', '-') + '\\n')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "DISTILLORA_HUGE_PAGES")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-m", "distillora", "--help"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "usage: distillora" in out.stdout
    assert log.read_text().split() == ["-", TUNABLE]
    # opted out: one start, no tunable
    log.unlink()
    subprocess.run([sys.executable, "-m", "distillora", "--help"], env={**env, "DISTILLORA_HUGE_PAGES": "0"},
                   capture_output=True, check=True)
    assert log.read_text().split() == ["-"]
