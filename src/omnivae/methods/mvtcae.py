"""MVTCAE (Hwang et al., NeurIPS 2021): a product of experts without the prior expert.

The model is a :class:`~omnivae.models.MultimodalVAE` with
:class:`~omnivae.aggregators.ProductOfExperts` (``prior_expert=False``); the objective
is :class:`~omnivae.objectives.MVTCAE` (Hwang et al. 2021, Eq. 10; the JNF paper's
baseline, App. E.2), weighted by the one option ``tc_ratio``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from omnivae.aggregators import ProductOfExperts
from omnivae.errors import UserError
from omnivae.models.options import MethodOptions, option
from omnivae.models.recipe import Recipe
from omnivae.objectives import MVTCAE

__all__ = ["MVTCAEOptions", "RECIPES"]


@dataclass(frozen=True)
class MVTCAEOptions(MethodOptions):
    """MVTCAE's setting."""

    tc_ratio: float = option(5 / 6, "MVTCAE's alpha in [0, 1], the total-correlation ratio (Hwang et al. 2021: 5/6)")

    def check(self) -> None:
        if not 0 <= self.tc_ratio <= 1:
            raise UserError(f"tc_ratio (MVTCAE's alpha) must lie in [0, 1], got {self.tc_ratio}", parameter="tc_ratio")


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "mvtcae", "MVTCAE (PoE without prior expert)", "Hwang et al., NeurIPS 2021", "poe",
        lambda c: MVTCAE(beta=c.beta, tc_ratio=c.settings_as(MVTCAEOptions).tc_ratio),
        # No prior expert, as MultiVae (the implementation of the JNF paper's comparison):
        # the prior already enters through (1 - alpha) KL(q || p), and the KL terms to each
        # q(z | x_m) then compare q with a product of those experts alone. The original
        # code (built on MoPoE's) multiplies N(0, I) into the full-set product.
        aggregator_factory=partial(ProductOfExperts, prior_expert=False),
        options_type=MVTCAEOptions,
    ),
)
