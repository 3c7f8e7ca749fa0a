"""The Hugging Face Hub format: save, load offline, identical outputs, model card, refusals."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_batch, tiny_config, tiny_splits
from safetensors.torch import save_file

from omnivae.errors import RunDirError, UserError
from omnivae.hub import from_pretrained, push_to_hub, save_pretrained
from omnivae.models import build_model
from omnivae.train import TrainConfig, load_run, train

huggingface_hub = pytest.importorskip("huggingface_hub")

EVAL = {
    "probe": {"by_size": {"1": 0.75, "3": 0.875}, "per_subset": {"img": 0.7, "vec": 0.8}},
    "coherence": {"by_size": {"1": 0.5}, "per_subset_mean": {"img": 0.5}, "joint": 0.25},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("hub") / "run"
    config = TrainConfig(epochs=1, batch_size=16, seed=3, device="cpu", progress=False)
    train(tiny_config("mwb", latent_dim=3), config, tiny_splits(48, 16, observed=0.8), "tiny", run)
    (run / "eval.json").write_text(json.dumps(EVAL))
    return run


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    return save_pretrained(run_dir, tmp_path_factory.mktemp("export") / "mwb-tiny")


def _outputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Posterior means, imputations and seeded samples, in float64."""
    model = model.double()
    x = {k: v.double() for k, v in tiny_batch(6, seed=1).items()}
    mask = {"img": torch.tensor([True, False] * 3)}
    torch.manual_seed(11)
    samples = model.generate(4)
    torch.manual_seed(12)
    conditional = model.conditional_generate({"vec": x["vec"]}, num_samples=2)
    out = {"z": model.encode(x).mean, "z_vec": model.encode({"vec": x["vec"]}).mean}
    out.update({f"impute/{k}": v for k, v in model.impute(x, mask).items()})
    out.update({f"sample/{k}": v for k, v in samples.items()})
    out.update({f"cond/{k}": v for k, v in conditional.items()})
    return out


def test_folder_holds_weights_config_and_card_only(exported):
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((exported / "config.json").read_text())
    assert config["format"] == "omnivae-pretrained/1"
    assert config["model"]["latent_dim"] == 3
    assert [m["name"] for m in config["modalities"]] == ["img", "vec", "bits"]
    assert config["train"]["seed"] == 3


def test_loaded_model_gives_identical_outputs(run_dir, exported):
    original = _outputs(load_run(run_dir).model)
    loaded = from_pretrained(exported)
    assert loaded.model_config == load_run(run_dir).model_config
    again = _outputs(loaded.model)
    assert original.keys() == again.keys()
    for key in original:
        assert original[key].dtype == torch.float64
        assert torch.equal(original[key], again[key]), key


def test_local_folder_never_touches_the_network_or_pickle(exported, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("called during from_pretrained of a local folder")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    run = from_pretrained(str(exported))
    assert run.model.latent_dim == 3


def test_model_card_has_hub_metadata_and_the_run(exported):
    card = huggingface_hub.ModelCard((exported / "README.md").read_text())
    assert card.data.library_name == "omnivae"
    assert {"omnivae", "mwb", "multimodal"} <= set(card.data.tags)
    assert card.data.datasets == ["tiny"]
    text = card.text
    assert "MWB-VAE" in text and "Qiu et al., AAAI 2025" in text
    assert "| epochs | 1 |" in text and "| batch_size | 16 |" in text
    # headline metrics of eval.json, as omnivae benchmark reports them
    assert "| probe (1 input) | 0.75 |" in text and "| joint coherence | 0.25 |" in text


def test_user_dataset_is_not_listed_as_a_hub_dataset(run_dir, tmp_path):
    model = load_run(run_dir)
    out = save_pretrained(model.model, tmp_path / "bare", model_config=model.model_config, dataset="npz:my.npz")
    card = huggingface_hub.ModelCard((out / "README.md").read_text())
    assert card.data.datasets is None
    assert "npz:my.npz" in card.text and "None recorded" in card.text


def test_weights_that_do_not_fit_the_config_are_refused(exported, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for name in ("README.md", "model.safetensors"):
        (other / name).write_bytes((exported / name).read_bytes())
    config = json.loads((exported / "config.json").read_text())
    config["model"]["latent_dim"] = 5
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunDirError, match="does not fit the model in") as err:
        from_pretrained(other)
    assert "\n" not in str(err.value)


def test_replaced_weights_are_refused(exported, tmp_path):
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    for name in ("README.md", "config.json"):
        (swapped / name).write_bytes((exported / name).read_bytes())
    model, _ = build_model(tiny_config("mwb", latent_dim=3), from_pretrained(exported).modalities)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, swapped / "model.safetensors")
    with pytest.raises(RunDirError, match="SHA-256 differs"):
        from_pretrained(swapped)


def test_refusals_when_saving(run_dir, exported, tmp_path):
    with pytest.raises(UserError, match="not empty") as err:
        save_pretrained(run_dir, exported)
    assert err.value.parameter == "overwrite"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an omnivae pretrained folder"):
        save_pretrained(run_dir, tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    with pytest.raises(UserError) as err:
        save_pretrained(load_run(run_dir).model, tmp_path / "bare")
    assert err.value.parameter == "model_config"
    assert not (tmp_path / "bare").exists()
    again = save_pretrained(run_dir, tmp_path / "again")
    assert save_pretrained(run_dir, again, overwrite=True) == again
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_not_a_pretrained_folder(run_dir, tmp_path):
    with pytest.raises(RunDirError, match="not an omnivae pretrained folder"):
        from_pretrained(tmp_path)
    with pytest.raises(RunDirError, match="is an omnivae run folder, not a pretrained folder; load it with load_run"):
        from_pretrained(run_dir)
    (tmp_path / "config.json").write_text(json.dumps({"format": "other/1"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(RunDirError, match="not an omnivae pretrained config"):
        from_pretrained(tmp_path)


def test_push_without_huggingface_hub_is_one_line(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(UserError, match=r"pip install 'omnivae\[hub\]'"):
        push_to_hub(exported, "someone/model")


def test_repo_id_offline_is_one_clear_line(exported, tmp_path):
    """In a fresh process: huggingface_hub reads HF_HUB_OFFLINE when it is imported."""
    script = (
        "import sys\n"
        "from omnivae.errors import UserError\n"
        "from omnivae.hub import from_pretrained, push_to_hub\n"
        "for call in (lambda: from_pretrained('omnivae-tests/no-such-model'),\n"
        "             lambda: push_to_hub(sys.argv[1], 'omnivae-tests/no-such-model')):\n"
        "    try:\n"
        "        call()\n"
        "    except UserError as err:\n"
        "        print(err)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_TOKEN="")
    result = subprocess.run([sys.executable, "-c", script, str(exported)], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    assert lines[0].startswith("omnivae-tests/no-such-model is not a local folder and could not be fetched")
    assert "HF_HUB_OFFLINE" in lines[0]
    assert lines[1].startswith(f"could not push {exported} to the Hugging Face Hub")
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").rglob("*.safetensors"))


def test_cli_export(run_dir, tmp_path, capsys):
    from omnivae.cli import main

    out = tmp_path / "export"
    assert main(["export", str(run_dir), str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert torch.equal(from_pretrained(out).model.encode(tiny_batch(3)).mean, load_run(run_dir).model.encode(tiny_batch(3)).mean)
    assert main(["export", str(run_dir), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0] and "--overwrite" in err[0]
    assert main(["export", str(run_dir), str(out), "--overwrite"]) == 0
    assert main(["export", str(tmp_path / "no-run"), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("omnivae: error:")
    assert not (tmp_path / "x").exists()


def readme_block(heading: str) -> str:
    """The first ```python block of the README section ``heading``."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_hub_section_runs(run_dir, tmp_path, monkeypatch):
    """The README's code, with the Hub replaced by a fake that records the upload and
    serves the pushed folder back."""
    import shutil

    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            uploaded["repo"] = repo_id

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            shutil.copytree(folder_path, tmp_path / "hub" / repo_id)
            return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/1"})()

    def fake_download(repo_id, **kwargs):
        return str(tmp_path / "hub" / repo_id)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    shutil.copytree(run_dir, tmp_path / "runs" / "mwb")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(readme_block("Use with the Hugging Face Hub"), namespace)
    assert uploaded["repo"] == "your-name/omnivae-mwb"
    assert namespace["run"].path == tmp_path / "hub" / "your-name" / "omnivae-mwb"
    assert namespace["z"].shape == (4, 3)
