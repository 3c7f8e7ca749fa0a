"""Metrics of the papers, as functions ``metric(model, data, ...) -> dict``.

- :func:`conditional_coherence`, :func:`joint_coherence`: coherence of generated
  samples, judged by per-modality classifiers (:func:`get_classifiers`).
- :func:`linear_probe`: logistic regression on the posterior means of every subset.
- :func:`joint_log_likelihood`, :func:`conditional_log_likelihoods`: importance sampling.
- :func:`latent_clustering`: k-means on the posterior means of every subset, NMI/ARI.
- :func:`generation_frechet`: Frechet distances in the classifiers' feature space (torchmetrics).
- :func:`reconstruction_error`: per-modality squared error from itself and the others.

None of them special-cases a model: they use only ``subset_posteriors``,
``decode_mean``, ``prior`` and ``log_likelihood`` of the model API.
"""

from omnivae.metrics.classifiers import (
    ModalityClassifiers,
    balanced_accuracy,
    build_classifier,
    get_classifiers,
)
from omnivae.metrics.clustering import latent_clustering
from omnivae.metrics.coherence import conditional_coherence, joint_coherence
from omnivae.metrics.frechet import generation_frechet, image_features, load_inception_features
from omnivae.metrics.likelihood import conditional_log_likelihoods, joint_log_likelihood
from omnivae.metrics.probe import linear_probe
from omnivae.metrics.reconstruction import reconstruction_error

__all__ = [
    "ModalityClassifiers",
    "balanced_accuracy",
    "build_classifier",
    "get_classifiers",
    "conditional_coherence",
    "joint_coherence",
    "generation_frechet",
    "image_features",
    "load_inception_features",
    "joint_log_likelihood",
    "conditional_log_likelihoods",
    "linear_probe",
    "latent_clustering",
    "reconstruction_error",
]
