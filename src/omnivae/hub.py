"""Pretrained models as Hugging Face Hub folders: safetensors weights, a JSON config, a model card.

A pretrained folder holds three files and nothing that executes:

- ``model.safetensors``: the model's parameters and buffers;
- ``config.json``: the :class:`~omnivae.models.ModelConfig`, the modality specs (enough
  for :func:`~omnivae.models.build_model` to rebuild the networks, custom dataset
  modalities included), the training settings, the dataset's name and fingerprint, and
  the SHA-256 of the weights;
- ``README.md``: a model card with Hugging Face metadata (``library_name: omnivae``,
  tags, datasets), the method and its paper, the dataset, training settings and the
  metrics of the run's ``eval.json`` when it has one.

:func:`save_pretrained` writes one from a run (its folder or :func:`~omnivae.train.load_run`'s
result) or from a model and its config; :func:`from_pretrained` reads one from a local
folder (never touching the network) or, given a repo id, downloads it with
``huggingface_hub.snapshot_download``; :func:`push_to_hub` uploads a folder.

These are functions rather than methods of the model because what a folder needs is
more than the model: its :class:`~omnivae.models.ModelConfig`, training settings, dataset
and metrics belong to the run, and the model class does not know them (as
:func:`~omnivae.train.load_run` is a function for the same reason). :func:`from_pretrained`
returns the same :class:`~omnivae.train.run.LoadedRun` that ``load_run`` does, so code
written for runs works on downloaded models.

Example:
    >>> from omnivae.hub import save_pretrained, from_pretrained   # doctest: +SKIP
    >>> save_pretrained("runs/mwb", "export/mwb-mnist-text")        # doctest: +SKIP
    >>> run = from_pretrained("export/mwb-mnist-text")              # doctest: +SKIP
    >>> z = run.model.encode({"image": images}).mean                # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as safetensors_bytes

from omnivae import __version__
from omnivae.data import ModalitySpec
from omnivae.errors import RunDirError, UserError
from omnivae.fileio import fsync_dir, json_bytes, sha256_file
from omnivae.models import MODELS, ModelConfig, MultimodalVAE, build_model
from omnivae.train import TrainConfig, load_run
from omnivae.train.run import LoadedRun

__all__ = ["save_pretrained", "from_pretrained", "push_to_hub", "model_card", "FORMAT"]

#: ``config.json``'s ``format`` entry; a folder with another one is refused.
FORMAT = "omnivae-pretrained/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "README.md"
_FILES = (WEIGHTS, CONFIG, CARD)

_INSTALL_HUB = "pip install 'omnivae[hub]' (or pip install huggingface_hub)"
#: A Hub repo id: ``name`` or ``owner/name``, letters, digits, ``-``, ``_`` and ``.``.
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def save_pretrained(
    source: LoadedRun | MultimodalVAE | str | os.PathLike[str],
    directory: str | os.PathLike[str],
    *,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    dataset: str | None = None,
    metrics: Mapping[str, float] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a pretrained folder (weights, config, model card) for the Hub or local use.

    Args:
        source: a run folder, a :class:`~omnivae.train.run.LoadedRun`, or a model (then
            ``model_config`` is required, since a model does not record its recipe).
        directory: the folder to write; it must not exist or be empty, unless
            ``overwrite`` and it holds an earlier pretrained folder.
        model_config: the recipe the model was built with (only for a bare model).
        train_config: training settings for the card (a run supplies its own).
        dataset: the dataset's name for the card (a run supplies its own).
        metrics: headline metrics for the card; from a run, its ``eval.json`` is read
            instead when this is None.
        overwrite: replace an existing pretrained folder.

    Returns:
        The folder written. It is assembled in a temporary folder beside it and moved into
        place, so an error leaves nothing half-written.

    Raises:
        UserError: a bare model without ``model_config``, or a folder in the way.
        RunDirError: a run folder that cannot be loaded.
    """
    run_config: dict[str, Any] = {}
    run_path: Path | None = None
    if isinstance(source, (str, os.PathLike)):
        source = load_run(Path(source))
    if isinstance(source, LoadedRun):
        model, model_config = source.model, source.model_config
        train_config = train_config or source.train_config
        dataset = dataset or source.dataset_name
        run_config, run_path = source.config, source.path
    elif isinstance(source, MultimodalVAE):
        if model_config is None:
            raise UserError(
                "save_pretrained needs model_config= with a bare model (the recipe it was built with); "
                "or pass the run (its folder or load_run's result)",
                parameter="model_config",
            )
        model = source
    else:
        raise UserError(
            f"save_pretrained takes a run folder, a LoadedRun or a MultimodalVAE, not {type(source).__name__}",
            parameter="source",
        )
    if run_config.get("own_networks"):
        raise UserError(
            "this run was trained with networks of your own, which a pretrained folder cannot rebuild "
            "(it holds no code); share the run folder and load it with load_run(..., encoders=..., decoders=...)",
            parameter="source",
        )
    if metrics is None and run_path is not None:
        metrics = _run_metrics(run_path)
    target = Path(directory)
    _check_target(target, overwrite)

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    weights = safetensors_bytes(state, metadata={"format": "pt", "omnivae_format": FORMAT})
    dataset_entry = dict(run_config.get("dataset") or {})
    config: dict[str, Any] = {
        "format": FORMAT,
        "omnivae_version": __version__,
        "model": model_config.to_json(),
        "modalities": [spec.to_json() for spec in model.modalities],
        "train": None if train_config is None else train_config.to_json(),
        "dataset": {"name": dataset, "fingerprint": dataset_entry.get("fingerprint")},
        "label_names": run_config.get("label_names"),
        "metrics": dict(metrics) if metrics else {},
    }
    card = model_card(config)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        (staging / WEIGHTS).write_bytes(weights)
        config["weights_sha256"] = sha256_file(staging / WEIGHTS)
        (staging / CONFIG).write_bytes(json_bytes(config))
        (staging / CARD).write_text(card, encoding="utf-8")
        os.chmod(staging, 0o755)  # mkdtemp makes the folder private; this is an ordinary output
        if target.exists():
            shutil.rmtree(target) if any(target.iterdir()) else target.rmdir()
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    return target


def from_pretrained(
    name_or_path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> LoadedRun:
    """Load a pretrained folder, local or from the Hugging Face Hub.

    Args:
        name_or_path: a local folder written by :func:`save_pretrained` (read without any
            network access), or a Hub repo id (``owner/name``) downloaded with
            ``huggingface_hub.snapshot_download`` (which honours ``HF_HUB_OFFLINE`` and
            its cache).
        device: where the model goes.
        revision: a branch, tag or commit of the Hub repo.
        cache_dir: huggingface_hub's cache folder, when not its default.

    Returns:
        A :class:`~omnivae.train.run.LoadedRun` whose ``path`` is the local folder; its
        model is in eval mode.

    Raises:
        RunDirError: a folder that is not a pretrained folder, or whose weights do not
            fit its config (or were altered after it was written).
        UserError: a repo id that cannot be fetched (no huggingface_hub, offline, not found).
    """
    path = Path(name_or_path)
    if not path.is_dir():
        path = _download(str(name_or_path), revision, cache_dir)
    return _load_folder(path, device)


def push_to_hub(
    directory: str | os.PathLike[str],
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload omnivae model",
) -> str:
    """Upload a pretrained folder to the Hugging Face Hub (creating the repo if needed).

    The folder is checked first (it must load), so a broken model is never published.

    Returns:
        The URL of the commit.

    Raises:
        UserError: no huggingface_hub, no network or no permission, in one line.
    """
    folder = Path(directory)
    _load_folder(folder, "cpu")
    hub = _import_hub("push_to_hub")
    try:
        api = hub.HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
            allow_patterns=list(_FILES),
        )
    except Exception as err:  # network, auth and validation errors of huggingface_hub and its HTTP client
        raise UserError(f"could not push {folder} to the Hugging Face Hub repo {repo_id!r}: {_first_line(err)}") from None
    return str(getattr(info, "commit_url", info))


def model_card(config: Mapping[str, Any]) -> str:
    """The ``README.md`` of a pretrained folder, from its ``config.json`` contents.

    Front matter in the Hub's model-card metadata format (YAML between ``---`` lines):
    ``library_name: omnivae``, ``tags`` (method, aggregator) and ``datasets`` when the
    dataset is a named one (not the user's own ``npz:``/``csv:``/``hdf5:`` file).
    """
    model = ModelConfig.from_json(dict(config["model"]))
    recipe = MODELS.get(model.model)
    title = recipe.title if recipe else model.model
    reference = recipe.reference if recipe else "unknown"
    aggregator = model.aggregator or (recipe.aggregator if recipe else "default")
    dataset = (config.get("dataset") or {}).get("name")
    named_dataset = isinstance(dataset, str) and ":" not in dataset
    tags = ["omnivae", "multimodal", "variational-autoencoder", "pytorch", model.model, f"aggregator-{aggregator}"]
    front = ["---", "library_name: omnivae", "tags:"] + [f"- {_yaml(t)}" for t in tags]
    if named_dataset:
        front += ["datasets:", f"- {_yaml(str(dataset))}"]
    front.append("---")

    modalities = [ModalitySpec.from_json(m) for m in config["modalities"]]
    lines = [
        f"# {title} ({model.model}) trained with omnivae",
        "",
        f"A multimodal variational autoencoder: {title}, aggregation `{aggregator}`, latent size "
        f"{model.latent_dim}, beta {model.beta:g}.",
        "",
        f"- **Method**: `{model.model}`, {title}",
        f"- **Paper**: {reference}",
        f"- **Dataset**: {dataset if dataset else 'not recorded'}",
        "- **Modalities**: " + ", ".join(f"`{m.name}` ({m.kind}, {'x'.join(map(str, m.shape))})" for m in modalities),
        f"- **omnivae version**: {config.get('omnivae_version', 'unknown')}",
        "",
        "## Training settings",
        "",
    ]
    train = config.get("train")
    if train:
        keys = ("epochs", "batch_size", "lr", "seed", "warmup_epochs", "missing_rate", "precision")
        lines += ["| setting | value |", "| --- | --- |"]
        lines += [f"| {k} | {train[k]} |" for k in keys if k in train]
    else:
        lines.append("Not recorded.")
    lines += ["", "Model settings (`config.json`, `model`):", "", "```json", json.dumps(config["model"], indent=2), "```", ""]
    lines += ["## Metrics", ""]
    metrics = config.get("metrics") or {}
    if metrics:
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
        lines += ["", "From `omnivae evaluate` (the run's `eval.json`) on the test split."]
    else:
        lines.append("None recorded (the run was not evaluated with `omnivae evaluate`).")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from omnivae.hub import from_pretrained",
        "",
        'run = from_pretrained("REPO_ID_OR_FOLDER")',
        "z = run.model.encode(x).mean          # x: {modality: tensor [batch, *shape]}",
        "filled = run.model.impute(x, mask)    # mask: {modality: bool tensor [batch]}",
        "```",
        "",
        "Files: `model.safetensors` (weights), `config.json` (everything `omnivae.models.build_model` needs). "
        "No pickle: loading executes nothing from the repository.",
        "",
    ]
    return "\n".join(front) + "\n\n" + "\n".join(lines)


def _yaml(value: str) -> str:
    """A YAML scalar: plain when safe, else double-quoted JSON (valid YAML)."""
    return value if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", value) else json.dumps(value)


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def _run_metrics(run_path: Path) -> dict[str, float]:
    """The headline metrics of a run's ``eval.json`` (as ``omnivae benchmark`` tables them)."""
    path = run_path / "eval.json"
    if not path.is_file():
        return {}
    from omnivae.benchmark import summarise_run

    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        return summarise_run(results)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise RunDirError(f"{path} is not an eval.json that omnivae evaluate writes ({_first_line(err)})") from None


def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} is a file, not a folder; pick another directory", parameter="directory")
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not overwrite:
        raise UserError(f"{target} already exists and is not empty; pick another directory or pass overwrite=True",
                        parameter="overwrite")
    if not _is_pretrained(target):
        raise UserError(
            f"overwrite refused: {target} holds files but is not an omnivae pretrained folder; it is not deleted",
            parameter="directory",
        )


def _is_pretrained(folder: Path) -> bool:
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == FORMAT and {p.name for p in folder.iterdir()} <= set(_FILES)


def _import_hub(what: str) -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise UserError(f"{what} needs huggingface_hub, which is not installed: {_INSTALL_HUB}") from None
    return huggingface_hub


def _download(repo_id: str, revision: str | None, cache_dir: str | os.PathLike[str] | None) -> Path:
    if not _REPO_ID.fullmatch(repo_id):
        raise UserError(f"{repo_id} is neither a local folder nor a Hugging Face Hub repo id (owner/name)",
                        parameter="name_or_path")
    hub = _import_hub(f"loading {repo_id!r} from the Hugging Face Hub (it is not a local folder)")
    try:
        folder = hub.snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=list(_FILES),
            library_name="omnivae", library_version=__version__,
        )
    except Exception as err:  # offline, not found, gated, network: one line either way
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        why = (
            "HF_HUB_OFFLINE is set and the cache has no copy" if offline else _first_line(err)
        )
        raise UserError(
            f"{repo_id} is not a local folder and could not be fetched from the Hugging Face Hub: {why}",
            parameter="name_or_path",
        ) from None
    return Path(folder)


def _load_folder(path: Path, device: str | torch.device) -> LoadedRun:
    """Read and check a pretrained folder; nothing in it is unpickled or executed."""
    config_path, weights_path = path / CONFIG, path / WEIGHTS
    if (path / "checkpoint.json").is_file() or (path / "checkpoints").is_dir():
        raise RunDirError(
            f"{path} is an omnivae run folder, not a pretrained folder; load it with load_run, "
            "or export it with save_pretrained"
        )
    if not config_path.is_file() or not weights_path.is_file():
        lacking = [p.name for p in (config_path, weights_path) if not p.is_file()]
        raise RunDirError(f"{path} is not an omnivae pretrained folder (no {' or '.join(lacking)})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise RunDirError(f"{config_path} is not valid JSON ({_first_line(err)})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise RunDirError(f"{config_path} is not an omnivae pretrained config (format {found!r}, expected {FORMAT!r})")
    try:
        model_config = ModelConfig.from_json(config["model"])
        modalities = tuple(ModalitySpec.from_json(m) for m in config["modalities"])
        train_config = TrainConfig.from_json(config["train"]) if config.get("train") else TrainConfig()
        model, objective = build_model(model_config, modalities)
    except UserError as err:
        raise RunDirError(f"{config_path} does not describe a model omnivae can build: {err}") from None
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise RunDirError(f"{config_path} lacks a required entry or holds a malformed one ({err!r})") from None
    recorded = config.get("weights_sha256")
    if recorded is not None and recorded != sha256_file(weights_path):
        raise RunDirError(f"{weights_path} is not the file {config_path} was written with (its SHA-256 differs)")
    try:
        state = load_safetensors_bytes(weights_path.read_bytes())
    except (SafetensorError, ValueError) as err:
        raise RunDirError(f"{weights_path} is not a valid safetensors file ({_first_line(err)})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise RunDirError(
            f"{weights_path} does not fit the model in {config_path} ({_first_line(err)})"
        ) from None
    model.to(device).eval()
    dataset = (config.get("dataset") or {}).get("name")
    run_config = {
        "model": config["model"],
        "train": train_config.to_json(),
        "dataset": {"name": dataset, "data_dir": None, "modalities": config["modalities"],
                    "fingerprint": (config.get("dataset") or {}).get("fingerprint")},
        "label_names": config.get("label_names"),
        "pretrained": {"metrics": config.get("metrics") or {}, "omnivae_version": config.get("omnivae_version")},
    }
    return LoadedRun(path, model, objective, model_config, train_config, str(dataset), modalities, run_config)
