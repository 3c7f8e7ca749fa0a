"""PyTorch data: training and evaluation from a Dataset or DataLoader streamed from disk.

The data are written as memory-mapped ``.npy`` files (and an HDF5 file), larger than the
in-memory load cap the test sets, which the in-memory loader then refuses; the streamed
path trains and evaluates, and on the same rows and seed reaches bit-for-bit the
parameters and metrics of the in-memory path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from helpers import MODALITIES, NAMES, tiny_arrays, tiny_config
from omnivae.data import MultimodalDataset, load_npz_array
from omnivae.data.torch_data import ArrayDataset, TorchData
from omnivae.errors import DataError, UserError
from omnivae.metrics.reconstruction import reconstruction_error
from omnivae.models import build_model
from omnivae.train import TrainConfig, Trainer

N_TRAIN, N_TEST = 80, 24


def _arrays(n: int, seed: int) -> dict[str, np.ndarray]:
    """Tiny arrays with about a quarter of each modality missing (zeros under the mask)."""
    arrays = tiny_arrays(n, seed)
    rng = np.random.default_rng(seed + 7)
    observed = rng.random((len(NAMES), n)) < 0.75
    observed[1] |= ~observed.any(0)  # every row keeps a modality
    for i, name in enumerate(NAMES):
        arrays[name][~observed[i]] = 0
        arrays[f"mask_{name}"] = observed[i]
    return arrays


def _write_npy(folder: Path, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    maps = {}
    for key, array in arrays.items():
        np.save(folder / f"{key}.npy", array)
        maps[key] = np.load(folder / f"{key}.npy", mmap_mode="r")
        assert isinstance(maps[key], np.memmap)
    return maps


def _in_memory(arrays: dict[str, np.ndarray]) -> MultimodalDataset:
    return MultimodalDataset(
        modalities=MODALITIES,
        data={name: torch.from_numpy(np.array(arrays[name])) for name in NAMES},
        masks={name: torch.from_numpy(np.array(arrays[f"mask_{name}"])) for name in NAMES},
        labels=torch.from_numpy(np.array(arrays["labels"])),
    )


def _fit(train_data, test_data) -> Trainer:
    torch.manual_seed(0)
    model, objective = build_model(tiny_config("mopoe"), MODALITIES)
    config = TrainConfig(epochs=2, batch_size=16, seed=3, device="cpu", progress=False, missing_rate=0.2)
    trainer = Trainer(model, objective, train_data, config, test_data=test_data)
    trainer.fit()
    return trainer


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    train, test = _arrays(N_TRAIN, 0), _arrays(N_TEST, 100)
    np.savez(root / "train.npz", **train)
    return root, train, _write_npy(root / "train", train), _write_npy(root / "test", test), test


def test_streamed_from_disk_above_the_cap_matches_in_memory(files, monkeypatch):
    root, train, train_maps, test_maps, test = files
    total = sum(a.nbytes for a in train.values())
    monkeypatch.setenv("OMNIVAE_MAX_LOAD_GB", str(total / 3 / 2**30))  # a third of the data fits
    with pytest.raises(DataError, match="OMNIVAE_MAX_LOAD_GB"):
        load_npz_array(root / "train.npz")

    stream = TorchData(ArrayDataset(train_maps))
    assert stream.modalities == MODALITIES  # uint8 image, float vector, bool binary, as in memory
    streamed = _fit(stream, TorchData(ArrayDataset(test_maps)))
    memory = _fit(_in_memory(train), _in_memory(test))

    for key, value in memory.model.state_dict().items():
        assert torch.equal(value, streamed.model.state_dict()[key]), key
    drop = ("seconds", "samples_per_second")
    assert [{k: v for k, v in r.items() if k not in drop} for r in streamed.history] == [
        {k: v for k, v in r.items() if k not in drop} for r in memory.history
    ]
    assert "test_loss" in streamed.history[-1]
    # Evaluation streams too: the objective on the test split, and a metric of omnivae.metrics.
    losses = []
    for trainer, data in ((streamed, TorchData(ArrayDataset(test_maps))), (memory, _in_memory(test))):
        torch.manual_seed(5)  # the objective samples z
        losses.append(trainer.evaluate_loss(data))
    assert losses[0] == losses[1]
    assert reconstruction_error(streamed.model, TorchData(ArrayDataset(test_maps)), batch_size=10) == (
        reconstruction_error(memory.model, _in_memory(test), batch_size=10)
    )


def test_dataloader_over_hdf5_with_workers(files, tmp_path):
    """A DataLoader of the user's own (its batch size and sampler), reading an HDF5 file in a
    worker process; an epoch is ``len(loader)`` steps."""
    h5py = pytest.importorskip("h5py")
    _, train, *_ = files
    path = tmp_path / "train.h5"
    with h5py.File(path, "w") as f:
        for key, array in train.items():
            f.create_dataset(key, data=array)

    class H5(Dataset):
        """Opens the file in each process that reads (h5py handles do not cross forks)."""

        def __len__(self) -> int:
            return N_TRAIN

        def __getitems__(self, indices):
            with h5py.File(path, "r") as f:
                return ArrayDataset({k: f[k] for k in f}).__getitems__(indices)

    loader = DataLoader(H5(), batch_size=20, shuffle=True, num_workers=1, collate_fn=lambda batch: batch,
                        generator=torch.Generator().manual_seed(0))
    trainer = _fit(loader, None)
    assert trainer.steps_per_epoch == 4 and trainer.global_step == 8
    assert all(np.isfinite(r["train_loss"]) for r in trainer.history)
    assert trainer.evaluate_loss(loader)["loss"] > 0


def test_map_style_samples_and_batched_reads_agree(files):
    _, train, train_maps, *_ = files
    data = ArrayDataset(train_maps)
    rows = [5, 2, 9, 2]  # unsorted, repeated: the batched read sorts and puts back
    batched = data.__getitems__(rows)
    for position, row in enumerate(rows):
        for key, value in data[row].items():
            assert torch.equal(batched[key][position], value)
    batch = next(TorchData(data).batches(4))
    assert torch.equal(batch.x["img"], torch.from_numpy(np.array(train["img"][:4])).float() / 255)
    assert torch.equal(batch.mask["vec"], torch.from_numpy(np.array(train["mask_vec"][:4])))


class Items(Dataset):
    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def test_unobserved_values_are_zeroed_and_masks_optional():
    items = [{"a": torch.tensor([float("nan"), 1.0]), "mask_a": torch.tensor(False), "b": torch.ones(3)}] * 2
    batch = next(TorchData(Items(items)).batches(2))
    assert torch.equal(batch.x["a"], torch.zeros(2, 2))
    assert batch.mask["a"].tolist() == [False, False] and batch.mask["b"].tolist() == [True, True]


def test_bad_sources_are_one_clear_error():
    with pytest.raises(UserError, match="must be a torch.utils.data Dataset or DataLoader"):
        TorchData([{"a": torch.ones(2)}])  # type: ignore[arg-type]
    class Stream(IterableDataset):
        def __iter__(self):
            yield {"a": torch.ones(2)}

    with pytest.raises(UserError, match="IterableDataset"):
        TorchData(Stream())
    with pytest.raises(UserError, match="has no length"):
        TorchData(DataLoader(Stream(), batch_size=2))
    with pytest.raises(DataError, match=r"unknown key\(s\) \['mask_x'\]"):
        next(TorchData(Items([{"a": torch.ones(2), "mask_x": torch.tensor(True)}])).batches(1))
    data = TorchData(Items([{"labels": torch.tensor(1)}]), modalities=[MODALITIES[1]])
    with pytest.raises(DataError, match="lacks modality 'vec'"):
        next(data.batches(1))
    with pytest.raises(DataError, match=r"shape \(2,\), expected \(6,\)"):
        next(TorchData(Items([{"vec": torch.ones(2)}]), modalities=[MODALITIES[1]]).batches(1))
    with pytest.raises(UserError, match="must be a MultimodalDataset, a torch Dataset or a DataLoader"):
        Trainer(*build_model(tiny_config("mwb"), MODALITIES), "data.npz", TrainConfig(device="cpu"))  # type: ignore[arg-type]
