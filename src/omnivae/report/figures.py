"""Figures: conditional sample grids, metrics against the number of inputs, latent maps.

Every function draws from tensors or result dicts it is given and writes one PNG
atomically; none of them trains or evaluates anything.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from torch import Tensor  # noqa: E402

from omnivae.data.base import ModalitySpec  # noqa: E402
from omnivae.train.checkpoint import atomic_write_bytes  # noqa: E402

__all__ = ["as_picture", "sample_grid", "metric_curves", "tradeoff_curves", "latent_map", "save_figure"]


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Write a figure as PNG through a temporary file and a rename."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())


def as_picture(value: Tensor, spec: ModalitySpec) -> np.ndarray:
    """One sample of any modality as an image array for display (H, W) or (H, W, 3)."""
    array = value.detach().float().cpu()
    if spec.kind == "image" and array.dim() == 3:
        channels = array.shape[0]
        array = array.clamp(0, 1)
        return array[0].numpy() if channels == 1 else array.permute(1, 2, 0).numpy()
    if array.dim() == 1:
        array = array.unsqueeze(0)
    return array.reshape(array.shape[0], -1).numpy() if array.dim() > 2 else array.numpy()


def sample_grid(
    given: Mapping[str, Tensor],
    generated: Mapping[str, Tensor],
    specs: Sequence[ModalitySpec],
    path: Path,
    title: str = "",
) -> None:
    """A grid: one row per example; the given modalities, then every generated modality.

    Args:
        given: ``name -> [B, *shape]`` the conditioning inputs.
        generated: ``name -> [B, *shape]`` one sample per example and modality.
        specs: The modalities (for kinds and order).
        path: Output PNG.
    """
    by_name = {s.name: s for s in specs}
    columns = [(f"given {n}", given[n], by_name[n]) for n in given] + [
        (f"→ {n}", generated[n], by_name[n]) for n in generated
    ]
    rows = next(iter(generated.values())).shape[0]
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.1 * len(columns), 1.1 * rows), squeeze=False)
    for j, (label, values, spec) in enumerate(columns):
        for i in range(rows):
            ax = axes[i][j]
            picture = as_picture(values[i], spec)
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0 if spec.kind == "image" else None,
                      vmax=1 if spec.kind == "image" else None, interpolation="nearest", aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def metric_curves(
    curves: Mapping[str, Mapping[str, Mapping[str, float | tuple[float, float]]]],
    path: Path,
    title: str = "",
) -> None:
    """Metrics against the number of input modalities (the shape of Qiu et al. 2025, Fig. 3).

    Args:
        curves: ``metric -> model -> {size: value or (mean, std)}``; one panel per metric,
            one line per model.
        path: Output PNG.
    """
    metrics = [m for m in curves if curves[m]]
    if not metrics:
        return
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for model, by_size in curves[metric].items():
            sizes = sorted(by_size, key=int)
            values = [by_size[s] for s in sizes]
            means = np.array([v[0] if isinstance(v, (tuple, list)) else v for v in values], dtype=float)
            stds = np.array([v[1] if isinstance(v, (tuple, list)) else 0.0 for v in values], dtype=float)
            xs = np.array([int(s) for s in sizes])
            ax.plot(xs, means, marker="o", label=model)
            if stds.any():
                ax.fill_between(xs, means - stds, means + stds, alpha=0.2)
        ax.set_xlabel("number of input modalities")
        ax.set_title(metric, fontsize=10)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[0][-1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def tradeoff_curves(
    series: Mapping[str, Sequence[tuple[float, Mapping[str, tuple[float, float]]]]],
    x_metric: str,
    y_metrics: Sequence[str],
    path: Path,
    title: str = "",
) -> None:
    """Metrics against reconstruction error across a beta sweep (the shape of the MM-VAMP
    paper's Fig. 3: representation and coherence against reconstruction).

    Args:
        series: ``model -> [(beta, {metric: (mean, std)}), ...]``; one line per model
            through its betas, each point labelled with its beta.
        x_metric: The metric on the horizontal axis (a reconstruction error).
        y_metrics: One panel per metric on the vertical axis.
        path: Output PNG.
    """
    panels = [m for m in y_metrics if any(m in point for points in series.values() for _, point in points)]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], panels):
        for model, points in series.items():
            usable = [(beta, p) for beta, p in points if metric in p and x_metric in p]
            if not usable:
                continue
            xs = np.array([p[x_metric][0] for _, p in usable])
            ys = np.array([p[metric][0] for _, p in usable])
            xerr = np.array([p[x_metric][1] for _, p in usable])
            yerr = np.array([p[metric][1] for _, p in usable])
            line = ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", capsize=2, label=model)
            for (beta, _), x, y in zip(usable, xs, ys):
                ax.annotate(f"{beta:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points",
                            color=line[0].get_color())
        ax.set_xlabel(x_metric)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def latent_map(embeddings: Tensor, labels: Tensor | None, path: Path, title: str = "", label_names=None) -> None:
    """A 2-D PCA projection of latent means, coloured by label."""
    from sklearn.decomposition import PCA

    points = embeddings.detach().double().cpu().numpy()
    projected = PCA(n_components=2, random_state=0).fit_transform(points) if points.shape[1] > 2 else points
    fig, ax = plt.subplots(figsize=(5, 4.4))
    if labels is not None and labels.dim() > 1:  # multi-label (CelebA): colour by the first attribute
        label_names = [f"not {label_names[0]}", label_names[0]] if label_names else None
        labels = (labels[:, 0] > 0).long()
    if labels is None:
        ax.scatter(projected[:, 0], projected[:, 1], s=4, alpha=0.7)
    else:
        values = labels.cpu().numpy()
        scatter = ax.scatter(projected[:, 0], projected[:, 1], c=values, s=4, cmap="tab10", alpha=0.8)
        classes = np.unique(values)
        if len(classes) <= 20:
            handles = scatter.legend_elements(num=len(classes))[0]
            names = [label_names[int(c)] if label_names else str(int(c)) for c in classes]
            ax.legend(handles, names, fontsize=6, loc="best", markerscale=0.8)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title or "latent space (posterior means, PCA)", fontsize=10)
    save_figure(fig, path)
