"""Training: the loop, schedules, callbacks, checkpoints and run directories."""

from omnivae.train.callbacks import Callback, CallbackList, StepEnd
from omnivae.train.checkpoint import check_run_dir
from omnivae.train.run import load_run, new_run_dir, train
from omnivae.train.schedules import LinearWarmup
from omnivae.train.trainer import (
    TrainConfig,
    Trainer,
    TrainingInterrupted,
    hide_modalities,
    resolve_device,
)

__all__ = [
    "Callback",
    "CallbackList",
    "StepEnd",
    "TrainConfig",
    "Trainer",
    "TrainingInterrupted",
    "LinearWarmup",
    "hide_modalities",
    "resolve_device",
    "train",
    "load_run",
    "new_run_dir",
    "check_run_dir",
]
