"""The papers' metrics on streamed data: ``evaluate_run(train=..., test=...)`` with
memory-mapped ``.npy`` files gives the values of the same rows held in memory, and a
protocol that would read more rows than ``OMNIVAE_MAX_LOAD_GB`` allows is refused up front."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import MODALITIES, NAMES, tiny_arrays, tiny_config

from omnivae.data import DatasetSplits, MultimodalDataset
from omnivae.data.torch_data import ArrayDataset, TorchData, draw_rows
from omnivae.errors import UserError
from omnivae.evaluate import EvalOptions, evaluate_run
from omnivae.train import TrainConfig
from omnivae.train.run import train as fit

N_TRAIN, N_TEST = 80, 24


def _arrays(n: int, seed: int) -> dict[str, np.ndarray]:
    """Tiny arrays, a quarter of the vectors unobserved (NaN under the mask: never read)."""
    arrays = tiny_arrays(n, seed)
    observed = np.random.default_rng(seed + 1).random(n) < 0.75
    arrays["vec"][~observed] = np.nan
    arrays["mask_vec"] = observed
    return arrays


def _in_memory(arrays: dict[str, np.ndarray]) -> MultimodalDataset:
    data = {name: torch.from_numpy(np.array(arrays[name])) for name in NAMES}
    data["vec"] = torch.nan_to_num(data["vec"], nan=0.0)  # as the in-memory loaders store unobserved values
    return MultimodalDataset(MODALITIES, data, {"vec": torch.from_numpy(arrays["mask_vec"].copy())},
                             torch.from_numpy(arrays["labels"].copy()))


def _mapped(folder: Path, arrays: dict[str, np.ndarray]) -> TorchData:
    folder.mkdir()
    for key, array in arrays.items():
        np.save(folder / f"{key}.npy", array)
    return TorchData(ArrayDataset({k: np.load(folder / f"{k}.npy", mmap_mode="r") for k in arrays}))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream-eval")
    train, test = _arrays(N_TRAIN, 0), _arrays(N_TEST, 50)
    config = TrainConfig(epochs=2, batch_size=16, seed=1, device="cpu", progress=False)
    fit(tiny_config("mopoe"), config, DatasetSplits(_in_memory(train), _in_memory(test)), "toy", root / "run")
    return root, train, test, _mapped(root / "train", train), _mapped(root / "test", test)


def _evaluate(run_dir: Path, cache: Path, monkeypatch, train, test, **options) -> dict:
    monkeypatch.setenv("OMNIVAE_CACHE", str(cache))  # each call trains its own classifiers
    settings = EvalOptions(device="cpu", figures=False, progress=False, **options)
    return evaluate_run(run_dir, settings, train=train, test=test)


def _values(results: dict, metrics: tuple[str, ...]) -> dict:
    return {m: results[m] for m in metrics} | {"settings": {m: {k: v for k, v in results["settings"][m].items()
                                                                if k not in ("seconds", "computed_at")}
                                                            for m in metrics}}


def test_streamed_metrics_equal_in_memory_on_the_same_rows(run, tmp_path, monkeypatch):
    root, train, test, train_stream, test_stream = run
    metrics = ("coherence", "probe", "recon")
    options = dict(metrics=metrics, classifier_epochs=1, joint_coherence_samples=20)
    memory = _evaluate(root / "run", tmp_path / "a", monkeypatch, _in_memory(train), _in_memory(test), **options)
    streamed = _evaluate(root / "run", tmp_path / "b", monkeypatch, train_stream, test_stream, **options)
    assert _values(streamed, metrics) == _values(memory, metrics)
    assert streamed["classifiers"] == memory["classifiers"]
    assert 0.0 <= streamed["coherence"]["by_size"]["1"] <= 1.0


def test_drawn_rows_are_the_in_memory_draw(run, tmp_path, monkeypatch):
    """Row counts below the split's length: the stream reads the rows the in-memory path draws."""
    root, train, test, train_stream, test_stream = run
    metrics = ("probe", "recon", "likelihood")
    options = dict(metrics=metrics, num_train=30, num_test=10, likelihood_num_test=5, num_importance_samples=3,
                   seed=4)
    memory = _evaluate(root / "run", tmp_path / "a", monkeypatch, _in_memory(train), _in_memory(test), **options)
    streamed = _evaluate(root / "run", tmp_path / "b", monkeypatch, train_stream, test_stream, **options)
    assert _values(streamed, metrics) == _values(memory, metrics)
    assert streamed["settings"]["probe"]["train_rows"] == 30 and streamed["settings"]["recon"]["test_rows"] == 10
    assert streamed["run"]["test samples"] == N_TEST
    drawn = draw_rows(test_stream, 10, seed=4)
    expected = torch.randperm(N_TEST, generator=torch.Generator().manual_seed(4))[:10].sort().values
    assert torch.equal(drawn.data["img"], _in_memory(test).data["img"][expected])


def test_paper_protocol_above_the_memory_cap_is_refused(run, tmp_path, monkeypatch):
    root, train, test, train_stream, test_stream = run
    row = sum(a[0].nbytes for a in train.values())
    monkeypatch.setenv("OMNIVAE_MAX_LOAD_GB", str(row * 50 / 2**30))  # 50 rows fit, not the 80 paper reads
    before = sorted(p.name for p in (root / "run").iterdir())
    with pytest.raises(UserError, match=r"num_train: 80 rows .* at most 50 rows .*OMNIVAE_MAX_LOAD_GB") as error:
        _evaluate(root / "run", tmp_path, monkeypatch, train_stream, test_stream, protocol="paper",
                  metrics=("probe",))
    assert error.value.parameter == "num_train"
    assert "\n" not in str(error.value)
    assert sorted(p.name for p in (root / "run").iterdir()) == before  # nothing written
    # The fast protocol's counts fit: the test split's 24 rows, the 80 training rows capped at 50 by num_train.
    result = _evaluate(root / "run", tmp_path, monkeypatch, train_stream, test_stream, metrics=("recon",),
                       num_train=50)
    assert result["settings"]["recon"]["test_rows"] == N_TEST


def test_train_without_test_is_one_clear_error(run, tmp_path, monkeypatch):
    root, _, _, train_stream, _ = run
    with pytest.raises(UserError, match="test is missing") as error:
        _evaluate(root / "run", tmp_path, monkeypatch, train_stream, None, metrics=("recon",))
    assert error.value.parameter == "test"
