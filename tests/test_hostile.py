"""Hostile inputs through every command line: one row per bad, extreme or faulty input, generated here.

Each row builds its inputs in a fresh folder, runs one CLI (in-process through its ``main(argv)``, or as a real
subprocess where a traceback, a crash or a kill can only be seen from outside) and asserts: the exit code, no
"Traceback" on stderr, exactly one ``error:`` line naming the file or parameter, and every file that existed
before byte-identical afterwards (no new files but the row's declared outputs). Valid but extreme inputs
(a zero row, constant features, one class, a train split smaller than k or D, huge values, one OOD row) must
give a complete table: every detector and OOD set has a record, each with finite metrics or a note and JSON
``null``. Read-only and full locations are small tmpfs mounts where the tests run as root and ``mount`` works;
otherwise read-only is a mode-0555 folder and a full disk a write failure injected in-process.
"""
from __future__ import annotations

import contextlib
import errno
import importlib
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import h5py
import numpy as np
import pytest
from PIL import Image

from .helpers import benchmark_args, write_problem_files

REPO = Path(__file__).resolve().parent.parent
MAINS = {"benchmark": "ood.benchmark", "extract": "ood.extract", "heads": "ood.heads.__main__",
         "datalists": "ood.datalists", "segment": "ood.segmentation.runner", "evaluate": "ood.segmentation.evaluate"}
SCRIPTS = {"benchmark": ["benchmark.py"], "extract": ["extract_features.py"], "heads": ["-m", "ood.heads"],
           "datalists": ["-m", "ood.datalists"], "segment": ["segment_images.py"],
           "evaluate": ["evaluate_segmentation.py"]}
#: random-init timm test model at 32 px: seconds on a CPU
MODEL = ["test_resnet", "--random_init", "--resize", "32", "--device", "cpu", "--workers", "0", "--batch", "2"]
IMAGES = [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]


# --------------------------------------------------------------------------------------------- locations


def _mount(path: Path, options: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


class Ctx:
    """A row's folder and the means to make read-only or full locations in it (undone at teardown)."""

    def __init__(self, d: Path, monkeypatch):
        self.d = d
        self.monkeypatch = monkeypatch
        self.mounts: list = []
        self.locked: list = []

    def readonly(self, name: str = "ro") -> Path:
        """An empty folder nothing can be written into: a read-only tmpfs as root, else mode 0555."""
        path = self.d / name
        path.mkdir()
        if _mount(path, "ro,size=64k"):
            self.mounts.append(path)
            return path
        path.chmod(0o555)
        self.locked.append(path)
        if os.access(path, os.W_OK):
            pytest.skip("no read-only location can be made here (root without mount)")
        return path

    def tmpfs(self, name: str, size: str) -> Optional[Path]:
        path = self.d / name
        path.mkdir()
        if _mount(path, f"size={size}"):
            self.mounts.append(path)
            return path
        path.rmdir()
        return None

    def close(self):
        for path in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        for path in self.locked:
            path.chmod(0o755)


def snapshot(d: Path) -> dict:
    out = {}
    for path in sorted(d.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[path.relative_to(d).as_posix()] = path.read_bytes()
    return out


# --------------------------------------------------------------------------------------------- running


def run_in_process(cli: str, argv, capsys):
    main = importlib.import_module(MAINS[cli]).main
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    captured = capsys.readouterr()
    return rc, captured.err, captured.out


def run_subprocess(cli: str, argv, timeout: float = 600):
    p = subprocess.run([sys.executable, *SCRIPTS[cli], *[str(a) for a in argv]], cwd=REPO, capture_output=True,
                       text=True, timeout=timeout, env=dict(os.environ))
    return p.returncode, p.stderr, p.stdout


@dataclass
class Row:
    id: str
    cli: str
    setup: Callable[[Ctx], list]
    rc: int = 2
    #: substrings of stderr (``{d}`` = the row's folder)
    names: tuple = ()
    #: paths (relative to the folder) the run may create or change
    outputs: tuple = ()
    check: Optional[Callable] = None
    subprocess: bool = False
    marks: tuple = ()
    #: the row is run through ``runner`` instead (a kill, a full disk and a resume)
    runner: Optional[Callable] = None

    def param(self):
        return pytest.param(self, id=self.id, marks=list(self.marks))


# --------------------------------------------------------------------------------------------- inputs


def features(path, x, labels=None, **attrs):
    from ood.features import write_features

    write_features(path, np.asarray(x, np.float32), labels=labels, **attrs)


def problem_arrays(d: Path):
    """The arrays of the base problem files (train x/y, val x/y, near x, far x) and the head."""
    from ood.features import FeatureFile, read_head

    out = {}
    for name in ("train", "val", "near", "far"):
        with FeatureFile(d / f"{name}.h5") as f:
            out[name] = (f.read(), f.labels())
    return out, read_head(d / "fc.h5")


def truncate(path: Path, keep: float):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def bench(d, *extra):
    return benchmark_args(d, *extra)


def modify(name: str, fn):
    """A setup that rewrites one base feature file through ``fn(x, y) -> (x, y)`` and runs the benchmark."""
    def setup(ctx):
        arrays, _ = problem_arrays(ctx.d)
        x, y = fn(*[a.copy() for a in arrays[name]])
        features(ctx.d / f"{name}.h5", x, y)
        return bench(ctx.d)
    return setup


def with_extra(setup_fn, *extra):
    def setup(ctx):
        return [*setup_fn(ctx), *extra]
    return setup


def plain(*extra):
    return lambda ctx: bench(ctx.d, *extra)


class Evil:
    """Unpickling this calls ``open(marker, "w")``: a crafted pickle that runs code when trusted."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def evil_fc(ctx):
    write_pickle(ctx.d / "fc.pkl", [Evil(ctx.d / "PWNED"), np.zeros(7)])
    return [ctx.d / "fc.pkl", *bench(ctx.d)[1:]]


def no_payload(ctx, rc, err, out):
    assert not (ctx.d / "PWNED").exists(), "the crafted pickle ran code"


def fc_pickle_of(obj):
    def setup(ctx):
        write_pickle(ctx.d / "fc.pkl", obj)
        return [ctx.d / "fc.pkl", *bench(ctx.d)[1:]]
    return setup


def train_pickle(make):
    def setup(ctx):
        make(ctx.d / "train.pkl")
        args = bench(ctx.d)
        return [args[0], ctx.d / "train.pkl", *args[2:], "--methods", "msp,vim"]
    return setup


def truncated_pickle(path):
    write_pickle(path, np.ones((50, 16), np.float32))
    truncate(path, 0.5)


def rewrite_h5(name, fn):
    def setup(ctx):
        with h5py.File(ctx.d / name, "r+") as h5:
            fn(h5)
        return bench(ctx.d)
    return setup


def features_group(h5):
    x = h5["features"][()]
    del h5["features"]
    h5.create_group("features").create_dataset("x", data=x)


def float_labels(h5):
    y = h5["labels"][()]
    del h5["labels"]
    h5.create_dataset("labels", data=y.astype(np.float64) + 0.5)


def nan_fc(h5):
    w = h5["fc/weight"][()]
    w[0, 0] = np.nan
    h5["fc/weight"][...] = w


def label_list(n, value=None):
    def setup(ctx):
        arrays, _ = problem_arrays(ctx.d)
        y = arrays["train"][1]
        lines = [f"img_{i}.png {value if value is not None else y[i]}" for i in range(min(n, len(y)))]
        (ctx.d / "labels.txt").write_text("\n".join(lines) + "\n")
        return bench(ctx.d, "--train_label", ctx.d / "labels.txt", "--methods", "mahalanobis")
    return setup


def json_readonly(ctx):
    ro = ctx.readonly()
    return bench(ctx.d, "--json", ro / "out.json", "--methods", "msp")


def json_is_dir(ctx):
    (ctx.d / "outdir").mkdir()
    return bench(ctx.d, "--json", ctx.d / "outdir", "--methods", "msp")


def csv_parent_file(ctx):
    (ctx.d / "afile").write_text("x")
    return bench(ctx.d, "--csv", ctx.d / "afile" / "out.csv", "--methods", "msp")


def existing_json_kept(ctx):
    (ctx.d / "out.json").write_text('{"earlier": "result"}')
    return bench(ctx.d, "--json", ctx.d / "out.json", "--param", "vim.dim=-4")


def empty_ood(ctx):
    features(ctx.d / "far.h5", np.zeros((0, 16)))
    return bench(ctx.d)


def incomplete(ctx):
    with h5py.File(ctx.d / "val.h5", "r+") as h5:
        h5.attrs["complete"] = False
    return bench(ctx.d)


def only_partial(ctx):
    (ctx.d / "near.h5").rename(ctx.d / "near.h5.partial")
    return bench(ctx.d)


def head_not_group(ctx):
    return bench(ctx.d, "--head", ctx.d / "fc.h5", "--methods", "mos")


# ---------------------------------------------------------------- valid but extreme: the table stays up


def complete_table(methods=None, nulls=(), notes=None):
    """The run finished, its JSON has no bare NaN, and every detector has one record per OOD set, each with
    finite metrics, or (only the detectors in ``nulls``) null metrics and a note; ``notes`` maps a detector to
    a phrase its records' note must hold."""
    def check(ctx, rc, err, out):
        text = (ctx.d / "res.json").read_text()
        data = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON output"))
        records = data["records"]
        ran = {r["method"] for r in records}
        if methods:
            assert ran == set(methods)
        assert len(ran) >= 3
        for m in ran:
            got = sorted(r["dataset"] for r in records if r["method"] == m)
            assert got == ["far", "near"], (m, got)
        for r in records:
            values = [r[k] for k in ("auroc", "fpr95", "aupr_in", "aupr_out")]
            if all(v is None for v in values):
                assert r["method"] in nulls, f"{r['method']} on {r['dataset']}: no metrics ({r.get('note')})"
                assert r.get("note"), f"{r['method']} on {r['dataset']}: null metrics without a note"
            else:
                assert all(isinstance(v, float) and math.isfinite(v) for v in values), r
        for m, phrase in (notes or {}).items():
            assert all(phrase in (r.get("note") or "") for r in records if r["method"] == m), (m, phrase)
    return check


def extreme(transform, methods=None, extra=()):
    """Rewrite the base problem through ``transform(arrays) -> arrays`` and run the benchmark with --json."""
    def setup(ctx):
        arrays, _ = problem_arrays(ctx.d)
        arrays = transform({k: (x.copy(), y.copy()) for k, (x, y) in arrays.items()})
        for name, (x, y) in arrays.items():
            features(ctx.d / f"{name}.h5", x, y)
        more = ["--methods", ",".join(methods)] if methods else []
        return bench(ctx.d, "--json", ctx.d / "res.json", *more, *extra)
    return setup


def zero_ood_row(a):
    a["near"][0][3] = 0
    return a


def constant_train(a):
    x, y = a["train"]
    return {**a, "train": (np.ones_like(x) * 1.5, y)}


def single_class(a):
    x, y = a["train"]
    return {**a, "train": (x, np.zeros_like(y))}


def small_train(n):
    def fn(a):
        x, y = a["train"]
        keep = np.concatenate([np.flatnonzero(y == c)[:max(1, n // 7)] for c in range(7)])[:n]
        return {**a, "train": (x[keep], y[keep])}
    return fn


def one_ood_row(a):
    x, y = a["far"]
    return {**a, "far": (x[:1], y[:1])}


def huge(a):
    return {k: (x * 1e19, y) for k, (x, y) in a.items()}


def zero_variance_columns(a):
    out = {}
    for k, (x, y) in a.items():
        x = x.copy()
        x[:, :5] = 0
        out[k] = (x, y)
    return out


# --------------------------------------------------------------------------------------------- extraction


def extract(ctx, *extra, out="out.h5", root="imgs", model="test_resnet"):
    return [ctx.d / root, ctx.d / out, model, *MODEL[1:], "--quiet", *extra]


def corrupt_image(ctx):
    (ctx.d / "imgs" / IMAGES[3]).write_bytes((ctx.d / "imgs" / IMAGES[3]).read_bytes()[:60])
    return extract(ctx)


def all_bad(ctx):
    for rel in IMAGES:
        (ctx.d / "imgs" / rel).write_bytes(b"not an image")
    return extract(ctx, "--skip_bad")


def list_missing_image(ctx):
    (ctx.d / "l.txt").write_text("cat/0.png 0\ncat/gone.png 1\n")
    return extract(ctx, "--img_list", ctx.d / "l.txt")


def ambiguous_list(ctx):
    (ctx.d / "l.txt").write_text("cat/0 0 1\ncat/1 0 2\n")
    return extract(ctx, "--img_list", ctx.d / "l.txt")


def list_not_utf8(ctx):
    (ctx.d / "l.txt").write_bytes(b"cat/0.png 0\n\xff\xfe.png 1\n")
    return extract(ctx, "--img_list", ctx.d / "l.txt")


def out_readonly(ctx):
    return extract(ctx, out=ctx.readonly().relative_to(ctx.d) / "out.h5")


def out_is_dir(ctx):
    (ctx.d / "out.h5").mkdir()
    return extract(ctx)


def fc_readonly(ctx):
    ro = ctx.readonly()
    return ["a", "b", *MODEL, "--quiet", "--fc_save_path", ro / "fc.h5"]


def partial_from(ctx, first: list, second: list, model: str = "test_resnet"):
    """A partial file left by a run stopped at a corrupt image (``first`` options), then ``--resume`` with
    ``second`` (and ``model``): the resume must name what differs."""
    good = (ctx.d / "imgs" / IMAGES[4]).read_bytes()
    (ctx.d / "imgs" / IMAGES[4]).write_bytes(good[:60])
    main = importlib.import_module("ood.extract").main
    with contextlib.redirect_stderr(open(os.devnull, "w")):
        assert main([str(a) for a in extract(ctx, *first)]) == 2
    assert (ctx.d / "out.h5.partial").exists()
    (ctx.d / "imgs" / IMAGES[4]).write_bytes(good)
    return extract(ctx, *second, "--resume", model=model)


def resume_other(first, second, model="test_resnet"):
    return lambda ctx: partial_from(ctx, first, second, model)


def tiny_partial(ctx):
    """A run killed before its first flush: a few tens of bytes of HDF5 header."""
    from ood.features import write_features

    write_features(ctx.d / "tmp.h5", np.zeros((2, 2), np.float32))
    (ctx.d / "out.h5.partial").write_bytes((ctx.d / "tmp.h5").read_bytes()[:48])
    (ctx.d / "tmp.h5").unlink()
    return [a for a in extract(ctx, "--resume") if a != "--quiet"]


def restarted(ctx, rc, err, out):
    assert "starting over" in err and "out.h5.partial" in err
    from ood.features import FeatureFile

    with FeatureFile(ctx.d / "out.h5") as f:
        assert f.n == len(IMAGES)


def big_unreadable_partial(ctx):
    (ctx.d / "out.h5.partial").write_bytes(np.random.default_rng(0).bytes(100_000))
    return extract(ctx, "--resume")


def existing_output(ctx):
    (ctx.d / "out.h5").write_bytes(b"an earlier complete output")
    return extract(ctx)


def read_rows(path):
    from ood.features import FeatureFile

    with FeatureFile(path) as f:
        return f.read(), f.read("logits"), list(f.paths()), f.labels()


def assert_same_rows(got_path, ref_path):
    got, ref = read_rows(got_path), read_rows(ref_path)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-4, atol=1e-5)
    assert got[2] == ref[2] and got[3].tolist() == ref[3].tolist()


def full_disk_simulated(ctx, capsys):
    """The disk fills up after the second batch (every later write fails, as the guard would see ENOSPC):
    one line, the earlier complete output kept byte-identical, the .partial continued by --resume."""
    import ood.features as F

    main = importlib.import_module("ood.extract").main
    assert main([str(a) for a in extract(ctx)]) == 0
    earlier = (ctx.d / "out.h5").read_bytes()
    state = {"full": False}
    original_init, original_commit = F.WriteGuard.__init__, F.RowFileWriter.commit_rows

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            if state["full"]:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    def init(self, path, mode="r+b"):
        original_init(self, path, mode)
        self.f = FullDisk(self.f)

    def commit(self, rows):
        original_commit(self, rows)
        state["full"] = state["full"] or rows >= 4

    ctx.monkeypatch.setattr(F.WriteGuard, "__init__", init)
    ctx.monkeypatch.setattr(F.RowFileWriter, "commit_rows", commit)
    before = snapshot(ctx.d)
    rc, err, _ = run_in_process("extract", extract(ctx, "--overwrite"), capsys)
    ctx.monkeypatch.undo()
    assert rc == 2 and "Traceback" not in err
    line, = [x for x in err.splitlines() if x.startswith("error:")]
    assert "out.h5.partial" in line and "No space left on device" in line and "--resume" in line
    assert (ctx.d / "out.h5").read_bytes() == earlier
    with h5py.File(ctx.d / "out.h5.partial", "r") as h5:
        assert int(h5.attrs["rows_written"]) == 4
    after = snapshot(ctx.d)
    assert set(after) == set(before) | {"out.h5.partial"}
    rc, err, _ = run_in_process("extract", extract(ctx, "--overwrite", "--resume"), capsys)
    assert rc == 0, err
    (ctx.d / "earlier.h5").write_bytes(earlier)
    assert_same_rows(ctx.d / "out.h5", ctx.d / "earlier.h5")


def full_disk_tmpfs(ctx, capsys):
    """A real full disk (a tmpfs with room for the earlier output and the partial's header only), through the
    real script: no segfault, one line, the earlier output kept; after the disk grows, --resume finishes."""
    main = importlib.import_module("ood.extract").main
    assert main([str(a) for a in extract(ctx, out="ref.h5")]) == 0
    size = (ctx.d / "ref.h5").stat().st_size
    disk = ctx.tmpfs("disk", f"{(size // 4096 + 1) * 4 + 16}k")
    if disk is None:
        pytest.skip("no tmpfs can be mounted here (not root, or no mount); the simulated full disk covers it")
    shutil.copy(ctx.d / "ref.h5", disk / "out.h5")
    earlier = (disk / "out.h5").read_bytes()
    rc, err, _ = run_subprocess("extract", extract(ctx, "--overwrite", out="disk/out.h5"))
    assert rc == 2, (rc, err)
    assert "Traceback" not in err and "Segmentation" not in err
    line, = [x for x in err.splitlines() if x.startswith("error:")]
    assert "disk/out.h5.partial" in line and "No space left on device" in line
    assert (disk / "out.h5").read_bytes() == earlier and (disk / "out.h5.partial").exists()
    subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True, capture_output=True)
    rc, err, _ = run_in_process("extract", extract(ctx, "--overwrite", "--resume", out="disk/out.h5"), capsys)
    assert rc == 0, err
    assert_same_rows(disk / "out.h5", ctx.d / "ref.h5")


def killed_run(ctx, capsys):
    """extract_features.py killed (SIGKILL) once its partial file holds rows: --resume continues it (or, if the
    kill cut a flush and the partial cannot be read, names it and says to delete it), and the result equals an
    uninterrupted run."""
    main = importlib.import_module("ood.extract").main
    for i in range(30):  # enough batches that the kill lands mid-run
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
            ctx.d / "imgs" / "cat" / f"x{i:02d}.png")
    assert main([str(a) for a in extract(ctx, out="ref.h5", root="imgs")]) == 0
    args = [sys.executable, *SCRIPTS["extract"], *[str(a) for a in extract(ctx, "--batch", "1")]]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
    partial = ctx.d / "out.h5.partial"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if partial.exists() and partial.stat().st_size > 20_000:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    if not partial.exists():
        pytest.skip("the run finished before it could be killed (a very fast machine)")
    rc, err, _ = run_in_process("extract", extract(ctx, "--resume"), capsys)
    assert "Traceback" not in err
    if rc == 2:
        assert "out.h5.partial" in err and "delete it" in err
        partial.unlink()
        rc, err, _ = run_in_process("extract", extract(ctx), capsys)
    assert rc == 0, err
    assert_same_rows(ctx.d / "out.h5", ctx.d / "ref.h5")


# --------------------------------------------------------------------------------------------- heads, lists


def heads_train(ctx, groups, train="train.h5", out="head.h5"):
    return ["train", ctx.d / train, ctx.d / out, "--groups", groups, "--epochs", "1", "--device", "cpu", "--quiet"]


def groups_text(text):
    def setup(ctx):
        (ctx.d / "groups.txt").write_text(text)
        return heads_train(ctx, ctx.d / "groups.txt")
    return setup


def groups_object_npy(ctx):
    np.save(ctx.d / "groups.npy", np.array([Evil(ctx.d / "PWNED"), 3], dtype=object), allow_pickle=True)
    return heads_train(ctx, ctx.d / "groups.npy")


def groups_empty_npy(ctx):
    (ctx.d / "groups.npy").write_bytes(b"")
    return heads_train(ctx, ctx.d / "groups.npy")


def heads_nan_train(ctx):
    arrays, _ = problem_arrays(ctx.d)
    x, y = arrays["train"]
    x[5, 2] = np.nan
    features(ctx.d / "train.h5", x, y)
    return heads_train(ctx, "none")


def heads_out_readonly(ctx):
    ro = ctx.readonly()
    return heads_train(ctx, "none", out=ro / "head.h5")


def write_list(ctx, text, name="l.txt", binary=False):
    path = ctx.d / name
    path.write_bytes(text) if binary else path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------- segmentation


def seg_store(ctx, name="seg.h5"):
    from ood.segmentation.store import write_segmentation

    rng = np.random.default_rng(0)
    gt = [rng.integers(0, 2, (8, 9)).astype(np.int16) for _ in range(2)]
    scores = {"msp": [rng.random((8, 9)).astype(np.float32) for _ in range(2)]}
    pred = [np.zeros((8, 9), np.int16) for _ in range(2)]
    write_segmentation(ctx.d / name, scores, pred, gt=gt, paths=["a.png", "b.png"])
    return ctx.d / name


def truncated_store(ctx):
    path = seg_store(ctx)
    truncate(path, 0.4)
    return ["ood", path, "--quiet"]


def seg_model_args(ctx, *extra, out="seg_out.h5"):
    return [ctx.d / "imgs", ctx.d / out, "lraspp_mobilenet_v3_large", "--num_classes", "3", "--device", "cpu",
            "--workers", "0", "--quiet", *extra]


def seg_bad_checkpoint(ctx):
    (ctx.d / "model.pth").write_bytes(b"not a checkpoint")
    return seg_model_args(ctx, "--checkpoint", ctx.d / "model.pth")


def seg_out_readonly(ctx):
    ro = ctx.readonly()
    return seg_model_args(ctx, out=ro.relative_to(ctx.d) / "seg.h5")


# --------------------------------------------------------------------------------------------- the table

ROWS = [
    # benchmark.py: files
    Row("bench_missing_ood", "benchmark", lambda c: (c.d / "far.h5").unlink() or bench(c.d), names=("far.h5",)),
    Row("bench_truncated_train", "benchmark", lambda c: truncate(c.d / "train.h5", 0.3) or bench(c.d),
        names=("train.h5",)),
    Row("bench_random_bytes_fc", "benchmark",
        lambda c: (c.d / "fc.h5").write_bytes(np.random.default_rng(1).bytes(5000)) and bench(c.d), names=("fc.h5",)),
    Row("bench_empty_file_ood", "benchmark", lambda c: (c.d / "far.h5").write_bytes(b"") or bench(c.d),
        names=("far.h5",)),
    Row("bench_wrong_width_ood", "benchmark",
        lambda c: features(c.d / "far.h5", np.ones((9, 19))) or bench(c.d), names=("far.h5", "19")),
    Row("bench_nan_ood", "benchmark", modify("near", lambda x, y: (np.where(np.arange(x.size).reshape(x.shape) == 7,
                                                                            np.nan, x), y)), names=("near.h5", "NaN")),
    Row("bench_inf_train", "benchmark", modify("train", lambda x, y: (np.where(x > 3, np.inf, x), y)),
        names=("train.h5",)),
    Row("bench_malicious_pickle", "benchmark", evil_fc, names=("fc.pkl", "refused"), check=no_payload,
        subprocess=True),
    Row("bench_pickle_fc_not_a_pair", "benchmark", fc_pickle_of({"W": 1}), names=("fc.pkl",)),
    Row("bench_pickle_fc_strings", "benchmark", fc_pickle_of([np.array([["a", "b"]]), np.zeros(1)]),
        names=("fc.pkl",)),
    Row("bench_pickle_train_strings", "benchmark",
        train_pickle(lambda p: write_pickle(p, np.array([["x"] * 16] * 3))), names=("train.pkl",)),
    Row("bench_pickle_train_truncated", "benchmark", train_pickle(truncated_pickle), names=("train.pkl",)),
    Row("bench_features_a_group", "benchmark", rewrite_h5("near.h5", features_group), names=("near.h5",)),
    Row("bench_labels_floats", "benchmark", rewrite_h5("val.h5", float_labels), names=("val.h5", "labels")),
    Row("bench_nan_fc", "benchmark", rewrite_h5("fc.h5", nan_fc), names=("fc.h5", "NaN")),
    Row("bench_empty_ood", "benchmark", empty_ood, names=("far.h5",)),
    Row("bench_incomplete_file", "benchmark", incomplete, names=("val.h5", "incomplete")),
    Row("bench_only_partial", "benchmark", only_partial, names=("near.h5", "--resume")),
    Row("bench_train_label_short", "benchmark", label_list(10), names=("labels.txt",)),
    Row("bench_train_label_out_of_range", "benchmark", label_list(400, value=99), names=("labels.txt",)),
    Row("bench_head_not_group", "benchmark", head_not_group, names=("fc.h5",)),
    # benchmark.py: parameters
    Row("bench_vim_dim_fraction", "benchmark", plain("--param", "vim.dim=1.5"), names=("vim.dim",)),
    Row("bench_vim_dim_text", "benchmark", plain("--param", "vim.dim=abc"), names=("vim.dim",)),
    Row("bench_knn_k_zero", "benchmark", plain("--methods", "knn", "--param", "knn.k=0"), names=("knn.k",)),
    Row("bench_gamma_negative", "benchmark", plain("--gamma", "-1"), names=("gamma",)),
    Row("bench_M_zero", "benchmark", plain("--M", "0"), names=(".M",)),
    Row("bench_T_nan", "benchmark", plain("--param", "energy.T=nan"), names=("energy.T",)),
    Row("bench_unknown_method", "benchmark", plain("--methods", "msp,nosuch"), names=("nosuch",)),
    Row("bench_unknown_parameter", "benchmark", plain("--param", "msp.T=2"), names=("msp.T",)),
    # benchmark.py: outputs
    Row("bench_json_read_only", "benchmark", json_readonly, names=("ro/out.json",)),
    Row("bench_json_is_directory", "benchmark", json_is_dir, names=("outdir",)),
    Row("bench_csv_parent_is_a_file", "benchmark", csv_parent_file, names=("afile",)),
    Row("bench_existing_json_kept", "benchmark", existing_json_kept, names=("vim.dim",)),
    # benchmark.py: valid but extreme inputs
    Row("extreme_zero_ood_row", "benchmark", extreme(zero_ood_row), rc=0, outputs=("res.json",),
        check=complete_table()),
    Row("extreme_constant_train", "benchmark", extreme(constant_train), rc=0, outputs=("res.json",),
        check=complete_table(nulls=("mahalanobis", "rmd", "vim", "neco"),
                             notes={"mahalanobis": "do not vary", "vim": "no variance outside",
                                    "vra": "percentiles are equal"})),
    Row("extreme_single_class", "benchmark", extreme(single_class), rc=0, outputs=("res.json",),
        check=complete_table(nulls=("rmd",), notes={"rmd": "two classes"})),
    Row("extreme_train_smaller_than_k", "benchmark",
        extreme(small_train(20), ["knn", "nnguide", "msp", "vim", "mahalanobis"]), rc=0, outputs=("res.json",),
        check=complete_table(["knn", "nnguide", "msp", "vim", "mahalanobis"], nulls=("knn", "nnguide"),
                             notes={"knn": "14 train rows", "mahalanobis": "rank"})),
    Row("extreme_train_smaller_than_D", "benchmark",
        extreme(small_train(14), ["vim", "residual", "mahalanobis", "rmd", "neco", "msp"]), rc=0,
        outputs=("res.json",), check=complete_table(["vim", "residual", "mahalanobis", "rmd", "neco", "msp"],
                                                    notes={"vim": "rank 14 of 16", "mahalanobis": "rank 7 of 16"})),
    Row("extreme_one_ood_row", "benchmark", extreme(one_ood_row, ["msp", "energy", "vim"]), rc=0,
        outputs=("res.json",), check=complete_table(["msp", "energy", "vim"])),
    Row("extreme_huge_features", "benchmark", extreme(huge), rc=0, outputs=("res.json",),
        check=complete_table(nulls=("mahalanobis", "rmd", "vim", "residual", "gen_residual", "neco"),
                             notes={"vim": "too large for float32"})),
    Row("extreme_zero_variance_columns", "benchmark", extreme(zero_variance_columns), rc=0, outputs=("res.json",),
        check=complete_table(notes={"mahalanobis": "rank 11 of 16", "neco": "zero train variance"})),
    # extract_features.py
    Row("extract_corrupt_image", "extract", corrupt_image, names=(IMAGES[3], "--skip_bad"),
        outputs=("out.h5.partial",), subprocess=True),
    Row("extract_skip_bad_all_bad", "extract", all_bad, names=("none of the 6 images",)),
    Row("extract_list_missing_image", "extract", list_missing_image, names=("cat/gone.png",),
        outputs=("out.h5.partial",)),
    Row("extract_ambiguous_list", "extract", ambiguous_list, names=("l.txt:1", "--list_format")),
    Row("extract_list_not_utf8", "extract", list_not_utf8, names=("l.txt", "UTF-8")),
    Row("extract_out_read_only", "extract", out_readonly, names=("ro/out.h5",)),
    Row("extract_out_is_directory", "extract", out_is_dir, names=("out.h5", "directory")),
    Row("extract_fc_read_only", "extract", fc_readonly, names=("ro/fc.h5",)),
    Row("extract_existing_output", "extract", existing_output, names=("out.h5", "--overwrite")),
    Row("extract_std_zero", "extract", lambda c: extract(c, "--std", "0", "0", "0"), names=("--std",)),
    Row("extract_workers_negative", "extract", lambda c: extract(c, "--workers", "-2"), names=("--workers",)),
    Row("extract_resize_zero", "extract", lambda c: extract(c, "--resize", "0"), names=("--resize",)),
    Row("extract_resume_other_num_classes", "extract", resume_other(["--num_classes", "3"], ["--num_classes", "5"]),
        names=("out.h5.partial", "--num_classes"), outputs=("out.h5.partial",)),
    Row("extract_resume_other_resize", "extract", resume_other([], ["--resize", "40"]),
        names=("out.h5.partial", "preprocess"), outputs=("out.h5.partial",)),
    Row("extract_resume_other_seed", "extract", resume_other([], ["--seed", "3"]),
        names=("out.h5.partial", "random init (seed 3)"), outputs=("out.h5.partial",)),
    Row("extract_resume_other_model", "extract", resume_other([], [], model="resnet18"),
        names=("out.h5.partial", "model='test_resnet'", "model='resnet18'"), outputs=("out.h5.partial",)),
    Row("extract_resume_tiny_partial", "extract", tiny_partial, rc=0, outputs=("out.h5.partial", "out.h5"),
        check=restarted),
    Row("extract_resume_unreadable_partial", "extract", big_unreadable_partial,
        names=("out.h5.partial", "delete it")),
    Row("extract_full_disk_simulated", "extract", None, runner=full_disk_simulated),
    Row("extract_full_disk_tmpfs", "extract", None, runner=full_disk_tmpfs),
    Row("extract_killed_then_resumed", "extract", None, runner=killed_run),
    # python -m ood.heads
    Row("heads_groups_not_integers", "heads", groups_text("a b c"), names=("groups.txt",)),
    Row("heads_groups_huge_count", "heads", groups_text("3 99999999999"), names=("groups.txt",)),
    Row("heads_groups_object_npy", "heads", groups_object_npy, names=("groups.npy",), check=no_payload,
        subprocess=True),
    Row("heads_groups_empty_npy", "heads", groups_empty_npy, names=("groups.npy",)),
    Row("heads_kmeans_not_a_number", "heads", lambda c: heads_train(c, "kmeans:abc"), names=("kmeans:abc",)),
    Row("heads_kmeans_too_many", "heads", lambda c: heads_train(c, "kmeans:99"), names=("kmeans:99",)),
    Row("heads_nan_train", "heads", heads_nan_train, names=("train.h5",)),
    Row("heads_out_read_only", "heads", heads_out_readonly, names=("ro/head.h5",)),
    # python -m ood.datalists
    Row("lists_check_missing_list", "datalists", lambda c: ["check", c.d / "none.txt", c.d], names=("none.txt",)),
    Row("lists_check_ambiguous", "datalists",
        lambda c: ["check", write_list(c, "img_a 0 1\nimg_b 1 0\n"), c.d], names=("l.txt:1", "--list_format"),
        subprocess=True),
    Row("lists_check_not_utf8", "datalists", lambda c: ["check", write_list(c, b"\xff\xfe\n", binary=True), c.d],
        names=("l.txt",)),
    Row("lists_sample_too_many", "datalists", lambda c: ["sample", write_list(c, "a.png\nb.png\n"), "5"],
        names=("l.txt",)),
    Row("lists_scan_not_a_folder", "datalists", lambda c: ["scan", c.d / "fc.h5"], names=("fc.h5",)),
    Row("lists_scan_classes_read_only", "datalists",
        lambda c: ["scan", c.d / "imgs", "--classes", c.readonly() / "classes.txt"], names=("ro/classes.txt",)),
    # segment_images.py and evaluate_segmentation.py
    Row("seg_bad_checkpoint", "segment", seg_bad_checkpoint, names=("model.pth",)),
    Row("seg_out_read_only", "segment", seg_out_readonly, names=("ro/seg.h5",)),
    Row("seg_missing_root", "segment", lambda c: [c.d / "nothing", *seg_model_args(c)[1:]], names=("nothing",)),
    Row("eval_truncated_store", "evaluate", truncated_store, names=("seg.h5",)),
    Row("eval_random_bytes_store", "evaluate",
        lambda c: (c.d / "x.h5").write_bytes(np.random.default_rng(2).bytes(3000)) and ["ood", c.d / "x.h5"],
        names=("x.h5",), subprocess=True),
    Row("eval_bins_zero", "evaluate", lambda c: ["ood", seg_store(c), "--mode", "streaming", "--bins", "0",
                                                 "--quiet"], names=("--bins",)),
    Row("eval_imagenet_s_missing_predictions", "evaluate",
        lambda c: (c.d / "g").mkdir() or ["imagenet_s", "--predict-dir", c.d / "p", "--gt-dir", c.d / "g", "--quiet"],
        names=("{d}/p",)),
]


# --------------------------------------------------------------------------------------------- fixtures, test


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The base folder every row copies: a feature problem (fc, train, val, near, far) and six images."""
    d = tmp_path_factory.mktemp("base")
    write_problem_files(d)
    for i, rel in enumerate(IMAGES):
        (d / "imgs" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(d / "imgs" / rel)
    return d


@pytest.fixture
def ctx(tmp_path, base, monkeypatch):
    d = tmp_path / "case"
    shutil.copytree(base, d)
    c = Ctx(d, monkeypatch)
    yield c
    c.close()


def test_table_size():
    assert len(ROWS) >= 40 and len({r.id for r in ROWS}) == len(ROWS)
    assert {r.cli for r in ROWS} == set(MAINS)


@pytest.mark.parametrize("row", [r.param() for r in ROWS])
def test_hostile_input(row: Row, ctx: Ctx, capsys):
    if row.runner is not None:
        row.runner(ctx, capsys)
        return
    argv = row.setup(ctx)
    before = snapshot(ctx.d)
    if row.subprocess:
        rc, err, out = run_subprocess(row.cli, argv)
    else:
        rc, err, out = run_in_process(row.cli, argv, capsys)
    assert "Traceback" not in err, err
    assert rc == row.rc, (rc, err)
    if row.rc != 0:
        lines = [x for x in err.splitlines() if x.startswith("error:")]
        assert len(lines) == 1, err
        for name in row.names:
            assert name.format(d=ctx.d) in lines[0], (name, lines[0])
    after = snapshot(ctx.d)
    for path, data in before.items():
        if path not in row.outputs:
            assert after.get(path) == data, f"{path} changed or vanished"
    assert not set(after) - set(before) - set(row.outputs), set(after) - set(before)
    if row.check is not None:
        row.check(ctx, rc, err, out)
