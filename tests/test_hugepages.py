"""The console entry point's re-start with glibc's huge-page tunable (distillora.hugepages)."""

import json
import os
import subprocess
import sys

import pytest

from distillora import hugepages
from distillora.hugepages import TUNABLES, huge_pages_env

glibc_linux = pytest.mark.skipif(not hugepages._glibc_has_tunable(),
                                 reason="the tunable is glibc's (2.35 and later), on Linux")
MADVISE = "always [madvise] never"


@glibc_linux
def test_env_adds_the_tunable_and_keeps_the_rest():
    env = huge_pages_env({"PATH": "/bin"}, MADVISE)
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": TUNABLES}
    other = huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "[always] madvise never")
    assert other["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{TUNABLES}"
    assert TUNABLES.startswith("glibc.malloc.hugetlb=1:") and "glibc.malloc.mmap_max=0" in TUNABLES


@glibc_linux
def test_env_keeps_the_users_own_value_of_a_heap_setting():
    env = huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=65536"}, MADVISE)
    settings = env["GLIBC_TUNABLES"].split(":")
    assert settings[0] == "glibc.malloc.mmap_max=65536"
    assert "glibc.malloc.mmap_max=0" not in settings
    assert {"glibc.malloc.hugetlb=1", f"glibc.malloc.trim_threshold={16 << 30}"} <= set(settings)
    env = huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1048576"}, MADVISE)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.trim_threshold=1048576:glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0"
    # glibc's older variables name the same settings
    env = huge_pages_env({"MALLOC_MMAP_MAX_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}, MADVISE)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    # a user's own mmap threshold means blocks above it are to be mapped: no mmap_max=0 over it
    env = huge_pages_env({"MALLOC_MMAP_THRESHOLD_": "1048576"}, MADVISE)
    assert "mmap_max" not in env["GLIBC_TUNABLES"] and "glibc.malloc.hugetlb=1" in env["GLIBC_TUNABLES"]


@glibc_linux
def test_serve_gets_huge_pages_without_the_kept_heap(monkeypatch):
    assert huge_pages_env({}, MADVISE, keep_heap=False) == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    from distillora import cli

    seen = []
    monkeypatch.setattr(hugepages, "restart_with_huge_pages", lambda keep_heap=True: seen.append(keep_heap))
    monkeypatch.setattr(cli, "main", lambda: 0)
    for argv, keep in ([["distillora", "serve", "--run", "r"], False], [["distillora", "run", "--config", "c"], True],
                       [["distillora", "--help"], True]):
        monkeypatch.setattr(sys, "argv", argv)
        assert cli.entry() == 0 and seen.pop() is keep


@glibc_linux
def test_glibc_applies_the_settings_a_restart_adds(tmp_path):
    """In a process started with TUNABLES, an 80 MiB block on the main thread comes from the heap
    (mallinfo2's hblkhd, bytes in mapped blocks, stays 0); without them glibc maps it. A misspelt
    tunable would be ignored silently by glibc and fail here."""
    probe = ("import ctypes\n"
             "class M(ctypes.Structure):\n"
             "    _fields_ = [(n, ctypes.c_size_t) for n in 'arena ordblks smblks hblks hblkhd usmblks fsmblks "
             "uordblks fordblks keepcost'.split()]\n"
             "libc = ctypes.CDLL('libc.so.6')\n"
             "libc.malloc.restype = ctypes.c_void_p\n"
             "libc.mallinfo2.restype = M\n"
             "p = libc.malloc(80 << 20)\n"
             "print(libc.mallinfo2().hblkhd)\n")
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}

    def mapped(tunables):
        extra = {"GLIBC_TUNABLES": tunables} if tunables else {}
        out = subprocess.run([sys.executable, "-c", probe], env={**env, **extra}, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return int(out.stdout)

    assert mapped(None) >= 80 << 20
    assert mapped(TUNABLES) == 0


@pytest.mark.parametrize("environ, mode", [
    ({"DISTILLORA_HUGE_PAGES": "0"}, MADVISE),                   # opted out
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, MADVISE),      # the user chose already
    ({"GLIBC_TUNABLES": TUNABLES}, MADVISE),                       # the re-started process itself
    ({}, "always madvise [never]"),                               # the kernel gives none
    ({"DISTILLORA_HUGE_PAGES": "off"}, MADVISE),
])
def test_env_is_none_where_nothing_is_to_be_done(environ, mode):
    assert huge_pages_env(environ, mode) is None


@glibc_linux
def test_restart_execs_the_same_command_line(monkeypatch):
    calls = []
    monkeypatch.setattr(hugepages, "huge_pages_env", lambda environ, **kw: {**environ, "GLIBC_TUNABLES": TUNABLES})
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    monkeypatch.setattr(sys, "orig_argv", ["python", "-u", "/venv/bin/distillora", "run", "--config", "c.yaml"])
    hugepages.restart_with_huge_pages()
    (path, argv, env), = calls
    assert path == sys.executable
    assert argv == [sys.executable, "-u", "/venv/bin/distillora", "run", "--config", "c.yaml"]
    assert env["GLIBC_TUNABLES"] == TUNABLES
    # nothing to do: no exec
    calls.clear()
    monkeypatch.setattr(hugepages, "huge_pages_env", lambda environ, **kw: None)
    hugepages.restart_with_huge_pages()
    assert calls == []


def _starts(tmp_path, argv, **extra):
    """Run `argv` with a sitecustomize that records each Python start's GLIBC_TUNABLES and command
    line; returns (the process, [(tunables, orig_argv[1:]) per start])."""
    log = tmp_path / "starts.jsonl"
    log.unlink(missing_ok=True)
    (tmp_path / "sitecustomize.py").write_text(
        "import json, os, sys\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps([os.environ.get('GLIBC_TUNABLES', '-'), sys.orig_argv[1:]]) + '\\n')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "DISTILLORA_HUGE_PAGES")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    out = subprocess.run(argv, env={**env, **extra}, capture_output=True, text=True)
    return out, [tuple(json.loads(line)) for line in log.read_text().splitlines()]


@glibc_linux
def test_python_m_distillora_restarts_once_with_the_tunable_and_the_same_command_line(tmp_path):
    """End to end: `python -u -m distillora --help` starts twice, the second time with the tunable and
    the same command line (options included), and not a third time."""
    if huge_pages_env({}) is None:
        pytest.skip("the kernel gives no transparent huge pages here")
    out, starts = _starts(tmp_path, [sys.executable, "-u", "-m", "distillora", "--help"])
    assert out.returncode == 0 and "usage: distillora" in out.stdout
    assert starts == [("-", ["-u", "-m", "distillora", "--help"]), (TUNABLES, ["-u", "-m", "distillora", "--help"])]


@glibc_linux
def test_opted_out_starts_once(tmp_path):
    out, starts = _starts(tmp_path, [sys.executable, "-m", "distillora", "--help"], DISTILLORA_HUGE_PAGES="0")
    assert out.returncode == 0
    assert starts == [("-", ["-m", "distillora", "--help"])]
