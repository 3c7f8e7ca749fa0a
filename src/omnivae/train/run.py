"""Runs: train a named model on a named dataset into a run directory, and load runs back."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from omnivae.data.base import DatasetSplits, ModalitySpec
from omnivae.errors import RunDirError, UserError
from omnivae.models import ModelConfig, MultimodalVAE, build_model, check_networks
from omnivae.objectives import Objective
from omnivae.train.checkpoint import check_run_dir, load_tensors, read_json
from omnivae.train.trainer import TrainConfig, Trainer

__all__ = ["LoadedRun", "train", "load_run", "new_run_dir"]


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


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    data: DatasetSplits,
    dataset_name: str,
    run_dir: Path | None,
    resume: bool = False,
    data_dir: str | None = None,
    encoders: Mapping[str, torch.nn.Module] | None = None,
    decoders: Mapping[str, torch.nn.Module] | None = None,
) -> Trainer:
    """Build (or restore) a model and train it; returns the finished trainer.

    ``encoders``/``decoders`` are networks of your own by modality name (see
    :func:`~omnivae.models.build_model`); ``config.json`` names their classes, and
    :func:`load_run` needs the same networks, freshly built, to load the run.

    The seed is set before the networks are built, so the same seed gives the same
    initial parameters and the same run.
    """
    model_config.validate()
    train_config.validate(len(data.train))
    if run_dir is not None and not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"{run_dir} already exists and is not empty; pick another --out or continue it with --resume {run_dir}")
    torch.manual_seed(train_config.seed)
    model, objective = build_model(model_config, data.modalities, encoders, decoders)
    own_networks = check_networks(data.modalities, encoders, decoders)
    run_config = {
        "model": model_config.to_json(),
        "dataset": {
            "name": dataset_name,
            "data_dir": None if data_dir is None else str(Path(data_dir).expanduser().absolute()),
            "modalities": [m.to_json() for m in data.modalities],
        },
        "label_names": data.train.label_names,
    }
    if any(own_networks.values()):
        run_config["own_networks"] = own_networks
    if resume:
        assert run_dir is not None
        _check_own_networks(run_dir, check_run_dir(run_dir).get("own_networks"), encoders, decoders)
    trainer = Trainer(model, objective, data.train, train_config, run_dir, data.test, run_config)
    if resume:
        assert run_dir is not None
        trainer.load(run_dir)
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
    run_dir: str | Path,
    device: str | torch.device = "cpu",
    encoders: Mapping[str, torch.nn.Module] | None = None,
    decoders: Mapping[str, torch.nn.Module] | None = None,
) -> LoadedRun:
    """Rebuild the model of a run from ``config.json`` and load ``model.safetensors``.

    A run trained with networks of your own (``train(..., encoders=..., decoders=...)``)
    is loaded by passing the same networks again, freshly built: their parameters come
    from the checkpoint.

    Nothing in the run is unpickled or executed; a damaged or foreign file gives a
    :class:`~omnivae.errors.RunDirError` that names it.
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
    progress = read_json(path / "state.json", "the training progress")
    params = load_tensors(path / "model.safetensors", progress.get("sha256", {}).get("model.safetensors"))
    try:
        model.load_state_dict(params)
    except RuntimeError as err:
        raise RunDirError(
            f"{path}/model.safetensors does not fit the model in config.json ({str(err).splitlines()[0]})"
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
