"""Per-modality classifiers that judge generated samples, trained once and cached.

Coherence (Shi et al. 2019, Sec. 4; Sutter et al. 2021, Sec. 4) asks whether a sample
generated for modality m carries the right label, and the Frechet distance (Heusel et
al. 2017) compares generated and real samples in a feature space. Both need one
classifier per modality. This module builds them (the PolyMNIST digit classifier of the
MoPoE and MultiVae evaluations for images, a small MLP otherwise), trains them on the
train split, measures class-balanced test accuracy, and caches weights and accuracies as
safetensors plus JSON (never pickle) under ``cache_dir()/classifiers/<key>/``. The key
fingerprints the dataset, so a changed dataset retrains; a damaged cache retrains too.

Labels are either integers ``[N]`` (single-label, e.g. the PolyMNIST digit) or a binary
matrix ``[N, L]`` (multi-label, e.g. the 40 CelebA attributes), in which case the
classifiers output one logit per label and are scored by mean average precision.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from sklearn.metrics import average_precision_score
from torch import Tensor, nn
from tqdm.auto import tqdm

from omnivae.data.base import ModalitySpec, MultimodalDataset
from omnivae.data.cache import cache_dir
from omnivae.fileio import atomic_write, finite_or_none, sha256_file
from omnivae.metrics.classifier_nets import (
    ConvClassifier,
    MLPClassifier,
    build_classifier,
)
from omnivae.metrics.common import evaluating, require_labels, seeded

__all__ = [
    "ConvClassifier",
    "MLPClassifier",
    "build_classifier",
    "ModalityClassifiers",
    "balanced_accuracy",
    "mean_average_precision",
    "train_classifiers",
    "evaluate_classifiers",
    "classifier_cache_key",
    "get_classifiers",
]

# Bump when the architectures or the training recipe change: old caches then miss.
_CACHE_VERSION = 1
_WEIGHTS = "weights.safetensors"
_META = "meta.json"
# How much of each modality's data enters the dataset fingerprint (elements).
_FINGERPRINT_ELEMENTS = 1 << 16





# -- scores -------------------------------------------------------------------------------------
def balanced_accuracy(pred: Tensor, target: Tensor, num_classes: int) -> float:
    """Mean over the classes present in ``target`` of the per-class recall.

    The "mean of per-class accuracies" that MultiVae reports for coherence; equal to plain
    accuracy on balanced data and robust to imbalance. ``nan`` for an empty target.

    Example:
        >>> balanced_accuracy(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 1]), 2)
        0.75
    """
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long().to(target.device)
    total = torch.bincount(target, minlength=num_classes)
    correct = torch.bincount(target[pred == target], minlength=num_classes)
    present = total > 0
    if not bool(present.any()):
        return float("nan")
    return float((correct[present].double() / total[present].double()).mean())


def mean_average_precision(scores: Tensor, targets: Tensor) -> float:
    """Macro average precision over labels (columns) that have a positive example.

    The multi-label score of MM-VAMP's CelebA evaluation (average precision per attribute,
    averaged). ``scores`` and ``targets`` are ``[N, L]``; ``nan`` if no label has a positive.
    """
    y = targets.reshape(targets.shape[0], -1).detach().cpu().numpy() > 0.5
    s = scores.reshape(scores.shape[0], -1).detach().double().cpu().numpy()
    keep = y.any(0)
    if y.shape[0] == 0 or not keep.any():
        return float("nan")
    return float(average_precision_score(y[:, keep], s[:, keep], average="macro"))


# -- the classifier collection ---------------------------------------------------------------
@dataclass
class ModalityClassifiers:
    """One trained classifier per modality, with its class-balanced test accuracy.

    Attributes:
        models: ``name -> classifier`` (logits ``[B, classes]``, ``features`` ``[B, 128]``).
        test_accuracy: ``name -> balanced test accuracy`` (mean average precision for
            multi-label data).
        num_classes: Classes (or labels, when multi-label).
        multilabel: Whether each sample has ``num_classes`` independent binary labels.
    """

    models: dict[str, nn.Module]
    test_accuracy: dict[str, float]
    num_classes: int
    multilabel: bool = False

    def to(self, device: torch.device | str) -> ModalityClassifiers:
        """Move every classifier to ``device`` (in place) and return self."""
        for net in self.models.values():
            net.to(device)
        return self

    def _run(self, name: str, x: Tensor, features: bool) -> Tensor:
        net = self.models[name]
        with torch.no_grad(), evaluating(net):
            param = next(net.parameters(), None)
            if param is not None:
                x = x.to(param.device)
            return cast(Any, net).features(x) if features else net(x)

    def scores(self, name: str, x: Tensor) -> Tensor:
        """Class probabilities ``[B, classes]`` (independent sigmoids when multi-label)."""
        logits = self._run(name, x, features=False)
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, -1)

    def predict(self, name: str, x: Tensor) -> Tensor:
        """Predicted classes ``LongTensor[B]`` (``[B, L]`` of 0/1 when multi-label)."""
        logits = self._run(name, x, features=False)
        return (logits > 0).long() if self.multilabel else logits.argmax(-1)

    def features(self, name: str, x: Tensor) -> Tensor:
        """Penultimate activations ``[B, F]`` of the classifier of ``name``."""
        return self._run(name, x, features=True)


# -- training and evaluation -------------------------------------------------------------------
def _label_layout(train: MultimodalDataset, test: MultimodalDataset) -> tuple[int, bool]:
    """(number of classes or labels, multi-label?) from the labels of both splits."""
    train_labels = require_labels(train, "classifier")
    test_labels = require_labels(test, "classifier")
    if train_labels.dim() == 2:
        return int(train_labels.shape[1]), True
    if train.label_names:
        return len(train.label_names), False
    return int(max(int(train_labels.max()), int(test_labels.max()))) + 1, False


def _loss(logits: Tensor, labels: Tensor, multilabel: bool) -> Tensor:
    """Summed loss, so that a batch with no observed row of a modality contributes zero."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="sum")
    return F.cross_entropy(logits, labels.long(), reduction="sum")


def train_classifiers(
    train: MultimodalDataset,
    num_classes: int,
    multilabel: bool = False,
    *,
    epochs: int = 5,
    batch_size: int = 128,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, nn.Module]:
    """Train one classifier per modality on ``train`` (Adam 1e-3, cross-entropy).

    All classifiers step together over one shuffled pass per epoch; each sees only the
    rows where its modality is observed. One Adam over all parameters equals one Adam per
    classifier, since Adam's update is per parameter and the losses do not share weights.
    """
    require_labels(train, "classifier")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    with seeded(seed, device):
        models = {spec.name: build_classifier(spec, num_classes).to(device) for spec in train.modalities}
        params = [p for net in models.values() for p in net.parameters()]
        optimizer = torch.optim.Adam(params, lr=1e-3)
        for net in models.values():
            net.train()
        steps = epochs * train.num_batches(batch_size)
        bar = tqdm(total=steps, desc=f"coherence classifiers ({epochs} epochs, trained once)", unit="step",
                   disable=not progress, file=sys.stderr, leave=True, dynamic_ncols=True)
        for _ in range(epochs):
            for batch in train.batches(batch_size, shuffle=True, generator=generator):
                batch = batch.to(device)
                y = batch.labels
                assert y is not None  # require_labels checked the data
                loss = torch.zeros((), device=device)
                for name, net in models.items():
                    keep = batch.mask[name]
                    logits = net(batch.x[name][keep])
                    loss = loss + _loss(logits, y[keep], multilabel) / keep.sum().clamp_min(1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.update()
        bar.close()
    for net in models.values():
        net.eval()
    return models


@torch.no_grad()
def evaluate_classifiers(
    classifiers: ModalityClassifiers,
    test: MultimodalDataset,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Class-balanced test accuracy per modality (mean average precision if multi-label).

    Only rows where the modality is observed are scored.
    """
    labels = require_labels(test, "classifier").to(device)
    outputs: dict[str, list[Tensor]] = {name: [] for name in classifiers.models}
    for batch in test.batches(batch_size):
        batch = batch.to(device)
        for name in classifiers.models:
            if classifiers.multilabel:
                outputs[name].append(classifiers.scores(name, batch.x[name]))
            else:
                outputs[name].append(classifiers.predict(name, batch.x[name]))
    result = {}
    for name, parts in outputs.items():
        keep = test.masks[name].to(device)
        out = torch.cat(parts)[keep]
        if classifiers.multilabel:
            result[name] = mean_average_precision(out, labels[keep])
        else:
            result[name] = balanced_accuracy(out, labels[keep], classifiers.num_classes)
    return result


# -- caching --------------------------------------------------------------------------------------
def _fingerprint(data: MultimodalDataset) -> str:
    """A SHA-256 of the labels, the masks and a sample of each modality's values.

    Hashing every byte of a large image set would cost seconds per evaluation; the labels
    in full plus the first and a strided sample of each modality catch a changed dataset.
    """
    digest = hashlib.sha256()

    def add(tensor: Tensor) -> None:
        tensor = tensor.detach()
        digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
        flat = tensor.reshape(-1)
        step = max(1, flat.numel() // _FINGERPRINT_ELEMENTS)
        for part in (flat[:_FINGERPRINT_ELEMENTS], flat[::step][:_FINGERPRINT_ELEMENTS]):
            digest.update(part.contiguous().cpu().numpy().tobytes())

    if data.labels is not None:
        digest.update(data.labels.detach().contiguous().cpu().numpy().tobytes())
    for spec in data.modalities:
        digest.update(data.masks[spec.name].contiguous().cpu().numpy().tobytes())
        add(data.data[spec.name])
        if spec.name in data.rows:
            add(data.rows[spec.name])
    return digest.hexdigest()


def _dataset_slug(dataset_name: str) -> str:
    """A folder-safe name; ``npz:PATH`` becomes the file's stem plus a hash of path and size."""
    if dataset_name.startswith("npz:"):
        path = Path(dataset_name[4:]).expanduser().resolve()
        size = path.stat().st_size if path.is_file() else -1
        tag = hashlib.sha256(f"{path}\0{size}".encode()).hexdigest()[:12]
        return f"npz-{re.sub(r'[^A-Za-z0-9_.-]+', '-', path.stem)}-{tag}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset_name).strip("-.") or "dataset"


def classifier_cache_key(
    dataset_name: str,
    train: MultimodalDataset,
    test: MultimodalDataset,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
) -> str:
    """The cache folder name: dataset name, then a hash of specs, recipe and data.

    Example:
        >>> from omnivae.data.base import MultimodalDataset, ModalitySpec
        >>> d = MultimodalDataset((ModalitySpec("v", (2,)),), {"v": torch.zeros(3, 2)}, labels=torch.zeros(3).long())
        >>> classifier_cache_key("toy", d, d, epochs=1, batch_size=8, seed=0)[:4]
        'toy-'
    """
    digest = hashlib.sha256()
    recipe = {
        "version": _CACHE_VERSION,
        "dataset": dataset_name,
        "modalities": [spec.to_json() for spec in train.modalities],
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
    }
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    digest.update(_fingerprint(train).encode())
    digest.update(_fingerprint(test).encode())
    return f"{_dataset_slug(dataset_name)}-{digest.hexdigest()[:16]}"


def _save(folder: Path, classifiers: ModalityClassifiers, key: str) -> None:
    """Weights first, then the JSON record that vouches for them (written last, atomically)."""
    tensors = {
        f"{name}.{param}": value.detach().cpu().contiguous()
        for name, net in classifiers.models.items()
        for param, value in net.state_dict().items()
    }
    atomic_write(folder / _WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
    meta = {
        "version": _CACHE_VERSION,
        "key": key,
        "num_classes": classifiers.num_classes,
        "multilabel": classifiers.multilabel,
        "test_accuracy": classifiers.test_accuracy,
        "weights_sha256": sha256_file(folder / _WEIGHTS),
    }
    atomic_write(folder / _META, lambda tmp: tmp.write_text(json.dumps(finite_or_none(meta), indent=2, allow_nan=False) + "\n", encoding="utf-8"))


def _load(folder: Path, key: str, modalities: tuple[ModalitySpec, ...]) -> ModalityClassifiers:
    """Classifiers from a cache folder; raises on anything missing, altered or inconsistent."""
    meta = json.loads((folder / _META).read_text(encoding="utf-8"))
    if meta["version"] != _CACHE_VERSION or meta["key"] != key:
        raise ValueError("the cache record belongs to another dataset or version")
    if sha256_file(folder / _WEIGHTS) != meta["weights_sha256"]:
        raise ValueError("the weights do not match their checksum")
    tensors = load_file(str(folder / _WEIGHTS))
    num_classes, multilabel = int(meta["num_classes"]), bool(meta["multilabel"])
    models, accuracy = {}, {}
    for spec in modalities:
        net = build_classifier(spec, num_classes)
        prefix = f"{spec.name}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        net.load_state_dict(state, strict=True)
        models[spec.name] = net.eval()
        accuracy[spec.name] = float(meta["test_accuracy"][spec.name])
    return ModalityClassifiers(models, accuracy, num_classes, multilabel)


def get_classifiers(
    dataset_name: str,
    train: MultimodalDataset,
    test: MultimodalDataset,
    *,
    epochs: int = 5,
    batch_size: int = 128,
    seed: int = 0,
    device: torch.device | str = "cpu",
    cache: Path | None = None,
    progress: bool = True,
) -> ModalityClassifiers:
    """Per-modality classifiers for ``dataset_name``: from the cache, or trained and cached.

    Each classifier is trained on the train split (Adam, learning rate 1e-3, cross-entropy,
    masked rows excluded; binary cross-entropy for multi-label data) and scored on the test
    split by class-balanced accuracy, the protocol of the coherence evaluations of MoPoE
    (Sutter et al. 2021) and MultiVae. The weights (safetensors) and accuracies (JSON) are
    cached under ``<cache>/classifiers/<key>/`` where ``<cache>`` defaults to
    :func:`omnivae.data.cache.cache_dir` and the key covers the dataset name, the modality
    specs, the training recipe and a fingerprint of the data. A cache that fails to load
    or verify is retrained with a warning; an unwritable cache folder only warns.

    Args:
        dataset_name: The name the data was loaded by (``"polymnist"``, ``"npz:FILE"``).
        train: Training split; needs labels.
        test: Test split; needs labels.
        epochs: Passes over the training split.
        batch_size: Training batch size.
        seed: Seeds initialisation, dropout and shuffling.
        device: Where to train and where the returned classifiers live.
        cache: Root folder of the cache instead of ``cache_dir()``.
        progress: Show a progress bar while training.

    Raises:
        DataError: If either split has no labels.

    Example:
        >>> from omnivae.data.base import MultimodalDataset, ModalitySpec
        >>> d = MultimodalDataset((ModalitySpec("v", (2,)),), {"v": torch.randn(8, 2)}, labels=torch.arange(8) % 2)
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     clf = get_classifiers("toy", d, d, epochs=1, cache=Path(tmp), progress=False)
        >>> clf.predict("v", torch.randn(3, 2)).shape
        torch.Size([3])
    """
    num_classes, multilabel = _label_layout(train, test)
    key = classifier_cache_key(dataset_name, train, test, epochs=epochs, batch_size=batch_size, seed=seed)
    folder = (Path(cache).expanduser() if cache is not None else cache_dir()) / "classifiers" / key
    if (folder / _META).is_file():
        try:
            return _load(folder, key, train.modalities).to(device)
        except Exception as error:  # any failure to read a cache means: train again
            warnings.warn(f"the classifier cache {folder} is unusable ({error}); retraining", stacklevel=2)
    models = train_classifiers(
        train, num_classes, multilabel,
        epochs=epochs, batch_size=batch_size, seed=seed, device=device, progress=progress,
    )
    classifiers = ModalityClassifiers(models, {}, num_classes, multilabel).to(device)
    classifiers.test_accuracy = evaluate_classifiers(classifiers, test, device=device)
    try:
        _save(folder, classifiers, key)
    except OSError as error:
        warnings.warn(
            f"could not write the classifier cache {folder} ({error}); they will be retrained "
            "next time. Set OMNIVAE_CACHE to a writable folder to keep them.",
            stacklevel=2,
        )
    return classifiers
