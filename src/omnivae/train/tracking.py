"""Experiment trackers: TensorBoard, MLflow and Weights & Biases, as trainer callbacks.

Each tracker logs, under the names below, at the training step they belong to:

- ``train/<term>``: the objective's loss and each named term, every ``log_every`` steps
  (the mean over those steps is in ``metrics.json``; these are single steps);
- ``train/lr``, ``train/kl_weight`` (beta warm-up) and ``train/samples_per_second``
  (throughput since the previous log);
- ``epoch/<key>``: every number of the epoch's entry in ``metrics.json`` (``train_loss``,
  ``test_loss``, ``seconds``, ``samples_per_second``, ...), the same values;
- ``train/stage``: the index of the stage a two-stage method enters;
- ``eval/<path>``: every number of ``eval.json`` (``omnivae evaluate --track``), e.g.
  ``eval/recon/self/m0``;

and the run's ``config.json`` as parameters (MLflow, W&B) or text (TensorBoard). MLflow
also stores the run folder as an artifact when training ends.

By default everything goes under the run folder, ``RUN/tracking/<backend>/``, and nothing
is sent anywhere: TensorBoard event files, an MLflow file store (``file:`` URI) and W&B
in offline mode (``WANDB_MODE=offline`` unless you set ``WANDB_MODE`` yourself; sync
later with ``wandb sync``). ``RUN/tracking/tracking.json`` records each backend's run id,
so that ``omnivae evaluate --track`` and ``omnivae train --resume --track`` log into the
same tracking runs.

Each library is imported only when its tracker starts; :func:`check_installed` says which
extra to install before any training starts.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from omnivae.errors import UserError, unknown_name
from omnivae.fileio import atomic_write_bytes, json_bytes
from omnivae.stages import Stage
from omnivae.train.callbacks import Callback, CallbackList, StepEnd, TrainStatus, flat_numbers

__all__ = [
    "BACKENDS",
    "Tracker",
    "TensorBoardTracker",
    "MLflowTracker",
    "WandbTracker",
    "parse_track",
    "check_installed",
    "make_trackers",
    "log_evaluation",
]

if TYPE_CHECKING:
    from omnivae.train.trainer import Trainer

FOLDER = "tracking"
RECORD = "tracking.json"
INSTALL = 'pip install "omnivae[tracking]"'


def _record_path(run_dir: Path) -> Path:
    return Path(run_dir) / FOLDER / RECORD


def read_record(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The tracking runs recorded in ``RUN/tracking/tracking.json`` (empty when none)."""
    try:
        obj = json.loads(_record_path(run_dir).read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _write_record(run_dir: Path, backend: str, ids: dict[str, Any]) -> None:
    record = read_record(run_dir)
    record[backend] = ids
    atomic_write_bytes(_record_path(run_dir), json_bytes(record))


def _metric_name(name: str) -> str:
    """A name every backend accepts (MLflow allows letters, digits, ``_-./`` and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


class Tracker(Callback):
    """A callback that sends training to an experiment tracker; subclasses open, log and close.

    Args:
        folder: Where the backend writes; default ``RUN/tracking/<backend>`` of the run
            being trained (a trainer without a run folder needs one).
        log_every: Steps between step logs. Each log reads the step's terms from the
            device (one synchronisation), hence not every step by default.
    """

    backend: ClassVar[str]
    package: ClassVar[str]

    def __init__(self, folder: str | os.PathLike[str] | None = None, log_every: int = 10) -> None:
        if log_every < 1:
            raise UserError(f"log_every must be >= 1, got {log_every}", parameter="log_every")
        self.folder = None if folder is None else Path(folder)
        self.log_every = log_every
        self.run_dir: Path | None = None
        self._opened = False
        self._last_time = 0.0
        self._rows = 0

    # -- what a backend implements -------------------------------------------------------
    def _open(self, folder: Path, previous: Mapping[str, Any] | None, params: dict[str, str]) -> dict[str, Any]:
        """Start (or, given the ids of ``previous``, continue) a tracking run; returns its ids."""
        raise NotImplementedError

    def _log(self, values: Mapping[str, float], step: int) -> None:
        raise NotImplementedError

    def _close(self, status: TrainStatus) -> None:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------
    def open(self, run_dir: Path | None, params: Mapping[str, Any]) -> None:
        """Open the tracking run of ``run_dir`` (the one recorded there, if any)."""
        if self._opened:
            return
        self.run_dir = None if run_dir is None else Path(run_dir)
        if self.folder is None and self.run_dir is None:
            raise UserError(f"{type(self).__name__} needs a folder when the trainer has no run_dir", parameter="folder")
        folder = self.folder or Path(self.run_dir or ".") / FOLDER / self.backend
        folder.mkdir(parents=True, exist_ok=True)
        previous = read_record(self.run_dir).get(self.backend) if self.run_dir is not None else None
        flat = {_metric_name(k): str(v)[:500] for k, v in _flat_params(params).items()}
        ids = self._open(folder.absolute(), previous, flat)
        if self.run_dir is not None:
            _write_record(self.run_dir, self.backend, ids)
        self._opened = True
        self._last_time = time.perf_counter()
        self._rows = 0

    def log(self, values: Mapping[str, float], step: int) -> None:
        finite = {_metric_name(k): float(v) for k, v in values.items() if math.isfinite(float(v))}
        if finite:
            self._log(finite, step)

    def close(self, status: TrainStatus = "finished") -> None:
        if self._opened:
            self._opened = False
            self._close(status)

    def on_train_begin(self, trainer: Trainer) -> None:
        self.open(trainer.run_dir, trainer.full_config())

    def on_step_end(self, trainer: Trainer, step: StepEnd) -> None:
        self._rows += step.rows
        if step.step % self.log_every:
            return
        now = time.perf_counter()
        numbers = torch.stack([v.detach().float().reshape(()) for v in step.terms.values()]).tolist()  # one sync
        values = {f"train/{k}": v for k, v in zip(step.terms, numbers, strict=True)}
        values.update({"train/lr": step.lr, "train/kl_weight": step.kl_weight})
        values["train/samples_per_second"] = self._rows / max(now - self._last_time, 1e-9)
        self._last_time, self._rows = now, 0
        self.log(values, step.step)

    def on_epoch_end(self, trainer: Trainer, record: Mapping[str, Any]) -> None:
        self.log({f"epoch/{k}": v for k, v in flat_numbers(record).items() if k not in ("epoch", "step")},
                 trainer.global_step)

    def on_stage_change(self, trainer: Trainer, index: int, stage: Stage) -> None:
        self.log({"train/stage": float(index)}, trainer.global_step)

    def on_train_end(self, trainer: Trainer, status: TrainStatus) -> None:
        self.close(status)

    def on_evaluate(self, results: Mapping[str, float], step: int | None) -> None:
        self.log({f"eval/{k}": v for k, v in results.items()}, step or 0)


def _flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(_flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (str, int, float, bool)) or value is None else json.dumps(value)
    return out


class TensorBoardTracker(Tracker):
    """Scalars into TensorBoard event files (``torch.utils.tensorboard.SummaryWriter``);
    view them with ``tensorboard --logdir RUN/tracking/tensorboard``."""

    backend = "tensorboard"
    package = "tensorboard"

    def _open(self, folder: Path, previous: Mapping[str, Any] | None, params: dict[str, str]) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))
        if previous is None:
            self.writer.add_text("config", "\n".join(f"    {k} = {v}" for k, v in params.items()), 0)
        return {"logdir": str(folder)}

    def _log(self, values: Mapping[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def on_epoch_end(self, trainer: Trainer, record: Mapping[str, Any]) -> None:
        super().on_epoch_end(trainer, record)
        self.writer.flush()  # visible in TensorBoard at once, not after flush_secs

    def _close(self, status: TrainStatus) -> None:
        self.writer.close()


class MLflowTracker(Tracker):
    """Parameters, metrics and (when training ends) the run folder as an artifact, into an
    MLflow tracking store.

    Args:
        tracking_uri: The store; default a local file store in ``RUN/tracking/mlflow``
            (MLflow 3 keeps the file store in maintenance mode and asks for
            ``MLFLOW_ALLOW_FILE_STORE=true``, which is set for that store unless you set it).
        experiment: The experiment's name.
    """

    backend = "mlflow"
    package = "mlflow"

    def __init__(
        self,
        folder: str | os.PathLike[str] | None = None,
        log_every: int = 10,
        *,
        tracking_uri: str | None = None,
        experiment: str = "omnivae",
    ) -> None:
        super().__init__(folder, log_every)
        self.tracking_uri = tracking_uri
        self.experiment = experiment

    def _open(self, folder: Path, previous: Mapping[str, Any] | None, params: dict[str, str]) -> dict[str, Any]:
        uri = self.tracking_uri or (previous or {}).get("tracking_uri") or folder.as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        if previous and previous.get("run_id"):
            self.run_id = str(previous["run_id"])
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            found = self.client.get_experiment_by_name(self.experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
            name = self.run_dir.name if self.run_dir is not None else None
            self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
            items = [Param(k, v) for k, v in params.items()]
            for begin in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=items[begin : begin + 100])
        return {"tracking_uri": uri, "run_id": self.run_id}

    def _log(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        items = [Metric(k, v, stamp, step) for k, v in values.items()]
        for begin in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[begin : begin + 1000])

    def _close(self, status: TrainStatus) -> None:
        if self.run_dir is not None and status != "failed":
            for path in sorted(self.run_dir.rglob("*")):
                relative = path.relative_to(self.run_dir)
                # The tracking stores (this one among them) and the lock are not the run.
                if path.is_file() and relative.parts[0] not in (FOLDER, ".lock"):
                    where = str(Path("run", *relative.parts[:-1]))
                    self.client.log_artifact(self.run_id, str(path), artifact_path=where)
        mlflow_status = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}[status]
        self.client.set_terminated(self.run_id, status=mlflow_status)


class WandbTracker(Tracker):
    """Weights & Biases, offline by default (``WANDB_MODE`` decides; upload later with
    ``wandb sync RUN/tracking/wandb/wandb/offline-run-*``).

    Args:
        project: The W&B project.
    """

    backend = "wandb"
    package = "wandb"

    def __init__(
        self, folder: str | os.PathLike[str] | None = None, log_every: int = 10, *, project: str = "omnivae"
    ) -> None:
        super().__init__(folder, log_every)
        self.project = project

    def _open(self, folder: Path, previous: Mapping[str, Any] | None, params: dict[str, str]) -> dict[str, Any]:
        for variable, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_DATA_DIR", "data")):
            os.environ.setdefault(variable, str(folder / sub))  # nothing written outside the run
        import wandb

        run_id = (previous or {}).get("run_id")
        self.run = wandb.init(
            project=self.project,
            dir=str(folder),
            id=run_id,
            resume="allow" if run_id else None,
            name=self.run_dir.name if self.run_dir is not None else None,
            config=params if run_id is None else None,
            mode=os.environ.get("WANDB_MODE") or "offline",  # type: ignore[arg-type]
            settings=wandb.Settings(silent=True, console="off"),
            reinit="create_new",
        )
        return {"run_id": self.run.id, "project": self.project, "dir": str(folder)}

    def _log(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def _close(self, status: TrainStatus) -> None:
        self.run.finish(exit_code={"finished": 0, "interrupted": 130, "failed": 1}[status])


TRACKERS: dict[str, type[Tracker]] = {t.backend: t for t in (TensorBoardTracker, MLflowTracker, WandbTracker)}
BACKENDS = tuple(TRACKERS)


def parse_track(track: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"tensorboard,mlflow"`` -> ``("tensorboard", "mlflow")``; unknown names are refused.

    Raises:
        UserError: an unknown backend (naming the known ones).
    """
    if track is None:
        return ()
    items = track.split(",") if isinstance(track, str) else list(track)
    names: list[str] = []
    for item in items:
        name = item.strip().lower()
        if not name:
            continue
        if name not in TRACKERS:
            error = unknown_name("tracking backend", name, BACKENDS)
            raise UserError(str(error), parameter="track")
        if name not in names:
            names.append(name)
    return tuple(names)


def check_installed(names: Sequence[str]) -> None:
    """Refuse, before anything runs, a backend whose package is not installed.

    Raises:
        UserError: one line naming the package and the extra that installs it.
    """
    for name in names:
        package = TRACKERS[name].package
        if importlib.util.find_spec(package) is None:
            raise UserError(
                f"tracking with {name} needs the {package} package, which is not installed; "
                f"install the tracking extra: {INSTALL}"
            )


def make_trackers(track: str | Sequence[str] | None, log_every: int = 10) -> list[Tracker]:
    """The trackers named in ``track`` (``"tensorboard,mlflow,wandb"``), checked installed."""
    names = parse_track(track)
    check_installed(names)
    return [TRACKERS[name](log_every=log_every) for name in names]


def log_evaluation(run_dir: str | os.PathLike[str], results: Mapping[str, Any], track: str | Sequence[str]) -> None:
    """Log ``eval.json``'s numbers (``results``) into the run's tracking runs (those recorded
    in ``RUN/tracking/tracking.json``, or new ones), at the run's last training step.

    A backend that fails is warned about and skipped: the evaluation is already written.
    """
    from omnivae.train.checkpoint import read_published

    run_dir = Path(run_dir)
    trackers = make_trackers(track)
    try:
        step = int(read_published(run_dir, lambda checkpoint: checkpoint.progress())["global_step"])
    except (UserError, KeyError, TypeError, ValueError):
        step = 0
    flat = flat_numbers({k: v for k, v in results.items() if k not in ("figures",)})
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    for tracker in trackers:
        calls = CallbackList([tracker])
        calls.call("open", run_dir, config)
        calls.call("on_evaluate", flat, step)
        calls.call("close", "finished")
