"""The training loop: Adam, seeds, devices, progress, history, checkpoints and exact resume.

The trainer knows models only through ``objective(model, x, mask, kl_weight)``; schedules
(beta warm-up) are functions of progress that it evaluates each step. Checkpoints hold
everything needed to continue bit-for-bit: parameters, Adam moments, the global random
state and the data order's generator state at the start of the epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from omnivae import __version__
from omnivae.data.base import MultimodalDataset
from omnivae.data.torch_data import BatchSource, TorchData, as_batch_source
from omnivae.errors import TrainingDiverged, UserError
from omnivae.models import MultimodalVAE
from omnivae.nn.precision import PRECISIONS, networks_in
from omnivae.objectives import Objective
from omnivae.stages import Stage
from omnivae.train import distributed
from omnivae.train.callbacks import Callback, CallbackList, StepEnd, TrainStatus, as_callbacks
from omnivae.train.checkpoint import (
    FORMAT,
    Checkpoint,
    RunLock,
    atomic_write_json,
    publish_checkpoint,
    published_checkpoint,
    read_published,
    write_error,
)
from omnivae.train.config import COMPILE_MODES, TrainConfig, hide_modalities, resolve_device
from omnivae.train.schedules import LinearWarmup
from omnivae.train.signals import catch_signals
from omnivae.train.state import checkpoint_files, restore_checkpoint

__all__ = ["COMPILE_MODES", "TrainConfig", "Trainer", "resolve_device", "hide_modalities", "TrainingInterrupted"]

FINITE_CHECK_EVERY = 10
"""Steps between checks that the loss is finite (each check synchronises with the device)."""

TrainData = MultimodalDataset | BatchSource | Dataset | DataLoader
"""What the trainer trains and evaluates on: an in-memory dataset (the fast default), or a
torch ``Dataset``/``DataLoader`` of modality dicts (see :mod:`omnivae.data.torch_data`)."""


class TrainingInterrupted(Exception):
    """Raised after SIGINT/SIGTERM once the checkpoint of the interrupted step is on disk."""


class Trainer:
    """Fits a model with an objective, writing a run directory.

    Args:
        model: The model to train (moved to the configured device).
        objective: Its objective.
        train_data: Training split: a :class:`~omnivae.data.MultimodalDataset` (in memory,
            the fast default), or for data that does not fit in memory a torch ``Dataset``
            or ``DataLoader`` of ``{modality: tensor}`` dicts (:mod:`omnivae.data.torch_data`).
        config: Optimisation settings.
        run_dir: Where checkpoints and history go; ``None`` trains without writing.
        test_data: Optional split (of the same kinds) whose loss is reported after every epoch.
        run_config: The JSON written as ``config.json`` (model, dataset, training).
        callbacks: :class:`~omnivae.train.Callback` instances called as training goes
            (experiment trackers among them, :mod:`omnivae.train.tracking`); one that
            raises is warned about once and dropped, and training goes on.
    """

    def __init__(
        self,
        model: MultimodalVAE,
        objective: Objective,
        train_data: TrainData,
        config: TrainConfig,
        run_dir: Path | None = None,
        test_data: TrainData | None = None,
        run_config: dict | None = None,
        callbacks: Sequence[Callback] | CallbackList | None = None,
    ) -> None:
        train_source = as_batch_source(train_data)
        # A DataLoader batches by itself: TrainConfig.batch_size does not apply to it.
        own_batches = isinstance(train_source, TorchData) and train_source.loader is not None
        config.validate(None if own_batches else len(train_source))
        self.config = config
        self.device = resolve_device(config.device)
        # Under torchrun: join the other processes (None when training alone); see distributed.py.
        self.dist = distributed.setup(self.device)
        if self.dist is not None:
            self.device = self.dist.device
            if not self.dist.is_main:  # rank 0 alone shows progress
                self.config = config = replace(config, progress=False)
        torch.manual_seed(config.seed)
        self.model = model.to(self.device)
        if self.dist is not None:  # the same start everywhere, each process its own noise
            self.dist.broadcast_module(self.model)
            self.dist.seed(config.seed)
        self.objective = objective
        self.train_data = train_source.to(self.device)
        self.test_data = None if test_data is None else as_batch_source(test_data).to(self.device)
        # Under torchrun only rank 0 reports, as only it writes.
        self.callbacks = as_callbacks(callbacks if self.dist is None or self.dist.is_main else None)
        self.run_dir = None if run_dir is None else Path(run_dir)
        if self.dist is not None and self.run_dir is not None:  # a default name holds the time: take rank 0's
            self.run_dir = self.dist.broadcast_object(self.run_dir)
        self.run_config = run_config or {}
        self.stage_index = -1
        self.stage_start_step = 0
        self.network_dtype = PRECISIONS[config.precision]
        self._step_functions: dict[int, Callable[..., tuple[Tensor, dict[str, Tensor]]]] = {}
        self._kl_weight = torch.zeros((), device=self.device)
        self.kl_weight = 1.0  # of the last step, for callbacks
        self.optimizer: torch.optim.Optimizer
        self._enter_stage(0)
        self.schedules: dict[str, Callable[[int, int], float]] = {
            "kl_weight": LinearWarmup(config.warmup_epochs)
        }
        self.data_generator = torch.Generator().manual_seed(config.seed)
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.epoch_start_data_state = self.data_generator.get_state()
        self.history: list[dict] = []
        self._stop_signal: int | None = None
        self._saving = False
        self.lock: RunLock | None = None  # taken by fit(), or earlier by omnivae.train.run.train

    @property
    def steps_per_epoch(self) -> int:
        return self.train_data.num_batches(self.config.batch_size)

    # -- stages --------------------------------------------------------------------------
    @property
    def stages(self) -> tuple[Stage, ...]:
        """The method's schedule (``Objective.stages``) for the configured epochs; a plain
        callable objective is one stage over every parameter."""
        if isinstance(self.objective, Objective):
            return tuple(self.objective.stages(self.config.epochs))
        return (Stage("train", self.objective, self.config.epochs),)

    @property
    def total_epochs(self) -> int:
        return sum(stage.epochs for stage in self.stages)

    def stage_at(self, epoch: int) -> int:
        """The index of the stage that epoch ``epoch`` (0-based) belongs to."""
        end = 0
        for index, stage in enumerate(self.stages):
            end += stage.epochs
            if epoch < end:
                return index
        return len(self.stages) - 1

    @property
    def stage(self) -> Stage:
        return self.stages[self.stage_index]

    def _enter_stage(self, index: int) -> None:
        """Freeze everything the stage does not train and give it a fresh Adam."""
        stage = self.stages[index]
        trainable = list(stage.parameters(self.model))
        chosen = {id(p) for p in trainable}
        for parameter in self.model.parameters():
            parameter.requires_grad_(id(parameter) in chosen)
        # The fused kernel (one pass over all tensors; on the CPU since torch 2.4) instead of
        # the default per-parameter loop, which costs 15-25 % of an MLP step on 2 CPU
        # threads (benchmarks/vs_multivae.py). It is deterministic, so resume stays exact.
        try:
            self.optimizer = torch.optim.Adam(trainable, lr=self.config.lr, fused=True)
        except RuntimeError:  # an older torch without the fused CPU kernel
            self.optimizer = torch.optim.Adam(trainable, lr=self.config.lr, foreach=True)
        self.stage_index = index
        self.stage_start_step = sum(s.epochs for s in self.stages[:index]) * self.steps_per_epoch

    # -- the loop ------------------------------------------------------------------------
    def train_step(self, x: dict[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
        """One optimisation step; returns detached terms (no host synchronisation)."""
        stage = self.stage
        step = self.global_step - self.stage_start_step if stage.warmup else self.global_step
        self.kl_weight = kl_weight = self.schedules["kl_weight"](step, self.steps_per_epoch)
        self._kl_weight.fill_(kl_weight)
        with networks_in(self.network_dtype):
            loss, step_terms = self._step_function()(self.model, x, mask, self._kl_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        terms = {"loss": loss.detach()}
        terms.update({k: v.detach() for k, v in step_terms.items()})
        if self.dist is not None:  # under torchrun: the global batch's gradient and terms
            terms = self.dist.all_reduce_step(self.optimizer, terms)
        self.optimizer.step()
        return terms

    def _step_function(self) -> Callable[..., tuple[Tensor, dict[str, Tensor]]]:
        """The current stage's loss as ``(model, x, mask, kl_weight) -> (loss, terms)``,
        compiled with :func:`torch.compile` when ``TrainConfig.compile`` asks for it (once per
        stage; the KL weight is a device tensor so that its schedule causes no recompilation)."""
        function = self._step_functions.get(self.stage_index)
        if function is None:
            objective = self.stage.objective

            def step(
                model: MultimodalVAE, x: dict[str, Tensor], mask: Tensor, kl_weight: Tensor
            ) -> tuple[Tensor, dict[str, Tensor]]:
                out = objective(model, x, mask, kl_weight)
                return out.loss, dict(out.terms)

            function = step
            if self.config.compile != "none":
                function = torch.compile(step, mode=None if self.config.compile == "default" else self.config.compile)
            self._step_functions[self.stage_index] = function
        return function

    def fit(self) -> list[dict]:
        """Train every stage to its end; resumes from the loaded state if any."""
        run_dir = self.run_dir
        writes = run_dir is not None and distributed.is_main()
        # One writer per run: hold the run's lock for the whole training (rank 0 writes alone).
        owned = writes and self.lock is None
        lock: RunLock | nullcontext[None] = RunLock.acquire(run_dir) if owned and run_dir else nullcontext()
        with lock:
            if isinstance(lock, RunLock):
                self.lock = lock
            try:
                if writes and run_dir is not None:
                    try:
                        atomic_write_json(run_dir / "config.json", self.full_config())
                    except OSError as err:
                        raise write_error(run_dir, err, "config.json", published_checkpoint(run_dir), None) from None
                status: TrainStatus = "failed"
                self.callbacks.call("on_train_begin", self)
                try:
                    with catch_signals(self):
                        while self.epoch < self.total_epochs:
                            index = self.stage_at(self.epoch)
                            if index != self.stage_index:
                                self._enter_stage(index)
                                self.callbacks.call("on_stage_change", self, index, self.stage)
                            self._run_epoch()
                        if self.run_dir is not None:
                            self.save()
                    status = "finished"
                except TrainingInterrupted:
                    status = "interrupted"
                    raise
                finally:
                    self.callbacks.call("on_train_end", self, status)
            finally:
                if owned:
                    self.lock = None
        return self.history

    def _run_epoch(self) -> None:
        config = self.config
        if self.step_in_epoch == 0:
            self.epoch_start_data_state = self.data_generator.get_state()
        else:
            self.data_generator.set_state(self.epoch_start_data_state)
        batches = self.train_data.batches(
            config.batch_size, shuffle=True, generator=self.data_generator, start=self.step_in_epoch
        )
        totals: dict[str, Tensor] = {}
        finite: list[Tensor] = []  # device-side isfinite(loss) of the steps not yet checked
        steps = rows = 0
        started = time.perf_counter()
        label = self._epoch_label()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=self.step_in_epoch,
            desc=label,
            disable=not config.progress,
            leave=False,
            dynamic_ncols=True,
        )
        self.model.train()
        for batch in batches:
            if self.dist is not None:  # this process's rows of the global batch
                batch = self.dist.local_part(batch)
            mask = hide_modalities(self.model.stack_mask(batch.x, batch.mask), config.missing_rate)
            terms = self.train_step(batch.x, mask)
            finite.append(torch.isfinite(terms["loss"]))
            for key, value in terms.items():
                totals[key] = totals.get(key, 0.0) + value
            steps += 1
            rows += len(batch)
            self.step_in_epoch += 1
            self.global_step += 1
            bar.update(1)
            if self.callbacks:
                lr = float(self.optimizer.param_groups[0]["lr"])
                step = StepEnd(self.global_step, self.epoch + 1, terms, self.kl_weight, lr, len(batch))
                self.callbacks.call("on_step_end", self, step)
            if len(finite) == FINITE_CHECK_EVERY or self.step_in_epoch == self.steps_per_epoch:
                self._check_finite(finite, bar)
            if config.progress and (steps % 10 == 0 or self.step_in_epoch == self.steps_per_epoch):
                bar.set_postfix({k: f"{(v / steps).item():.4g}" for k, v in totals.items()}, refresh=False)
            if self._stop_requested():
                self._check_finite(finite, bar)  # never checkpoint parameters a NaN step wrote
                bar.close()
                self._interrupt()
        self._check_finite(finite, bar)
        bar.close()
        seconds = time.perf_counter() - started
        record: dict = {"epoch": self.epoch + 1, "step": self.global_step}
        if len(self.stages) > 1:
            record["stage"] = self.stage.name
        record.update({f"train_{k}": float(v / max(steps, 1)) for k, v in totals.items()})
        if not all(math.isfinite(v) for k, v in record.items() if k.startswith("train_")):
            bad = [k[len("train_"):] for k, v in record.items() if k.startswith("train_") and not math.isfinite(v)]
            raise self._diverged(f"the training term(s) {', '.join(bad)} became NaN or infinite in {label}")
        if self.test_data is not None:
            record.update({f"test_{k}": v for k, v in self.evaluate_loss(self.test_data).items()})
        record["seconds"] = seconds
        record["samples_per_second"] = rows / max(seconds, 1e-9)
        self.history.append(record)
        self.callbacks.call("on_epoch_end", self, record)
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_start_data_state = self.data_generator.get_state()
        if config.progress:
            shown = {k: v for k, v in record.items() if k in ("train_loss", "test_loss")}
            tqdm.write(
                f"{label}  "
                + "  ".join(f"{k} {v:.4g}" for k, v in shown.items())
                + f"  ({seconds:.1f} s)"
            )
        if self.run_dir is not None:
            self.save()
            if self._stop_requested():  # a signal arrived during the save: stop at this checkpoint
                self._interrupt(save=False)

    def _check_finite(self, finite: list[Tensor], bar: tqdm) -> None:
        """Raise :class:`TrainingDiverged` if a loss in ``finite`` (the device-side
        ``isfinite`` of the last ``len(finite)`` steps, the current one last) was not finite.

        One host synchronisation per call, so the loop checks every
        :data:`FINITE_CHECK_EVERY` steps rather than every step; the check always runs
        before a checkpoint is written, so a diverged step never overwrites a good one.
        """
        if not finite:
            return
        ok = torch.stack(finite)
        finite.clear()
        if bool(ok.all()):
            return
        first = int((~ok).nonzero()[0])
        back = len(ok) - first - 1  # steps taken after the first non-finite one
        bar.close()
        raise self._diverged(
            f"the training loss became NaN or infinite in {self._epoch_label()}, "
            f"step {self.step_in_epoch - back}/{self.steps_per_epoch} (global step {self.global_step - back})"
        )

    def _diverged(self, what: str) -> TrainingDiverged:
        """The one-line error for a diverged run, saying where its last good checkpoint is."""
        if self.run_dir is None:
            kept = "nothing was saved (no run directory)"
        else:
            try:
                saved = read_published(self.run_dir, Checkpoint.progress)
                kept = f"the last good checkpoint (global step {saved.get('global_step')}) is in {self.run_dir}"
            except UserError:
                kept = f"no checkpoint had been written to {self.run_dir} yet"
        return TrainingDiverged(f"{what}; {kept}; lower --lr or check the data")

    def _epoch_label(self) -> str:
        """``epoch 3/10``, or ``stage 2/2 (unimodal posteriors) epoch 3/10`` for staged methods."""
        stages = self.stages
        if len(stages) == 1:
            return f"epoch {self.epoch + 1}/{stages[0].epochs}"
        start = sum(s.epochs for s in stages[: self.stage_index])
        return (
            f"stage {self.stage_index + 1}/{len(stages)} ({self.stage.name}) "
            f"epoch {self.epoch - start + 1}/{self.stage.epochs}"
        )

    @torch.no_grad()
    def evaluate_loss(self, data: TrainData, batch_size: int | None = None) -> dict[str, float]:
        """The objective's mean loss and terms on ``data`` (no gradient, model in eval mode);
        ``data`` as for ``train_data``."""
        self.model.eval()
        totals: dict[str, Tensor] = {}
        count = 0
        for batch in as_batch_source(data).batches(batch_size or self.config.batch_size):
            batch = batch.to(self.device)
            mask = self.model.stack_mask(batch.x, batch.mask)
            out = self.stage.objective(self.model, batch.x, mask, 1.0)
            n = len(batch)
            totals["loss"] = totals.get("loss", 0.0) + out.loss * n
            for key, value in out.terms.items():
                totals[key] = totals.get(key, 0.0) + value * n
            count += n
        self.model.train()
        return {k: float(v / count) for k, v in totals.items()}

    # -- signals --------------------------------------------------------------------
    def _stop_requested(self) -> bool:
        """A signal arrived; under torchrun, in any process, so that all stop after the same step."""
        stop = self._stop_signal is not None
        return self.dist.any(stop) if self.dist is not None else stop

    def _interrupt(self, save: bool = True) -> None:
        if self.run_dir is not None and save:
            self.save()
        raise TrainingInterrupted(
            f"training stopped at epoch {self.epoch + 1}, step {self.step_in_epoch}"
            + (f"; resume with: omnivae train --resume {self.run_dir}" if self.run_dir else "")
        )

    # -- checkpoints ---------------------------------------------------------------------
    def full_config(self) -> dict:
        return {
            "format": FORMAT,
            "omnivae_version": __version__,
            **self.run_config,
            "train": self.config.to_json(),
        }

    def save(self) -> None:
        """Write a checkpoint (parameters, optimizer and random states, progress, history)
        and publish it as one unit (see :mod:`omnivae.train.checkpoint`).

        A full disk or an I/O error leaves the previous checkpoint published and raises a
        :class:`UserError` saying so; signals wait until the checkpoint is published.
        """
        assert self.run_dir is not None
        rank_states = self.dist.rng_states() if self.dist is not None else {}  # collective
        if not distributed.is_main():  # rank 0 alone writes
            return
        self._saving = True
        try:
            files = checkpoint_files(self, rank_states)
            try:
                publish_checkpoint(self.run_dir, files)
            except OSError as err:
                previous = published_checkpoint(self.run_dir)
                progress = None
                if previous is not None:
                    try:
                        progress = previous.progress()
                    except UserError:
                        pass
                raise write_error(self.run_dir, err, "a checkpoint", previous, progress) from None
        finally:
            self._saving = False
        self.callbacks.call("on_checkpoint", self, self.run_dir)

    def load(self, run_dir: Path) -> int | None:
        """Restore the published checkpoint of ``run_dir`` (exact resume); returns its
        generation (``None`` for a run in the old flat layout)."""
        return read_published(Path(run_dir), lambda checkpoint: restore_checkpoint(self, checkpoint))
