"""Typed method options: one frozen dataclass per recipe, listed, parsed by type, checked once."""

from __future__ import annotations

import dataclasses

import pytest

from helpers import tiny_config
from omnivae.errors import UserError
from omnivae.models import MODELS, ModelConfig, options_table, parse_option, recipe_options


@pytest.mark.parametrize("name", list(MODELS))
def test_every_option_is_typed_documented_and_round_trips_through_its_text(name):
    recipe = MODELS[name]
    assert dataclasses.is_dataclass(recipe.options_type)
    assert recipe.options_type.__dataclass_params__.frozen
    infos = recipe_options(name)
    assert {o.name: o.default for o in infos} == recipe.options
    values = {}
    for info in infos:
        assert info.help and (info.type in ("int", "float", "bool", "str") or info.choices), info
        parsed = parse_option(name, info.name, str(info.default))
        assert parsed == info.default and type(parsed) is type(info.default), info
        values[info.name] = parsed
    config = tiny_config(name, options=values)
    config.validate()
    assert config.settings() == recipe.options_type()


def test_parse_option_follows_the_declared_type_not_the_look_of_the_text():
    assert parse_option("jnf", "hmc_step_size", "1") == 1.0  # a float option given an integer
    assert type(parse_option("jnf", "hmc_step_size", "1")) is float
    assert parse_option("nexus", "bottom_dim", "16") == 16
    assert parse_option("mmvamp", "kl_estimator", "mc") == "mc"
    with pytest.raises(UserError, match="integer") as err:
        parse_option("nexus", "bottom_dim", "1.5")
    assert err.value.parameter == "bottom_dim"
    with pytest.raises(UserError, match="no option 'nope'"):
        parse_option("mmvae+", "nope", "1")


@pytest.mark.parametrize(
    "name, options, parameter",
    [
        ("nexus", {"dropout": 1.5}, "dropout"),
        ("nexus", {"msg_dim": 0}, "msg_dim"),
        ("mmvae+", {"w_dim": 0}, "w_dim"),
        ("mmvamp", {"kl_estimator": "exact"}, "kl_estimator"),
        ("jnf", {"hmc_step_size": -1.0}, "hmc_step_size"),
        ("jnf-cl", {"temperature": 0.0}, "temperature"),
        ("jmvae", {"alpha": -1.0}, "alpha"),
        ("mvtcae", {"tc_ratio": 2.0}, "tc_ratio"),
        ("mwb", {"alpha": 0.1}, None),  # not an option of mwb: no parameter (no flag) to point at
    ],
)
def test_bad_options_are_one_error_naming_the_parameter_not_a_flag(name, options, parameter):
    with pytest.raises(UserError) as err:
        tiny_config(name, options=options).validate()
    assert err.value.parameter == parameter
    assert "--" not in str(err.value)


@pytest.mark.parametrize(
    "field, value", [("latent_dim", 0), ("beta", -1.0), ("num_samples", 0), ("num_random_subsets", -1)]
)
def test_config_errors_name_the_parameter(field, value):
    with pytest.raises(UserError) as err:
        ModelConfig(**{field: value}).validate()
    assert err.value.parameter == field and "--" not in str(err.value)


def test_settings_are_frozen_and_read_through_the_config():
    config = tiny_config("jmvae", options={"alpha": 0.25})
    settings = config.settings()
    assert settings.alpha == 0.25 and config.option("alpha") == 0.25
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.alpha = 1.0  # type: ignore[misc]


def test_options_table_lists_type_default_and_help():
    text = options_table("jnf")
    assert "hmc_steps" in text and "int" in text and "100" in text and "App. F" in text
    assert "paper|once" in text
    assert options_table("mwb") == "mwb has no options"


def test_a_run_folder_with_top_level_alpha_loads_with_that_alpha(tmp_path):
    """config.json written before the options were typed: alpha at the top level, options {}."""
    import json

    from helpers import tiny_splits
    from omnivae.train import TrainConfig, train
    from omnivae.train.run import load_run

    run = tmp_path / "run"
    config = TrainConfig(epochs=1, batch_size=16, seed=0, device="cpu", progress=False)
    train(tiny_config("jmvae", options={"alpha": 0.3}), config, tiny_splits(16, 8), "tiny", run)
    stored = json.loads((run / "config.json").read_text())
    model = stored["model"]
    assert model["options"] == {"alpha": 0.3} and "alpha" not in model
    old = {**model, "alpha": 0.3, "tc_ratio": 5 / 6, "options": {}}  # the earlier layout
    (run / "config.json").write_text(json.dumps({**stored, "model": old}))
    loaded = load_run(run)
    assert loaded.model_config.settings().alpha == 0.3
    assert type(loaded.model).__name__ == "JointEncoderVAE"
