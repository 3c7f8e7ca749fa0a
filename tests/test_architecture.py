"""The architecture of docs/architecture.md, checked: its equation table names code that
exists, its worked example adds a method from outside the package and trains it through
the public API, and no source file is over 500 lines.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest
import torch

from helpers import MODALITIES, tiny_batch, tiny_config, tiny_splits
from omnivae import models
from omnivae.train import TrainConfig, load_run, train

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "omnivae"
DOC = ROOT / "docs" / "architecture.md"
MAX_LINES = 500

# Files that other branches of issue 19 are splitting at the same time as this test was
# written (owner in the value). The lead removes an entry once its split is merged; the
# strict test below covers every other file.
PENDING_SPLITS: dict[str, str] = {
    "src/omnivae/train/trainer.py": "the trainer's engineer",
    "src/omnivae/cli.py": "r2-split",
    "src/omnivae/data/tables.py": "r2-split",
    "src/omnivae/data/polymnist.py": "r2-split",
    "src/omnivae/data/arrays.py": "r2-split",
    "src/omnivae/data/mnist_svhn.py": "r2-split",
    "src/omnivae/report/figures.py": "r2-split",
    "src/omnivae/metrics/classifiers.py": "r2-split",
}


def _line_counts() -> dict[str, int]:
    return {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for path in sorted(SRC.rglob("*.py"))
    }


def test_no_source_file_is_over_500_lines():
    long = {p: n for p, n in _line_counts().items() if n > MAX_LINES and p not in PENDING_SPLITS}
    assert not long, f"split these files (at most {MAX_LINES} lines each): {long}"


@pytest.mark.xfail(reason="files other branches split (PENDING_SPLITS); the lead removes this mark and the list after merging them")
def test_files_pending_another_branch_split_are_short():
    long = {f"{p} ({PENDING_SPLITS[p]})": n for p, n in _line_counts().items() if n > MAX_LINES and p in PENDING_SPLITS}
    assert not long, f"still over {MAX_LINES} lines: {long}"


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
