"""How ``omnivae train`` merges its options: a ``--config`` file, the flags, ``--set``, ``--resume``.

The rules, in order (the command line calls :func:`merge_options`, then
:func:`resolve_new_run` or :func:`resolve_resume`):

1. A ``--config`` JSON file gives defaults for the long flags (``_`` for ``-``); a run's
   own ``config.json`` counts as one (its model and training settings and its dataset).
2. Explicit flags override the file; ``--set KEY=VALUE`` items are merged into the
   method's ``options`` over the file's ``options``.
3. A new run starts from :class:`~omnivae.models.ModelConfig` and
   :class:`~omnivae.train.TrainConfig` defaults; an unknown key is refused with the closest
   known name.
4. ``--resume`` keeps the run's own settings: only ``epochs`` (never fewer), ``device``,
   ``precision``, ``compile``, ``data_dir`` and ``no_progress`` may be given.

Every message here is about what was typed on the command line or in a ``--config``
file, so it names those flags.

``--set`` values are parsed by :func:`parse_set` without knowing the method: integers,
numbers, true/false, else text; each method checks the types of its own options. A
typed parser for a recipe's options belongs in :func:`parse_set`'s caller,
:func:`merge_options`, once the model is known (see the comment there).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from omnivae.errors import RunDirError, UserError

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TRAIN_DATASET",
    "RESUMABLE",
    "TrainPlan",
    "absolute_dataset",
    "load_config_file",
    "merge_options",
    "parse_hidden",
    "parse_set",
    "resolve_new_run",
    "resolve_resume",
]

DEFAULT_MODEL = "mwb"
#: What ``omnivae train`` learns without flags; README "The default run" says why not PolyMNIST.
DEFAULT_TRAIN_DATASET = "mnist-text"
#: The options ``--resume`` may change: how and how long to compute, never what.
RESUMABLE = ("epochs", "device", "no_progress", "data_dir", "precision", "compile")
_PATH_OPTIONS = ("dataset", "data_dir", "out", "no_progress")


def load_config_file(path: str | None) -> dict[str, Any]:
    """The options of a ``--config`` JSON file (``{}`` for None), type-checked against the
    flags they stand for.

    >>> load_config_file(None)
    {}
    """
    if path is None:
        return {}
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--config {path}: no such file; give a JSON file of option names to values")
    try:
        obj = json.loads(file.read_text(), parse_constant=_no_constant)
    except (OSError, ValueError) as err:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity
        raise UserError(f"--config {path} is not valid JSON ({err})") from None
    except RecursionError:
        raise UserError(f"--config {path} is nested too deeply; give a flat JSON object of option names to values") from None
    if not isinstance(obj, dict):
        raise UserError(f"--config {path} must hold a JSON object of option names to values")
    if isinstance(obj.get("model"), dict):
        obj = _run_config_options(path, obj)
    options = {k.replace("-", "_"): v for k, v in obj.items()}
    sets = options.get("set_options")
    if sets is not None and (not isinstance(sets, list) or not all(isinstance(item, str) for item in sets)):
        raise UserError(
            f'--config {path}: \'set_options\' must be a list of "KEY=VALUE" strings, as --set takes, '
            f"got {json.dumps(sets)[:60]}"
        )
    for key, value in options.items():
        _check_config_value(path, key, value)
    return options


def _run_config_options(path: str, run_config: dict[str, Any]) -> dict[str, Any]:
    """A run's own ``config.json`` as ``--config``: its model and training settings and its
    dataset, so ``train --config RUN/config.json`` trains that run again (flags override)."""
    model, training, dataset = (run_config.get(k) for k in ("model", "train", "dataset"))
    if not (isinstance(model, dict) and isinstance(training, dict) and isinstance(dataset, dict)):
        raise UserError(f"--config {path} looks like a run's config.json but lacks its 'model', 'train' or 'dataset' object")
    if run_config.get("own_networks"):
        raise UserError(f"--config {path}: that run was trained with networks of your own, which only Python can rebuild")
    options = {**model, **training, "dataset": dataset.get("name"), "data_dir": dataset.get("data_dir")}
    return {k: v for k, v in options.items() if v is not None}


def _no_constant(name: str) -> float:
    """``parse_constant`` for :func:`json.loads`: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not a JSON number, and options must be finite")


def _check_config_value(path: str, key: str, value: object) -> None:
    """A --config value must have the type its flag would give; JSON does not ensure it."""
    from omnivae.configs import type_problem
    from omnivae.models import ModelConfig
    from omnivae.train import TrainConfig

    defaults = {**ModelConfig().to_json(), **TrainConfig().to_json(), "no_progress": False}
    defaults.update(dataset="", data_dir="", out="", resume="")
    if key not in defaults:
        return  # unknown options are reported together, later
    if key == "hidden" and isinstance(value, str):
        return  # "512,512" as on the command line
    wanted = type_problem(value, defaults[key])
    if wanted is not None:
        raise UserError(f"--config {path}: {key!r} must be {wanted}, got {json.dumps(value)}")
    if isinstance(value, float) and not math.isfinite(value):  # 1e999 parses as inf
        raise UserError(f"--config {path}: {key!r} must be a finite number, got {value}")


def merge_options(config: str | None, flags: Mapping[str, object]) -> dict[str, Any]:
    """Options from the ``config`` file, overridden by the ``flags`` that are not None.

    ``hidden`` given as text is parsed, and ``set_options`` (the ``--set`` items) is merged
    into ``options``:

    >>> merge_options(None, {"hidden": "64,32", "set_options": ["w_dim=16"], "beta": None})
    {'hidden': [64, 32], 'options': {'w_dim': 16}}
    """
    options = load_config_file(config)
    for key, value in flags.items():
        if value is not None:
            options[key] = value
    if isinstance(options.get("hidden"), str):
        options["hidden"] = parse_hidden(options["hidden"])
    sets = options.pop("set_options", None)
    if sets:
        # The hook for typed recipe options: once the model is known (options["model"]),
        # each "KEY=VALUE" can be parsed by the type its recipe declares instead of by
        # parse_set's guess; the method still validates the values it receives.
        method_options = dict(options.get("options") or {})
        method_options.update(parse_set(item) for item in sets)
        options["options"] = method_options
    return options


def parse_set(item: str) -> tuple[str, object]:
    """One ``--set`` item: integers, numbers, true/false, else text.

    >>> parse_set("w_dim=16"), parse_set("kl_estimator=mc"), parse_set("tau=0.1")
    (('w_dim', 16), ('kl_estimator', 'mc'), ('tau', 0.1))
    """
    key, sep, text = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise UserError(f"--set takes KEY=VALUE, got {item!r}")
    text = text.strip()
    if text.lower() in ("true", "false"):
        return key, text.lower() == "true"
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if not math.isfinite(value):
            raise UserError(f"--set {item}: must be a finite number, got {text!r}")
        return key, value
    return key, text


def parse_hidden(text: str) -> list[int]:
    """``--hidden`` as a list of widths.

    >>> parse_hidden("512,512")
    [512, 512]
    """
    try:
        widths = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--hidden must be comma-separated integers, got {text!r}") from None
    if not widths:
        raise UserError(f"--hidden lists no width, got {text!r}; give comma-separated integers such as 512,512")
    return widths


def absolute_dataset(name: str) -> str:
    """``npz:FILE``, ``csv:DIR`` or ``hdf5:FILE`` with an absolute path, so that the run can
    be evaluated from anywhere; other names as they are.

    >>> absolute_dataset("mnist-text")
    'mnist-text'
    >>> absolute_dataset("npz:/data/x.npz")
    'npz:/data/x.npz'
    """
    for prefix in ("npz:", "csv:", "hdf5:"):
        if isinstance(name, str) and name.startswith(prefix) and len(name) > len(prefix):
            return prefix + str(Path(name[len(prefix):]).expanduser().absolute())
    return name


@dataclass
class TrainPlan:
    """What ``omnivae train`` is to do, once its options are merged and checked."""

    model_config: Any  # ModelConfig; typed loosely so that this module does not import the models
    train_config: Any  # TrainConfig
    dataset_name: str
    data_dir: str | None
    run_dir: Path


def resolve_resume(options: dict[str, Any], resume: str, saved: Mapping[str, Any]) -> TrainPlan:
    """The plan of ``--resume RESUME``: the run's saved settings (``saved``, its
    ``config.json``), changed only by the options that :data:`RESUMABLE` allows."""
    from omnivae.models import ModelConfig
    from omnivae.train import TrainConfig

    fixed = sorted(set(options) - set(RESUMABLE))
    if fixed:
        flags = ", ".join("--" + k.replace("_", "-") for k in fixed)
        raise UserError(
            f"--resume continues a run with its own settings; {flags} cannot change them "
            "(only --epochs, --device, --precision, --compile, --data-dir and --no-progress can); start a new run instead"
        )
    try:
        model_config = ModelConfig.from_json(saved["model"])
        train_config = TrainConfig.from_json(saved["train"])
        dataset_name = saved["dataset"]["name"]
    except (KeyError, TypeError, AttributeError) as err:
        raise RunDirError(f"{resume}/config.json lacks a required entry or holds a malformed one ({err!r})") from None
    if "epochs" in options:
        requested = int(options["epochs"])
        if isinstance(train_config.epochs, int) and requested < train_config.epochs:
            raise UserError(
                f"--epochs {requested} would shorten {resume}, which is set to {train_config.epochs} epoch(s); "
                f"--resume only continues or extends a run: give --epochs {train_config.epochs} or more"
            )
        train_config.epochs = requested
    if "device" in options:  # a run may continue elsewhere, e.g. on a machine without a GPU
        train_config.device = options["device"]
    for how in ("precision", "compile"):  # how to compute, not what: free to change on resume
        if how in options:
            setattr(train_config, how, options[how])
    if options.get("no_progress"):
        train_config.progress = False
    data_dir = options.get("data_dir") or saved["dataset"].get("data_dir")
    return TrainPlan(model_config, train_config, dataset_name, data_dir, Path(resume))


def resolve_new_run(options: dict[str, Any]) -> TrainPlan:
    """The plan of a new run: defaults, then ``options``; an unknown key is refused with the
    closest known name. The run folder is ``out``, or a new one named after the model."""
    from omnivae.models import MODELS, ModelConfig
    from omnivae.train import TrainConfig, new_run_dir

    known_model = {f.name for f in fields(ModelConfig)}
    known_train = {f.name for f in fields(TrainConfig)}
    unknown = set(options) - known_model - known_train - {*_PATH_OPTIONS, "resume"}
    if unknown:
        known = sorted(known_model | known_train | set(_PATH_OPTIONS))
        hints = [
            f"{name} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(name, known, n=1)) else name
            for name in sorted(unknown)
        ]
        raise UserError(
            f"unknown option(s) in --config: {', '.join(hints)}; the options are the long flags of "
            "'omnivae train --help' with _ for -"
        )
    model_config = ModelConfig(**{k: v for k, v in options.items() if k in known_model})
    model_config.model = options.get("model", DEFAULT_MODEL)
    train_config = TrainConfig(**{k: v for k, v in options.items() if k in known_train})
    if "warmup_epochs" not in options and model_config.model in MODELS:
        train_config.warmup_epochs = MODELS[model_config.model].warmup_epochs
    if options.get("no_progress"):
        train_config.progress = False
    if isinstance(train_config.epochs, int) and train_config.epochs < 1:
        raise UserError(f"--epochs must be >= 1 for a new run, got {train_config.epochs}")
    dataset_name = absolute_dataset(options.get("dataset", DEFAULT_TRAIN_DATASET))
    run_dir = Path(options["out"]) if "out" in options else new_run_dir(model_config.model, dataset_name)
    return TrainPlan(model_config, train_config, dataset_name, options.get("data_dir"), run_dir)
