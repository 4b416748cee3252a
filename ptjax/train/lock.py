"""One run per workdir: WORKDIR/run.lock, held with flock for as long as the run lives.

The kernel drops an flock when its holder dies, however it dies (kill -9 included), so a lock
file left behind by a dead run is free and is taken over; the file's text (pid, host, start
time) only serves the messages. flock works on local filesystems and, on Linux, over NFS (the
kernel maps it to NFS byte-range locks, released when the holder's lease ends). Where locking
is not supported at all, the lock falls back to the recorded pid: busy if that pid is alive on
this host. Remote paths (gs://...) get no lock; one launcher per workdir is then up to the user.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time

from absl import logging

LOCK_FILE = "run.lock"


class WorkdirBusyError(RuntimeError):
    """Another live process holds the workdir's run lock."""


def _holder_text(fd: int) -> str:
    """'pid P on host H since T' from an open lock file, or a placeholder."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
        return f"pid {info['pid']} on host {info['host']} since {info['started']}"
    except (OSError, ValueError, KeyError):
        return "another process"


def _pid_alive_here(fd: int) -> bool:
    """Whether the pid recorded in the lock file is alive on this host (no-flock fallback)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return False
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return False
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return info["pid"] != os.getpid()


def _busy(workdir: str, fd: int) -> WorkdirBusyError:
    return WorkdirBusyError(
        f"--workdir={workdir!r} is in use by {_holder_text(fd)} "
        f"({os.path.join(workdir, LOCK_FILE)}). Wait for that run to end or stop it; a lock "
        "left by a run that died is taken over automatically."
    )


def _try_flock(fd: int, exclusive: bool = True, tries: int = 1) -> bool | None:
    """True: locked; False: held by someone else; None: locking unsupported here.

    `tries` > 1 retries for about a second: another process's probe holds a shared lock for an
    instant, a live run holds its exclusive lock for good.
    """
    for attempt in range(tries):
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < tries:
                time.sleep(1.0 / tries)
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return None
            raise
    return False


def check_not_busy(workdir: str) -> None:
    """Raises WorkdirBusyError if a live run holds the workdir's lock; writes nothing."""
    path = os.path.join(workdir, LOCK_FILE)
    if "://" in workdir or not os.path.exists(path):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        locked = _try_flock(fd, exclusive=False)  # Shared: probes never block each other.
        if locked is False or (locked is None and _pid_alive_here(fd)):
            raise _busy(workdir, fd)
    finally:
        os.close(fd)  # Also drops the probe's own lock.


class RunLock:
    """The held lock of one workdir; `release()` removes the file (and a workdir it created)."""

    def __init__(self, workdir: str, fd: int | None, created_workdir: bool):
        self.workdir = workdir
        self._fd = fd
        self._created_workdir = created_workdir

    @classmethod
    def acquire(cls, workdir: str) -> RunLock:
        """Takes the lock (creating the workdir if needed) or raises WorkdirBusyError."""
        if "://" in workdir:
            logging.warning("No run lock on %s: only local and NFS paths can be locked.", workdir)
            return cls(workdir, None, False)
        created = not os.path.isdir(workdir)
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, LOCK_FILE)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            locked = _try_flock(fd, tries=5)
            if locked is False or (locked is None and _pid_alive_here(fd)):
                error = _busy(workdir, fd)
                os.close(fd)
                raise error
            # A previous holder may have removed the file between our open and flock: then we
            # hold a lock on a deleted file and must lock the new one instead.
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        if os.fstat(fd).st_size:
            logging.warning(
                "Taking over %s: the run that held it (%s) is no longer running.",
                path,
                _holder_text(fd),
            )
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(info) + "\n").encode())
        os.fsync(fd)
        return cls(workdir, fd, created)

    def release(self) -> None:
        """Removes the lock file, then drops the lock; a workdir this run created and left
        empty (a run that failed its checks) is removed too."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.workdir, LOCK_FILE))
        os.close(self._fd)
        self._fd = None
        if self._created_workdir:
            with contextlib.suppress(OSError):  # Not empty: the run wrote something; it stays.
                os.rmdir(self.workdir)
