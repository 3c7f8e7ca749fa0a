"""Figures: sample grids for every modality family, metric curves, the latent map, and the
rows a grid shows. Each figure is captured before it is closed and its artists inspected."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

from omnivae.data.base import ModalitySpec
from omnivae.data.text import ALPHABET, encode_strings
from omnivae.report import figures
from omnivae.report.figures import (
    COHERENCE_CURVE,
    PROBE_CURVE,
    chance_levels,
    class_colors,
    latent_map,
    metric_curves,
    row_titles,
    sample_grid,
    stratified_rows,
    tradeoff_curves,
)

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def captured(monkeypatch) -> list:
    """The figures the functions save (still open), in order; the PNG is written as usual."""
    kept = []
    save = figures.save_figure

    def keep(fig, path):
        kept.append(fig)
        save(fig, path)  # closing a figure leaves its artists to inspect

    monkeypatch.setattr(figures, "save_figure", keep)
    return kept


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text)]


def one_hot_text(words: list[str], length: int = 8) -> torch.Tensor:
    indices = torch.from_numpy(encode_strings(words, length).astype(np.int64))
    out = torch.zeros(len(words), length, len(ALPHABET))
    present = indices >= 0
    out[present.nonzero(as_tuple=True) + (indices[present],)] = 1
    return out


# ---------------------------------------------------------------------------------------
# Rows of a grid


def test_rows_cover_the_classes_evenly_and_in_class_order():
    labels = torch.tensor([0] * 50 + [1] * 5 + [2] * 30 + [3] * 3 + [4] * 12)
    ten = stratified_rows(labels, 10, seed=0)
    assert torch.bincount(labels[ten], minlength=5).tolist() == [2, 2, 2, 2, 2]
    assert labels[ten].tolist() == sorted(labels[ten].tolist())
    three = stratified_rows(labels, 3, seed=0)
    assert len(set(labels[three].tolist())) == 3
    # A class that runs out of rows leaves its turns to the others.
    twenty = stratified_rows(labels, 20, seed=0)
    counts = torch.bincount(labels[twenty], minlength=5).tolist()
    assert counts[3] == 3 and sum(counts) == 20 and max(counts) - min(c for c in counts if c != 3) <= 1
    assert len(set(twenty.tolist())) == 20


def test_rows_change_with_the_seed_and_repeat_with_it():
    labels = torch.arange(200) % 10
    assert stratified_rows(labels, 10, seed=3).tolist() == stratified_rows(labels, 10, seed=3).tolist()
    draws = {tuple(stratified_rows(labels, 10, seed=s).tolist()) for s in range(5)}
    assert len(draws) == 5
    # Fewer rows than classes: the seed also picks which classes.
    classes = {tuple(labels[stratified_rows(labels, 4, seed=s)].tolist()) for s in range(6)}
    assert len(classes) > 1


def test_rows_only_from_eligible_rows_and_without_labels():
    labels = torch.arange(40) % 4
    eligible = torch.arange(40) >= 30
    rows = stratified_rows(labels, 8, seed=1, eligible=eligible)
    assert len(rows) == 8 and bool((rows >= 30).all())
    assert len(stratified_rows(labels, 50, seed=1, eligible=eligible)) == 10
    unlabelled = stratified_rows(None, 5, seed=2, eligible=torch.ones(40, dtype=torch.bool))
    assert len(set(unlabelled.tolist())) == 5
    assert unlabelled.tolist() != stratified_rows(None, 5, seed=3, eligible=torch.ones(40, dtype=torch.bool)).tolist()


def test_row_titles_and_chance_levels():
    assert row_titles(torch.tensor([2, 0]), ["zero", "one", "two"]) == ["two", "zero"]
    assert row_titles(torch.tensor([1]), None) == ["class 1"]
    assert row_titles(None) is None
    chance = chance_levels(torch.tensor([0] * 6 + [1] * 3 + [2]))
    assert chance[PROBE_CURVE] == pytest.approx(0.6)  # the majority class's share
    assert chance[COHERENCE_CURVE] == pytest.approx(1 / 3)  # balanced accuracy of any blind guess
    assert chance_levels(torch.tensor([0, 1]), num_classes=10)[COHERENCE_CURVE] == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------
# Sample grids, one per modality family


def test_image_grid_marks_missing_inputs(tmp_path, captured):
    spec = ModalitySpec("m0", (3, 28, 28), "image")
    other = ModalitySpec("m1", (1, 28, 28), "image")
    given = {"m0": torch.rand(4, 3, 28, 28)}
    observed = {"m0": torch.tensor([True, False, True, False])}
    generated = {"m0": torch.rand(4, 3, 28, 28), "m1": torch.rand(4, 1, 28, 28)}
    path = tmp_path / "images.png"
    sample_grid(given, generated, [spec, other], path, title="t", observed=observed,
                row_labels=["3", "5", "7", "9"])
    assert path.read_bytes()[:8] == PNG
    words = texts(captured[0])
    assert words.count("missing") == 2
    assert {"given\nm0", "reconstructed\nm0", "generated\nm1", "3", "9"} <= set(words)
    images = [im for ax in captured[0].axes for im in ax.get_images()]
    assert len(images) == 2 + 4 + 4  # observed inputs, then every generated cell


def test_text_grid_shows_decoded_words(tmp_path, captured):
    specs = [ModalitySpec("mnist", (1, 28, 28), "image"), ModalitySpec("text", (8, len(ALPHABET)), "categorical")]
    words = ["three", "seven"]
    given = {"text": one_hot_text(["  three", "seven"])}
    # A decoder's output: probabilities, not one-hot, with spaces where MNIST-Text pads.
    probabilities = torch.softmax(one_hot_text([" one".ljust(8), "four".ljust(8)]) * 5, -1)
    generated = {"mnist": torch.rand(2, 1, 28, 28), "text": probabilities}
    path = tmp_path / "text.png"
    sample_grid(given, generated, specs, path)
    assert path.read_bytes()[:8] == PNG
    shown = texts(captured[0])
    assert all(word in shown for word in words)
    # Generated text: the argmax characters, the padding's spaces stripped.
    assert "one" in shown and "four" in shown


@pytest.mark.parametrize("dims", [(216, 6), (40, 3)])
def test_vector_grid_plots_on_one_scale_per_modality(tmp_path, captured, dims):
    long, short = dims
    specs = [ModalitySpec("fac", (long,), "vector"), ModalitySpec("mor", (short,), "vector"),
             ModalitySpec("audio", (1, 8, 16), "vector")]
    given = {"fac": torch.randn(3, long) * 3}
    generated = {"fac": torch.randn(3, long), "mor": torch.randn(3, short) * 10, "audio": torch.randn(3, 1, 8, 16)}
    path = tmp_path / "vectors.png"
    sample_grid(given, generated, specs, path, observed={"fac": torch.tensor([True, True, False])})
    assert path.read_bytes()[:8] == PNG
    fig = captured[0]
    lines = [ax for ax in fig.axes if any(len(line.get_xdata()) == long for line in ax.get_lines())]
    assert len(lines) == 2 + 3  # two observed inputs, three generated rows
    assert len({ax.get_ylim() for ax in lines}) == 1  # given and generated fac share one scale
    low, high = lines[0].get_ylim()
    values = torch.cat([given["fac"][:2].flatten(), generated["fac"].flatten()])
    assert low <= float(values.min()) and high >= float(values.max())
    bars = [ax for ax in fig.axes if ax.patches and len(ax.patches) == short]
    assert len(bars) == 3 and len({ax.get_ylim() for ax in bars}) == 1
    labelled = [ax for ax in fig.axes if ax.get_yticks().size and ax.get_lines() + list(ax.patches)]
    assert len(labelled) == 3  # each column of plots states its scale once (given fac, generated fac, mor)
    assert texts(fig).count("missing") == 1
    heatmaps = [ax for ax in fig.axes if ax.get_images()]
    assert len(heatmaps) == 3 and len({ax.get_images()[0].get_clim() for ax in heatmaps}) == 1


def test_binary_and_prior_grids(tmp_path, captured):
    specs = [ModalitySpec("square", (1, 32, 32), "binary"), ModalitySpec("bits", (5,), "binary")]
    generated = {"square": torch.rand(3, 1, 32, 32), "bits": torch.rand(3, 5)}
    path = tmp_path / "prior.png"
    sample_grid({}, generated, specs, path)
    assert path.read_bytes()[:8] == PNG
    bars = [ax for ax in captured[0].axes if ax.patches]
    assert bars and all(ax.get_ylim()[0] < 0 < 1 < ax.get_ylim()[1] < 1.2 for ax in bars)


# ---------------------------------------------------------------------------------------
# Metric curves


def test_metric_curves_chance_axes_ticks_and_legend(tmp_path, captured):
    curves = {
        PROBE_CURVE: {"poe": {"1": 0.40, "2": 0.45, "3": 0.47},
                      "mwb": {"1": (0.5, 0.05), "2": (0.6, 0.02), "3": (0.61, 0.0)}},
        COHERENCE_CURVE: {"poe": {"1": 0.11, "2": 0.12}, "mwb": {"1": 0.101, "2": 0.102}},
        "log p(X_rest | x_S)": {"poe": {"1": -2900.0, "2": -2800.0}},
    }
    chance = {PROBE_CURVE: 0.113, COHERENCE_CURVE: 0.1}
    path = tmp_path / "curves.png"
    metric_curves(curves, path, title="bench", chance=chance)
    assert path.read_bytes()[:8] == PNG
    fig = captured[0]
    panels = {ax.get_title(): ax for ax in fig.axes}
    for metric, level in chance.items():
        ax = panels[metric]
        assert ax.get_ylim() == (0.0, 1.0)  # the whole range, even for curves near chance
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert len(dashed) == 1 and set(np.asarray(dashed[0].get_ydata(), dtype=float)) == {level}
    likelihood = panels["log p(X_rest | x_S)"]
    assert likelihood.get_ylim() != (0.0, 1.0)  # not an accuracy: its own range, no chance line
    assert not [line for line in likelihood.get_lines() if line.get_linestyle() == "--"]
    assert list(panels[PROBE_CURVE].get_xticks()) == [1, 2, 3]
    assert list(panels[COHERENCE_CURVE].get_xticks()) == [1, 2]
    for ax in fig.axes:
        assert all(float(t).is_integer() for t in ax.get_xticks())
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["poe", "mwb", "chance"]
    # The same model has the same colour in every panel.
    colours = {(ax.get_title(), ln.get_label()): matplotlib.colors.to_hex(ln.get_color())
               for ax in fig.axes for ln in ax.get_lines()}
    assert colours[(PROBE_CURVE, "poe")] == colours[(COHERENCE_CURVE, "poe")] != colours[(PROBE_CURVE, "mwb")]


# ---------------------------------------------------------------------------------------
# Latent map


@pytest.mark.parametrize("classes", [2, 10, 40])
def test_latent_map_legend_colours_are_the_points_colours(tmp_path, captured, classes):
    per_class = 3
    labels = torch.arange(classes).repeat_interleave(per_class)
    # 2-D embeddings (no PCA) whose x coordinate is the label, so each point's class is known.
    embeddings = torch.stack([labels.double(), torch.arange(len(labels)).double() * 1e-3], 1)
    names = [f"digit {c}" for c in range(classes)]
    path = tmp_path / f"latent{classes}.png"
    latent_map(embeddings, labels, path, label_names=names)
    assert path.read_bytes()[:8] == PNG
    ax = captured[0].axes[0]
    scatter = ax.collections[0]
    point_class = np.rint(scatter.get_offsets()[:, 0]).astype(int)
    point_colours = scatter.get_facecolors()[:, :3]
    legend = ax.get_legend()
    entries = {t.get_text(): matplotlib.colors.to_rgb(h.get_markerfacecolor())
               for t, h in zip(legend.get_texts(), legend.legend_handles)}
    assert list(entries) == names
    for c in range(classes):
        mine = point_colours[point_class == c]
        assert len(mine) == per_class
        assert np.allclose(mine, entries[f"digit {c}"])
    assert len({tuple(np.round(v, 6)) for v in entries.values()}) == classes  # no colour used twice


def test_class_colors_are_distinct():
    for count in (1, 2, 10, 11, 20, 21, 40, 100):
        colours = class_colors(count)
        assert colours.shape == (count, 4)
        assert len({tuple(np.round(c, 6)) for c in colours}) == count


# ---------------------------------------------------------------------------------------
# From a run: `omnivae sample` and the evaluation's grids


def test_sample_command_draws_rows_across_classes_by_seed(tmp_path, monkeypatch, captured, capsys):
    from helpers import write_tiny_npz
    from omnivae.cli import main
    from omnivae.data import load_dataset
    from omnivae.evaluate import draw_samples
    from omnivae.train import load_run

    monkeypatch.setenv("OMNIVAE_CACHE", str(tmp_path / "cache"))
    n = 90
    vec_seen = np.arange(n) % 3 != 0  # a third of the rows have no vec
    npz = write_tiny_npz(tmp_path / "data.npz", n=n, mask_vec=vec_seen)
    run = tmp_path / "run"
    tiny = ["--backbone", "mlp", "--hidden", "16", "--latent-dim", "4", "--batch-size", "16", "--no-progress",
            "--device", "cpu"]
    assert main(["train", "--dataset", f"npz:{npz}", "--epochs", "1", *tiny, "--out", str(run)]) == 0
    loaded = load_run(run, device="cpu")
    test = load_dataset(f"npz:{npz}").test
    draws = [draw_samples(loaded, test, ["img", "vec"], 6, seed) for seed in (0, 1)]
    for inputs, generated, observed, labels in draws:
        assert sorted(labels) == ["class 0", "class 0", "class 1", "class 1", "class 2", "class 2"]  # 2 per class
        assert set(generated) == {"img", "vec", "bits"} and len(generated["img"]) == 6
    assert not torch.equal(draws[0][0]["img"], draws[1][0]["img"])  # another seed, other rows
    out = tmp_path / "grid.png"
    capsys.readouterr()
    argv = ["sample", str(run), "--given", "vec", "--n", "4", "--seed", "2", "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    assert out.read_bytes()[:8] == PNG and "4 rows" in capsys.readouterr().out
    shown = texts(captured[-1])
    assert "missing" not in shown  # only rows with vec observed are drawn when vec is all that is given
    assert {"given\nvec", "generated\nimg", "reconstructed\nvec"} <= set(shown)


def test_long_captions_are_wrapped_and_cut(tmp_path, captured):
    caption = "this person has arched eyebrows, bangs, black hair and is smiling. " * 4  # 272 characters
    specs = [ModalitySpec("text", (256, len(ALPHABET)), "categorical")]
    sample_grid({}, {"text": one_hot_text([caption], 256)}, specs, tmp_path / "caption.png")
    shown = [t for t in texts(captured[0]) if t.startswith("this person")]
    assert len(shown) == 1
    lines = shown[0].split("\n")
    assert len(lines) == 6 and all(len(line) <= 48 for line in lines) and lines[-1].endswith("...")


def test_tradeoff_accuracies_on_the_unit_interval(tmp_path, captured):
    point = {"recon": (1.0, 0.1), "probe (1 input)": (0.52, 0.01), "coherence (1 input)": (0.11, 0.0)}
    series = {"mwb": [(0.5, point), (2.0, {**point, "recon": (1.4, 0.1), "probe (1 input)": (0.55, 0.02)})]}
    tradeoff_curves(series, "recon", ["probe (1 input)", "coherence (1 input)"], tmp_path / "sweep.png")
    assert [ax.get_ylim() for ax in captured[0].axes] == [(0.0, 1.0), (0.0, 1.0)]
