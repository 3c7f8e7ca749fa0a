"""The rows an evaluation reads: from the run's dataset, from given splits, or from streams.

:func:`omnivae.evaluate.evaluate_run` takes its train and test data from
:func:`evaluation_rows`. In memory, the metrics get whole splits and draw their rows
themselves (the test rows here, the probe's training rows in
:func:`omnivae.metrics.linear_probe`). From a stream
(:class:`~omnivae.data.torch_data.TorchData`), only the rows the protocol uses are read into
memory, drawn with the same seeded permutations, so the metrics see the same rows in
the same order and run unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset

from omnivae.data.base import MultimodalDataset
from omnivae.data.torch_data import TorchData, draw_rows
from omnivae.errors import UserError

if TYPE_CHECKING:
    from omnivae.evaluate import EvalOptions
    from omnivae.train.run import LoadedRun

__all__ = ["ALL", "EvaluationRows", "evaluation_rows"]

#: A row count meaning every row of the split.
ALL = "all"

Source = MultimodalDataset | TorchData | Dataset | DataLoader


def _rows(data: MultimodalDataset, count: int | str, seed: int) -> MultimodalDataset:
    """``count`` rows of ``data`` drawn without replacement with ``seed`` (all for :data:`ALL`)."""
    if count == ALL or int(count) >= len(data):
        return data
    generator = torch.Generator().manual_seed(seed)
    return data.subset(torch.randperm(len(data), generator=generator)[: int(count)].sort().values)


def _count(value: int | str | None) -> int | None:
    """A filled row count as :func:`draw_rows` takes it: None for :data:`ALL`."""
    assert value is not None  # filled by EvalOptions.resolved
    return None if value == ALL else int(value)


@dataclass
class EvaluationRows:
    """What the metrics of one evaluation read.

    ``train``/``test`` serve the classifiers, the latent sampler and the figures;
    ``test_rows`` the metrics; ``probe_rows`` is the probe's ``num_train`` (None when
    ``train`` holds exactly the probe's rows, drawn here from a stream).
    """

    train: MultimodalDataset
    test: MultimodalDataset
    test_rows: MultimodalDataset
    probe_rows: int | None
    test_length: int
    likelihood_source: MultimodalDataset | TorchData
    num_test: int | str
    likelihood_count: int | str
    seed: int
    streamed: bool

    def likelihood_rows(self) -> MultimodalDataset:
        """The likelihood's test rows (``likelihood_num_test``), drawn on first use."""
        if not self.streamed:
            assert isinstance(self.likelihood_source, MultimodalDataset)
            return _rows(self.likelihood_source, self.likelihood_count, self.seed)
        if self.likelihood_count == self.num_test or len(self.test) == self.test_length:
            return _rows(self.test, self.likelihood_count, self.seed)  # the drawn test rows hold them
        return draw_rows(self.likelihood_source, _count(self.likelihood_count), self.seed,
                         parameter="likelihood_num_test")


def evaluation_rows(
    run: LoadedRun, settings: EvalOptions, seed: int, *, train: Source | None, test: Source | None,
    given: bool = False,
) -> EvaluationRows:
    """The rows of an evaluation with resolved ``settings`` (see the module docstring).

    Raises:
        UserError: one of ``train``/``test`` given without the other, of another type or
            other modalities than the run's; or drawn rows above ``OMNIVAE_MAX_LOAD_GB``
            (naming ``num_train``, ``num_test`` or ``likelihood_num_test``).
    """
    streams = _sources(run, train=train, test=test) if given else {"train": train, "test": test}
    train_source, test_source = streams["train"], streams["test"]
    assert isinstance(train_source, (MultimodalDataset, TorchData))
    assert isinstance(test_source, (MultimodalDataset, TorchData))
    num_train = _count(settings.num_train)
    num_test = settings.num_test
    assert num_test is not None and settings.likelihood_num_test is not None
    if isinstance(train_source, MultimodalDataset) and isinstance(test_source, MultimodalDataset):
        return EvaluationRows(train_source, test_source, _rows(test_source, num_test, seed), num_train,
                              len(test_source), test_source, num_test, settings.likelihood_num_test, seed, False)
    drawn_train = draw_rows(train_source, num_train, seed, sort=False, parameter="num_train")  # the probe's order
    drawn_test = draw_rows(test_source, _count(num_test), seed)
    return EvaluationRows(drawn_train, drawn_test, drawn_test, None, len(test_source), test_source, num_test,
                          settings.likelihood_num_test, seed, True)


def _sources(run: LoadedRun, **given: Source | None) -> dict[str, MultimodalDataset | TorchData]:
    """The ``train`` and ``test`` data of :func:`evaluate_run`, each in memory or a
    :class:`TorchData` with the run's modalities; both are needed."""
    out: dict[str, MultimodalDataset | TorchData] = {}
    expected = [m.to_json() for m in run.modalities]
    for parameter, source in given.items():
        if source is None:
            raise UserError(f"{parameter} is missing; give both train and test data, or neither to evaluate "
                            "on the run's dataset", parameter=parameter)
        if isinstance(source, (Dataset, DataLoader)):
            source = TorchData(source, run.modalities, name=f"{parameter} data")
        if not isinstance(source, (MultimodalDataset, TorchData)):
            raise UserError(f"{parameter} must be a MultimodalDataset, TorchData, torch Dataset or DataLoader, "
                            f"got {type(source).__name__}", parameter=parameter)
        if [m.to_json() for m in source.modalities] != expected:
            raise UserError(f"{parameter} has modalities {[m.to_json() for m in source.modalities]}, but the run "
                            f"was trained on {expected}", parameter=parameter)
        out[parameter] = source
    return out
