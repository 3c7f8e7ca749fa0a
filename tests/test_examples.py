"""The one-command paper figures (slow: they train real models)."""

from __future__ import annotations

import pytest

from omnivae.cli import main


def test_jnf_toy_rejects_bad_arguments(capsys, tmp_path):
    assert main(["jnf-toy", "--epochs", "0", "--out", str(tmp_path / "a.png")]) == 2
    assert main(["jnf-toy", "--out", str(tmp_path / "a.jpg")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("omnivae: error:") for line in err)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_jnf_toy_writes_the_figure(tmp_path, capsys):
    out = tmp_path / "toy.png"
    assert main(["jnf-toy", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    assert out.is_file() and out.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "flow q(z | square)" in printed and "Gaussian q(z | square)" in printed
