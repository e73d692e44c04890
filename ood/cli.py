"""What every command line shares: the option builders and the one way a ``main`` reports a user's mistake.

Kept free of torch and of the detector registry, so ``--help`` and argument errors return at once.

>>> import argparse
>>> p = argparse.ArgumentParser()
>>> add_device_option(p)
>>> p.parse_args(["--device", "cpu"]).device
'cpu'
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional

DEVICES = ("auto", "cpu", "cuda")


def add_device_option(p: argparse.ArgumentParser):
    """``--device auto|cpu|cuda`` (auto = CUDA when torch sees it)."""
    p.add_argument("--device", choices=DEVICES, default="auto", help="where the tensors go (default: auto)")


def add_run_options(p: argparse.ArgumentParser):
    """The options every image-to-HDF5 tool shares (extract_features.py, segment_images.py, segment crops)."""
    add_device_option(p)
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                   help="autocast: auto = bf16 on CUDA, off on CPU")
    p.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its .partial file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages")


def stderr_log(quiet: bool = False) -> Callable[[str], None]:
    """A logger that prints a line to stderr, or nothing when ``quiet``."""
    if quiet:
        return lambda msg: None
    return lambda msg: print(msg, file=sys.stderr, flush=True)


def run_main(fn: Callable[[], int], interrupted: Optional[str] = None) -> int:
    """Call ``fn``; a user's mistake (:class:`~ood.errors.InputError`) or a refused write (``OSError``, e.g. a
    full disk) prints one ``error:`` line and returns 2; anything else is a bug and keeps its traceback."""
    from .errors import InputError

    try:
        return fn()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted{': ' + interrupted if interrupted else ''}", file=sys.stderr)
        return 130
