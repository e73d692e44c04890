"""Image lists and folders: every reader returns a :class:`DataList` (paths, labels, extra columns).

ViM / GEN list format: ``path [label]`` a line; paths may contain spaces, the label is the last token only
when it is an integer. Folders are scanned recursively; with class subfolders the labels follow the sorted
folder names (torchvision's ImageFolder), a flat folder gets -1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


class ListFormatError(ValueError):
    """A malformed list file; the message names the file and line."""


@dataclass
class DataList:
    paths: List[str]
    labels: np.ndarray
    extra: Dict[str, list] = field(default_factory=dict)
    classes: List[str] = field(default_factory=list)

    def __len__(self):
        return len(self.paths)

    def subset(self, idx) -> "DataList":
        idx = np.asarray(idx, dtype=np.int64)
        return DataList([self.paths[i] for i in idx], self.labels[idx],
                        {k: [v[i] for i in idx] for k, v in self.extra.items()}, self.classes)


def _lines(path):
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ListFormatError(f"{path}: no such list file") from None
    except UnicodeDecodeError as e:
        raise ListFormatError(f"{path}: not UTF-8 text ({e})") from None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line:
            yield number, line


def _int_or_none(token: str):
    try:
        return int(token)
    except ValueError:
        return None


def read_vim_list(path) -> DataList:
    """``path [label]`` a line (ViM / GEN); -1 where a line has no integer label."""
    paths, labels = [], []
    for _, line in _lines(path):
        parts = line.rsplit(maxsplit=1)
        label = _int_or_none(parts[-1]) if len(parts) == 2 else None
        paths.append(parts[0] if label is not None else line)
        labels.append(-1 if label is None else label)
    return DataList(paths, np.asarray(labels, dtype=np.int64))


def read_labels(path) -> np.ndarray:
    """The labels of a ViM-style list (``--train_label``): every line must end in an integer."""
    labels = []
    for number, line in _lines(path):
        label = _int_or_none(line.rsplit(maxsplit=1)[-1])
        if label is None:
            raise ListFormatError(f"{path}:{number}: expected 'path label' with an integer label, got {line!r}")
        labels.append(label)
    return np.asarray(labels, dtype=np.int64)


def scan_folder(root, labels: str = "folders") -> DataList:
    """Every image under ``root``, sorted; ``labels="folders"`` numbers the top-level class folders."""
    root = Path(root)
    if not root.is_dir():
        raise ListFormatError(f"{root}: not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    rel = [p.relative_to(root).as_posix() for p in files]
    classes = sorted({r.split("/", 1)[0] for r in rel if "/" in r})
    if labels == "folders" and classes and all("/" in r for r in rel):
        index = {c: i for i, c in enumerate(classes)}
        y = [index[r.split("/", 1)[0]] for r in rel]
    else:
        y, classes = [-1] * len(rel), []
    return DataList(rel, np.asarray(y, dtype=np.int64), classes=classes)


READERS = {"vim": read_vim_list}


def read_list(path, fmt: str = "auto") -> DataList:
    """Read an image list in any known format (``auto`` detects it)."""
    if fmt == "auto":
        fmt = "vim"
    if fmt not in READERS:
        raise ListFormatError(f"{path}: unknown list format {fmt!r}; known: {', '.join(READERS)}")
    return READERS[fmt](path)
