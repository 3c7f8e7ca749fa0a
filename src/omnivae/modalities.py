"""The modality contract: what one modality is (name, per-sample shape, kind).

A floor-level module: it imports nothing of omnivae, so the networks (:mod:`omnivae.nn`),
the datasets (:mod:`omnivae.data`) and the models all read :class:`ModalitySpec` from
here without depending on one another.

Example:
    >>> spec = ModalitySpec("m0", (3, 28, 28), "image")
    >>> ModalitySpec.from_json(spec.to_json()) == spec
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ModalityKind", "ModalitySpec"]

ModalityKind = Literal["image", "vector", "binary", "categorical"]


@dataclass(frozen=True)
class ModalitySpec:
    """What one modality is: its name, per-sample shape and kind.

    Kinds: ``image`` (values in [0, 1], stored as uint8), ``vector`` (real values),
    ``binary`` (values in {0, 1}) and ``categorical`` (one-hot along the last axis).
    The kind picks the default backbone and likelihood.
    """

    name: str
    shape: tuple[int, ...]
    kind: ModalityKind = "vector"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "kind": self.kind}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ModalitySpec:
        return cls(name=obj["name"], shape=tuple(obj["shape"]), kind=obj["kind"])
