"""Character-level text modalities: the MoPoE alphabet and one-hot strings.

MNIST-SVHN-Text and bimodal CelebA (Sutter, Daunhawer and Vogt, ICLR 2021, Sec. 5 and
App. C) encode text as a sequence of characters, each one-hot over a fixed alphabet; a
character outside the alphabet is an all-zero row. Sequences are stored here as integer
indices (``-1`` for unknown characters) and expanded to one-hot per batch by
:class:`~omnivae.data.base.MultimodalDataset`, so a 256-character caption costs 256 bytes
per sample in memory rather than 256 x 71.

The alphabet has 71 entries in the published order. ``-`` appears twice (positions 36 and
59); encoding uses the first, so entry 59 is never produced. Keeping the duplicate keeps
the one-hot width, and hence network sizes, equal to the published models'.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["ALPHABET", "DIGIT_WORDS", "encode_strings", "decode_indices", "place_words"]

#: The 71-character alphabet of MoPoE's text modalities, in its published order.
ALPHABET: str = "abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"\\/|_@#$%^&*~`+-=<>()[]{} \n"
#: The English word of each digit, as written by MNIST-SVHN-Text.
DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def encode_strings(strings: Sequence[str], length: int, alphabet: str = ALPHABET) -> np.ndarray:
    """Character indices ``int16 [N, length]``; unknown characters and padding are ``-1``.

    Strings longer than ``length`` are cut; shorter ones are padded with ``-1`` (all-zero
    one-hot rows).

    Example:
        >>> encode_strings(["ab", "z?"], 3).tolist()
        [[0, 1, -1], [25, 41, -1]]
    """
    lookup = np.full(0x110000 if any(ord(c) > 255 for s in strings for c in s) else 256, -1, dtype=np.int16)
    for position in range(len(alphabet) - 1, -1, -1):  # reversed, so the first occurrence wins
        lookup[ord(alphabet[position])] = position
    out = np.full((len(strings), length), -1, dtype=np.int16)
    for row, text in enumerate(strings):
        codes = np.fromiter((ord(c) for c in text[:length]), dtype=np.int64, count=min(len(text), length))
        out[row, : len(codes)] = lookup[codes]
    return out


def decode_indices(indices: np.ndarray, alphabet: str = ALPHABET, unknown: str = "") -> list[str]:
    """Strings from index rows (the inverse of :func:`encode_strings` for known characters).

    Example:
        >>> decode_indices(np.array([[0, 1, -1]]))
        ['ab']
    """
    indices = np.asarray(indices)
    return [
        "".join(alphabet[i] if 0 <= i < len(alphabet) else unknown for i in row.tolist())
        for row in indices.reshape(len(indices), -1)
    ]


def place_words(
    labels: np.ndarray, length: int, rng: np.random.Generator, words: Sequence[str] = DIGIT_WORDS
) -> list[str]:
    """Each label's word at a random offset in a string of ``length`` spaces.

    The offset is uniform on ``0..length-1-len(word)`` inclusive, the range MNIST-SVHN-Text
    draws from (so an 8-character ``three`` starts at 0, 1 or 2).

    Example:
        >>> place_words(np.array([1]), 8, np.random.default_rng(0))[0].strip()
        'one'
    """
    out = []
    offsets = rng.random(len(labels))
    for label, u in zip(np.asarray(labels).tolist(), offsets, strict=False):
        word = words[int(label)]
        start = int(u * (length - len(word)))  # uniform on 0..length-1-len(word)
        out.append((" " * start + word).ljust(length))
    return out
