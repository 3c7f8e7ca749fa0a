"""Runs: train a named model on a named dataset into a run directory, and load runs back."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from omnivae.data.base import DatasetSplits, ModalitySpec, MultimodalDataset
from omnivae.errors import RunDirError, UserError
from omnivae.models import ModelConfig, MultimodalVAE, build_model, check_networks
from omnivae.objectives import Objective
from omnivae.train.callbacks import Callback
from omnivae.train.checkpoint import (
    RunLock,
    busy_error,
    check_run_dir,
    clear_run,
    lock_holder,
    no_checkpoint_error,
    published_checkpoint,
    read_published,
    run_dir_is_empty,
)
from omnivae.train.trainer import TrainConfig, Trainer

__all__ = ["LoadedRun", "train", "load_run", "new_run_dir", "data_fingerprint", "check_writable_run"]


def new_run_dir(model: str, dataset: str, root: Path = Path("runs")) -> Path:
    """A fresh ``runs/MODEL-DATASET-TIMESTAMP`` folder name (not created)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe_dataset = dataset.replace(":", "-").replace("/", "_").replace("\\", "_")[-40:]
    path = root / f"{model}-{safe_dataset}-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = root / f"{model}-{safe_dataset}-{stamp}-{suffix}"
    return path


def data_fingerprint(data: MultimodalDataset) -> str:
    """A SHA-256 over the training split: each modality's stored values (dtype, shape and
    bytes), row indices, masks and labels, in modality order. About a second per GB."""
    digest = hashlib.sha256(b"omnivae-data/1")

    def add(name: str, tensor: torch.Tensor | None) -> None:
        if tensor is None:
            digest.update(f"{name}:none;".encode())
            return
        array = np.ascontiguousarray(tensor.detach().cpu().numpy())
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.data.cast("B"))

    for spec in data.modalities:
        add(f"data/{spec.name}", data.data[spec.name])
        add(f"rows/{spec.name}", data.rows.get(spec.name))
        add(f"mask/{spec.name}", data.masks.get(spec.name))
    add("labels", data.labels)
    return "sha256:" + digest.hexdigest()


def _writes_here() -> bool:
    """True unless this is a process other than rank 0 of a torchrun launch (which never
    writes the run folder); valid before the processes have joined."""
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True


def check_writable_run(run_dir: Path, resume: bool, overwrite: bool = False, locked: bool = False) -> None:
    """The checks, before anything is loaded or written, that ``train`` may write ``run_dir``:
    no other process trains it, and it is a fresh folder (or, with ``overwrite``, an omnivae
    run to replace), or for ``resume`` a run with a published checkpoint. ``locked``: the
    caller holds the run's lock."""
    run_dir = Path(run_dir)
    holder = None if locked else lock_holder(run_dir)
    if holder is not None:
        raise busy_error(run_dir, holder)
    if resume:
        if overwrite:
            raise UserError("give either resume=True (continue the run) or overwrite=True (start it again), not both",
                            parameter="overwrite")
        check_run_dir(run_dir)
        if published_checkpoint(run_dir) is None:
            raise no_checkpoint_error(run_dir)
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file, not a folder; pick another run_dir", parameter="run_dir")
    if run_dir_is_empty(run_dir):
        return
    is_run = (run_dir / "config.json").is_file()
    if overwrite:
        if not is_run:
            raise UserError(
                f"overwrite refused: {run_dir} holds files but is not an omnivae run (no config.json); "
                "it is not deleted, pick another run_dir", parameter="overwrite"
            )
        check_run_dir(run_dir)  # a foreign config.json is not deleted either
        return
    if is_run and published_checkpoint(run_dir) is None:
        raise UserError(
            f"{run_dir} holds a run that stopped before its first checkpoint; start it again with overwrite=True "
            "(it replaces that run), or pick another run_dir", parameter="overwrite"
        )
    raise UserError(f"{run_dir} already exists and is not empty; pick another run_dir or continue it with resume=True",
                    parameter="resume")


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    data: DatasetSplits,
    dataset_name: str,
    run_dir: Path | None,
    resume: bool = False,
    data_dir: str | None = None,
    overwrite: bool = False,
    allow_data_change: bool = False,
    encoders: Mapping[str, torch.nn.Module] | None = None,
    decoders: Mapping[str, torch.nn.Module] | None = None,
    callbacks: Sequence[Callback] | None = None,
) -> Trainer:
    """Build (or restore) a model and train it; returns the finished trainer.

    ``callbacks`` are passed to the :class:`~omnivae.train.Trainer` (experiment trackers:
    :func:`omnivae.train.tracking.make_trackers`).

    ``encoders``/``decoders`` are networks of your own by modality name (see
    :func:`~omnivae.models.build_model`); ``config.json`` names their classes, and
    :func:`load_run` needs the same networks, freshly built, to load the run.

    The seed is set before the networks are built, so the same seed gives the same
    initial parameters and the same run. The run folder is locked for the whole training
    (a second writer gets a :class:`~omnivae.errors.RunDirError`). ``overwrite`` replaces
    an existing omnivae run; ``resume`` refuses a run trained on other data (a fingerprint
    in ``config.json``) unless ``allow_data_change``.
    """
    model_config.validate()
    train_config.validate(len(data.train))
    if run_dir is not None:
        run_dir = Path(run_dir)
        check_writable_run(run_dir, resume, overwrite)
    torch.manual_seed(train_config.seed)
    model, objective = build_model(model_config, data.modalities, encoders, decoders)
    own_networks = check_networks(data.modalities, encoders, decoders)
    # A stream is not hashed (that would read it all): its runs resume without the data check.
    fingerprint = data_fingerprint(data.train) if isinstance(data.train, MultimodalDataset) else None
    run_config = {
        "model": model_config.to_json(),
        "dataset": {
            "name": dataset_name,
            "data_dir": None if data_dir is None else str(Path(data_dir).expanduser().absolute()),
            "modalities": [m.to_json() for m in data.modalities],
            "fingerprint": fingerprint,
        },
        "label_names": getattr(data.train, "label_names", None),
    }
    if any(own_networks.values()):
        run_config["own_networks"] = own_networks
    if resume:
        assert run_dir is not None
        saved_config = check_run_dir(run_dir)
        _check_own_networks(run_dir, saved_config.get("own_networks"), encoders, decoders)
        saved = saved_config.get("dataset", {}).get("fingerprint")
        if saved is not None and saved != fingerprint and not allow_data_change:
            raise UserError(
                f"the training data differ from the data {run_dir} was trained on (its fingerprint changed); "
                "resume it on its own data, or pass allow_data_change=True to continue on these",
                parameter="allow_data_change",
            )
    trainer = Trainer(model, objective, data.train, train_config, run_dir, data.test, run_config, callbacks)
    loaded = None
    if resume:  # before the lock, which writes: a damaged run is refused with nothing written
        assert run_dir is not None
        loaded = trainer.load(run_dir)
    writes = run_dir is not None and _writes_here()
    with RunLock.acquire(run_dir) if writes and run_dir is not None else nullcontext() as lock:
        if writes:
            assert run_dir is not None
            check_writable_run(run_dir, resume, overwrite, locked=True)  # again, now that no one else can write
            if overwrite:
                clear_run(run_dir)
            current = published_checkpoint(run_dir)
            if resume and (current is None or current.generation != loaded):  # another writer came between
                trainer.load(run_dir)
        trainer.lock = lock
        trainer.fit()
    return trainer


@dataclass
class LoadedRun:
    """A trained model read back from its run directory."""

    path: Path
    model: MultimodalVAE
    objective: Objective
    model_config: ModelConfig
    train_config: TrainConfig
    dataset_name: str
    modalities: tuple[ModalitySpec, ...]
    config: dict

    @property
    def data_dir(self) -> str | None:
        """The ``--data-dir`` the run was trained with (absolute), if any."""
        value = self.config.get("dataset", {}).get("data_dir")
        return value if isinstance(value, str) else None


def load_run(
    run_dir: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    encoders: Mapping[str, torch.nn.Module] | None = None,
    decoders: Mapping[str, torch.nn.Module] | None = None,
) -> LoadedRun:
    """Rebuild the model of a run from ``config.json`` and load the parameters of its
    published checkpoint.

    A run trained with networks of your own (``train(..., encoders=..., decoders=...)``)
    is loaded by passing the same networks again, freshly built: their parameters come
    from the checkpoint.

    Takes no lock and writes nothing: a run that is being trained is read at its last
    published checkpoint. Nothing in the run is unpickled or executed; a damaged or foreign
    file gives a :class:`~omnivae.errors.RunDirError` that names it.
    """
    path = Path(run_dir)
    config = check_run_dir(path)
    try:
        model_config = ModelConfig.from_json(config["model"])
        train_config = TrainConfig.from_json(config["train"])
        modalities = tuple(ModalitySpec.from_json(m) for m in config["dataset"]["modalities"])
        dataset_name = str(config["dataset"]["name"])
        train_config.validate()
        _check_own_networks(path, config.get("own_networks"), encoders, decoders)
        model, objective = build_model(model_config, modalities, encoders, decoders)
    except RunDirError:
        raise
    except UserError as err:
        raise RunDirError(f"{path}/config.json does not describe a valid run: {err}") from None
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise RunDirError(f"{path}/config.json lacks a required entry or holds a malformed one ({err!r})") from None
    params = read_published(path, lambda checkpoint: checkpoint.tensors("model.safetensors"))
    try:
        model.load_state_dict(params)
    except RuntimeError as err:
        raise RunDirError(
            f"{path}: model.safetensors does not fit the model in config.json ({str(err).splitlines()[0]})"
        ) from None
    model.to(device).eval()
    return LoadedRun(path, model, objective, model_config, train_config, dataset_name, modalities, config)


def _check_own_networks(
    path: Path,
    recorded: object,
    encoders: Mapping[str, torch.nn.Module] | None,
    decoders: Mapping[str, torch.nn.Module] | None,
) -> None:
    """A run trained with networks of your own loads only when they are given again."""
    if recorded is None:
        return
    if not isinstance(recorded, dict):
        raise RunDirError(f"{path}/config.json: 'own_networks' must be an object, got {type(recorded).__name__}")
    given = {"encoders": encoders or {}, "decoders": decoders or {}}
    lacking = [
        f"{role}[{name!r}] ({cls})"
        for role in ("encoders", "decoders")
        for name, cls in (recorded.get(role) or {}).items()
        if name not in given[role]
    ]
    if lacking:
        raise RunDirError(
            f"{path} was trained with networks of your own: {', '.join(lacking)}; load it in Python with "
            "load_run(path, encoders={...}, decoders={...}) passing the same networks"
        )
