"""Readers for the real PolyMNIST files: the PNG folders and the tensor archive.

PolyMNIST (Sutter, Daunhawer and Vogt, 2021) is distributed in two layouts, both with one
folder or file per modality ``m0 .. m{M-1}`` (normally five):

- **PNG layout**, as the MoPoE generator writes it: ``{train,test}/m{k}/{i}.{d}.png``,
  one RGB 28x28 image per file, ``d`` the digit label and ``i`` the image's index within
  its class. Files with the same name in different modality folders form one sample
  (same label, different MNIST instance). The translated variant of MultiVae uses the
  same layout under ``Translated_MMNIST_scale_{S}_translated_{T}/``.
- **Tensor layout**, the Zenodo archive https://zenodo.org/record/4899160/files/PolyMNIST.zip:
  ``{train,test}/m{k}.pt`` (float ``[N, 3, 28, 28]`` in [0, 1]) and ``{train,test}/labels.pt``.

Both are decoded once into ``uint8`` arrays and cached with
:func:`omnivae.data.cache.cached_npz` under a name that holds a fingerprint of the source
files (names, sizes and modification times), so a second load reads one file and a changed
source is read again.

PNG decoding is the slow part (350,000 files for the full set). Files in the form the
generator writes (8-bit RGB, not interlaced, 28x28) are decoded here: the zlib stream of
each file is inflated one by one, and the PNG row filters (RFC 2083, Section 6) are undone
for all files at once by Pillow's C decoder on one tall stacked image (about 2.5 times
faster than opening each file with Pillow), with a numpy implementation as fallback. Any
other PNG (palette, grey, alpha, 16-bit, interlaced) goes through Pillow and is
converted to RGB.

References:
    Sutter, Daunhawer and Vogt. "Generalized Multimodal ELBO." ICLR 2021.
    PNG (Portable Network Graphics) Specification, RFC 2083 (chunks, filters).
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from omnivae.data.cache import cached_npz
from omnivae.errors import DataError

__all__ = [
    "SPLITS",
    "ZENODO_URL",
    "files_fingerprint",
    "decode_png_files",
    "unfilter_png_rows",
    "list_png_modality",
    "modality_count",
    "detect_layout",
    "read_png_layout",
    "read_tensor_layout",
]

SPLITS = ("train", "test")
ZENODO_URL = "https://zenodo.org/record/4899160/files/PolyMNIST.zip"
SIDE = 28
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CACHE_VERSION = "v1"


def files_fingerprint(paths: Sequence[Path], root: Path) -> str:
    """A short hex fingerprint of files' names (relative to ``root``), sizes and mtimes.

    It changes when a file is added, removed, renamed, resized or touched, without
    reading any file content, so it is cheap even for 350,000 files.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = Path(d) / "a.png"; _ = p.write_bytes(b"x")
        ...     len(files_fingerprint([p], Path(d)))
        12
    """
    digest = hashlib.sha256()
    for path in sorted(paths):
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


# --------------------------------------------------------------------------- PNG decoding


def unfilter_png_rows(filtered: np.ndarray, bpp: int) -> np.ndarray:
    """Undo the PNG row filters of many same-sized images at once (RFC 2083, 6.2-6.6).

    Each scanline starts with its filter type: 0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth.
    Rows are processed in order (each depends on the row above); within a row, None, Sub
    (a cumulative sum per channel, modulo 256) and Up are whole-array operations, while
    Average and Paeth step through the pixels, vectorised over the images using them.

    Args:
        filtered: ``uint8 [N, H, 1 + W * bpp]``, the inflated IDAT data of ``N`` images.
        bpp: bytes per pixel (3 for 8-bit RGB).

    Returns:
        ``uint8 [N, H, W * bpp]``, the raw pixel rows.

    Raises:
        ValueError: on a filter type other than 0..4.
    """
    n, height, width = filtered.shape[0], filtered.shape[1], filtered.shape[2] - 1
    kinds = filtered[:, :, 0]
    if kinds.size and int(kinds.max()) > 4:
        raise ValueError("unknown PNG filter type")
    data = filtered[:, :, 1:]
    out = np.empty((n, height, width), np.uint8)
    prev = np.zeros((n, width), np.uint8)
    for r in range(height):
        x, kind = data[:, r], kinds[:, r]
        row = x.copy()
        sub = np.flatnonzero(kind == 1)
        if sub.size:
            row[sub] = x[sub].reshape(sub.size, -1, bpp).cumsum(axis=1, dtype=np.uint8).reshape(sub.size, width)
        up = np.flatnonzero(kind == 2)
        if up.size:
            row[up] = x[up] + prev[up]
        for code in (3, 4):
            which = np.flatnonzero(kind == code)
            if which.size:
                row[which] = _unfilter_sequential(x[which], prev[which], bpp, paeth=code == 4)
        out[:, r] = row
        prev = row
    return out


def _unfilter_sequential(x: np.ndarray, above: np.ndarray, bpp: int, paeth: bool) -> np.ndarray:
    """Average or Paeth rows ``[k, L]``, one pixel at a time across ``k`` rows."""
    x = x.astype(np.int16)
    b_row = above.astype(np.int16)
    rec = np.zeros_like(x)
    zero = np.zeros((x.shape[0], bpp), np.int16)
    for j in range(0, x.shape[1], bpp):
        a = rec[:, j - bpp : j] if j else zero
        b = b_row[:, j : j + bpp]
        if paeth:
            c = b_row[:, j - bpp : j] if j else zero
            pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
            predictor = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        else:
            predictor = (a + b) >> 1
        rec[:, j : j + bpp] = (x[:, j : j + bpp] + predictor) & 0xFF
    return rec.astype(np.uint8)


def _inflate_rgb8(raw: bytes, size: int, path: Path) -> bytes | None:
    """The inflated IDAT bytes of an 8-bit RGB, non-interlaced ``size x size`` PNG.

    Returns ``None`` for any other PNG (Pillow decodes those).
    """
    if raw[:8] != _PNG_SIGNATURE or raw[12:16] != b"IHDR" or len(raw) < 33:
        return None
    width, height, depth, color, _, _, interlace = struct.unpack_from(">IIBBBBB", raw, 16)
    if (width, height, depth, color, interlace) != (size, size, 8, 2, 0):
        return None
    chunks, pos = [], 8
    try:
        while pos + 8 <= len(raw):
            length, kind = struct.unpack_from(">I4s", raw, pos)
            if kind == b"IDAT":
                chunks.append(raw[pos + 8 : pos + 8 + length])
            elif kind == b"IEND":
                break
            pos += 12 + length
        data = zlib.decompress(b"".join(chunks))
    except (struct.error, zlib.error) as error:
        raise DataError(f"cannot decode the PNG file {str(path)!r} ({error}); the file is damaged") from error
    if len(data) != size * (1 + 3 * size):
        raise DataError(f"the PNG file {str(path)!r} holds {len(data)} pixel bytes, not {size * (1 + 3 * size)}; it is damaged")
    return data


def _decode_with_pillow(raw: bytes, size: int, path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise DataError(f"cannot decode the image {str(path)!r} ({error}); the file is damaged or not a PNG") from error
    if rgb.shape != (size, size, 3):
        raise DataError(f"the image {str(path)!r} is {rgb.shape[1]}x{rgb.shape[0]}; PolyMNIST images are {size}x{size}")
    return rgb


def _unfilter_stacked(filtered: np.ndarray) -> np.ndarray:
    """Unfilter 8-bit RGB rows ``[N, H, 1 + 3W]`` with Pillow's PNG (``zip``) decoder.

    The images are stacked into one tall image with a zero row (filter None) before each,
    so every image's first row sees an all-zero row above it, as the PNG filters assume;
    the stack is wrapped in a stored (level 0) zlib stream and decoded in C. This is
    several times faster than decoding the files one by one. Falls back to
    :func:`unfilter_png_rows` if Pillow refuses the stream.
    """
    n, height, row = filtered.shape
    width = (row - 1) // 3
    out = np.empty((n, height, width * 3), np.uint8)
    chunk = 8192
    for start in range(0, n, chunk):
        part = filtered[start : start + chunk]
        tall = np.zeros((len(part), height + 1, row), np.uint8)
        tall[:, 1:] = part
        try:
            from PIL import Image

            image = Image.frombytes("RGB", (width, (height + 1) * len(part)), zlib.compress(tall.tobytes(), 0), "zip", "RGB")
            rgb = np.asarray(image).reshape(len(part), height + 1, width * 3)[:, 1:]
        except (ImportError, ValueError, OSError):
            rgb = unfilter_png_rows(part, 3)
        out[start : start + len(part)] = rgb
    return out


def decode_png_files(paths: Sequence[Path], size: int = SIDE) -> np.ndarray:
    """Decode PNG files to RGB ``uint8 [N, 3, size, size]``.

    8-bit RGB non-interlaced files (what torchvision's ``save_image`` writes) are inflated
    with :mod:`zlib` one by one and unfiltered together (:func:`_unfilter_stacked`);
    others are decoded by Pillow and converted to RGB.

    Raises:
        DataError: naming the file, if one is unreadable, damaged or not ``size x size``.
    """
    n = len(paths)
    hwc = np.empty((n, size, size, 3), np.uint8)
    filtered = np.empty((n, size, 1 + 3 * size), np.uint8)
    fast = np.zeros(n, bool)
    for k, path in enumerate(paths):
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except OSError as error:
            raise DataError(f"cannot read {str(path)!r} ({error})") from error
        data = _inflate_rgb8(raw, size, path)
        if data is None:
            hwc[k] = _decode_with_pillow(raw, size, path)
        else:
            filtered[k] = np.frombuffer(data, np.uint8).reshape(size, 1 + 3 * size)
            fast[k] = True
    index = np.flatnonzero(fast)
    if index.size:
        rows = filtered[index]
        bad = np.flatnonzero((rows[:, :, 0] > 4).any(axis=1))
        if bad.size:
            raise DataError(f"the PNG file {str(paths[index[bad[0]]])!r} uses an unknown row filter; it is damaged")
        hwc[index] = _unfilter_stacked(rows).reshape(-1, size, size, 3)
    return np.ascontiguousarray(hwc.transpose(0, 3, 1, 2))


# --------------------------------------------------------------------------- layouts


def _png_key(name: str, folder: Path) -> tuple[int, int]:
    parts = name.split(".")
    try:
        if len(parts) < 3:
            raise ValueError(name)
        return int(parts[0]), int(parts[-2])
    except ValueError:
        raise DataError(
            f"{str(folder / name)!r} is not named {{index}}.{{digit}}.png as PolyMNIST's PNG layout "
            "requires (the digit label is read from the name)"
        ) from None


def list_png_modality(folder: Path) -> tuple[list[Path], np.ndarray]:
    """The PNG files of one modality folder, sorted, and their labels.

    Files are named ``{i}.{d}.png`` (MoPoE's generator); the label is
    ``int(name.split('.')[-2])``. They are sorted by the integer pair ``(i, d)``, so
    ``10.3.png`` comes after ``9.3.png``, and the same names in every modality folder
    line up.

    Returns:
        ``(paths, labels int64 [N])``.

    Raises:
        DataError: if the folder is unreadable, empty, or a PNG is misnamed.
    """
    try:
        names = [e.name for e in os.scandir(folder) if e.name.lower().endswith(".png") and e.is_file()]
    except OSError as error:
        raise DataError(f"cannot list {str(folder)!r} ({error})") from error
    if not names:
        raise DataError(f"{str(folder)!r} holds no {{index}}.{{digit}}.png files; PolyMNIST's PNG layout needs them")
    keyed = sorted((_png_key(name, folder), name) for name in names)
    labels = np.array([key[1] for key, _ in keyed], dtype=np.int64)
    return [folder / name for _, name in keyed], labels


def modality_count(split_dir: Path, suffix: str) -> int:
    """How many modalities ``m0 .. m{M-1}`` a split folder holds (``suffix`` ``""`` or ``".pt"``).

    Raises:
        DataError: if the modality names are not ``m0`` to ``m{M-1}`` without gaps.
    """
    found = []
    for entry in split_dir.iterdir():
        stem = entry.name[: len(entry.name) - len(suffix)] if suffix else entry.name
        if (entry.name.endswith(suffix) and stem[:1] == "m" and stem[1:].isdigit()
                and (entry.is_dir() if not suffix else entry.is_file())):
            found.append(int(stem[1:]))
    found.sort()
    if found != list(range(len(found))):
        names = ", ".join(f"m{k}{suffix}" for k in found)
        raise DataError(f"{str(split_dir)!r} has modalities {names}; they must be m0{suffix} .. m{{M-1}}{suffix} without gaps")
    return len(found)


def detect_layout(roots: Sequence[Path]) -> tuple[str, Path] | None:
    """The first of ``roots`` holding PolyMNIST files, with its layout.

    A root holds the tensor layout if ``train/m0.pt`` exists, else the PNG layout if
    ``train/m0/`` is a folder.

    Returns:
        ``("tensor" | "png", root)``, or ``None`` if no root holds either.
    """
    for root in roots:
        if (root / "train" / "m0.pt").is_file():
            return "tensor", root
        if (root / "train" / "m0").is_dir():
            return "png", root
    return None


def _split_dir(root: Path, split: str) -> Path:
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"{str(root)!r} has a train/ folder but no {split}/ folder; PolyMNIST needs both train/ and test/")
    return folder


def _png_listing(root: Path) -> tuple[int, dict[str, list[tuple[list[Path], np.ndarray]]]]:
    listing: dict[str, list[tuple[list[Path], np.ndarray]]] = {}
    count = None
    for split in SPLITS:
        split_dir = _split_dir(root, split)
        m = modality_count(split_dir, "")
        if count is None:
            count = m
        elif m != count:
            raise DataError(f"{str(split_dir)!r} has {m} modality folders but train/ has {count}; they must match")
        folders = [list_png_modality(split_dir / f"m{k}") for k in range(m)]
        first_paths, first_labels = folders[0]
        for k, (paths, labels) in enumerate(folders[1:], start=1):
            folder = split_dir / f"m{k}"
            if len(paths) != len(first_paths):
                raise DataError(
                    f"{str(folder)!r} holds {len(paths)} images but {str(split_dir / 'm0')!r} holds "
                    f"{len(first_paths)}; every modality folder needs one image per sample"
                )
            if not np.array_equal(labels, first_labels):
                at = int(np.flatnonzero(labels != first_labels)[0])
                raise DataError(
                    f"{str(folder)!r} does not pair with {str(split_dir / 'm0')!r}: its file "
                    f"{paths[at].name!r} has label {labels[at]} where m0 has {first_paths[at].name!r}; "
                    "modalities are paired by file name"
                )
        listing[split] = folders
    assert count is not None
    return count, listing


def read_png_layout(root: Path, cache_prefix: str) -> dict[str, np.ndarray]:
    """Read the PNG layout under ``root``, from the cache when its listing is unchanged.

    Args:
        root: the folder holding ``train/m{k}/`` and ``test/m{k}/``.
        cache_prefix: the dataset part of the cache name, e.g. ``"polymnist"``; the file
            is ``{cache_prefix}-png-v1-{fingerprint}.npz`` in the default cache folder.

    Returns:
        ``{split}_m{k}`` (``uint8 [N, 3, 28, 28]``) and ``{split}_labels`` (``int64 [N]``)
        for ``split`` in ``train``, ``test``.

    Raises:
        DataError: for unequal modality folders, misnamed or damaged files.
    """
    count, listing = _png_listing(root)
    paths = [p for split in SPLITS for files, _ in listing[split] for p in files]
    name = f"{cache_prefix}-png-{_CACHE_VERSION}-{files_fingerprint(paths, root)}.npz"

    def build() -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for split in SPLITS:
            arrays[f"{split}_labels"] = listing[split][0][1]
            for k in range(count):
                arrays[f"{split}_m{k}"] = decode_png_files(listing[split][k][0])
        return arrays

    return cached_npz(name, build)


def _load_tensor(path: Path) -> object:
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            f"cannot load {str(path)!r} as a tensor ({reason}); expected a file saved with torch.save "
            f"as in {ZENODO_URL}"
        ) from error


def _tensor_images(path: Path) -> np.ndarray:
    import torch

    images = _load_tensor(path)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != (3, SIDE, SIDE):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(f"{str(path)!r} holds {shape}; PolyMNIST's tensor layout stores float [N, 3, 28, 28] images")
    if images.dtype == torch.uint8:
        return images.numpy()
    if not images.is_floating_point():
        raise DataError(f"{str(path)!r} holds {images.dtype} images; expected floats in [0, 1]")
    if images.numel() and not (bool(torch.isfinite(images).all()) and float(images.min()) >= 0 and float(images.max()) <= 1):
        raise DataError(f"{str(path)!r} holds values outside [0, 1] (or NaN); PolyMNIST images are floats in [0, 1]")
    return images.float().mul_(255).round_().to(torch.uint8).numpy()


def _tensor_labels(path: Path, n: int) -> np.ndarray:
    import torch

    labels = _load_tensor(path)
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.shape[0] != n:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise DataError(f"{str(path)!r} holds {shape}; expected one integer label per image, [{n}]")
    values = labels.double()
    if labels.numel() and not (bool((values == values.round()).all()) and float(values.min()) >= 0):
        raise DataError(f"{str(path)!r} holds labels that are not non-negative integers")
    return labels.to(torch.int64).numpy()


def read_tensor_layout(root: Path, cache_prefix: str) -> dict[str, np.ndarray]:
    """Read the tensor layout (the Zenodo archive) under ``root``, cached as ``uint8``.

    Each ``{split}/m{k}.pt`` is loaded with ``torch.load(..., weights_only=True)`` (no
    code is unpickled), checked to be float ``[N, 3, 28, 28]`` in [0, 1] and stored as
    ``round(255 x)`` (``uint8`` tensors are taken as they are); ``{split}/labels.pt``
    must hold ``N`` non-negative integer labels.

    Returns:
        The same keys as :func:`read_png_layout`.

    Raises:
        DataError: for a missing, unloadable, misshapen or out-of-range file.
    """
    files: dict[str, list[Path]] = {}
    for split in SPLITS:
        split_dir = _split_dir(root, split)
        m = modality_count(split_dir, ".pt")
        if files and m != len(files["train"]) - 1:
            raise DataError(f"{str(split_dir)!r} has {m} modality files but train/ has {len(files['train']) - 1}; they must match")
        if m == 0:
            raise DataError(f"{str(split_dir)!r} holds no m0.pt; the tensor layout needs {split}/m{{k}}.pt and {split}/labels.pt")
        labels = split_dir / "labels.pt"
        if not labels.is_file():
            raise DataError(f"{str(split_dir)!r} lacks labels.pt; the tensor layout ({ZENODO_URL}) has {split}/labels.pt beside m{{k}}.pt")
        files[split] = [split_dir / f"m{k}.pt" for k in range(m)] + [labels]
    all_files = files["train"] + files["test"]
    name = f"{cache_prefix}-pt-{_CACHE_VERSION}-{files_fingerprint(all_files, root)}.npz"

    def build() -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for split in SPLITS:
            *modalities, labels = files[split]
            n = None
            for k, path in enumerate(modalities):
                images = _tensor_images(path)
                if n is not None and len(images) != n:
                    raise DataError(f"{str(path)!r} holds {len(images)} images but {modalities[0].name} holds {n}; modalities are paired by row")
                n = len(images)
                arrays[f"{split}_m{k}"] = images
            arrays[f"{split}_labels"] = _tensor_labels(labels, n or 0)
        return arrays

    return cached_npz(name, build)
