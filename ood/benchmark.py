"""benchmark.py: fit every detector on the ID train features, score ID test and each OOD set, report metrics.

The library entry point is :func:`run_benchmark` (files in, a :class:`~ood.engine.Result` out, with its
provenance); :func:`main` is the command line of the ViM / GEN ``benchmark.py`` (fc, ID train, ID test,
OOD ...), whose .pkl files are read too. Everything runs from the feature files alone, on CPU or a GPU.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from .cli import add_device_option, run_main, stderr_log
from .errors import InputError, ParameterError

VIM_FLAGS = ("clip_quantile", "clip_quantile_local", "gamma", "M")
PLUGIN_GROUP = "ood.detectors"


def load_plugins(specs: Sequence[str] = (), entry_points: bool = True) -> list:
    """Import detector plugins so their ``@register`` fills the registry: each spec is a module name or a
    ``.py`` path; with ``entry_points``, every installed package's ``ood.detectors`` entry points too.
    Returns the names loaded."""
    loaded = []
    for spec in specs:
        path = Path(spec)
        if path.suffix == ".py":
            if not path.is_file():
                raise InputError(f"--plugin {spec}: no such file")
            name = f"ood_plugin_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(spec)
            except ModuleNotFoundError as e:
                raise InputError(f"--plugin {spec}: no module of that name ({e})") from None
        loaded.append(spec)
    if entry_points:
        from importlib.metadata import entry_points as eps
        for ep in eps(group=PLUGIN_GROUP):
            ep.load()
            loaded.append(f"{ep.name} ({ep.value})")
    return loaded


def provenance(inputs, files: dict, command: Optional[Sequence[str]] = None) -> dict:
    """How a result was made: the input files (size, model, checkpoint), library versions, command, date."""
    import json

    from .features import library_versions
    from .inputs import file_record

    return {"inputs": [file_record(role, path) for role, path in files.items()],
            "library_versions": json.loads(library_versions()),
            "command": list(command) if command is not None else None,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": str(inputs.train.device)}


def run_benchmark(fc, train, test, oods: Sequence, methods=None, params: Optional[dict] = None, fpr: str = "vim",
                  device: str = "cpu", train_label=None, group_head=None, tune=None, tune_id=None,
                  allow_mixed_models: bool = False, log: Optional[Callable[[str], None]] = None,
                  command: Optional[Sequence[str]] = None):
    """Load the feature files, fit and score the detectors, return a :class:`~ood.engine.Result`.

    ``methods``: names (a list or a comma string; default every one the inputs allow); ``params``:
    ``{method: {name: value}}``; ``fpr``: the FPR95 convention; ``tune``/``tune_id``: validation files to pick
    hyperparameters from each detector's grid (OpenOOD protocol). Files of different models are refused
    unless ``allow_mixed_models``.

    >>> import numpy as np, tempfile, os, ood
    >>> from ood.features import write_features, write_fc
    >>> d, rng = tempfile.mkdtemp(), np.random.default_rng(0)
    >>> write_fc(os.path.join(d, "fc.h5"), rng.normal(size=(3, 8)), np.zeros(3))
    >>> for name, n in [("train", 60), ("test", 30), ("ood", 20)]:
    ...     write_features(os.path.join(d, name + ".h5"), rng.normal(size=(n, 8)), labels=rng.integers(0, 3, n))
    >>> res = ood.run_benchmark(*(os.path.join(d, f + ".h5") for f in ("fc", "train", "test")),
    ...                         [os.path.join(d, "ood.h5")], methods="msp,vim")
    >>> [(r["method"], r["dataset"]) for r in res.records]
    [('msp', 'ood'), ('vim', 'ood')]
    """
    from . import tuning
    from .detectors import create, get_detector_class
    from .engine import run_detectors
    from .inputs import check_same_model, file_record, load_inputs, select_methods

    files = {"fc": fc, "train": train, "test": test, **{f"ood:{Path(p).stem}": p for p in oods}}
    if train_label is not None:
        files["train_label"] = train_label
    mixed = check_same_model([file_record(role, p) for role, p in files.items() if role != "train_label"],
                             allow_mixed_models)
    inputs = load_inputs(fc, train, test, oods, device, train_label, group_head)
    if mixed:
        inputs.notes.append(mixed)
    methods = select_methods(methods, inputs, train_label or train)
    params = {m: dict(p) for m, p in (params or {}).items()}
    for method in params:
        create(method, **params[method])  # an unknown parameter or a value out of range fails before any work
    if log:
        log(f"train {inputs.train.n} x {inputs.train.dim}, ID test {inputs.test.n}, "
            + ", ".join(f"{o.name} {o.n}" for o in inputs.oods) + f"; {len(methods)} methods on "
            f"{inputs.train.device}")
    if tune:
        params = tuning.tune_inputs(inputs, methods, params, tune, tune_id, log)
    uses_id_val = [m for m in methods if "id_val" in get_detector_class(m).requires]
    if tune_id and not tune:
        if not uses_id_val:
            raise InputError("--tune_id is an ID validation file for --tune OOD_VAL, or for detectors that fit on "
                             "ID validation data (temp_scaling); neither is asked for")
        inputs.id_val = tuning.load_val("id_val", tune_id, inputs.train)
    if inputs.id_val is None and uses_id_val:
        try:
            held = tuning.hold_out_rows(inputs.test)
            inputs.id_val, inputs.id_rest = tuning.subset(inputs.test, held, "id_val"), ~held
        except InputError as e:  # too few rows: those detectors fall back to what they fit without one
            inputs.notes.append(f"no ID validation split for {', '.join(uses_id_val)}: {e}")
    if inputs.id_rest is not None:
        inputs.notes.append(f"ID validation for {', '.join(uses_id_val)}: a seeded {inputs.id_val.n} of the {inputs.test.n} ID "
                            f"test rows, left out of the rows those detectors are scored on (give --tune_id "
                            f"for a separate file)")
    result = run_detectors(inputs, methods, params, fpr, log)
    result.provenance.update(provenance(inputs, files, command))
    result.provenance.update({"fpr_convention": fpr, "id_accuracy": result.accuracy, "params": result.params})
    return result


def build_parser() -> argparse.ArgumentParser:
    from .metrics import FPR_CONVENTIONS
    from .report import add_report_options

    p = argparse.ArgumentParser(
        prog="benchmark.py",
        description="Post-hoc OOD detectors on stored features: fc, ID train, ID test, OOD sets "
                    "(HDF5 feature files or ViM/GEN .pkl files).")
    p.add_argument("fc", help="fc head file (.h5 from extract_features.py --fc_save_path, or ViM/GEN .pkl)")
    p.add_argument("id_train_feature", help="ID train features")
    p.add_argument("id_val_feature", help="ID test features")
    p.add_argument("ood_features", nargs="+", help="one or more OOD feature files (named by their stem)")
    p.add_argument("--methods", help="comma list of detectors (default: every one the inputs allow; "
                                     "python -c 'import ood; print(ood.list_detectors())' lists them)")
    p.add_argument("--param", action="append", default=[], metavar="METHOD.NAME=VALUE",
                   help="set a hyperparameter, e.g. vim.dim=512 (repeatable)")
    p.add_argument("--plugin", action="append", default=[], metavar="PATH_OR_MODULE",
                   help="import a detector plugin (a .py file or a module) before the run (repeatable); "
                        f"installed packages' '{PLUGIN_GROUP}' entry points load by themselves")
    p.add_argument("--fpr", choices=FPR_CONVENTIONS, default="vim", help="FPR95 convention")
    add_device_option(p)
    p.add_argument("--train_label", help="ViM-style list 'path label' overriding the train file's labels")
    p.add_argument("--head", help="group-softmax head for mos (python -m ood.heads train); a group head may "
                                  "also be given as the fc file")
    p.add_argument("--clip_quantile", help="ReAct train quantile (react, gen_react; default 0.99)")
    p.add_argument("--clip_quantile_local", help="Local ReAct quantile (default 0.9995)")
    p.add_argument("--gamma", help="GEN gamma (default 0.1)")
    p.add_argument("--M", help="GEN top-M classes (default 100)")
    p.add_argument("--tune", metavar="OOD_VAL", help="pick each detector's hyperparameters from its grid by "
                   "AUROC of ID validation features against this validation OOD file (never a test OOD file)")
    p.add_argument("--tune_id", metavar="ID_VAL", help="ID validation features for --tune and for detectors "
                   "that fit on ID validation data (temp_scaling); default: a seeded 10%% of the ID test split, "
                   "then left out of the rows those detectors are scored on")
    p.add_argument("--allow_mixed_models", action="store_true",
                   help="compare feature files whose model or checkpoint_sha256 attributes disagree")
    p.add_argument("--json", help="write the records and the run's provenance as JSON")
    p.add_argument("--csv", help="write one record per (method, dataset) as CSV")
    p.add_argument("--format", choices=("table", "markdown", "latex"), default="table", help="printed table")
    p.add_argument("--plots", metavar="DIR", help="write per-detector score histograms and ROC curves, and an "
                                                  "overview figure across detectors")
    add_report_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--protocol", choices=("standard", "sood"), default="standard",
                   help="sood: files are fc, train_iid, [IID test], shifted sets (easy, hard); reports accuracy "
                        "per split and superclass, and detection of each shifted set (see ood.sood)")
    p.add_argument("--holdout", type=float, metavar="FRACTION",
                   help="sood: hold this part of train_iid out as the IID test split (no IID test file given; "
                        "default 0.1 when only two files follow the train file)")
    p.add_argument("--holdout_seed", type=int, default=0, help="sood: seed of the held-out part")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    log = stderr_log(args.quiet)
    command = [Path(sys.argv[0]).name] + list(sys.argv[1:] if argv is None else argv)

    def go() -> int:
        from .fileio import check_readable, check_writable

        for path, what in ((args.json, "JSON output"), (args.csv, "CSV output")):
            if path:
                check_writable(path, what)
        if args.plots and Path(args.plots).exists() and not Path(args.plots).is_dir():
            raise InputError(f"{args.plots}: --plots needs a directory, and this is a file")
        if args.protocol == "standard":
            from .report import check_report_options
            check_report_options([Path(f).stem for f in args.ood_features], args.near, args.far, args.sort,
                                 args.bootstrap)
        else:
            unused = [flag for flag, value in (("--near", args.near), ("--far", args.far), ("--sort", args.sort),
                                               ("--bootstrap", args.bootstrap), ("--tune", args.tune),
                                               ("--tune_id", args.tune_id), ("--head", args.head),
                                               ("--plot_format", args.plot_format != "png")) if value]
            if unused:
                raise ParameterError(f"--protocol sood does not take {', '.join(unused)} (its report is the "
                                     f"accuracy and detection tables of ood.sood)")
        for path, what in ((args.fc, "fc file"), (args.id_train_feature, "train features"),
                           (args.id_val_feature, "ID test features"),
                           *((p, "OOD features") for p in args.ood_features), (args.train_label, "train labels"),
                           (args.tune, "tuning OOD set"), (args.tune_id, "tuning ID set"), (args.head, "group head")):
            if path:
                check_readable(path, what)
        load_plugins(args.plugin)
        from .detectors import parse_param_args

        methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
        params = parse_param_args(args.param, {k: getattr(args, k) for k in VIM_FLAGS}, methods)
        if args.protocol == "sood":
            from . import sood
            res = sood.run_protocol(args.fc, args.id_train_feature, [args.id_val_feature, *args.ood_features],
                                    methods=methods, params=params, fpr=args.fpr, device=args.device,
                                    train_label=args.train_label, holdout=args.holdout, seed=args.holdout_seed,
                                    log=log)
            print(sood.format_report(res, args.format))
            sood.write_outputs(res, json_path=args.json, csv_path=args.csv, plots=args.plots)
            return 0
        result = run_benchmark(args.fc, args.id_train_feature, args.id_val_feature, args.ood_features,
                               methods=methods, params=params, fpr=args.fpr, device=args.device,
                               train_label=args.train_label, group_head=args.head, tune=args.tune,
                               tune_id=args.tune_id, allow_mixed_models=args.allow_mixed_models, log=log,
                               command=command)
        from . import report

        report.publish(result, args.format, json_path=args.json, csv_path=args.csv, plots=args.plots,
                       plot_format=args.plot_format, near=args.near, far=args.far, sort=args.sort,
                       bootstrap=args.bootstrap, seed=args.bootstrap_seed, log=log, show=print)
        return 0
    return run_main(go)
