"""Figures: conditional sample grids, metrics against the number of inputs, latent maps.

Every function draws from tensors or result dicts it is given and writes one PNG
atomically; none of them trains or evaluates anything. The helpers ``stratified_rows``,
``row_titles`` and ``chance_levels`` pick what the figures show (rows across classes, the
chance level of a metric) from labels alone.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from torch import Tensor  # noqa: E402

from omnivae.data.base import ModalitySpec  # noqa: E402
from omnivae.data.text import ALPHABET  # noqa: E402
from omnivae.fileio import atomic_write_bytes  # noqa: E402
from omnivae.report.rows import (  # noqa: E402
    COHERENCE_CURVE,
    PROBE_CURVE,
    chance_levels,
    row_titles,
    stratified_rows,
)

__all__ = [
    "PROBE_CURVE",
    "COHERENCE_CURVE",
    "as_picture",
    "stratified_rows",
    "row_titles",
    "chance_levels",
    "class_colors",
    "sample_grid",
    "metric_curves",
    "tradeoff_curves",
    "latent_map",
    "save_figure",
]

#: Panel names of the by-size curves that are fractions in [0, 1] with a chance level.

_GIVEN_COLOUR = "#1f4e79"
_GENERATED_COLOUR = "#8b1a1a"
_MISSING_FACE = "#e4e4e4"
_VECTOR_LINE = "#2b5d8a"


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


# ---------------------------------------------------------------------------------------
# What to show


def class_colors(count: int) -> np.ndarray:
    """``count`` distinct RGBA colours ``[count, 4]``: tab10 up to 10 classes, tab20 up to
    20, evenly spaced samples of a continuous map beyond (no colour is used twice)."""
    if count <= 20:
        listed: Any = plt.get_cmap("tab10" if count <= 10 else "tab20")  # a ListedColormap
        return matplotlib.colors.to_rgba_array(listed.colors[:count])
    return np.asarray(plt.get_cmap("turbo")(np.linspace(0.03, 0.97, count)), dtype=float)


# ---------------------------------------------------------------------------------------
# Sample grids


def _cell_style(spec: ModalitySpec) -> str:
    """How a modality is drawn: ``image``, ``text``, ``bars``, ``line`` or ``heatmap``."""
    if spec.kind in ("image", "binary") and len(spec.shape) == 3:
        return "image"
    if spec.kind == "categorical" and len(spec.shape) == 2 and spec.shape[-1] == len(ALPHABET):
        return "text"
    if len(spec.shape) == 1:
        return "bars" if spec.shape[0] <= 16 else "line"
    return "heatmap"


def _cell_width(spec: ModalitySpec) -> float:
    style = _cell_style(spec)
    if style == "text":
        return 1.3 if spec.shape[0] <= 16 else 2.6
    return {"image": 1.0, "bars": 1.5, "line": 1.9, "heatmap": 1.5}[style]


def decode_text(value: Tensor) -> str:
    """The characters of one ``[length, len(ALPHABET)]`` one-hot or probability row (argmax
    per position; an all-zero position, the padding of a one-hot input, is dropped)."""
    value = value.detach().float().cpu()
    best = value.argmax(-1).tolist()
    present = (value.max(-1).values > 0).tolist()
    return "".join(ALPHABET[i] for i, keep in zip(best, present, strict=False) if keep).replace("\n", " ")


_Column = tuple[str, Tensor, ModalitySpec, Tensor | None]  # title, values [B, *shape], spec, observed [B]


def _vector_limits(columns: Sequence[_Column]) -> dict[str, tuple[float, float]]:
    """One y-range per vector modality, shared by its given and generated columns and rows."""
    limits: dict[str, tuple[float, float]] = {}
    for _, values, spec, observed in columns:
        if _cell_style(spec) not in ("bars", "line", "heatmap"):
            continue
        rows = values.detach().float().cpu()
        if observed is not None:
            rows = rows[observed.cpu().bool()]
        if spec.kind in ("binary", "categorical"):
            low, high = 0.0, 1.0
        elif rows.numel() == 0 or not torch.isfinite(rows).any():
            low, high = -1.0, 1.0
        else:
            finite = rows[torch.isfinite(rows)]
            low, high = float(finite.min()), float(finite.max())
        if spec.name in limits:
            low, high = min(low, limits[spec.name][0]), max(high, limits[spec.name][1])
        limits[spec.name] = (low, high)
    padded = {}
    for name, (low, high) in limits.items():
        pad = 0.05 * (high - low) if high > low else 0.5
        padded[name] = (low - pad, high + pad)
    return padded


def _draw_missing(ax: plt.Axes) -> None:
    ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, facecolor=_MISSING_FACE, edgecolor="0.65",
                           hatch="///", linewidth=0))
    ax.text(0.5, 0.5, "missing", transform=ax.transAxes, ha="center", va="center", fontsize=7, color="0.3",
            bbox={"facecolor": _MISSING_FACE, "edgecolor": "none", "pad": 1})


def _draw_cell(ax: plt.Axes, value: Tensor, spec: ModalitySpec, limits: tuple[float, float] | None,
               show_scale: bool) -> None:
    style = _cell_style(spec)
    value = value.detach().float().cpu()
    if style == "image":
        picture = as_picture(value, ModalitySpec(spec.name, spec.shape, "image"))
        ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        return
    if style == "text":
        text = decode_text(value).strip()
        chars = 22 if spec.shape[0] <= 16 else 44  # what fits the cell's width (see _cell_width)
        lines = textwrap.wrap(text, chars) if len(text) > chars else [text]
        wrapped = "\n".join(lines[:6]) + (" ..." if len(lines) > 6 else "")  # long captions (CelebA) cut
        if wrapped:
            ax.text(0.5, 0.5, wrapped, transform=ax.transAxes, ha="center", va="center",
                    family="monospace", fontsize=9 if len(text) <= 12 else 6)
        else:
            ax.text(0.5, 0.5, "(blank)", transform=ax.transAxes, ha="center", va="center", fontsize=7,
                    color="0.5", style="italic")
        return
    low, high = limits if limits is not None else (None, None)
    if style == "heatmap":
        ax.imshow(as_picture(value, spec), cmap="viridis", vmin=low, vmax=high, interpolation="nearest", aspect="auto")
        return
    positions = np.arange(value.shape[0])
    if style == "bars":
        ax.bar(positions, value.numpy(), width=0.8, color=_VECTOR_LINE)
    else:
        ax.plot(positions, value.numpy(), linewidth=0.8, color=_VECTOR_LINE)
    ax.set_xlim(-0.6 if style == "bars" else 0, positions[-1] + (0.6 if style == "bars" else 0))
    ax.set_ylim(low, high)
    if low is not None and high is not None and low < 0 < high:
        ax.axhline(0, color="0.75", linewidth=0.5, zorder=0)
    if show_scale:
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(3))
        ax.tick_params(axis="y", labelsize=5, length=2, pad=1)
    else:
        ax.set_yticks([])


def sample_grid(
    given: Mapping[str, Tensor],
    generated: Mapping[str, Tensor],
    specs: Sequence[ModalitySpec],
    path: Path,
    title: str = "",
    observed: Mapping[str, Tensor] | None = None,
    row_labels: Sequence[str] | None = None,
) -> None:
    """A grid with one row per example: the given modalities, then every generated one.

    Each modality is drawn as what it is: images as images, character sequences as their
    decoded text, vectors as bar (up to 16 values) or line plots on one y-scale per modality
    (shared by all rows and by its given and generated columns, labelled on the first row),
    other arrays as heatmaps. A given input that is not observed in a row is a grey,
    hatched cell marked "missing". Column titles say which modality is given and which is
    generated (a given modality generated again is its reconstruction); ``row_labels``
    (e.g. each row's class) are written at the left.

    Args:
        given: ``name -> [B, *shape]`` the conditioning inputs (empty for prior samples).
        generated: ``name -> [B, *shape]`` one sample per example and modality.
        specs: The modalities (for kinds and order).
        path: Output PNG.
        title: Figure title.
        observed: ``name -> BoolTensor[B]`` which given inputs are observed (default all).
        row_labels: One label per row.
    """
    by_name = {s.name: s for s in specs}
    order = [s.name for s in specs]
    given_names = [n for n in order if n in given] + [n for n in given if n not in by_name]
    generated_names = [n for n in order if n in generated]
    columns: list[_Column] = [
        (f"given\n{n}", given[n], by_name[n], None if observed is None else observed.get(n)) for n in given_names
    ] + [
        (f"{'reconstructed' if n in given else 'generated'}\n{n}", generated[n], by_name[n], None)
        for n in generated_names
    ]
    rows = next(iter(generated.values())).shape[0]
    limits = _vector_limits(columns)
    widths = ([0.75] if row_labels else []) + [_cell_width(spec) for _, _, spec, _ in columns]
    offset = 1 if row_labels else 0
    cell = 0.95
    header = 0.75 if title else 0.45  # inches above the grid: the title and the column titles
    height = cell * rows * 1.12 + header
    scaled = any(_cell_style(spec) in ("bars", "line") for _, _, spec, _ in columns)
    fig = plt.figure(figsize=(cell * sum(widths) * (1.3 if scaled else 1.12) + 0.2, height))
    grid = fig.add_gridspec(rows, len(widths), width_ratios=widths, wspace=0.3 if scaled else 0.12, hspace=0.12,
                            left=0.02, right=0.98, bottom=0.02, top=1 - header / height)
    first_axes: list[plt.Axes] = []
    for j, (label, values, spec, seen) in enumerate(columns):
        scale_shown = _cell_style(spec) not in ("bars", "line")  # only plots carry a y-scale
        for i in range(rows):
            ax = fig.add_subplot(grid[i, j + offset])
            show_scale = False
            if seen is not None and not bool(seen[i]):
                _draw_missing(ax)
            else:
                show_scale, scale_shown = not scale_shown, True  # labelled once, on its first drawn cell
                _draw_cell(ax, values[i], spec, limits.get(spec.name), show_scale=show_scale)
            ax.set_xticks([])
            if not show_scale:
                ax.set_yticks([])
            for side in ax.spines.values():
                side.set_color("0.7")
            if i == 0:
                colour = _GIVEN_COLOUR if j < len(given_names) else _GENERATED_COLOUR
                ax.set_title(label, fontsize=7, color=colour, linespacing=1.0)
                first_axes.append(ax)
    if row_labels:
        for i, text in enumerate(row_labels[:rows]):
            ax = fig.add_subplot(grid[i, 0])
            ax.axis("off")
            ax.text(1.0, 0.5, str(text), transform=ax.transAxes, ha="right", va="center", fontsize=8)
            if i == 0:
                ax.set_title("label", fontsize=7, color="0.3")
    if given_names and generated_names:
        left = first_axes[len(given_names) - 1].get_position().x1
        right = first_axes[len(given_names)].get_position().x0
        bottom = grid[rows - 1, 0].get_position(fig).y0
        top = first_axes[0].get_position().y1
        fig.add_artist(Line2D([(left + right) / 2] * 2, [bottom, top], transform=fig.transFigure,
                              color="0.4", linewidth=1.0))
    if title:
        fig.suptitle(title, fontsize=9, y=1.0 - 0.1 / height, va="top")
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------
# Curves


def _mean_and_std(value: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(value, (tuple, list)):
        return float(value[0]), float(value[1])
    return float(cast(float, value)), 0.0


def metric_curves(
    curves: Mapping[str, Mapping[str, Mapping[str, float | tuple[float, float]]]],
    path: Path,
    title: str = "",
    chance: Mapping[str, float] | None = None,
    unit_interval: Collection[str] | None = None,
) -> None:
    """Metrics against the number of input modalities (the shape of Qiu et al. 2025, Fig. 3).

    One panel per metric, one line per model (the same colour in every panel, named in the
    legend), ± one standard deviation as a band where given. Accuracies are drawn on their
    whole range [0, 1], so a flat line near chance looks flat, with the chance level as a
    dashed line; the x axis has a tick at each number of inputs and no others.

    Args:
        curves: ``metric -> model -> {size: value or (mean, std)}``.
        path: Output PNG.
        title: Figure title.
        chance: ``metric -> chance level`` (see :func:`chance_levels`), drawn where given.
        unit_interval: Metrics whose axis is [0, 1]; default: :data:`PROBE_CURVE`,
            :data:`COHERENCE_CURVE` and every metric in ``chance``.
    """
    metrics = [m for m in curves if curves[m]]
    if not metrics:
        return
    chance = dict(chance or {})
    bounded = set(unit_interval) if unit_interval is not None else {PROBE_CURVE, COHERENCE_CURVE, *chance}
    models = list(dict.fromkeys(model for m in metrics for model in curves[m]))
    colours = dict(zip(models, class_colors(len(models)), strict=False))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.0 * len(metrics), 3.3), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, metric in zip(axes[0], metrics, strict=False):
        sizes_seen: set[int] = set()
        for model, by_size in curves[metric].items():
            sizes = sorted(by_size, key=int)
            pairs = np.array([_mean_and_std(by_size[s]) for s in sizes], dtype=float).reshape(-1, 2)
            xs = np.array([int(s) for s in sizes])
            sizes_seen.update(xs.tolist())
            (line,) = ax.plot(xs, pairs[:, 0], marker="o", markersize=4, color=colours[model], label=model)
            handles.setdefault(model, line)
            if pairs[:, 1].any():
                low, high = pairs[:, 0] - pairs[:, 1], pairs[:, 0] + pairs[:, 1]
                if metric in bounded:
                    low, high = np.clip(low, 0, 1), np.clip(high, 0, 1)
                ax.fill_between(xs, low, high, alpha=0.18, color=colours[model], linewidth=0)
        if metric in chance:
            level = float(chance[metric])
            handles["chance"] = ax.axhline(level, color="0.35", linestyle="--", linewidth=1, label="chance")
            ax.annotate(f"chance {level:.2f}", (1.0, level), xycoords=("axes fraction", "data"),
                        xytext=(-2, 3), textcoords="offset points", ha="right", va="bottom", fontsize=7, color="0.35")
        if metric in bounded:
            ax.set_ylim(0, 1)
        ticks = sorted(sizes_seen)
        ax.set_xticks(ticks)
        ax.set_xlim(ticks[0] - 0.3, ticks[-1] + 0.3) if len(ticks) > 1 else ax.set_xlim(ticks[0] - 1, ticks[0] + 1)
        ax.set_xlabel("number of input modalities")
        ax.set_title(metric, fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0, 1, 0.93 if title else 1))
    fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               frameon=False, ncol=math.ceil(len(handles) / 16))
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def tradeoff_curves(
    series: Mapping[str, Sequence[tuple[float, Mapping[str, tuple[float, float]]]]],
    x_metric: str,
    y_metrics: Sequence[str],
    path: Path,
    title: str = "",
    unit_interval: Collection[str] | None = None,
) -> None:
    """Metrics against reconstruction error across a beta sweep (the shape of the MM-VAMP
    paper's Fig. 3: representation and coherence against reconstruction).

    Args:
        series: ``model -> [(beta, {metric: (mean, std)}), ...]``; one line per model
            through its betas, each point labelled with its beta.
        x_metric: The metric on the horizontal axis (a reconstruction error).
        y_metrics: One panel per metric on the vertical axis.
        path: Output PNG.
        unit_interval: Panels drawn on [0, 1]; default: those named ``probe ...`` or
            ``coherence ...`` (accuracies), as in :func:`metric_curves`.
    """
    panels = [m for m in y_metrics if any(m in point for points in series.values() for _, point in points)]
    if not panels:
        return
    if unit_interval is None:
        unit_interval = {m for m in panels if m.startswith(("probe", "coherence"))}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], panels, strict=False):
        for model, points in series.items():
            usable = [(beta, p) for beta, p in points if metric in p and x_metric in p]
            if not usable:
                continue
            xs = np.array([p[x_metric][0] for _, p in usable])
            ys = np.array([p[metric][0] for _, p in usable])
            xerr = np.array([p[x_metric][1] for _, p in usable])
            yerr = np.array([p[metric][1] for _, p in usable])
            line = ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", capsize=2, label=model)
            for (beta, _), x, y in zip(usable, xs, ys, strict=False):
                ax.annotate(f"{beta:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points",
                            color=line[0].get_color())
        if metric in unit_interval:
            ax.set_ylim(0, 1)
        ax.set_xlabel(x_metric)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------
# Latent map


def latent_map(
    embeddings: Tensor,
    labels: Tensor | None,
    path: Path,
    title: str = "",
    label_names: Sequence[str] | None = None,
    seed: int = 0,
) -> None:
    """A 2-D PCA projection of latent means, one colour per class.

    Each class gets its own colour from :func:`class_colors` (exactly as many colours as
    classes), the legend shows those same colours, and points are drawn in a seeded random
    order so that no class is painted over all the others. Multi-label data is coloured by
    its first attribute.
    """
    from sklearn.decomposition import PCA

    points = embeddings.detach().double().cpu().numpy()
    if points.shape[1] > 2:
        pca = PCA(n_components=2, random_state=0).fit(points)
        projected = pca.transform(points)
        axis_names = [f"PC {i + 1} ({100 * r:.0f}% of variance)" for i, r in enumerate(pca.explained_variance_ratio_)]
    else:
        projected = points if points.shape[1] == 2 else np.column_stack([points[:, 0], np.zeros(len(points))])
        axis_names = ["z 1", "z 2"]
    if labels is not None and labels.dim() > 1:
        label_names = [f"not {label_names[0]}", label_names[0]] if label_names else None
        labels = (labels[:, 0] > 0).long()
    order = np.random.default_rng(seed).permutation(len(projected))
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    if labels is None:
        ax.scatter(projected[order, 0], projected[order, 1], s=5, alpha=0.7, linewidths=0)
    else:
        values = labels.detach().cpu().numpy().astype(np.int64)
        classes, index = np.unique(values, return_inverse=True)
        colours = class_colors(len(classes))
        ax.scatter(projected[order, 0], projected[order, 1], c=colours[index[order]], s=5, alpha=0.8, linewidths=0)
        names = [label_names[int(c)] if label_names and 0 <= int(c) < len(label_names) else str(int(c))
                 for c in classes]
        handles = [Line2D([], [], marker="o", linestyle="", markersize=5, markerfacecolor=colours[k],
                          markeredgecolor=colours[k], label=name) for k, name in enumerate(names)]
        columns = math.ceil(len(classes) / 20)
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=columns,
                  fontsize=7 if len(classes) <= 20 else 6, title="label", title_fontsize=7, frameon=False,
                  handletextpad=0.2, columnspacing=0.6, borderaxespad=0)
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title(title or "latent space (posterior means, PCA)", fontsize=10)
    save_figure(fig, path)
