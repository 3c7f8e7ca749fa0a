"""Method families: one module or package each, exporting ``RECIPES``.

``barycentric`` (PoE, MoE, MoPoE, WB, MWB: recipes alone), ``mvtcae``, ``jmvae``, ``jnf``
(a package: model, posterior, objectives, projectors, recipes), ``mmvamp`` (MM-VAMP,
independent and aggregated VAEs), ``mmvaeplus`` and ``nexus``. A family imports the floor
of :mod:`omnivae.models` (base, recipe, options) and never another family;
:mod:`omnivae.models.registry` imports every family.
"""
