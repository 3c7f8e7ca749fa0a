"""`omnivae models NAME` and `--set`: recipe options typed by their declared dataclass fields."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write_tiny_npz

from omnivae.cli import main
from omnivae.models import MODELS, recipe_options
from omnivae.train.options import merge_options


def test_models_name_lists_every_declared_option_with_type_default_and_help(capsys):
    assert main(["models", "jnf-cl"]) == 0
    out = capsys.readouterr().out
    for option in recipe_options("jnf-cl"):
        line = next(row for row in out.splitlines() if row.split()[:1] == [option.name])
        assert option.type in line and str(option.default) in line and option.help[:30] in line


def test_models_name_of_a_model_without_options_says_so(capsys):
    assert main(["models", "poe"]) == 0
    assert capsys.readouterr().out.strip() == "poe has no options"


def test_models_unknown_name_is_one_line_exit_2(capsys):
    assert main(["models", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'nope'" in err[0] and "mwb" in err[0]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_set_parses_each_option_by_its_declared_type(model):
    for option in recipe_options(model):
        text = {"int": "3", "float": "3", "bool": "true"}.get(option.type, option.type.split("|")[-1])
        merged = merge_options(None, {"model": model, "set_options": [f"{option.name}={text}"]})
        value = merged["options"][option.name]
        expected = {"int": int, "float": float, "bool": bool}.get(option.type, str)
        assert type(value) is expected, (model, option, value)


def test_set_of_an_int_option_refuses_a_fraction_and_a_float_option_takes_an_integer():
    with pytest.raises(Exception, match="w_dim must be an integer"):
        merge_options(None, {"model": "mmvae+", "set_options": ["w_dim=16.5"]})
    assert merge_options(None, {"model": "jmvae", "set_options": ["alpha=1"]})["options"] == {"alpha": 1.0}


def test_set_of_an_option_the_model_lacks_is_refused_naming_its_options(tmp_path: Path, capsys):
    npz = write_tiny_npz(tmp_path / "d.npz")
    out = tmp_path / "run"
    code = main(["train", "--dataset", f"npz:{npz}", "--model", "jmvae", "--set", "alpah=1", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no option 'alpah'" in err[0] and "alpha" in err[0]
    assert not out.exists()


def test_set_without_a_model_uses_the_default_model_and_resume_keeps_the_guess():
    with pytest.raises(Exception, match="mwb has no option .w_dim."):
        merge_options(None, {"set_options": ["w_dim=16"]})  # the default model, mwb, has no options
    assert merge_options(None, {"resume": "RUN", "set_options": ["w_dim=16"]})["options"] == {"w_dim": 16}
