"""The architecture of docs/architecture.md, checked: its equation table names code that
exists, its worked example adds a method from outside the package and trains it through
the public API, and no source file is over 500 lines.
"""

from __future__ import annotations

import doctest
import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import MODALITIES, tiny_config, tiny_splits

from omnivae import models
from omnivae.errors import UserError
from omnivae.train import TrainConfig, load_run, train

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "omnivae"
DOC = ROOT / "docs" / "architecture.md"
MAX_LINES = 500

def _line_counts() -> dict[str, int]:
    return {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for path in sorted(SRC.rglob("*.py"))
    }


def test_no_source_file_is_over_500_lines():
    long = {p: n for p, n in _line_counts().items() if n > MAX_LINES}
    assert not long, f"split these files (at most {MAX_LINES} lines each): {long}"


def _equation_rows() -> list[tuple[str, str, str]]:
    """``(equation, path, dotted name)`` of every row of the equation table."""
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        where = re.fullmatch(r"`(src/omnivae/[\w/]+\.py):([\w.]+)`", cells[-1]) if len(cells) == 4 else None
        if where:
            rows.append((f"{cells[0]} {cells[1]}", where[1], where[2]))
    return rows


def test_equation_table_names_code_that_exists_and_covers_the_three_papers():
    rows = _equation_rows()
    papers = {row[0].split()[0] for row in rows}
    assert {"Barycentric", "JNF", "MM-VAMP"} <= papers, papers
    missing = []
    for equation, path, dotted in rows:
        module_name = path.removeprefix("src/").removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        target: object = importlib.import_module(module_name)
        for part in dotted.split("."):
            target = getattr(target, part, None)
        if target is None:
            missing.append(f"{equation}: {path}:{dotted}")
    assert not missing, f"the equation table names code that does not exist: {missing}"


EXAMPLE = "freebits-poe"


def _worked_example() -> str:
    """The Python block of the section "How to add a method"."""
    section = DOC.read_text(encoding="utf-8").split("## How to add a method", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def outside_method(tmp_path: Path) -> Iterator[None]:
    """The worked example as a module of a folder outside the package, imported; unregistered after."""
    folder = tmp_path / "my_project"
    folder.mkdir()
    (folder / "my_methods.py").write_text(_worked_example(), encoding="utf-8")
    sys.path.insert(0, str(folder))
    try:
        importlib.import_module("my_methods")
        yield
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("my_methods", None)
        models.MODELS.pop(EXAMPLE, None)


def test_the_worked_example_registers_a_method_from_outside_and_trains_one_step(outside_method, tmp_path):
    assert EXAMPLE in models.MODELS
    (info,) = models.recipe_options(EXAMPLE)
    assert (info.name, info.type, info.default) == ("free_bits", "float", 0.5)
    assert models.parse_option(EXAMPLE, "free_bits", "0.25") == 0.25
    with pytest.raises(UserError) as bad:
        models.build_model(tiny_config(EXAMPLE, options={"free_bits": -1.0}), MODALITIES)
    assert bad.value.parameter == "free_bits"

    config = tiny_config(EXAMPLE, options={"free_bits": 0.1})
    torch.manual_seed(0)  # train() seeds the same way before it builds the networks
    before = models.build_model(config, MODALITIES)[0].state_dict()
    run = tmp_path / "run"
    trainer = train(config, TrainConfig(epochs=1, batch_size=16, progress=False, device="cpu"),
                    tiny_splits(n_train=16, n_test=8), "tiny", run)
    assert trainer.global_step == 1
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "one step changed no parameter"
    loaded = load_run(run)
    assert loaded.model_config.model == EXAMPLE
    assert all(torch.equal(after[k], v) for k, v in loaded.model.state_dict().items())


def _layer_modules() -> list[str]:
    """The modules of the lower layers, the models and the methods (issue 19's typed core)."""
    names = [f"omnivae.{n}" for n in ("functional", "distributions", "aggregators", "objectives", "samplers", "modalities", "errors", "stages")]
    for package in ("nn", "models", "methods"):
        names += sorted(
            ".".join(("omnivae", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
            for path in (SRC / package).rglob("*.py")
        )
    return names


@pytest.mark.parametrize("name", _layer_modules())
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), verbose=False, report=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} fail (pytest --doctest-modules shows them)"
