"""Process CPU seconds per MHVAE training step, omnivae against MultiVae, in one process.

PolyMNIST (5 modalities), vs_multivae.py's networks (MLP 512-512, latent 20, L = 3, the
same modules and weights in both libraries), one batch of 128, one thread, forward and
backward of the loss (no optimiser step). Three cases, interleaved: omnivae computing a
modality's lower-level experts only on the subsets holding it (the default), omnivae
computing every expert on every subset, and MultiVae's MHVAE. Process CPU time is far
less disturbed than wall time by other jobs on a shared machine.

Run in the venv of vs_multivae.py::

    OMP_NUM_THREADS=1 python benchmarks/mhvae_cpu_step.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import vs_multivae as vs  # noqa: E402
from multivae.data.datasets.base import MultimodalBaseDataset  # noqa: E402

from omnivae.data import load_dataset  # noqa: E402


def main(repeats: int = 3) -> None:
    torch.set_num_threads(1)
    data = load_dataset("polymnist")
    torch.manual_seed(0)
    model, objective = vs.build_omnivae("mhvae", "mlp", data.modalities)
    multivae = vs.build_multivae("mhvae", model)
    batch = data.train.batch(torch.arange(128))
    x = dict(batch.x)
    mask = model.stack_mask(x, batch.mask)
    inputs = MultimodalBaseDataset(data={k: v.float() for k, v in x.items()})
    member_rows = objective.expert_rows(len(model.names), mask.device)

    def omnivae(rows):
        def step() -> None:
            model.zero_grad()
            members, weights = objective.members(mask)
            rec, kls = objective.elbo_terms(model, x, members, mask, rows=rows)
            (-(weights * (rec - sum(kls))).sum(0).mean()).backward()

        return step

    def multi() -> None:
        multivae.zero_grad()
        multivae(inputs).loss.backward()

    cases = {"omnivae, member experts": omnivae(member_rows), "omnivae, every expert": omnivae(None), "MultiVae": multi}
    for step in cases.values():  # warm-up
        step()
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, step in cases.items():
            start = time.process_time()
            step()
            seconds[name].append(time.process_time() - start)
    for name, values in seconds.items():
        print(f"{name:24s} CPU s/step: {', '.join(f'{s:.2f}' for s in values)}  (min {min(values):.2f})")


if __name__ == "__main__":
    main()
