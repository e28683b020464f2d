"""One writer per run directory: `<run>/.lock`, held for as long as a `distillora run` (or `export`)
writes there.

The lock is an exclusive `flock` on the file, which the kernel drops when its holder exits, however
it exits (SIGKILL included), so a crashed run never blocks the next one. The file names the holder
(PID, host, start time) for the messages; a file that names a holder but is not flocked was left by a
process that is gone, and is taken over with a message. Where the filesystem has no `flock`, the
PID decides: a lock of this host whose PID is not running is stale; another host's is never
assumed stale."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from .errors import UserError

log = logging.getLogger("distillora")
LOCK_NAME = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """`with RunLock(run_dir, "run"):` holds the run directory's lock, or raises UserError (exit 2)
    naming the process that holds it."""

    def __init__(self, run_dir: Path, command: str = "run"):
        self.path = Path(run_dir) / LOCK_NAME
        self.command = command
        self.fd: int | None = None
        self.took_over: dict | None = None  # the dead holder's record, when its lock was taken over

    def _holder(self) -> dict:
        try:
            text = os.pread(self.fd, 4096, 0).decode("utf-8", "replace").strip()
            return json.loads(text) if text else {}
        except (OSError, ValueError):
            return {}

    def _refuse(self, holder: dict):
        os.close(self.fd)
        self.fd = None
        since = f" since {holder['started']}" if holder.get("started") else ""
        raise UserError(f"{self.path.parent} is in use by `distillora {holder.get('command', 'run')}` (PID "
                        f"{holder.get('pid', '?')} on host {holder.get('host', '?')}{since}); wait for it to finish "
                        f"or choose another --output. If that process is gone, delete {self.path}")

    def acquire(self) -> "RunLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"{self.path.parent}: cannot write there ({e.strerror}); choose a writable --output") from None
        host = socket.gethostname()
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            flocked = True
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                self._refuse(self._holder())
            flocked = False  # no flock here (some network filesystems): judge by the PID
        holder = self._holder()
        if holder.get("pid") is not None:
            same_host = holder.get("host") == host
            if not flocked and (not same_host or _alive(int(holder["pid"]))) and holder.get("pid") != os.getpid():
                self._refuse(holder)
            self.took_over = holder
            log.warning("%s: taking over the lock of `distillora %s` (PID %s on host %s%s), which is no longer "
                        "running", self.path.parent, holder.get("command", "run"), holder.get("pid"),
                        holder.get("host"), f", since {holder['started']}" if holder.get("started") else "")
        record = {"pid": os.getpid(), "host": host, "command": self.command,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(self.fd)
        return self

    def release(self) -> None:
        """Clear the record (an empty file is a free lock) and drop the flock. The file itself stays:
        unlinking it while another process waits on its inode would let two processes hold "the" lock."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        finally:
            os.close(self.fd)  # drops the flock
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
