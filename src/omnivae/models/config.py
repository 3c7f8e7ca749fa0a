"""The model configuration stored in a run's ``config.json``, checked once before a build."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from omnivae.aggregators import AGGREGATORS, WEIGHTED_AGGREGATORS, WEIGHTS
from omnivae.configs import type_problem
from omnivae.errors import UserError, unknown_name
from omnivae.models.options import MethodOptions, build_options
from omnivae.models.registry import MODELS
from omnivae.nn import JOINT_ENCODERS
from omnivae.priors import PRIORS

__all__ = ["ModelConfig", "LEGACY_OPTION_FIELDS"]

OptionsT = TypeVar("OptionsT", bound=MethodOptions)

LEGACY_OPTION_FIELDS = ("alpha", "tc_ratio")
"""Method options that earlier versions stored as top-level fields (JMVAE's ``alpha``,
MVTCAE's ``tc_ratio``): still accepted, and folded into ``options`` for the methods that
have them (other methods ignore them, as before)."""


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored as JSON in the run directory.

    Fields added later have defaults, so a stored configuration without them still loads
    (:meth:`from_json`). Method-specific settings live in ``options`` and are typed by the
    recipe (:attr:`~omnivae.models.Recipe.options_type`, read with :meth:`settings`).
    ``alpha`` and ``tc_ratio`` are the two settings earlier versions kept at the top level;
    given there (None: not given), they count as ``options`` entries of the methods that
    have them, and :meth:`to_json` writes them inside ``options``.
    ``joint_encoder`` is the joint encoder of JMVAE and JNF, ``"heads"`` (heads and a
    merging MLP) or ``"concat"`` (heads only), see :func:`omnivae.nn.build_joint_encoder`.
    ``aggregator_weights`` are the barycentric weights of the ``poe``, ``mopoe``, ``wb`` and
    ``mwb`` aggregators: ``"uniform"`` (the unweighted aggregator), ``"learned"`` (one per
    modality), ``"attention"`` (per sample) or one number per modality, comma separated
    (:func:`omnivae.aggregators.build_weights`).
    """

    model: str = "mwb"
    aggregator: str | None = None
    latent_dim: int = 32
    beta: float = 1.0
    backbone: str = "auto"
    hidden: list[int] = field(default_factory=lambda: [512, 512])
    covariance: str = "diag"
    rank: int = 1
    likelihood: str = "auto"
    rescale_likelihoods: bool = False
    num_samples: int = 1
    dreg: bool = False
    num_random_subsets: int = 0
    prior: str = "normal"
    alpha: float | None = None
    tc_ratio: float | None = None
    joint_encoder: str = "heads"
    aggregator_weights: str = "uniform"
    options: dict[str, Any] = field(default_factory=dict)
    """Method-specific settings (``--set KEY=VALUE``), checked against the recipe's
    typed options; read them with :meth:`settings` or :meth:`option`."""

    def _check_types(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in LEGACY_OPTION_FIELDS:
                wanted = None if value is None else type_problem(value, 0.0)
            else:
                default = f.default_factory() if callable(f.default_factory) else f.default
                wanted = type_problem(value, default)
            if wanted is not None:
                raise UserError(f"{f.name} must be {wanted}, got {value!r}", parameter=f.name)
            if isinstance(value, float) and not math.isfinite(value):  # NaN passes every comparison
                raise UserError(f"{f.name} must be a finite number, got {value!r}", parameter=f.name)
        if not isinstance(self.options, dict):
            raise UserError(f"options must be a mapping of names to values, got {self.options!r}", parameter="options")

    def validate(self) -> None:
        """Check every field and the method's options; one :class:`UserError` naming the parameter."""
        self._check_types()
        if self.model not in MODELS:
            raise unknown_name("model", self.model, list(MODELS))
        if self.aggregator is not None and self.aggregator not in AGGREGATORS:
            raise unknown_name("aggregator", self.aggregator, list(AGGREGATORS))
        if self.prior not in PRIORS:
            raise unknown_name("prior", self.prior, list(PRIORS))
        if self.latent_dim < 1:
            raise UserError(f"the latent size latent_dim must be >= 1, got {self.latent_dim}", parameter="latent_dim")
        if not self.beta >= 0:
            raise UserError(f"beta (the weight of the KL term) must be a finite number >= 0, got {self.beta}", parameter="beta")
        if self.num_samples < 1:
            raise UserError(
                f"the number of importance samples K (num_samples) must be >= 1, got {self.num_samples}",
                parameter="num_samples",
            )
        if self.num_random_subsets < 0:
            raise UserError(f"num_random_subsets must be >= 0, got {self.num_random_subsets}", parameter="num_random_subsets")
        if self.covariance not in ("diag", "lowrank"):
            raise unknown_name("covariance", self.covariance, ["diag", "lowrank"])
        if self.covariance == "lowrank" and self.rank < 1:
            raise UserError(f"the covariance rank must be >= 1, got {self.rank}", parameter="rank")
        if self.joint_encoder not in JOINT_ENCODERS:
            raise unknown_name("joint encoder", self.joint_encoder, JOINT_ENCODERS)
        self._check_aggregator_weights()
        self._check_unused_legacy_fields()
        self.settings()

    def _check_aggregator_weights(self) -> None:
        """Weights are a known kind or numbers, and only for a model whose aggregation takes them."""
        kind = self.aggregator_weights
        if kind == "uniform":
            return
        if kind not in WEIGHTS:
            try:
                values = [float(v) for v in kind.split(",")]
            except ValueError:
                raise UserError(
                    f"unknown aggregator_weights {kind!r}; choose from {', '.join(WEIGHTS)} or give one number per modality",
                    parameter="aggregator_weights",
                ) from None
            if not all(math.isfinite(v) and v >= 0 for v in values) or not sum(values) > 0:
                raise UserError(f"aggregator_weights must be non-negative numbers, not all zero; got {kind!r}",
                                parameter="aggregator_weights")
        recipe = MODELS[self.model]
        name = self.aggregator or recipe.aggregator
        if not recipe.swappable or name not in WEIGHTED_AGGREGATORS:
            raise UserError(
                f"aggregator_weights={kind!r} needs one of the aggregators {', '.join(WEIGHTED_AGGREGATORS)}; "
                f"{self.model} aggregates with {name}",
                parameter="aggregator_weights",
            )

    def _check_unused_legacy_fields(self) -> None:
        """A legacy top-level setting the model does not use is still checked, by the method
        that has it (as before it was an option): ``tc_ratio=1.5`` is an error for any model."""
        for name in LEGACY_OPTION_FIELDS:
            value = getattr(self, name)
            if value is None or name in MODELS[self.model].options:
                continue
            owner = next((r for r in MODELS.values() if name in r.options), None)
            if owner is not None:
                build_options(owner.options_type, {name: value}, owner=owner.name)

    def option_values(self) -> dict[str, Any]:
        """The user's method options: ``options`` plus the legacy top-level fields the method has."""
        known = MODELS[self.model].options if self.model in MODELS else {}
        values: dict[str, Any] = {}
        for name in LEGACY_OPTION_FIELDS:
            legacy = getattr(self, name)
            if legacy is None or name not in known:
                continue
            if name in self.options and self.options[name] != legacy:
                raise UserError(
                    f"{name} is given twice, as {legacy!r} and as options[{name!r}] = {self.options[name]!r}; give it once",
                    parameter=name,
                )
            values[name] = legacy
        values.update(self.options)
        return values

    def settings(self) -> MethodOptions:
        """The method's typed options (defaults where unset), checked; raises :class:`UserError`."""
        if self.model not in MODELS:
            raise unknown_name("model", self.model, list(MODELS))
        return build_options(MODELS[self.model].options_type, self.option_values(), owner=self.model)

    def settings_as(self, kind: type[OptionsT]) -> OptionsT:
        """:meth:`settings` as the options class ``kind`` the caller's recipe declares."""
        settings = self.settings()
        if not isinstance(settings, kind):
            raise TypeError(f"{self.model}'s options are {type(settings).__name__}, not {kind.__name__}")
        return settings

    def option(self, key: str) -> Any:
        """One method-specific setting: the user's value, else the recipe's default."""
        return getattr(self.settings(), key)

    def to_json(self) -> dict[str, Any]:
        """The stored form: legacy top-level settings folded into ``options``."""
        out = asdict(self)
        for name in LEGACY_OPTION_FIELDS:
            out.pop(name)
        if self.model in MODELS:
            out["options"] = self.option_values()
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in known})
