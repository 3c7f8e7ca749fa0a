"""Circles and squares: the toy dataset of the JNF paper, built offline.

Senellart, Pierre and Bach ("Bridging the inference gap in multimodal variational
autoencoders", Sec. 4.1 and App. A.4) pair two black-and-white 32x32 images: ``square``
shows a square and ``circle`` a circle, both centred, each with a width drawn
independently between 10 and 28 pixels. The class is shared: either both shapes are
*full* or both are *empty* (an outline), half of the pairs each. A joint VAE with a
2-D latent space then shows the classes on either side and the sizes spread inside each.

Drawing conventions, which the paper leaves open:

- Widths are uniform integers in ``[10, 28]``. The image centre lies between pixels
  (15.5, 15.5), so a shape covers the pixels whose centres are closer than ``w / 2`` to
  it (Chebyshev distance for squares, Euclidean for circles). A centred shape therefore
  spans an even number of pixels: an odd width ``w`` is drawn ``w - 1`` pixels wide.
- An empty shape is the full shape minus the full shape of width ``w - 4``: an outline
  2 pixels thick (:data:`OUTLINE`).
- Label 0 is *empty*, label 1 is *full*; each split holds exactly half of each.

The paper uses 200,000 pairs and gives no split. ``circles-squares`` defaults to
40,000 training and 10,000 test pairs, so that an epoch takes seconds on a CPU;
``circles-squares-full`` has the paper's 200,000 pairs, split 180,000 / 20,000. Each
split draws from its own random stream, so the test pairs do not depend on the number of
training pairs. The draws (class, both widths) and the images (bit-packed) are cached as
``circles-squares-v1-<n_train>-<n_test>.npz``; :func:`circles_squares_sizes` returns the
widths, e.g. to colour a latent map by size as in the paper's Figure 2.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from omnivae.data.base import DatasetSplits, ModalitySpec, MultimodalDataset
from omnivae.data.cache import cached_npz
from omnivae.data.registry import DatasetInfo, describe_modalities
from omnivae.errors import DataError

__all__ = [
    "CIRCLES_SQUARES_MODALITIES",
    "CIRCLES_SQUARES_SPLITS",
    "SIDE",
    "MIN_WIDTH",
    "MAX_WIDTH",
    "OUTLINE",
    "draw_squares",
    "draw_circles",
    "sample_shape_pairs",
    "build_circles_squares_arrays",
    "circles_squares_arrays",
    "circles_squares_sizes",
    "load_circles_squares",
    "ENTRIES",
]

SIDE = 32
MIN_WIDTH = 10
MAX_WIDTH = 28
#: Thickness in pixels of the outline of an empty shape.
OUTLINE = 2
CIRCLES_SQUARES_MODALITIES: tuple[ModalitySpec, ...] = (
    ModalitySpec("square", (1, SIDE, SIDE), "binary"),
    ModalitySpec("circle", (1, SIDE, SIDE), "binary"),
)
LABEL_NAMES = ["empty", "full"]
#: ``(n_train, n_test)`` of each registered variant.
CIRCLES_SQUARES_SPLITS: dict[str, tuple[int, int]] = {
    "circles-squares": (40_000, 10_000),
    "circles-squares-full": (180_000, 20_000),
}
SEED = 0
_VERSION = "v1"
_SPLIT_STREAM = {"train": 0, "test": 1}
# Rendering works on chunks so that temporaries stay small for 200,000 pairs.
_CHUNK = 20_000

# Distances of the pixel centres from the image centre (15.5, 15.5).
_OFFSET = np.abs(np.arange(SIDE) - (SIDE - 1) / 2.0)
_CHEBYSHEV = np.maximum(_OFFSET[:, None], _OFFSET[None, :])
_SQUARED = _OFFSET[:, None] ** 2 + _OFFSET[None, :] ** 2


def _draw(distance: np.ndarray, widths: np.ndarray, full: np.ndarray, squared: bool) -> np.ndarray:
    widths = np.asarray(widths, dtype=np.float64).reshape(-1)
    full = np.asarray(full, dtype=bool).reshape(-1)
    if widths.shape != full.shape:
        raise ValueError(f"{widths.shape[0]} widths but {full.shape[0]} classes")
    out = np.empty((widths.shape[0], 1, SIDE, SIDE), dtype=bool)
    for begin in range(0, widths.shape[0], _CHUNK):
        half = widths[begin : begin + _CHUNK, None, None] / 2.0
        inner = half - OUTLINE
        outer_limit, inner_limit = (half**2, np.sign(inner) * inner**2) if squared else (half, inner)
        inside = distance[None] < outer_limit
        # An empty shape keeps only the pixels outside the inner shape of width w - 4.
        inside &= full[begin : begin + _CHUNK, None, None] | (distance[None] >= inner_limit)
        out[begin : begin + _CHUNK, 0] = inside
    return out


def draw_squares(widths: np.ndarray, full: np.ndarray) -> np.ndarray:
    """Centred squares on 32x32 canvases, vectorised over samples (App. A.4 of the JNF paper).

    Args:
        widths: ``[N]`` widths in pixels (an odd width is drawn one pixel narrower).
        full: ``[N]`` booleans: a filled square, or a 2-pixel outline.

    Returns:
        ``bool [N, 1, 32, 32]``.

    Example:
        >>> int(draw_squares(np.array([10]), np.array([True])).sum())
        100
    """
    return _draw(_CHEBYSHEV, widths, full, squared=False)


def draw_circles(widths: np.ndarray, full: np.ndarray) -> np.ndarray:
    """Centred discs (``full``) or 2-pixel rings on 32x32 canvases, vectorised over samples.

    Args:
        widths: ``[N]`` diameters in pixels.
        full: ``[N]`` booleans.

    Returns:
        ``bool [N, 1, 32, 32]``.
    """
    return _draw(_SQUARED, widths, full, squared=True)


def sample_shape_pairs(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The random draws of ``n`` pairs: a shared class and two independent widths.

    Exactly ``n // 2`` pairs are empty (label 0) and the rest full (label 1), in random
    order; each width is uniform on the integers ``10..28``.

    Returns:
        ``labels``, ``square_width`` and ``circle_width``, each ``int64 [n]``.
    """
    labels = rng.permutation(np.arange(n) % 2).astype(np.int64)
    square = rng.integers(MIN_WIDTH, MAX_WIDTH + 1, size=n).astype(np.int64)
    circle = rng.integers(MIN_WIDTH, MAX_WIDTH + 1, size=n).astype(np.int64)
    return {"labels": labels, "square_width": square, "circle_width": circle}


def build_circles_squares_arrays(n_train: int, n_test: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """Build both splits from scratch, deterministically in ``seed``.

    Returns:
        For each split ``s``: ``{s}_labels``, ``{s}_square_width``, ``{s}_circle_width``
        (``int64 [N]``) and ``{s}_square``, ``{s}_circle``: the images as
        ``np.packbits`` of ``bool [N, 1, 32, 32]`` along the last three axes
        (``uint8 [N, 128]``).
    """
    arrays: dict[str, np.ndarray] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
        draws = sample_shape_pairs(n, rng)
        full = draws["labels"] == 1
        squares = draw_squares(draws["square_width"], full)
        circles = draw_circles(draws["circle_width"], full)
        for key, value in draws.items():
            arrays[f"{split}_{key}"] = value
        arrays[f"{split}_square"] = np.packbits(squares.reshape(n, -1), axis=1)
        arrays[f"{split}_circle"] = np.packbits(circles.reshape(n, -1), axis=1)
    return arrays


def _check_sizes(n_train: int, n_test: int) -> None:
    if int(n_train) < 2 or int(n_test) < 2:
        raise DataError(f"circles-squares needs at least 2 training and 2 test pairs, got {n_train} and {n_test}")


def _folder(data_dir: str | os.PathLike[str] | None) -> str | os.PathLike[str] | None:
    return data_dir if data_dir else None


def circles_squares_arrays(
    n_train: int = 40_000, n_test: int = 10_000, data_dir: str | os.PathLike[str] | None = None
) -> dict[str, np.ndarray]:
    """The arrays of :func:`build_circles_squares_arrays`, from the cache or built and cached.

    Args:
        n_train: training pairs.
        n_test: test pairs.
        data_dir: the cache folder; :func:`~omnivae.data.cache.cache_dir` when empty.
    """
    _check_sizes(n_train, n_test)
    name = f"circles-squares-{_VERSION}-{int(n_train)}-{int(n_test)}.npz"
    return cached_npz(name, lambda: build_circles_squares_arrays(int(n_train), int(n_test)), _folder(data_dir))


def circles_squares_sizes(
    split: str = "test",
    n_train: int = 40_000,
    n_test: int = 10_000,
    data_dir: str | os.PathLike[str] | None = None,
) -> dict[str, np.ndarray]:
    """The widths of the shapes of one split, in sample order (for colouring latent maps).

    Use ``n_train, n_test = CIRCLES_SQUARES_SPLITS[name]`` for a registered variant.

    Returns:
        ``{"square": int64 [N], "circle": int64 [N]}``, widths in ``10..28`` (as drawn
        before odd widths lose a pixel).

    Example:
        >>> sizes = circles_squares_sizes("test", *CIRCLES_SQUARES_SPLITS["circles-squares"])  # doctest: +SKIP
        >>> sizes["square"].shape  # doctest: +SKIP
        (10000,)
    """
    if split not in _SPLIT_STREAM:
        raise DataError(f"unknown split {split!r}; choose 'train' or 'test'")
    arrays = circles_squares_arrays(n_train, n_test, data_dir)
    return {"square": arrays[f"{split}_square_width"], "circle": arrays[f"{split}_circle_width"]}


def _unpack(packed: np.ndarray, n: int) -> torch.Tensor:
    bits = np.unpackbits(packed, axis=1, count=SIDE * SIDE).astype(bool)
    return torch.from_numpy(bits.reshape(n, 1, SIDE, SIDE))


def _split(arrays: dict[str, np.ndarray], split: str) -> MultimodalDataset:
    labels = arrays[f"{split}_labels"].astype(np.int64)
    n = labels.shape[0]
    return MultimodalDataset(
        modalities=CIRCLES_SQUARES_MODALITIES,
        data={spec.name: _unpack(arrays[f"{split}_{spec.name}"], n) for spec in CIRCLES_SQUARES_MODALITIES},
        labels=torch.from_numpy(labels),
        label_names=list(LABEL_NAMES),
        name="circles-squares",
    )


def load_circles_squares(
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    n_train: int = 40_000,
    n_test: int = 10_000,
) -> DatasetSplits:
    """The circles-and-squares toy of the JNF paper (Sec. 4.1, App. A.4), built offline.

    Args:
        data_dir: the cache folder; the default cache folder when empty.
        seed: unused; the dataset is fixed so that runs with different seeds see the same
            data.
        n_train: training pairs (the paper's 200,000 pairs: use ``circles-squares-full``).
        n_test: test pairs.

    Returns:
        Two ``binary`` modalities ``square`` and ``circle`` of shape ``(1, 32, 32)``
        stored as ``bool``, with labels 0 (empty) and 1 (full).
    """
    del seed
    arrays = circles_squares_arrays(n_train, n_test, data_dir)
    expected = {f"{s}_{k}" for s in _SPLIT_STREAM for k in ("labels", "square", "circle")}
    missing = sorted(expected.difference(arrays))
    if missing:
        raise DataError(f"the circles-squares cache lacks {missing}; delete it to rebuild")
    return DatasetSplits(_split(arrays, "train"), _split(arrays, "test"))


def _entry(name: str, description: str) -> tuple[DatasetInfo, object]:
    n_train, n_test = CIRCLES_SQUARES_SPLITS[name]
    info = DatasetInfo(
        name=name,
        description=description,
        modalities=describe_modalities(CIRCLES_SQUARES_MODALITIES),
        n_train=n_train,
        n_test=n_test,
        offline=True,
    )
    return info, lambda data_dir, seed: load_circles_squares(data_dir, seed, n_train, n_test)


ENTRIES = (
    _entry(
        "circles-squares",
        "the circles-and-squares toy of the JNF paper (Senellart et al.): a centred square and "
        "circle of independent widths 10-28, both full or both empty; 50,000 pairs for CPU runs",
    ),
    _entry(
        "circles-squares-full",
        "circles-squares at the paper's 200,000 pairs (split 180,000 / 20,000 here; the paper "
        "gives no split)",
    ),
)
