"""A lock file that keeps two grid runners off the same output folder.

``GridLock(out_dir)`` creates ``{out_dir}/.run_all.lock`` with ``O_CREAT | O_EXCL`` (atomic: of
two runners racing for it exactly one succeeds) and writes who holds it: pid, host, start
time, command line and a random token. A second runner is refused with a ``LockHeldError``
whose message says who holds the lock, since when, and how to remove it if it is stale.

A lock is stale when its holder can be shown to be gone: same host and the pid is not
running (or is a zombie, or is a newer process that reused the pid). A stale lock is taken
over with a message, so a killed runner never blocks the folder for ever. A lock written on
another host is never taken over automatically (its pid cannot be checked from here).

Use it as a context manager; it is released on exit, exceptions and Ctrl-C included, and
only if the file is still the one this lock wrote.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Callable

LOCK_NAME = ".run_all.lock"
# An unreadable lock (a runner died between creating and writing it) is stale after this long.
UNREADABLE_GRACE_S = 60.0
# A live pid whose process started this long after the lock was written is a reused pid.
PID_REUSE_SLACK_S = 5.0


class LockError(RuntimeError):
    """The lock could not be taken or released."""


class LockHeldError(LockError):
    """Another grid runner holds the lock; the message says who and what to do."""

    def __init__(self, message: str, info: dict | None = None, path: Path | None = None):
        super().__init__(message)
        self.info, self.path = info, path


def lock_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / LOCK_NAME


def read_lock(path: str | os.PathLike) -> dict | None:
    """The holder's record, or None when the file is missing, empty or not a JSON object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- is the holder alive? ----------------------------------------------------------------------
def _proc_start_time(pid: int) -> float | None:
    """Unix time at which process `pid` started (Linux /proc), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        ticks = int(fields[19])  # field 22 of stat: starttime, in clock ticks since boot
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return int(line.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return None


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2 :].split()[0] == "Z"
    except (OSError, ValueError, IndexError):
        return False


def pid_alive(pid: int) -> bool:
    """True if a process `pid` runs on this machine (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    except OSError:
        return False
    return not _is_zombie(pid)


def stale_reason(info: dict | None, path: Path) -> str | None:
    """Why the lock at `path` (holder record `info`) is stale, or None if it may be live."""
    if info is None:
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return "it has disappeared"
        if age > UNREADABLE_GRACE_S:
            return f"it is unreadable and {age:.0f} s old (a runner died while writing it)"
        return None
    if info.get("host") != socket.gethostname():
        return None  # cannot check a pid on another machine
    try:
        pid = int(info.get("pid"))
    except (TypeError, ValueError):
        return "it names no valid pid"
    if not pid_alive(pid):
        return f"its runner (pid {pid} on this host) is no longer running"
    started = info.get("started_unix")
    proc_start = _proc_start_time(pid)
    if isinstance(started, (int, float)) and proc_start is not None and proc_start > started + PID_REUSE_SLACK_S:
        return f"pid {pid} now belongs to a newer process (its runner is gone and the pid was reused)"
    return None


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


def describe_holder(info: dict | None, path: Path) -> str:
    """The refusal message for a lock held by someone else."""
    if info is None:
        return (
            f"the lock file {path} exists but cannot be read (a runner may be writing it right now). "
            f"If no grid runner is working on this folder, remove it: rm '{path}'"
        )
    pid, host = info.get("pid"), info.get("host")
    started = info.get("started", "?")
    ago = ""
    if isinstance(info.get("started_unix"), (int, float)):
        ago = f" ({_ago(time.time() - info['started_unix'])} ago)"
    cmd = info.get("command")
    here = host == socket.gethostname()
    lines = [
        f"another grid runner is working on {path.parent}:",
        f"  held by pid {pid} on host {host}{' (this machine)' if here else ''}, since {started}{ago}",
    ]
    if cmd:
        lines.append(f"  its command: {cmd}")
    lines.append(
        "Wait for it to finish, stop it"
        + (f" (kill {pid})" if here else f" (on {host}: kill {pid})")
        + ", or use another --out-dir."
    )
    if not here:
        lines.append(
            f"A lock from another host is never taken over automatically. If that runner is gone "
            f"(its machine rebooted, its job killed), remove the stale lock: rm '{path}'"
        )
    else:
        lines.append(f"If you are sure that process is not a grid runner any more, remove the lock: rm '{path}'")
    return "\n".join(lines)


class GridLock:
    """``with GridLock(out_dir): ...`` holds ``{out_dir}/.run_all.lock`` for the block."""

    def __init__(self, out_dir: str | os.PathLike, command: str | None = None,
                 echo: Callable[[str], None] | None = None):
        self.path = lock_path(out_dir)
        self.command = command if command is not None else " ".join(sys.argv)
        self.echo = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.info: dict | None = None

    @property
    def held(self) -> bool:
        return self.info is not None

    def acquire(self) -> "GridLock":
        if self.held:
            raise LockError(f"{self.path} is already held by this GridLock object.")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = read_lock(self.path)
                why = stale_reason(info, self.path)
                if why is None:
                    raise LockHeldError(describe_holder(info, self.path), info, self.path) from None
                self._take_over(info, why)
                continue
            now = time.time()
            info = {
                "pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(now)), "started_unix": now,
                "command": self.command, "token": secrets.token_hex(8),
            }
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(info, indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.info = info
            return self
        raise LockError(f"could not take {self.path}: other runners keep replacing it. Try again.")

    def _take_over(self, info: dict | None, why: str) -> None:
        """Move a stale lock aside; if a live runner replaced it meanwhile, put that one back."""
        aside = self.path.with_name(f"{self.path.name}.stale.{os.getpid()}.{secrets.token_hex(3)}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another runner removed it first: just try to create ours
        moved = read_lock(aside)
        if moved != info and stale_reason(moved, aside) is None:
            # Not the lock judged stale: a live runner's fresh lock. Restore it (link fails if a
            # third runner already made a new one) and let the loop refuse us.
            try:
                os.link(aside, self.path)
            except OSError:
                pass
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        who = f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}" if info else "unknown holder"
        self.echo(f"run_all: taking over the stale lock {self.path} ({who}): {why}.")

    def release(self) -> None:
        """Remove the lock file if it is still ours; never raises for a lock already gone."""
        if not self.held:
            return
        current = read_lock(self.path)
        if current is not None and current.get("token") == self.info.get("token"):
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        self.info = None

    def __enter__(self) -> "GridLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
