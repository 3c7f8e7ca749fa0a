"""The toy of the JNF paper's Fig. 2 on ``circles-squares``: why flow posteriors help.

Senellart et al. (2024), Sec. 4.1 and Fig. 2: a joint VAE with a 2-D latent space is
trained on pairs (square, circle) whose fill (full or empty) is shared and whose sizes are
independent. Then the unimodal posterior q(z | square) is fitted twice with the loss of
Eq. 8, once as a Gaussian (no flow) and once as a Gaussian transformed by a masked
autoregressive flow (Eq. 10). For one large full square, the flow covers the region of
the joint latent space that encodes full shapes of every circle size, while the Gaussian
spills into the region of empty shapes, so some circles it generates are empty.

One command draws the figure::

    omnivae jnf-toy --out jnf_toy.png

Panels: (a) the joint latent space, test pairs' posterior means coloured by fill and
square size; (b) samples of the Gaussian q(z | square) over it; (c) samples of the flow
q(z | square); below, circles decoded from the samples of (b) and (c), with the fraction
of decoded circles whose fill matches the square's (classified by the mean pixel inside
the circle).

The returned numbers, per posterior (and for the joint posterior q(z | square, circle) of
the same pair, the criterion's calibration): ``"full circles"``, the share of decoded
circles that are full, and ``"inside support"``, the share of samples inside the support
of the true posterior p(z | square): p(square | z) is negligible unless z decodes to the
conditioning square, so a sample counts as inside when the square decoded from it
(thresholded at 0.5) agrees with the conditioning square on at least 95% of its pixels
(one pixel of width on a large square changes about 5%).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from omnivae.data import load_dataset
from omnivae.data.toys import CIRCLES_SQUARES_SPLITS, circles_squares_sizes
from omnivae.models import ModelConfig, build_model
from omnivae.objectives import Objective
from omnivae.stages import Stage
from omnivae.train import TrainConfig, Trainer, train

__all__ = ["run_jnf_toy"]


class _RefitUnimodal(Objective):
    """Only stage 2 of JNF (Eq. 8), for a model whose joint VAE was trained elsewhere."""

    def __init__(self, loss: Objective) -> None:
        self.loss = loss

    def __call__(self, model: Any, x: dict[str, torch.Tensor], mask: torch.Tensor, kl_weight: float = 1.0) -> Any:
        return self.loss(model, x, mask, kl_weight)

    def stages(self, epochs: int) -> tuple[Stage, ...]:
        def unimodal(model: Any) -> Iterator[nn.Parameter]:
            return itertools.chain(model.encoders.parameters(), model.flows.parameters())

        return (Stage("unimodal posteriors (Gaussian)", self.loss, epochs, parameters=unimodal, warmup=False),)


def _full_fraction(circles: torch.Tensor) -> float:
    """Fraction of decoded circles that are full: mean intensity in the central 6x6 pixels."""
    centre = circles[..., 13:19, 13:19].reshape(circles.shape[0], -1).mean(1)
    return float((centre > 0.5).float().mean())


SUPPORT_AGREEMENT = 0.95
"""Share of pixels on which a decoded square must agree with the conditioning one."""


def support_share(decoded: torch.Tensor, target: torch.Tensor, agreement: float = SUPPORT_AGREEMENT) -> float:
    """Share of decoded images (``[N, ...]`` means) that match ``target`` (``[...]``, binary).

    A latent sample lies in the support of p(z | x) when its decoding reproduces x: here,
    when the thresholded decoded image agrees with ``x`` on at least ``agreement`` of its
    pixels.

    Example:
        >>> x = torch.zeros(4, 4); x[1:3, 1:3] = 1
        >>> support_share(torch.stack([x, 1 - x]), x)
        0.5
    """
    same = ((decoded > 0.5) == (target > 0.5)).reshape(decoded.shape[0], -1).float().mean(1)
    return float((same >= agreement).float().mean())


def run_jnf_toy(
    out: Path, epochs: int = 10, seed: int = 0, num_samples: int = 400, progress: bool = True,
    dataset: str = "circles-squares",
) -> dict[str, dict[str, float]]:
    """Train the toy models and write the figure to ``out``.

    Args:
        out: PNG path.
        epochs: Epochs of each stage (joint VAE, then the unimodal posteriors).
        seed: Seeds data order and initialisation.
        num_samples: Samples drawn from each unimodal posterior.
        progress: Progress bars.
        dataset: ``"circles-squares"`` or the paper's 200,000 pairs, ``"circles-squares-full"``.

    Returns:
        ``{posterior: {"full circles": share, "inside support": share}}`` for the Gaussian
        and flow q(z | square) and the joint q(z | square, circle).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = load_dataset(dataset)
    base: dict[str, Any] = {"model": "jnf", "latent_dim": 2, "backbone": "mlp", "hidden": [256, 256]}
    train_config = TrainConfig(epochs=epochs, batch_size=128, seed=seed, device="cpu", progress=progress)
    flow_trainer = train(ModelConfig(**base), train_config, data, dataset, None)
    flow_model = flow_trainer.model.eval()

    # The Gaussian variant shares the trained joint VAE and refits only q(z | x_j).
    torch.manual_seed(seed)
    gauss_model, gauss_objective = build_model(ModelConfig(**base, options={"flow_blocks": 0}), data.modalities)
    shared = {k: v for k, v in flow_model.state_dict().items() if k.startswith(("joint_encoder.", "decoders."))}
    gauss_model.load_state_dict(shared, strict=False)
    stage2 = gauss_objective.stages(epochs)[-1].objective
    Trainer(gauss_model, _RefitUnimodal(cast(Objective, stage2)), data.train, train_config).fit()
    gauss_model.eval()

    test = data.test
    sizes = circles_squares_sizes("test", *CIRCLES_SQUARES_SPLITS[dataset])["square"]
    assert test.labels is not None  # circles-squares is labelled
    labels = test.labels.numpy()
    batch = test.batch(torch.arange(len(test)))
    with torch.no_grad():
        joint = flow_model.encode(batch.x).mean.numpy()
        full = np.flatnonzero(labels == 1)
        pick = int(full[np.argmax(sizes[full])])
        square = {"square": batch.x["square"][pick : pick + 1]}
        drawn = {
            "Gaussian q(z | square)": gauss_model.encode(square).sample((num_samples,))[:, 0],
            "flow q(z | square)": flow_model.encode(square).sample((num_samples,))[:, 0],
        }
        circles = {k: flow_model.decode_mean(z, ["circle"])["circle"] for k, z in drawn.items()}
        pair = {k: v[pick : pick + 1] for k, v in batch.x.items()}
        z_joint = flow_model.encode(pair).sample((num_samples,))[:, 0]
        checked = {**drawn, "joint q(z | square, circle)": z_joint}
        numbers = {
            name: {
                "full circles": _full_fraction(flow_model.decode_mean(z, ["circle"])["circle"]),
                "inside support": support_share(flow_model.decode_mean(z, ["square"])["square"], square["square"][0]),
            }
            for name, z in checked.items()
        }

    fig = plt.figure(figsize=(13, 7.2))
    grid = fig.add_gridspec(3, 3, height_ratios=[4, 1, 1])
    colours = np.where(labels[:, None] == 1, [[0.1, 0.3, 0.9]], [[0.9, 0.2, 0.1]])
    shade = 0.25 + 0.75 * (sizes - sizes.min()) / max(1, sizes.max() - sizes.min())
    rgba = np.concatenate([colours, shade[:, None]], 1)
    ax = fig.add_subplot(grid[0, 0])
    ax.scatter(joint[:, 0], joint[:, 1], c=rgba, s=3)
    ax.scatter(joint[pick, 0], joint[pick, 1], marker="*", s=250, c="gold", edgecolors="k", zorder=3)
    ax.set_title("(a) joint latent space: blue full, red empty;\ndarker = larger square", fontsize=9)
    for column, (name, z) in enumerate(drawn.items(), start=1):
        ax = fig.add_subplot(grid[0, column], sharex=fig.axes[0], sharey=fig.axes[0])
        ax.scatter(joint[:, 0], joint[:, 1], c=rgba, s=3, alpha=0.3)
        ax.scatter(z[:, 0].numpy(), z[:, 1].numpy(), s=4, c="k")
        fraction = numbers[name]["full circles"]
        ax.set_title(f"({'bc'[column - 1]}) {name}, the starred large full square\n"
                     f"decoded circles full: {100 * fraction:.0f}%, in the support: "
                     f"{100 * numbers[name]['inside support']:.0f}%", fontsize=9)
        for row in (1, 2):
            strip = circles[name][(row - 1) * 8 : row * 8, 0].numpy()
            ax_img = fig.add_subplot(grid[row, column])
            ax_img.imshow(np.concatenate(list(strip), 1), cmap="gray", vmin=0, vmax=1)
            ax_img.axis("off")
    ax_img = fig.add_subplot(grid[1:, 0])
    ax_img.imshow(square["square"][0, 0].numpy(), cmap="gray", vmin=0, vmax=1)
    ax_img.set_title("the conditioning square", fontsize=9)
    ax_img.axis("off")
    fig.suptitle("JNF toy (Senellart et al. 2024, Fig. 2): Gaussian vs flow unimodal posterior, 2-D latent", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return numbers
