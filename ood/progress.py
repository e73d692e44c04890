"""Progress bars that suit both a terminal and a log file.

On a terminal a tqdm bar redraws one line in place. When the stream is not a terminal (a log file, a pipe, a
batch job), carriage-return redraws would put hundreds of bar states into the file, so :class:`Progress`
prints plain lines instead: one when the work starts, then one per step at most every ``interval`` seconds,
and one when it ends. ``quiet`` prints nothing.

>>> import io
>>> log = io.StringIO()  # not a terminal: plain lines
>>> with Progress(total=3, desc="extract", unit="img", file=log, interval=0) as bar:
...     for _ in range(3):
...         bar.update()
>>> lines = log.getvalue().splitlines()
>>> len(lines), lines[-1].startswith("extract: 3/3 img (100%)")
(4, True)
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Optional


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """A progress bar with tqdm's ``update``/``close``/``set_postfix_str`` and context-manager protocol.

    ``file`` (default stderr) decides the form: a tqdm bar when it is a terminal, plain lines otherwise (at
    most one per ``interval`` seconds, plus the first and the last). ``quiet`` turns it off; ``initial`` is
    where a resumed run starts counting.

    >>> import io
    >>> log = io.StringIO()
    >>> bar = Progress(total=10, desc="train", file=log, interval=3600)
    >>> bar.update(4); bar.update(6); bar.close()
    >>> [line.split(" ")[:2] for line in log.getvalue().splitlines()]
    [['train:', '0/10'], ['train:', '10/10']]
    """

    def __init__(self, total: Optional[int] = None, desc: str = "", unit: str = "it", initial: int = 0,
                 quiet: bool = False, file=None, interval: float = 10.0):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.file = sys.stderr if file is None else file
        self.interval, self.postfix, self.closed = interval, "", quiet
        self._bar = None
        self._start = self._last = time.monotonic()
        self._initial = initial
        if quiet:
            return
        isatty = getattr(self.file, "isatty", None)
        if isatty is not None and isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.file,
                             dynamic_ncols=True, smoothing=0.05)
        else:
            self._line()

    def _line(self):
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        elapsed = time.monotonic() - self._start
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        eta = (f", eta {_clock((self.total - self.n) / rate)}" if self.total and rate > 0 and self.n < self.total
               else "")
        speed = f", {rate:.1f} {self.unit}/s" if rate > 0 else ""
        post = f" {self.postfix}" if self.postfix else ""
        prefix = f"{self.desc}: " if self.desc else ""
        print(f"{prefix}{done} {self.unit}{share}, {_clock(elapsed)}{speed}{eta}{post}", file=self.file, flush=True)
        self._last = time.monotonic()

    def update(self, n: int = 1):
        """Count ``n`` more units done."""
        if self.closed:
            return
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif time.monotonic() - self._last >= self.interval and not (self.total and self.n >= self.total):
            self._line()

    def set_postfix_str(self, text: str):
        """A short status shown after the counts (e.g. the current loss)."""
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text)

    def close(self):
        """End the bar: on a log file, one last line with the final count and time."""
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.close()
        else:
            self._line()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(iterable: Iterable, total: Optional[int] = None, **kwargs):
    """Iterate over ``iterable`` with a :class:`Progress` (``total`` defaults to its length when it has one).

    >>> import io
    >>> log = io.StringIO()
    >>> sum(progress(range(5), desc="sum", file=log))
    10
    >>> log.getvalue().splitlines()[-1].startswith("sum: 5/5 it (100%)")
    True
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with Progress(total=total, **kwargs) as bar:
        for item in iterable:
            yield item
            bar.update()
