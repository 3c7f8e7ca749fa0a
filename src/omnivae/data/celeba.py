"""Bimodal CelebA (face image + attribute text), MoPoE's version, from the user's files.

Sutter, Daunhawer and Vogt ("Generalized Multimodal ELBO", ICLR 2021, Sec. 5 and App. C)
pair each aligned CelebA face (Liu et al., ICCV 2015) with a text listing its attributes.
``--data-dir`` must hold:

- ``img_align_celeba/``: the aligned 178x218 JPGs ``000001.jpg`` ... (CelebA,
  https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html);
- ``list_attr_celeba.csv``: ``image_id`` and 40 attribute columns of -1/1;
- ``list_eval_partition.csv``: ``image_id, partition`` (0 train, 1 validation, 2 test);
  the official whitespace-separated ``list_attr_celeba.txt`` and
  ``list_eval_partition.txt`` are read as well;
- ``list_attr_text_256_False_True_celeba.csv``: ``image_id, text``, from MoPoE's data
  release (https://github.com/thomassutter/MoPoE). If it is absent the texts are made
  from the attributes by the same recipe (:func:`attribute_texts`, fixed seed), with a
  warning: the recipe matches but the random offsets differ from the published file's.

Modalities, as in MoPoE's CelebA experiment:

- ``image``: ``3x64x64`` ``uint8``: the 148x148 centre crop (top 35, left 15) resized
  to 64x64 with PIL's bicubic filter. MoPoE resizes a tensor with torchvision; PIL's
  bicubic filter also low-passes when shrinking, so pixels differ slightly.
- ``text``: ``categorical (256, 71)`` over MoPoE's 71-character alphabet, stored as
  ``int16`` indices (the ``*`` padding is a character of the alphabet).

Labels are the 40 attributes as a float ``[N, 40]`` matrix of 0/1 (attribute ``> 0``),
``label_names`` their names. Train is partition 0 (162,770 faces), test partition 2
(19,962); the validation partition is not used. Decoding the ~183,000 JPGs takes a few
minutes once; the images are cached as ``celeba-images-v1-<fingerprint>.npz`` (about
2.2 GB), where the fingerprint covers the names, sizes and modification times of the
images used, in order. Texts and labels are read from the CSVs on every load (seconds).
"""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from omnivae.data.base import DatasetSplits, ModalitySpec, MultimodalDataset
from omnivae.data.cache import cached_npz
from omnivae.data.registry import DatasetInfo, describe_modalities
from omnivae.data.text import ALPHABET, encode_strings
from omnivae.errors import DataError
from omnivae.fileio import atomic_write

__all__ = [
    "CELEBA_MODALITIES",
    "CELEBA_IMAGE_FOLDER",
    "CELEBA_ATTR_FILE",
    "CELEBA_PARTITION_FILE",
    "CELEBA_TEXT_FILE",
    "CROP_BOX",
    "TEXT_LENGTH",
    "TEXT_SEED",
    "read_celeba_attributes",
    "read_celeba_partition",
    "read_celeba_texts",
    "attribute_texts",
    "write_attribute_text_csv",
    "encode_texts",
    "decode_celeba_image",
    "decode_celeba_images",
    "load_celeba",
    "ENTRIES",
]

CELEBA_IMAGE_FOLDER = "img_align_celeba"
CELEBA_ATTR_FILE = "list_attr_celeba.csv"
CELEBA_PARTITION_FILE = "list_eval_partition.csv"
CELEBA_TEXT_FILE = "list_attr_text_256_False_True_celeba.csv"
TEXT_LENGTH = 256
IMAGE_SIZE = 64
CROP = 148
#: ``(width, height)`` of the aligned CelebA images.
ALIGNED_SIZE = (178, 218)
_TOP, _LEFT = (ALIGNED_SIZE[1] - CROP) // 2, (ALIGNED_SIZE[0] - CROP) // 2
#: The centre crop as a PIL box ``(left, top, right, bottom)``: ``(15, 35, 163, 183)``.
CROP_BOX = (_LEFT, _TOP, _LEFT + CROP, _TOP + CROP)
#: Seeds the text offsets when the text file is generated here.
TEXT_SEED = 0
TRAIN_PARTITION, TEST_PARTITION = 0, 2
CELEBA_MODALITIES: tuple[ModalitySpec, ...] = (
    ModalitySpec("image", (3, IMAGE_SIZE, IMAGE_SIZE), "image"),
    ModalitySpec("text", (TEXT_LENGTH, len(ALPHABET)), "categorical"),
)
_VERSION = "v1"
_CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
_MOPOE_URL = "https://github.com/thomassutter/MoPoE"
_NEEDS = (
    f"celeba needs in data_dir: {CELEBA_IMAGE_FOLDER}/ (the aligned 178x218 JPGs 000001.jpg ...), "
    f"{CELEBA_ATTR_FILE} and {CELEBA_PARTITION_FILE} (or their official .txt versions) from CelebA "
    f"({_CELEBA_URL}), and {CELEBA_TEXT_FILE} from MoPoE's data release ({_MOPOE_URL}; generated "
    "from the attributes when absent)"
)


# -- the lists ------------------------------------------------------------------------------------
def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {path} ({error}); {_NEEDS}", parameter="data_dir") from error
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise DataError(f"{path} has no rows; {_NEEDS}", parameter="data_dir")
    return lines


def _first_field(lines: Sequence[str], separator: str | None) -> list[str]:
    return [line.split(separator, 1)[0].strip().strip('"') for line in lines]


def _numbers(lines: Sequence[str], path: Path, columns: int, separator: str | None) -> np.ndarray:
    try:
        return np.loadtxt(lines, delimiter=separator, usecols=range(1, columns + 1), dtype=np.int64, ndmin=2)
    except ValueError as error:
        raise DataError(f"{path} is malformed ({' '.join(str(error).split())}); {_NEEDS}", parameter="data_dir") from error


def _unique(ids: list[str], path: Path) -> None:
    if len(set(ids)) != len(ids):
        raise DataError(f"{path} lists some image_id more than once; {_NEEDS}", parameter="data_dir")


def read_celeba_attributes(path: str | os.PathLike[str]) -> tuple[list[str], list[str], np.ndarray]:
    """The attribute list: ``list_attr_celeba.csv`` or the official ``list_attr_celeba.txt``.

    The CSV has a header ``image_id,<40 names>`` and rows of -1/1; the ``.txt`` has the
    row count, a line of names, then whitespace-separated rows.

    Returns:
        ``(image_ids, attribute_names, values int8 [N, A])`` with values in {-1, 0, 1}.
    """
    path = Path(path)
    lines = _lines(path)
    if path.suffix == ".csv":
        header = [field.strip().strip('"') for field in lines[0].split(",")]
        if header[0] != "image_id" or len(header) < 2:
            raise DataError(f"{path} should start with the header image_id,<attribute names>; {_NEEDS}", parameter="data_dir")
        names, rows, separator = header[1:], lines[1:], ","
    else:
        names, rows, separator = lines[1].split(), lines[2:], None
        if not rows:
            raise DataError(f"{path} has no rows; {_NEEDS}", parameter="data_dir")
    ids = _first_field(rows, separator)
    _unique(ids, path)
    values = _numbers(rows, path, len(names), separator)
    if values.shape[1] != len(names) or not np.isin(values, (-1, 0, 1)).all():
        raise DataError(f"{path} should hold one -1/1 value per attribute ({len(names)}) in every row; {_NEEDS}", parameter="data_dir")
    return ids, names, values.astype(np.int8)


def read_celeba_partition(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    """The split list: ``list_eval_partition.csv`` (``image_id,partition``) or its ``.txt``.

    Returns:
        ``(image_ids, partition int64 [N])`` with 0 train, 1 validation, 2 test.
    """
    path = Path(path)
    lines = _lines(path)
    separator = "," if path.suffix == ".csv" else None
    if separator and lines[0].split(",")[0].strip().strip('"') == "image_id":
        lines = lines[1:]
    ids = _first_field(lines, separator)
    _unique(ids, path)
    partition = _numbers(lines, path, 1, separator)[:, 0]
    if not np.isin(partition, (0, 1, 2)).all():
        raise DataError(f"{path} should hold partitions 0 (train), 1 (validation) or 2 (test); {_NEEDS}", parameter="data_dir")
    return ids, partition


def read_celeba_texts(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """MoPoE's attribute-text CSV: columns ``image_id`` and ``text`` (others are ignored).

    Returns:
        ``(image_ids, texts)``.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read {path} ({error}); {_NEEDS}", parameter="data_dir") from error
    if len(rows) < 2 or "image_id" not in rows[0] or "text" not in rows[0]:
        raise DataError(f"{path} should be a CSV with the columns image_id and text; {_NEEDS}", parameter="data_dir")
    id_column, text_column = rows[0].index("image_id"), rows[0].index("text")
    width = max(id_column, text_column) + 1
    body = [row for row in rows[1:] if row]
    if any(len(row) < width for row in body):
        raise DataError(f"{path} has rows without an image_id or a text; {_NEEDS}", parameter="data_dir")
    ids = [row[id_column].strip() for row in body]
    _unique(ids, path)
    return ids, [row[text_column] for row in body]


# -- the text recipe --------------------------------------------------------------------------------
def attribute_texts(
    names: Sequence[str], values: np.ndarray, seed: int = TEXT_SEED, length: int = TEXT_LENGTH
) -> list[str]:
    """Attribute texts by the recipe of the published bimodal CelebA text file.

    Per face: the names of the attributes equal to 1, joined with ``", "``; while longer
    than ``length``, the last attribute is dropped; ``_`` becomes a space and everything
    is lower case. A text shorter than ``length - 1`` starts at a random offset drawn
    uniformly from ``0 .. length - 2 - len`` (``randint(0, length - 1 - len)``, exclusive
    upper bound) and is padded with ``*`` on the left up to it and on the right up to
    ``length``; a longer one starts at 0 (MoPoE's ``random_text_startindex=True``,
    ``random_text_ordering=False``).

    Args:
        names: the attribute names, e.g. ``"5_o_Clock_Shadow"``.
        values: ``[N, len(names)]`` of -1/1.
        seed: seeds the offsets; the same seed gives the same texts.
        length: the text length (256).

    Returns:
        ``N`` strings of exactly ``length`` characters.

    Example:
        >>> text = attribute_texts(["Big_Nose", "Male", "Young"], np.array([[1, 1, -1]]), length=20)[0]
        >>> len(text), text.strip("*")
        (20, 'big nose, male')
    """
    values = np.asarray(values)
    if values.ndim != 2 or values.shape[1] != len(names):
        raise ValueError(f"values must be [N, {len(names)}], got {values.shape}")
    # Replacing '_' and lower-casing keep lengths, so they can be applied to the names first.
    clean = [name.replace("_", " ").lower() for name in names]
    joined = []
    for row in (values == 1).tolist():
        present = [name for name, on in zip(clean, row, strict=False) if on]
        text = ", ".join(present)
        while len(text) > length:
            present.pop()
            text = ", ".join(present)
        joined.append(text)
    lengths = np.array([len(text) for text in joined], dtype=np.int64)
    # One draw per face, all at once: integers(0, high) has an exclusive upper bound.
    high = np.maximum(length - 1 - lengths, 1)
    starts = np.where(lengths < length - 1, np.random.default_rng(seed).integers(0, high), 0)
    return [("*" * int(start) + text).ljust(length, "*") for start, text in zip(starts.tolist(), joined, strict=False)]


def write_attribute_text_csv(
    attr_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    seed: int = TEXT_SEED,
) -> Path:
    """Write an attribute-text CSV (``image_id,text``) made by :func:`attribute_texts`.

    Args:
        attr_path: ``list_attr_celeba.csv`` (or ``.txt``).
        out_path: where to write; ``list_attr_text_256_False_True_celeba.csv`` next to
            ``attr_path`` when ``None``.
        seed: seeds the text offsets.

    Returns:
        The written file (written atomically).
    """
    attr_path = Path(attr_path)
    ids, names, values = read_celeba_attributes(attr_path)
    texts = attribute_texts(names, values, seed)
    out = Path(out_path) if out_path is not None else attr_path.with_name(CELEBA_TEXT_FILE)

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image_id", "text"])
            writer.writerows(zip(ids, texts, strict=False))

    atomic_write(out, write)
    return out


def encode_texts(texts: Sequence[str], length: int = TEXT_LENGTH) -> np.ndarray:
    """``int16 [N, length]`` alphabet indices, equal to ``encode_strings(texts, length)``.

    Latin-1 texts take a vectorised path (one table lookup over all characters), which
    is about 30 times faster on CelebA's 200,000 texts; other texts fall back to
    :func:`~omnivae.data.text.encode_strings`.
    """
    try:
        raw = "".join(text[:length].ljust(length, "\0") for text in texts).encode("latin-1")
    except UnicodeEncodeError:
        return encode_strings(texts, length)
    # The index of every byte value, built by encode_strings itself so the rules agree
    # ("\0" is not in the alphabet and maps to -1, like encode_strings' padding).
    table = encode_strings(["".join(map(chr, range(256)))], 256)[0]
    codes = np.frombuffer(raw, dtype=np.uint8).reshape(len(texts), length)
    return table[codes]


# -- the images ------------------------------------------------------------------------------------
def decode_celeba_image(path: str | os.PathLike[str]) -> np.ndarray:
    """One aligned CelebA JPG as MoPoE's image: 148 centre crop, bicubic resize to 64.

    Returns:
        ``uint8 [3, 64, 64]``.

    Raises:
        DataError: if the file cannot be decoded or is not 178x218.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.size != ALIGNED_SIZE:
                raise DataError(
                    f"{path} is {image.size[0]}x{image.size[1]}, not the aligned 178x218; "
                    f"use img_align_celeba from {_CELEBA_URL}"
                )
            if image.mode != "RGB":
                image = image.convert("RGB")
            small = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC, box=CROP_BOX)
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise DataError(f"cannot decode {path} ({error}); fetch img_align_celeba again from {_CELEBA_URL}") from error
    return np.asarray(small, dtype=np.uint8).transpose(2, 0, 1)


def decode_celeba_images(paths: Sequence[str | os.PathLike[str]], progress: bool = True) -> np.ndarray:
    """Decode many JPGs with :func:`decode_celeba_image`, with a progress bar.

    Returns:
        ``uint8 [N, 3, 64, 64]``.
    """
    out = np.empty((len(paths), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    bar = tqdm(paths, desc="decoding CelebA images (once; cached)", unit="img", disable=not progress, dynamic_ncols=True)
    for index, path in enumerate(bar):
        out[index] = decode_celeba_image(path)
    return out


# -- loading ----------------------------------------------------------------------------------------
def _folder(data_dir: str | os.PathLike[str] | None) -> Path:
    if not data_dir:
        raise DataError(f"{_NEEDS}; no data_dir was given", parameter="data_dir")
    base = Path(data_dir).expanduser()
    for folder in (base, base / "CelebA", base / "celeba"):
        if (folder / CELEBA_IMAGE_FOLDER).is_dir():
            return folder
    return base


def _list_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, (folder / name).with_suffix(".txt")):
        if candidate.is_file():
            return candidate
    return None


def _image_fingerprint(folder: Path, ids: Sequence[str]) -> str:
    """SHA-256 (16 hex digits) of the names, sizes and mtimes of the images used, in order."""
    entries = {}
    with os.scandir(folder) as listing:
        for entry in listing:
            entries[entry.name] = entry
    missing = [image_id for image_id in ids if image_id not in entries]
    if missing:
        raise DataError(
            f"{len(missing)} of the {len(ids)} train and test images listed in the CSVs are missing "
            f"from {folder} (first: {missing[0]}); {_NEEDS}", parameter="data_dir")
    digest = hashlib.sha256(f"celeba-{_VERSION}\n".encode())
    for image_id in ids:
        stat = entries[image_id].stat()
        digest.update(f"{image_id}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _texts(folder: Path, ids: list[str], names: list[str], values: np.ndarray) -> list[str]:
    path = folder / CELEBA_TEXT_FILE
    if not path.is_file():
        warnings.warn(
            f"{CELEBA_TEXT_FILE} is not in {folder}; generating the attribute texts from "
            f"{CELEBA_ATTR_FILE} by MoPoE's recipe (seed {TEXT_SEED}). The recipe matches the published "
            f"file but its random offsets do not: get the file from MoPoE's data release ({_MOPOE_URL}) "
            "to compare with published numbers",
            stacklevel=3,
        )
        return attribute_texts(names, values, TEXT_SEED)
    text_ids, texts = read_celeba_texts(path)
    by_id = dict(zip(text_ids, texts, strict=False))
    missing = [image_id for image_id in ids if image_id not in by_id]
    if missing:
        raise DataError(
            f"{path} has no text for {len(missing)} of the {len(ids)} images in {CELEBA_ATTR_FILE} "
            f"(first: {missing[0]}); the CSVs must list the same images; {_NEEDS}", parameter="data_dir")
    return [by_id[image_id] for image_id in ids]


def _split(images: np.ndarray, text: np.ndarray, labels: np.ndarray, names: list[str]) -> MultimodalDataset:
    return MultimodalDataset(
        modalities=CELEBA_MODALITIES,
        data={"image": torch.from_numpy(np.ascontiguousarray(images)), "text": torch.from_numpy(text)},
        labels=torch.from_numpy(labels),
        label_names=list(names),
        name="celeba",
    )


def load_celeba(data_dir: str | os.PathLike[str] | None, seed: int = 0, progress: bool = True) -> DatasetSplits:
    """Bimodal CelebA (MoPoE): train = partition 0, test = partition 2.

    Args:
        data_dir: the folder with the four items of the module docstring (or its
            ``CelebA/`` subfolder).
        seed: unused; the splits are the files'.
        progress: show a progress bar while decoding the JPGs (first load only).

    Returns:
        ``image`` (``uint8 [N, 3, 64, 64]``) and ``text`` (``int16 [N, 256]`` indices of a
        ``(256, 71)`` categorical), with ``float32 [N, 40]`` 0/1 attribute labels.

    Raises:
        DataError: for missing items, CSVs that disagree on the image ids, missing or
            undecodable images.
    """
    del seed
    folder = _folder(data_dir)
    images = folder / CELEBA_IMAGE_FOLDER
    attr_path = _list_file(folder, CELEBA_ATTR_FILE)
    partition_path = _list_file(folder, CELEBA_PARTITION_FILE)
    lacking = [
        label
        for label, present in (
            (f"{CELEBA_IMAGE_FOLDER}/", images.is_dir()),
            (CELEBA_ATTR_FILE, attr_path is not None),
            (CELEBA_PARTITION_FILE, partition_path is not None),
        )
        if not present
    ]
    if lacking or attr_path is None or partition_path is None:
        raise DataError(f"{_NEEDS}; {folder} lacks {', '.join(lacking)}", parameter="data_dir")
    ids, names, values = read_celeba_attributes(attr_path)
    partition_ids, partition = read_celeba_partition(partition_path)
    if set(partition_ids) != set(ids):
        raise DataError(
            f"{attr_path.name} and {partition_path.name} list different images "
            f"({len(set(ids) - set(partition_ids))} only in the first, {len(set(partition_ids) - set(ids))} "
            f"only in the second); {_NEEDS}", parameter="data_dir")
    position = {image_id: row for row, image_id in enumerate(partition_ids)}
    partition = partition[[position[image_id] for image_id in ids]]
    rows = {"train": np.flatnonzero(partition == TRAIN_PARTITION), "test": np.flatnonzero(partition == TEST_PARTITION)}
    if not len(rows["train"]) or not len(rows["test"]):
        raise DataError(f"{partition_path} has no train (0) or no test (2) images; {_NEEDS}", parameter="data_dir")
    used = [ids[row] for split in ("train", "test") for row in rows[split]]
    texts = _texts(folder, ids, names, values)
    fingerprint = _image_fingerprint(images, used)

    def build() -> dict[str, np.ndarray]:
        decoded = decode_celeba_images([images / image_id for image_id in used], progress)
        return {"train_image": decoded[: len(rows["train"])], "test_image": decoded[len(rows["train"]) :]}

    arrays = cached_npz(f"celeba-images-{_VERSION}-{fingerprint}.npz", build)
    labels = (values > 0).astype(np.float32)
    splits = {}
    for split, index in rows.items():
        stored = arrays.get(f"{split}_image")
        if stored is None or stored.shape != (len(index), 3, IMAGE_SIZE, IMAGE_SIZE) or stored.dtype != np.uint8:
            raise DataError(f"the CelebA image cache does not match the files; delete celeba-images-{_VERSION}-{fingerprint}.npz to rebuild")
        text = encode_texts([texts[row] for row in index])
        splits[split] = _split(stored, text, labels[index], names)
    return DatasetSplits(splits["train"], splits["test"])


ENTRIES = (
    (
        DatasetInfo(
            name="celeba",
            description=(
                "bimodal CelebA (Sutter et al., 2021): 64x64 aligned faces and their attribute text "
                "(256 characters); 40 attribute labels; the validation partition is unused"
            ),
            modalities=describe_modalities(CELEBA_MODALITIES),
            n_train=162_770,
            n_test=19_962,
            offline=False,
            needs=(
                f"{CELEBA_IMAGE_FOLDER}/, {CELEBA_ATTR_FILE} and {CELEBA_PARTITION_FILE} from {_CELEBA_URL}; "
                f"{CELEBA_TEXT_FILE} from MoPoE's data release ({_MOPOE_URL})"
            ),
        ),
        lambda data_dir, seed: load_celeba(data_dir, seed),
    ),
)
