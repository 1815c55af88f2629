"""What the two commands (prepare.py and demo.py) share: refusing a DEST folder that is in the
way, removing what an earlier run wrote there, and reporting a user's mistake as ``error: ...``
with exit status 2. Imports nothing heavy (no torch): demo.py needs only numpy, pandas and PIL.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import pandas as pd

T = TypeVar("T")

# What a user can get wrong (an argument, a file in the way, a bad source: DataError is a
# ValueError): reported as one message, not a traceback.
USER_ERRORS = (FileExistsError, NotADirectoryError, ValueError)


def check_dest(dest: Path, overwrite: bool, label: str, holds: str, replaces: str) -> None:
    """Refuse a file as `dest`, and a non-empty folder unless `overwrite`.

    The messages read "{label} '{dest}' is a file: pass a folder {holds}." and "... already
    exists and is not empty: ... pass overwrite=True (CLI: --overwrite) to replace {replaces}."
    """
    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(f"{label} '{dest}' is a file: pass a folder {holds}.")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise FileExistsError(f"{label} '{dest}' already exists and is not empty: choose another folder, or pass "
                              f"overwrite=True (CLI: --overwrite) to replace {replaces}.")


def remove_written(dest: Path, listings: Sequence[str], top_files: Sequence[str], suffix: str | None = None) -> None:
    """Remove what an earlier run wrote to `dest`: the images listed (``img_path``) by the CSVs
    named in `listings`, then the files `top_files` at the top of `dest`; anything else stays.

    Only an image inside ``dest/train/`` or ``dest/test/`` (and ending in `suffix`, when given)
    is removed, so a tampered CSV deletes nothing else. A CSV that is missing or unreadable
    lists nothing.
    """
    root = dest.resolve()
    for csv_name in listings:
        try:
            rels = pd.read_csv(dest / csv_name, usecols=["img_path"], dtype=str)["img_path"].dropna()
        except (OSError, ValueError):
            continue
        for rel in rels:
            path = (dest / rel).resolve()
            if (path.parent.parent == root and path.parent.name in ("train", "test")
                    and (suffix is None or path.suffix == suffix)):
                path.unlink(missing_ok=True)
    for name in top_files:
        (dest / name).unlink(missing_ok=True)


def run_command(action: Callable[[], T]) -> T | None:
    """`action()`; None after printing a user error (USER_ERRORS) as ``error: ...`` on stderr,
    for the command to exit with status 2."""
    try:
        return action()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return None
