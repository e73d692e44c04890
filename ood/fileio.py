"""Writing files so that nothing already written is lost: a temporary name, then one rename.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
>>> with atomic_path(p) as tmp:
...     _ = tmp.write_text("hello")
>>> p.read_text()
'hello'
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Sequence

PARTIAL_SUFFIX = ".partial"


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield ``<path>.partial`` to write to; rename it onto ``path`` when the block ends without error,
    remove it otherwise (so an earlier complete ``path`` stays as it was)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + PARTIAL_SUFFIX)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_text(path, text: str):
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_texts(items: Sequence[tuple]):
    """Write several ``(path, text)`` files so that all of them are replaced or none: every temporary is
    written first, then the renames follow."""
    tmps = []
    try:
        for path, text in items:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(str(path) + PARTIAL_SUFFIX)
            tmp.write_text(text)
            tmps.append((tmp, path))
    except BaseException:
        for tmp, _ in tmps:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, path in tmps:
        os.replace(tmp, path)


def check_writable(path, what: str = "output"):
    """Fail early, before expensive work, when ``path`` cannot be written: a directory in its place, a parent
    that is a file, or a location without write permission. Raises :class:`~ood.errors.InputError`."""
    from .errors import InputError

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; the {what} needs a file path")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{path}: cannot create the {what}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"{path}: cannot write the {what} here (no write permission)")


def check_readable(path, what: str = "input"):
    """Fail early, before any library is imported or any work done, when the input ``path`` is missing (naming
    an incomplete ``.partial`` twin when one exists) or is a directory. Raises :class:`~ood.errors.InputError`."""
    from .errors import InputError

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; the {what} needs a file")
    if not path.exists():
        if Path(str(path) + PARTIAL_SUFFIX).exists():
            raise InputError(f"{path}: missing; only an incomplete .partial file exists (the run stopped: rerun "
                             f"it with --resume)")
        raise InputError(f"{path}: no such file ({what})")
