"""MHD (Multimodal Handwritten Digits), read from the user's ``mhd_train.pt`` / ``mhd_test.pt``.

MHD (Vasco et al., "Leveraging hierarchy in multimodal generative models for effective
cross-modality inference", Neural Networks 2022) pairs, for 50,000 training and 10,000
test digits, a 28x28 grey image, a 200-value pen trajectory and a spoken-digit
spectrogram. The files come from the Nexus repository
(https://github.com/miguelsvasco/nexus_pytorch, ``scenarios/get_mhd_dataset.sh``);
nothing is downloaded here. Each file is a ``torch.save`` of the tuple
``(labels, image, trajectory, audio, traj_normalization, audio_normalization)``, read
with ``torch.load(..., weights_only=True)`` so that loading never runs pickled code.

Storage, as checked on load:

- ``image``: ``[N, 1, 28, 28]`` (or ``[N, 28, 28]``). Float values in [0, 1] are stored
  as ``uint8`` ``round(255 x)`` with kind ``image`` (batches see ``x`` again up to 1/510);
  ``uint8`` images are kept as they are. Float images outside [0, 1] are kept as
  ``float32`` with kind ``vector``, with a warning.
- ``trajectory``: ``[N, 200]`` float, kind ``vector``.
- ``audio``: the peer loaders (Nexus, MultiVae) turn each stored sample ``a`` of shape
  ``(K, A, B)`` into ``cat(a[0], ..., a[K-1]).unsqueeze(0).permute(0, 2, 1)``, shape
  ``(1, B, K*A)``. The references disagree on the result ((1, 32, 128) in the JNF paper
  and the nips_experiments config, "3x32x32" in a code comment), so the shape is taken
  from the file: the same transformation is applied to all samples at once, and a
  stored ``[N, A, B]`` array (already concatenated) becomes ``[N, 1, B, A]``. Kind
  ``vector``, ``float32``.
- labels: ``int64`` digits 0..9. The normalisation statistics are not used.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import torch
from torch import Tensor

from omnivae.data.base import DatasetSplits, ModalityKind, ModalitySpec, MultimodalDataset
from omnivae.data.registry import DatasetInfo, describe_modalities
from omnivae.errors import DataError

__all__ = [
    "MHD_FILES",
    "MHD_MODALITIES",
    "read_mhd_file",
    "mhd_audio_layout",
    "mhd_dataset",
    "load_mhd",
    "ENTRIES",
]

#: The two files, by split.
MHD_FILES: dict[str, str] = {"train": "mhd_train.pt", "test": "mhd_test.pt"}
#: The modalities as published (the audio shape is confirmed from the files on load).
MHD_MODALITIES: tuple[ModalitySpec, ...] = (
    ModalitySpec("image", (1, 28, 28), "image"),
    ModalitySpec("trajectory", (200,), "vector"),
    ModalitySpec("audio", (1, 32, 128), "vector"),
)
LABEL_NAMES = [str(d) for d in range(10)]
_SOURCE = (
    "get them with scenarios/get_mhd_dataset.sh of https://github.com/miguelsvasco/nexus_pytorch "
    "(Google Drive ids 1Tj1i-hXA0INQpU0jmuTMO4IwfDoGD2oV and 1qiEjFNCFn1ws383pKmY3zJtm4JDymOU6)"
)
_NEEDS = "mhd needs mhd_train.pt and mhd_test.pt in data_dir"
_TUPLE = "(labels, image, trajectory, audio, traj_normalization, audio_normalization)"


def _refusal(error: Exception) -> str:
    """The object named in torch's long weights-only message (``GLOBAL module.name``)."""
    text = " ".join(str(error).split())
    marker = "Unsupported global: "
    return text[text.index(marker) + len(marker) :].split(" was not")[0].split(". ")[0]


def _one_line(error: Exception) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


def read_mhd_file(path: str | os.PathLike[str]) -> tuple:
    """The 6-tuple stored in one MHD file, loaded with ``weights_only=True`` on the CPU.

    Raises:
        DataError: if the file is missing, damaged, holds objects that ``weights_only``
            refuses (omnivae never unpickles arbitrary code), or is not the 6-tuple.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{_NEEDS}; {path} not found; {_SOURCE}", parameter="data_dir")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "unsupported global" not in str(error).lower():  # not a refused object: a damaged file
            raise DataError(f"cannot read {path} ({_one_line(error)}); the file is damaged; {_SOURCE}") from error
        raise DataError(
            f"{path} holds objects that torch.load(weights_only=True) refuses (it holds {_refusal(error)}); omnivae "
            "does not unpickle arbitrary objects: re-save the tuple with tensors, numbers and dicts of them"
        ) from error
    except Exception as error:  # any other failure to read a user's file means: damaged
        raise DataError(f"cannot read {path} ({_one_line(error)}); the file is damaged; {_SOURCE}") from error
    if not isinstance(content, (tuple, list)) or len(content) != 6:
        kind = type(content).__name__ + (f" of length {len(content)}" if isinstance(content, (tuple, list)) else "")
        raise DataError(f"{path} holds a {kind}, not the tuple {_TUPLE}; {_SOURCE}")
    for position, name in enumerate(("labels", "image", "trajectory", "audio")):
        if not isinstance(content[position], Tensor):
            raise DataError(f"{path}: {name} (item {position} of {_TUPLE}) is a {type(content[position]).__name__}, not a tensor")
    return tuple(content)


def mhd_audio_layout(audio: Tensor) -> Tensor:
    """The peer loaders' per-sample audio transformation, applied to all samples at once.

    A stored sample ``a`` of shape ``(K, A, B)`` becomes
    ``torch.cat(list(a), 0).unsqueeze(0).permute(0, 2, 1)``, shape ``(1, B, K*A)``
    (Nexus ``MMDataset.__getitem__``; MultiVae ``MHD.__getitem__``). A stored
    ``[N, A, B]`` array counts as already concatenated and becomes ``[N, 1, B, A]``.

    Args:
        audio: ``[N, K, A, B]`` or ``[N, A, B]``.

    Returns:
        ``float32 [N, 1, B, K*A]``.

    Example:
        >>> mhd_audio_layout(torch.zeros(2, 4, 32, 32)).shape
        torch.Size([2, 1, 32, 128])
    """
    if audio.dim() == 4:
        n, k, a, b = audio.shape
        stacked = audio.reshape(n, k * a, b)  # cat of the K slices along their first axis
    elif audio.dim() == 3:
        stacked = audio
    else:
        raise DataError(
            f"MHD audio has shape {tuple(audio.shape)}; expected [N, K, A, B] (e.g. [N, 4, 32, 32]) "
            "or the concatenated [N, 128, 32]"
        )
    return stacked.transpose(1, 2).unsqueeze(1).to(torch.float32).contiguous()


def _image(image: Tensor, path: Path) -> tuple[Tensor, ModalityKind]:
    if image.dim() == 3:
        image = image.unsqueeze(1)
    if image.dim() != 4:
        raise DataError(f"{path}: the image tensor has shape {tuple(image.shape)}; expected [N, 1, 28, 28]")
    if image.dtype == torch.uint8:
        return image.contiguous(), "image"
    if not image.dtype.is_floating_point:
        raise DataError(f"{path}: the image tensor has dtype {image.dtype}; expected float in [0, 1] or uint8")
    image = image.to(torch.float32)
    if not bool(torch.isfinite(image).all()):
        raise DataError(f"{path}: the images hold NaN or infinite values; the file is damaged; {_SOURCE}")
    low, high = float(image.min()), float(image.max())
    if low >= 0.0 and high <= 1.0:
        return image.mul(255.0).round_().to(torch.uint8), "image"
    warnings.warn(
        f"{path}: MHD images range over [{low:.3g}, {high:.3g}], not [0, 1]; they are kept as float32 "
        "values with kind 'vector' (Gaussian likelihood)",
        stacklevel=3,
    )
    return image.contiguous(), "vector"


def mhd_dataset(path: str | os.PathLike[str], name: str = "mhd") -> MultimodalDataset:
    """One MHD split from its ``.pt`` file, as described in the module docstring.

    Returns:
        Modalities ``image`` (``uint8 [N, 1, 28, 28]``), ``trajectory`` (``float32 [N,
        200]``) and ``audio`` (``float32 [N, 1, B, K*A]``) with ``int64`` labels.
    """
    path = Path(path)
    labels, image, trajectory, audio = read_mhd_file(path)[:4]
    labels = labels.reshape(-1) if labels.dim() == 2 and labels.shape[1] == 1 else labels
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataError(f"{path}: labels have shape {tuple(labels.shape)} and dtype {labels.dtype}; expected integers [N]")
    labels = labels.to(torch.int64)
    n = labels.shape[0]
    if n and (int(labels.min()) < 0 or int(labels.max()) > 9):
        raise DataError(f"{path}: labels range over {int(labels.min())}..{int(labels.max())}; MHD labels are digits 0..9")
    for name_, tensor in (("image", image), ("trajectory", trajectory), ("audio", audio)):
        if tensor.shape[0] != n:
            raise DataError(f"{path}: {tensor.shape[0]} {name_} rows for {n} labels; the file is damaged; {_SOURCE}")
    image, image_kind = _image(image, path)
    if trajectory.dim() != 2 or not trajectory.dtype.is_floating_point:
        raise DataError(f"{path}: the trajectory tensor has shape {tuple(trajectory.shape)} and dtype {trajectory.dtype}; expected float [N, 200]")
    if not audio.dtype.is_floating_point:
        raise DataError(f"{path}: the audio tensor has dtype {audio.dtype}; expected float")
    audio = mhd_audio_layout(audio)
    trajectory = trajectory.to(torch.float32).contiguous()
    modalities = (
        ModalitySpec("image", tuple(image.shape[1:]), image_kind),
        ModalitySpec("trajectory", tuple(trajectory.shape[1:]), "vector"),
        ModalitySpec("audio", tuple(audio.shape[1:]), "vector"),
    )
    return MultimodalDataset(
        modalities=modalities,
        data={"image": image, "trajectory": trajectory, "audio": audio},
        labels=labels,
        label_names=list(LABEL_NAMES),
        name=name,
    )


def _folder(data_dir: str | os.PathLike[str] | None) -> Path:
    if not data_dir:
        raise DataError(f"{_NEEDS} (none given); {_SOURCE}", parameter="data_dir")
    base = Path(data_dir).expanduser()
    for folder in (base, base / "mhd", base / "MHD"):
        if all((folder / file).is_file() for file in MHD_FILES.values()):
            return folder
    missing = [file for file in MHD_FILES.values() if not (base / file).is_file()]
    raise DataError(f"{_NEEDS}; {base} lacks {' and '.join(missing)}; {_SOURCE}", parameter="data_dir")


def load_mhd(data_dir: str | os.PathLike[str] | None, seed: int = 0) -> DatasetSplits:
    """MHD from ``data_dir`` (or its ``mhd/`` subfolder): 50,000 train and 10,000 test digits.

    Args:
        data_dir: the folder holding ``mhd_train.pt`` and ``mhd_test.pt``.
        seed: unused; the split is the files'.

    Raises:
        DataError: for missing or malformed files, or train and test files whose
            modalities differ.
    """
    del seed
    folder = _folder(data_dir)
    train = mhd_dataset(folder / MHD_FILES["train"])
    test = mhd_dataset(folder / MHD_FILES["test"])
    if train.modalities != test.modalities:
        raise DataError(
            f"{folder}: mhd_train.pt and mhd_test.pt have different modalities "
            f"({describe_modalities(train.modalities)} vs {describe_modalities(test.modalities)})"
        )
    return DatasetSplits(train, test)


ENTRIES = (
    (
        DatasetInfo(
            name="mhd",
            description=(
                "MHD (Vasco et al., 2022): a digit's image, pen trajectory and spoken spectrogram, "
                "from the Nexus files"
            ),
            modalities=describe_modalities(MHD_MODALITIES),
            n_train=50_000,
            n_test=10_000,
            offline=False,
            needs="mhd_train.pt and mhd_test.pt from https://github.com/miguelsvasco/nexus_pytorch "
            "(scenarios/get_mhd_dataset.sh)",
        ),
        lambda data_dir, seed: load_mhd(data_dir, seed),
    ),
)
