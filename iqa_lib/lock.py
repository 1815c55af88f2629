"""One writer at a time: `hold(path, what)` takes an exclusive lock or says at once who holds it.

The lock is filelock's (an OS lock, released when its holder dies, so a lock left by a killed
process is simply taken over). Who holds it is written beside it, in `{path}.json`: pid, host,
command and since when, for the message a second process gets. The grid runner holds one on its
out_dir; `fit` holds one on its run's folder, so one run is never trained twice at once.
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

from .config import read_json


class LockHeldError(RuntimeError):
    """Another live process holds the lock; the message names it."""


def _parent_command() -> str | None:
    """The command line of our parent (papermill, for a notebook's kernel), where /proc tells it."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    return shlex.join(a.decode(errors="replace") for a in raw.split(b"\0") if a) or None


@contextmanager
def hold(path: str | os.PathLike, what: str, *, command: str | None = None,
         echo: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the lock at `path` for the block; raise LockHeldError naming the holder if it is held.

    `what` names the thing locked in messages ("the grid in outputs/demo", "run 64_fold0").
    """
    path = Path(path)
    info_path = path.with_name(path.name + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        who = read_json(info_path) or {}
        raise LockHeldError(
            f"{what} is in use by another process: pid {who.get('pid', '?')} on host {who.get('host', '?')}, "
            f"since {who.get('since', '?')}, command: {who.get('command', '?')}"
            + (f" (started by: {who['parent']})" if who.get("parent") else "")
            + ". Wait for it to end or stop it (its lock goes with it), or use another out_dir.") from None
    try:
        old = read_json(info_path) or {}
        if old:  # we got the lock, so its last holder died without cleaning up
            echo(f"taking over the lock of {what} from a process that died (pid {old.get('pid')} on "
                 f"{old.get('host')}, since {old.get('since')}).")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": command or shlex.join([Path(sys.executable).name, *sys.argv]),
                "parent": _parent_command()}
        info_path.write_text(json.dumps(info), encoding="utf-8")
        yield
    finally:
        info_path.unlink(missing_ok=True)
        lock.release()
