"""Figures and markdown reports of evaluations and benchmarks."""

from omnivae.report.figures import latent_map, metric_curves, sample_grid, tradeoff_curves
from omnivae.report.markdown import benchmark_markdown, evaluation_markdown

__all__ = ["sample_grid", "metric_curves",
    "tradeoff_curves", "latent_map", "evaluation_markdown", "benchmark_markdown"]
