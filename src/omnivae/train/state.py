"""A trainer's state as checkpoint files, and back: the two halves of exact resume.

A checkpoint holds everything needed to continue bit-for-bit: parameters, Adam moments,
the global random state and the data order's generator state at the start of the epoch
(see :mod:`omnivae.train.checkpoint` for how the files are published).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from omnivae import __version__
from omnivae.errors import RunDirError
from omnivae.fileio import json_bytes
from omnivae.train.checkpoint import FORMAT, Checkpoint, flatten_optimizer, unflatten_optimizer

if TYPE_CHECKING:
    from omnivae.train.trainer import Trainer

__all__ = ["checkpoint_files", "restore_checkpoint"]


def _tensor_bytes(values: dict[str, Tensor], metadata: dict[str, str] | None = None) -> bytes:
    return safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in values.items()}, metadata=metadata)


def checkpoint_files(trainer: Trainer, rank_states: dict[str, Tensor]) -> dict[str, bytes]:
    """The files of a checkpoint of ``trainer``, as bytes (see
    :data:`omnivae.train.checkpoint.FILES`); ``rank_states`` are the other processes'
    random states under torchrun."""
    model = _tensor_bytes(dict(trainer.model.state_dict()), {"format": FORMAT, "omnivae_version": __version__})
    optimizer_tensors, optimizer_meta = flatten_optimizer(trainer.optimizer)
    state_tensors = dict(optimizer_tensors)
    state_tensors["rng/torch"] = torch.get_rng_state()
    state_tensors["rng/data_epoch_start"] = trainer.epoch_start_data_state
    if trainer.device.type == "cuda":
        state_tensors["rng/cuda"] = torch.cuda.get_rng_state(trainer.device)
    state_tensors.update(rank_states)
    state = _tensor_bytes(state_tensors)
    progress = {
        "format": FORMAT,
        "epoch": trainer.epoch,
        "step_in_epoch": trainer.step_in_epoch,
        "global_step": trainer.global_step,
        "finished": trainer.epoch >= trainer.total_epochs,
        "stage": trainer.stage_index,
        "optimizer": optimizer_meta,
        "sha256": {
            "model.safetensors": hashlib.sha256(model).hexdigest(),
            "state.safetensors": hashlib.sha256(state).hexdigest(),
        },
    }
    return {
        "model.safetensors": model,
        "state.safetensors": state,
        "state.json": json_bytes(progress),
        "metrics.json": json_bytes({"history": trainer.history}),
    }


def restore_checkpoint(trainer: Trainer, checkpoint: Checkpoint) -> int | None:
    """Load ``checkpoint`` into ``trainer`` for exact resume; returns its generation.

    Raises:
        RunDirError: the checkpoint does not fit the model, or its state is damaged.
    """
    run_dir = checkpoint.run_dir
    progress = checkpoint.progress()
    params = checkpoint.tensors("model.safetensors")
    state = checkpoint.tensors("state.safetensors")
    history = checkpoint.history()
    stage = progress["stage"]
    if stage >= len(trainer.stages):
        raise RunDirError(
            f"{checkpoint.path('state.json')} is damaged: stage {stage} does not exist "
            f"(the method has {len(trainer.stages)} stage(s))"
        )
    try:
        trainer.model.load_state_dict({k: v.to(trainer.device) for k, v in params.items()})
    except RuntimeError as err:
        raise RunDirError(f"{run_dir}: the checkpoint does not fit this model ({str(err).splitlines()[0]})") from None
    # The saved optimizer belongs to the stage the run stopped in (its last finished
    # epoch's stage when it stopped at a boundary); rebuild that stage's first.
    trainer._enter_stage(stage)
    try:
        trainer.optimizer.load_state_dict(unflatten_optimizer(state, progress["optimizer"]))
        torch.set_rng_state(state["rng/torch"])
        if "rng/cuda" in state and trainer.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng/cuda"], trainer.device)
        trainer.epoch_start_data_state = state["rng/data_epoch_start"]
        trainer.data_generator.set_state(trainer.epoch_start_data_state)
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        raise RunDirError(
            f"{checkpoint.path('state.safetensors')} does not hold this run's optimizer and random states "
            f"({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from None
    trainer.epoch = progress["epoch"]
    trainer.step_in_epoch = progress["step_in_epoch"]
    trainer.global_step = progress["global_step"]
    trainer.history = list(history)
    if trainer.dist is not None:
        trainer.dist.restore_rng_states(state, trainer.config.seed, trainer.global_step)
    return checkpoint.generation
