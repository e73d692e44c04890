"""Image lists and folders: every reader returns a :class:`DataList` (paths, labels, extra columns).

One reader per list format (see ``datalists/README.md``), all returning image paths, integer labels (-1 where
none) and extra string columns by name, so the extractor takes every format and stores the extra columns next
to ``paths``:

- ``vim``: ``path [label]`` (ViM / GEN); paths may contain spaces, the label is the last token only when it is
  an integer.
- ``mos``: ``path label`` (MOS flat lists); every line needs its label.
- ``mos_group``: ``path group index_in_group`` (MOS group softmax, Huang & Li, CVPR 2021); the class is the
  running offset of the group (from the group configuration, class counts per group) plus the index.
- ``sood``: ``path class_id superclass subclass`` (SOOD-ImageNet classification).
- ``sood_seg``: ``image mask class_id superclass subclass`` (SOOD-ImageNet segmentation).
- ``imagenet_s``: ``image [mask]`` (ImageNet-S ``names/*.txt``); class ids from a ``categories`` file (1-based
  position in sorted order), masks are RGB PNGs holding R + 256 G.

Folders are scanned recursively; with class subfolders the labels follow the sorted folder names
(torchvision's ImageFolder), a flat folder gets -1.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Union

import numpy as np

from .errors import InputError, ListFormatError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")

# MOS's group configuration for ImageNet-1k (group_config/taxonomy_level0.npy): classes per group.
MOS_IMAGENET_GROUPS = (398, 521, 9, 7, 52, 8, 3, 2)

IMAGENET_S_OTHER = 0  # "other category" in ImageNet-S masks
IMAGENET_S_IGNORE = 1000  # ignored pixels in ImageNet-S masks
# ImageNet-S-919 merges these ImageNet-1k classes into another one (key merged into value).
IMAGENET_S_MERGE = {"n04356056": "n04355933", "n04493381": "n02808440", "n03642806": "n03832673",
                    "n04008634": "n03773504", "n03887697": "n15075141"}


@dataclass
class DataList:
    """Image paths, labels (-1 = none), extra string columns by name, class names, and the list format read
    (``format``: a reader's name, ``"folder"`` for a scanned folder)."""

    paths: List[str]
    labels: np.ndarray
    extra: Dict[str, list] = field(default_factory=dict)
    classes: List[str] = field(default_factory=list)
    format: str = ""

    def __len__(self):
        return len(self.paths)

    def subset(self, idx) -> "DataList":
        idx = np.asarray(idx, dtype=np.int64)
        return DataList([self.paths[i] for i in idx], self.labels[idx],
                        {k: [v[i] for i in idx] for k, v in self.extra.items()}, self.classes, self.format)


def _lines(path):
    """(line number, stripped line) for every non-blank line; BOM and Windows line endings are fine."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ListFormatError(f"{path}: no such list file") from None
    except IsADirectoryError:
        raise ListFormatError(f"{path}: is a folder, not a list file") from None
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


def _is_image(token: str) -> bool:
    return token.lower().endswith(IMAGE_EXTENSIONS)


def _bad(path, number, expected: str, line: str) -> ListFormatError:
    return ListFormatError(f"{path}:{number}: expected {expected}, got {line!r}")


def _labels(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


# --------------------------------------------------------------------------------------------- readers


def read_vim_list(path) -> DataList:
    """``path [label]`` a line (ViM / GEN); -1 where a line has no integer label."""
    paths, labels = [], []
    for number, line in _lines(path):
        parts = line.rsplit(maxsplit=1)
        label = _int_or_none(parts[-1]) if len(parts) == 2 else None
        if len(parts) == 1 and _int_or_none(line) is not None:
            raise _bad(path, number, "'path [label]'", line)
        paths.append(parts[0] if label is not None else line)
        labels.append(-1 if label is None else label)
    return DataList(paths, _labels(labels))


def read_mos_list(path) -> DataList:
    """``path label`` a line (MOS flat lists): every line must end in an integer label."""
    paths, labels = [], []
    for number, line in _lines(path):
        parts = line.rsplit(maxsplit=1)
        label = _int_or_none(parts[-1]) if len(parts) == 2 else None
        if label is None:
            raise _bad(path, number, "'path label' with an integer label", line)
        paths.append(parts[0])
        labels.append(label)
    return DataList(paths, _labels(labels))


def read_labels(path) -> np.ndarray:
    """The labels of a ViM-style list (``--train_label``): every line must end in an integer."""
    return read_mos_list(path).labels


def read_groups(groups: Union[None, str, os.PathLike, Sequence[int]] = None) -> np.ndarray:
    """A MOS group configuration: class counts per group, from a sequence, a ``.npy`` file, a text file of
    integers or a string such as ``"398,521,9"``; ``None`` gives MOS's ImageNet-1k configuration (8 groups,
    1000 classes)."""
    if groups is None:
        return np.asarray(MOS_IMAGENET_GROUPS, dtype=np.int64)
    if isinstance(groups, str) and groups.replace(",", "").replace(" ", "").isdigit() and not Path(groups).exists():
        groups = [int(t) for t in groups.replace(",", " ").split()]
    if isinstance(groups, (str, os.PathLike)):
        p = Path(groups)
        try:
            if p.suffix == ".npy":
                counts = np.load(p, allow_pickle=False)
            else:
                counts = np.asarray([int(t) for _, line in _lines(p) for t in line.replace(",", " ").split()])
        except FileNotFoundError:
            raise ListFormatError(f"{p}: no such group configuration file") from None
        except ValueError as e:
            raise ListFormatError(f"{p}: not a list of integer class counts per group ({e})") from None
        source = str(p)
    else:
        counts, source = np.asarray(groups), "group configuration"
    counts = np.asarray(counts).reshape(-1)
    if counts.size == 0 or not np.issubdtype(counts.dtype, np.integer) or (counts <= 0).any():
        raise ListFormatError(f"{source}: expected positive integer class counts per group, got {counts.tolist()}")
    return counts.astype(np.int64)


def read_mos_group_list(path, groups=None) -> DataList:
    """``path group index_in_group`` a line; the class is the offset of the group plus the index.

    ``groups`` is the group configuration (see :func:`read_groups`); MOS's ImageNet-1k one by default.
    """
    counts = read_groups(groups)
    offsets = np.r_[0, np.cumsum(counts)[:-1]]
    paths, labels, group, index = [], [], [], []
    for number, line in _lines(path):
        parts = line.rsplit(maxsplit=2)
        g, i = (_int_or_none(parts[1]), _int_or_none(parts[2])) if len(parts) == 3 else (None, None)
        if g is None or i is None:
            raise _bad(path, number, "'path group_index index_in_group' with integer indices", line)
        if not (0 <= g < counts.size and 0 <= i < counts[g]):
            raise ListFormatError(f"{path}:{number}: group {g}, index {i} is outside the group configuration "
                                  f"({counts.size} groups of {counts.tolist()} classes)")
        paths.append(parts[0])
        labels.append(offsets[g] + i)
        group.append(str(g))
        index.append(str(i))
    return DataList(paths, _labels(labels), {"group": group, "group_index": index})


def _class_names(path, labels: np.ndarray, names: List[str], numbers: List[int]) -> List[str]:
    """Superclass name per class id (they must agree line by line); empty unless ids are 0..K-1."""
    table: Dict[int, str] = {}
    for y, name, number in zip(labels.tolist(), names, numbers):
        if table.setdefault(y, name) != name:
            raise ListFormatError(f"{path}:{number}: class {y} is named {name!r} here, {table[y]!r} before")
    if table and sorted(table) == list(range(len(table))):
        return [table[i] for i in range(len(table))]
    return []


def _read_sood(path, with_mask: bool) -> DataList:
    expected = ("'image mask class_id superclass subclass'" if with_mask
                else "'path class_id superclass subclass'")
    paths, masks, labels, sup, sub, numbers = [], [], [], [], [], []
    for number, line in _lines(path):
        parts = line.rsplit(maxsplit=3)
        label = _int_or_none(parts[1]) if len(parts) == 4 else None
        head = parts[0].rsplit(maxsplit=1) if len(parts) == 4 else []
        if label is None or (with_mask and len(head) != 2):
            raise _bad(path, number, expected, line)
        if with_mask:
            paths.append(head[0])
            masks.append(head[1])
        else:
            paths.append(parts[0])
        labels.append(label)
        sup.append(parts[2])
        sub.append(parts[3])
        numbers.append(number)
    y = _labels(labels)
    extra = {"superclass": sup, "subclass": sub}
    if with_mask:
        extra = {"mask": masks, **extra}
    return DataList(paths, y, extra, _class_names(path, y, sup, numbers))


def read_sood_list(path) -> DataList:
    """SOOD-ImageNet classification: ``imagenet21k_train/<synset>/<file> class_id superclass subclass``."""
    return _read_sood(path, with_mask=False)


def read_sood_seg_list(path) -> DataList:
    """SOOD-ImageNet segmentation: ``image mask class_id superclass subclass`` (the mask path has no spaces)."""
    return _read_sood(path, with_mask=True)


def read_imagenet_s_categories(path) -> Dict[str, int]:
    """ImageNet-S ``categories/*.txt``: one wnid a line; class id = 1-based position in sorted order."""
    wnids = []
    for number, line in _lines(path):
        if len(line.split()) != 1:
            raise _bad(path, number, "one wnid a line", line)
        wnids.append(line)
    if len(set(wnids)) != len(wnids):
        raise ListFormatError(f"{path}: lists a wnid twice")
    return {w: i for i, w in enumerate(sorted(wnids), 1)}


def read_imagenet_s_mapping(path) -> Dict[str, str]:
    """ImageNet-S ``mapping/*.txt``: ``imagenet_path imagenet_s_path`` a line; returns ImageNet-S -> ImageNet."""
    out = {}
    for number, line in _lines(path):
        parts = line.split()
        if len(parts) != 2:
            raise _bad(path, number, "'imagenet_path imagenet_s_path'", line)
        out[parts[1]] = parts[0]
    return out


def read_imagenet_s_list(path, categories=None, mapping=None) -> DataList:
    """ImageNet-S ``names/*.txt``: ``<wnid>/<image> [<wnid>/<mask>.png]`` a line.

    The ``wnid`` column holds the class folder. With ``categories`` (a categories file or a wnid -> id dict)
    the label is the ImageNet-S class id (1-based, sorted wnids; merged ImageNet-S-919 classes follow their
    target), else -1. With ``mapping`` (a mapping file or dict) the image path becomes the ImageNet-1k path and
    the ImageNet-S path moves to the ``imagenet_s_path`` column.
    """
    if categories is not None and not isinstance(categories, dict):
        categories = read_imagenet_s_categories(categories)
    if mapping is not None and not isinstance(mapping, dict):
        mapping = read_imagenet_s_mapping(mapping)
    paths, masks, wnids, labels, original = [], [], [], [], []
    for number, line in _lines(path):
        parts = line.split()
        if len(parts) not in (1, 2) or "/" not in parts[0] or (len(parts) == 2 and not _is_image(parts[1])):
            raise _bad(path, number, "'<wnid>/<image> [<wnid>/<mask>.png]'", line)
        image = parts[0]
        wnid = image.split("/", 1)[0]
        if categories is None:
            labels.append(-1)
        else:
            label = categories.get(wnid, categories.get(IMAGENET_S_MERGE.get(wnid, ""), None))
            if label is None:
                raise ListFormatError(f"{path}:{number}: class folder {wnid!r} is not in the categories file")
            labels.append(label)
        if mapping is not None:
            if image not in mapping:
                raise ListFormatError(f"{path}:{number}: {image!r} is not in the mapping file")
            original.append(image)
            image = mapping[image]
        paths.append(image)
        wnids.append(wnid)
        masks.append(parts[1] if len(parts) == 2 else "")
    extra = {"wnid": wnids}
    if any(masks):
        if not all(masks):
            raise ListFormatError(f"{path}: some lines name a mask and some do not")
        extra["mask"] = masks
    if mapping is not None:
        extra["imagenet_s_path"] = original
    classes = []
    if categories is not None:
        classes = ["other"] + sorted(categories, key=categories.get)
    return DataList(paths, _labels(labels), extra, classes)


# --------------------------------------------------------------------------------------------- masks


def decode_imagenet_s_mask(rgb) -> np.ndarray:
    """ImageNet-S class ids from an RGB mask [H, W, 3]: id = R + 256 G (0 other, 1000 ignore)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise InputError(f"an ImageNet-S mask must be [H, W, 3] RGB, got shape {rgb.shape}")
    return rgb[..., 0].astype(np.int64) + 256 * rgb[..., 1].astype(np.int64)


def encode_imagenet_s_mask(ids) -> np.ndarray:
    """The RGB mask [H, W, 3] uint8 of class ids [H, W]: R = id mod 256, G = id div 256, B = 0."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= 256 * 256):
        raise InputError(f"ImageNet-S ids must lie in [0, 65536), got [{ids.min()}, {ids.max()}]")
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256, np.zeros_like(ids)], axis=-1).astype(np.uint8)


def read_imagenet_s_mask(path) -> np.ndarray:
    """Read an ImageNet-S mask PNG and decode it to class ids [H, W]."""
    from PIL import Image

    with Image.open(path) as im:
        return decode_imagenet_s_mask(np.asarray(im.convert("RGB")))


# --------------------------------------------------------------------------------------------- folders


def scan_folder(root, labels: str = "folders") -> DataList:
    """Every image under ``root`` (symlinks followed), sorted; ``labels="folders"`` numbers the top-level
    class folders when every image sits in one, else (or with ``labels="none"``) the labels are -1."""
    root = Path(root)
    if not root.is_dir():
        raise ListFormatError(f"{root}: not a folder")
    if labels not in ("folders", "none"):
        raise InputError(f"labels must be 'folders' or 'none', got {labels!r}")
    rel = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        base = Path(folder).relative_to(root)
        rel += [(base / f).as_posix() for f in files if _is_image(f)]
    rel.sort()
    classes = sorted({r.split("/", 1)[0] for r in rel if "/" in r})
    if labels == "folders" and classes and all("/" in r for r in rel):
        index = {c: i for i, c in enumerate(classes)}
        y = [index[r.split("/", 1)[0]] for r in rel]
    else:
        y, classes = [-1] * len(rel), []
    return DataList(rel, _labels(y), classes=classes, format="folder")


# --------------------------------------------------------------------------------------------- dispatch


READERS = {
    "vim": read_vim_list,
    "mos": read_mos_list,
    "mos_group": read_mos_group_list,
    "sood": read_sood_list,
    "sood_seg": read_sood_seg_list,
    "imagenet_s": read_imagenet_s_list,
}
LIST_FORMATS = ("auto",) + tuple(READERS)


#: lines of a list that auto-detection reads (the chosen reader then checks every line)
DETECT_LINES = 10_000


def _path_plausibility(path: str) -> int:
    """2: ends in an image extension; 1: has none; 0: two file names glued by a space (a column taken for a
    path), e.g. ``a.jpg b.png`` read as one path."""
    tokens = path.split()
    if any(_is_image(t) for t in tokens[:-1]):
        return 0
    return 2 if _is_image(path) else 1


def _readings(line: str) -> Dict[str, tuple]:
    """Every format whose columns fit ``line``: ``{format: (plausibility, (image path, label reading))}``;
    plausibility is that of the least plausible path column (see :func:`_path_plausibility`)."""
    out = {}
    parts = line.rsplit(maxsplit=1)
    label = _int_or_none(parts[-1]) if len(parts) == 2 else None
    if not (len(parts) == 1 and _int_or_none(line) is not None):
        path = parts[0] if label is not None else line
        out["vim"] = (_path_plausibility(path), (path, -1 if label is None else label))
    parts = line.rsplit(maxsplit=2)
    if len(parts) == 3 and _int_or_none(parts[1]) is not None and _int_or_none(parts[2]) is not None:
        out["mos_group"] = (_path_plausibility(parts[0]), (parts[0], ("group", int(parts[1]), int(parts[2]))))
    parts = line.rsplit(maxsplit=3)
    if len(parts) == 4 and _int_or_none(parts[1]) is not None and _int_or_none(parts[2]) is None \
            and _int_or_none(parts[3]) is None:
        out["sood"] = (_path_plausibility(parts[0]), (parts[0], int(parts[1])))
        head = parts[0].rsplit(maxsplit=1)
        if len(head) == 2:
            score = min(_path_plausibility(head[0]), _path_plausibility(head[1]))
            out["sood_seg"] = (score, (head[0], int(parts[1])))
    tokens = line.split()
    if len(tokens) in (1, 2) and "/" in tokens[0] and (len(tokens) == 1 or _is_image(tokens[1])):
        out["imagenet_s"] = (min(_path_plausibility(t) for t in tokens), (tokens[0], -1))
    return out


_DESCRIBE = {"vim": "'path [label]'", "mos": "'path label'", "mos_group": "'path group index_in_group'",
             "sood": "'path class_id superclass subclass'", "sood_seg": "'image mask class_id superclass subclass'",
             "imagenet_s": "'<wnid>/<image> [<wnid>/<mask>.png]'"}


def detect_format(path) -> str:
    """The format of a list, from the columns of its first :data:`DETECT_LINES` lines.

    Each format that fits every line is ranked by how plausible its path columns are (an image extension at
    the end, no two file names glued into one path); ``mos`` lists read as ``vim``. When two formats fit
    equally well and read some line differently (other paths or labels), the list is ambiguous: a
    :class:`~ood.errors.ListFormatError` names that line and both readings, and ``--list_format`` decides.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "l.txt")
    >>> _ = open(p, "w").write("val/a.JPEG 0 328\\n")
    >>> detect_format(p)
    'mos_group'
    >>> _ = open(p, "w").write("val/a 0 328\\n")
    >>> detect_format(p)
    Traceback (most recent call last):
    ood.errors.ListFormatError: ...:1: 'val/a 0 328' fits more than one list format: ...; pass --list_format ...
    """
    lines = []
    for number, line in _lines(path):
        lines.append((number, line, _readings(line)))
        if len(lines) >= DETECT_LINES:
            break
    if not lines:
        return "vim"
    formats = [f for f in READERS if f != "mos"]
    score = {f: min(r.get(f, (0, None))[0] for _, _, r in lines) for f in formats}
    best = max(score.values())
    if best == 0:  # no format fits every line: the one that fits most, so its reader names the bad line
        return max(formats, key=lambda f: sum(r.get(f, (0, None))[0] > 0 for _, _, r in lines))
    chosen = [f for f in formats if score[f] == best]
    for other in chosen[1:]:
        for number, line, r in lines:
            if r[chosen[0]][1] != r[other][1]:
                raise ListFormatError(
                    f"{path}:{number}: {line!r} fits more than one list format: {chosen[0]} "
                    f"{_DESCRIBE[chosen[0]]} or {other} {_DESCRIBE[other]}; pass --list_format to say which")
    return chosen[0]


def read_list(path, fmt: str = "auto", **options) -> DataList:
    """Read an image list in any known format (``auto`` detects it).

    ``options`` go to the reader that takes them (``groups`` for ``mos_group``; ``categories`` and
    ``mapping`` for ``imagenet_s``); options that are None or that the format does not use are ignored.
    """
    if fmt not in LIST_FORMATS:
        raise ListFormatError(f"{path}: unknown list format {fmt!r}; known: {', '.join(LIST_FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(path)
    reader = READERS[fmt]
    accepted = inspect.signature(reader).parameters
    kwargs = {k: v for k, v in options.items() if v is not None and k in accepted and k != "path"}
    data = reader(path, **kwargs)
    data.format = fmt
    return data

