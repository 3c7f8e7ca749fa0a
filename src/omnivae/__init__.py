"""omnivae: multimodal variational autoencoders as composable components.

Layers, bottom to top: ``functional`` (pure maths), ``distributions``, ``nn``,
``aggregators``, ``priors``, ``objectives``, ``models``, ``data``, ``train``, ``cli``.
"""

__version__ = "0.1.0"
