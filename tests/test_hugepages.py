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
    monkeypatch.setattr(hugepages, "huge_pages_env", lambda environ: {**environ, "GLIBC_TUNABLES": TUNABLES})
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    monkeypatch.setattr(sys, "orig_argv", ["python", "-u", "/venv/bin/distillora", "run", "--config", "c.yaml"])
    hugepages.restart_with_huge_pages()
    (path, argv, env), = calls
    assert path == sys.executable
    assert argv == [sys.executable, "-u", "/venv/bin/distillora", "run", "--config", "c.yaml"]
    assert env["GLIBC_TUNABLES"] == TUNABLES
    # nothing to do: no exec
    calls.clear()
    monkeypatch.setattr(hugepages, "huge_pages_env", lambda environ: None)
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
