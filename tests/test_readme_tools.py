"""The README's "Use with TensorBoard / MLflow / W&B" and "Use with PyTorch DataLoaders"
Python examples, run as written on tiny files in a temporary folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from helpers import tiny_arrays, write_tiny_npz
from omnivae.train.checkpoint import published_checkpoint
from omnivae.train.tracking import read_record

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _python_block(heading: str) -> str:
    section = README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, heading
    return blocks[0]


def test_tracking_example(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_tiny_npz(tmp_path / "data.npz", n=100)
    exec(compile(_python_block("Use with TensorBoard / MLflow / W&B"), "README.md", "exec"), {})
    assert re.findall(r"epoch (\d): train loss", capsys.readouterr().out) == ["1", "2"]
    run = tmp_path / "runs" / "from-python"
    assert published_checkpoint(run) is not None
    assert set(read_record(run)) == {"tensorboard", "mlflow"}
    assert list((run / "tracking" / "tensorboard").glob("events.out.tfevents.*"))


def test_dataloader_example(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMNIVAE_CACHE", str(tmp_path / "cache"))  # the coherence classifiers
    for split, n, seed in (("train", 100, 0), ("test", 40, 1)):
        (tmp_path / "big" / split).mkdir(parents=True)
        arrays = tiny_arrays(n, seed)
        arrays["mask_vec"] = np.arange(n) % 4 != 0
        for name in ("img", "vec", "mask_vec", "labels"):
            np.save(tmp_path / "big" / split / f"{name}.npy", arrays[name])
    exec(compile(_python_block("Use with PyTorch DataLoaders"), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'loss':" in out and "'img':" in out and "{'1': " in out
    run = tmp_path / "runs" / "streamed"
    assert published_checkpoint(run) is not None
    written = json.loads((run / "eval.json").read_text())
    assert written["settings"]["probe"]["train_rows"] == 100 and written["settings"]["recon"]["test_rows"] == 40
