"""The README's first command: ``omnivae train`` with no flags trains a model that learns.

The fast test runs the command exactly as the README writes it, one epoch instead of ten,
and checks the run loads and the printed next commands work. The slow one trains the
full default and checks the promise the README makes: cross coherence from one input of
at least 0.5 (chance is 0.1).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from omnivae.cli import main
from omnivae.train import load_run

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def readme_train_argv() -> list[str]:
    """The arguments of the ``omnivae train`` that ends the README's first command."""
    first_block = re.search(r"```bash\n(.*?)```", README, flags=re.S)
    assert first_block is not None, "the README starts with a bash block"
    commands = [c.strip() for c in first_block.group(1).replace("\\\n", " ").split("&&")]
    train = [c for c in commands if c.startswith("omnivae train")]
    assert len(train) == 1, f"one omnivae train in the README's first command, got {train}"
    return shlex.split(train[0])[1:]


def run_default(extra: list[str], capsys) -> tuple[Path, str]:
    assert main([*readme_train_argv(), *extra]) == 0
    out = capsys.readouterr().out
    written = re.search(r"^run written to (.+)$", out, flags=re.M)
    assert written is not None, out
    return Path(written.group(1)), out


def test_the_readme_first_command_is_train_with_no_flags():
    # What the README promises (and the slow test checks) is the defaults, not a setting.
    assert readme_train_argv() == ["train"]


def test_the_default_train_writes_a_loadable_run_and_prints_the_next_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_dir, out = run_default(["--epochs", "1", "--no-progress"], capsys)
    assert run_dir.parent == Path("runs")  # the default run folder, in the working directory

    run = load_run(run_dir)
    assert run.dataset_name == "mnist-text"
    assert list(run.model.names) == ["mnist", "text"]
    generated = run.model.generate(2)
    assert tuple(generated["mnist"].shape) == (2, 1, 28, 28) and tuple(generated["text"].shape) == (2, 8, 71)

    next_lines = out.split("next:\n", 1)[1].splitlines()
    commands = [line.strip() for line in next_lines if line.strip().startswith("omnivae ")]
    verbs = [shlex.split(c)[1] for c in commands]
    assert verbs == ["evaluate", "sample", "impute"]
    for command in commands:
        assert shlex.split(command)[2] == str(run_dir), command
    # The sample command runs as printed and writes its grid inside the run.
    sample = shlex.split(commands[1])
    assert main(sample[1:]) == 0
    grid = Path(sample[sample.index("--out") + 1])
    assert grid.is_file() and grid.parent == run_dir and grid.stat().st_size > 0


def test_next_commands_impute_the_users_own_file(tmp_path):
    from omnivae.cli.train import next_commands as _next_commands

    run = tmp_path / "my run"
    lines = _next_commands(run, ["a", "b"], f"npz:{tmp_path / 'train data.npz'}")
    impute = shlex.split(lines[-1])
    assert impute[:3] == ["omnivae", "impute", str(run)]
    assert impute[impute.index("--input") + 1] == str(tmp_path / "train data.npz")
    assert impute[impute.index("--output") + 1] == str(run / "filled.npz")
    csv = shlex.split(_next_commands(run, ["a"], "csv:/data/tables")[-1])
    assert csv[csv.index("--input") + 1] == "/data/tables" and csv[-1] == str(run / "filled")


@pytest.mark.slow
def test_the_default_run_generates_the_right_digit_from_one_input(tmp_path, monkeypatch, capsys):
    from omnivae.data import load_dataset
    from omnivae.metrics.classifiers import get_classifiers
    from omnivae.metrics.coherence import conditional_coherence

    monkeypatch.chdir(tmp_path)
    run_dir, _ = run_default(["--no-progress"], capsys)
    run = load_run(run_dir)
    data = load_dataset(run.dataset_name)
    classifiers = get_classifiers(run.dataset_name, data.train, data.test, epochs=20, progress=False)
    coherence = conditional_coherence(run.model, data.test, classifiers)
    assert coherence["by_size"]["1"] >= 0.5, coherence
    # Both directions, so a model that only reads the label off the text would fail.
    assert min(coherence["per_subset"]["mnist"].values()) >= 0.5, coherence
    assert min(coherence["per_subset"]["text"].values()) >= 0.5, coherence
