"""`omnivae evaluate`, `sample` and `benchmark` from the command line, on tiny settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import tiny_arrays, write_tiny_npz
from omnivae.cli import main
from omnivae.evaluate import METRICS

TINY = ["--backbone", "mlp", "--hidden", "16", "--latent-dim", "4", "--batch-size", "16", "--no-progress",
        "--device", "cpu"]
EVAL = ["--num-importance-samples", "3", "--classifier-epochs", "1", "--eval-batch-size", "32", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIVAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def npz(tmp_path) -> Path:
    return write_tiny_npz(tmp_path / "data.npz", n=60)


@pytest.fixture
def run(npz, tmp_path, capsys) -> Path:
    out = tmp_path / "run"
    assert main(["train", "--model", "mwb", "--dataset", f"npz:{npz}", "--epochs", "1", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    return out


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("omnivae: error:"), captured.err
    return lines[0]


def test_evaluate_writes_every_metric_report_and_figures(run, capsys):
    assert main(["evaluate", str(run), *EVAL]) == 0
    printed = capsys.readouterr().out
    assert "eval.json" in printed
    results = json.loads((run / "eval.json").read_text())
    assert set(METRICS) <= set(results)
    names = ["img", "vec", "bits"]
    # Coherence: every non-empty subset but the full one, towards every modality outside it.
    assert len(results["coherence"]["per_subset"]) == 2 ** len(names) - 2
    assert set(results["coherence"]["per_subset"]["img"]) == {"vec", "bits"}
    assert set(results["coherence"]["by_size"]) == {"1", "2"}
    assert 0.0 <= results["coherence"]["joint"] <= 1.0
    # Probe: every non-empty subset, averaged by size.
    assert len(results["probe"]["per_subset"]) == 2 ** len(names) - 1
    assert all(0.0 <= v <= 1.0 for v in results["probe"]["per_subset"].values())
    assert np.isfinite(results["likelihood"]["joint"]) and results["likelihood"]["num_samples"] == 3
    assert set(results["recon"]["self"]) == set(names)
    report = (run / "report.md").read_text()
    for section in ("Coherence", "Latent linear probe", "Log-likelihoods", "Frechet", "Reconstruction"):
        assert section in report
    for figure in results["figures"]:
        assert (run / figure).stat().st_size > 1000, figure
    assert any("samples_given_1" in f for f in results["figures"])
    assert "figures/latent.png" in results["figures"]


def test_evaluate_selected_metrics_only(run, capsys):
    assert main(["evaluate", str(run), "--metrics", "recon,probe", "--no-figures", *EVAL]) == 0
    results = json.loads((run / "eval.json").read_text())
    assert "recon" in results and "probe" in results
    assert "coherence" not in results and "likelihood" not in results
    assert not (run / "figures").exists()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--metrics", "coherence,fid"], ["'fid'", "probe"]),
        (["--num-importance-samples", "0"], ["K", ">= 1"]),
        (["--device", "cuda"], ["cuda"]),
    ],
)
def test_evaluate_user_errors(argv, expected, run, capsys):
    assert main(["evaluate", str(run), "--device", "cpu", *argv]) == 2
    line = one_error_line(capsys)
    for text in expected:
        assert text in line, line
    assert not (run / "eval.json").exists()


def test_evaluate_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not an omnivae run" in one_error_line(capsys)


def test_metrics_that_need_labels_say_so(tmp_path, capsys):
    arrays = tiny_arrays(40)
    del arrays["labels"]
    np.savez(tmp_path / "nolabels.npz", **arrays)
    out = tmp_path / "unlabelled"
    assert main(["train", "--dataset", f"npz:{tmp_path / 'nolabels.npz'}", "--epochs", "1", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--metrics", "probe", *EVAL]) == 2
    line = one_error_line(capsys)
    assert "probe" in line and "labels" in line
    assert main(["evaluate", str(out), "--metrics", "recon,likelihood", "--no-figures", *EVAL]) == 0


def test_sample_writes_a_grid(run, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", str(run), "--given", "img,vec", "--n", "4", "--out", str(out), "--device", "cpu"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    prior = tmp_path / "prior.png"
    assert main(["sample", str(run), "--n", "3", "--out", str(prior), "--device", "cpu"]) == 0
    assert prior.stat().st_size > 1000


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--given", "img,sound"], ["sound", "img, vec, bits"]),
        (["--out", "grid.jpg"], [".png"]),
        (["--n", "0"], ["--n"]),
    ],
)
def test_sample_user_errors(argv, expected, run, capsys):
    assert main(["sample", str(run), "--device", "cpu", *argv]) == 2
    line = one_error_line(capsys)
    for text in expected:
        assert text in line, line


def test_benchmark_trains_evaluates_resumes_and_tabulates(npz, tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench"
    argv = ["benchmark", "--models", "wb,moe", "--dataset", f"npz:{npz}", "--seeds", "2", "--epochs", "1",
            "--out", str(out), "--metrics", "probe,recon", "--no-figures", "--latent-dim", "4", "--hidden", "16",
            "--backbone", "mlp", "--batch-size", "16", "--no-progress", *EVAL]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "omnivae benchmark" in printed
    for name in ("wb-seed0", "wb-seed1", "moe-seed0", "moe-seed1"):
        assert (out / name / "eval.json").is_file()
    table = (out / "results.md").read_text()
    assert "| wb |" in table and "| moe |" in table and "±" in table
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0] == "model,seed,metric,value" and len(rows) > 8
    assert (out / "figures" / "metrics_vs_inputs.png").is_file()
    seeds = json.loads((out / "wb-seed1" / "config.json").read_text())["train"]["seed"]
    assert seeds == 1

    # A rerun skips finished work: nothing is trained or evaluated again...
    import omnivae.benchmark as bench

    def refuse(*args, **kwargs):
        raise AssertionError("finished work was redone")

    monkeypatch.setattr(bench, "train", refuse)
    monkeypatch.setattr(bench, "evaluate_run", refuse)
    assert main(argv) == 0
    assert "skipped" in capsys.readouterr().out

    # ...and after an interruption only the unfinished run is redone.
    (out / "moe-seed1" / "eval.json").unlink()
    calls = []
    monkeypatch.setattr(bench, "evaluate_run", lambda run_dir, options: calls.append(run_dir) or json.loads(
        (out / "moe-seed0" / "eval.json").read_text()))
    assert main(argv) == 0
    assert calls == [out / "moe-seed1"]


def test_benchmark_beta_sweep_trains_each_beta_and_plots_the_tradeoff(npz, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["benchmark", "--models", "wb,mmvamp", "--betas", "0.5,2", "--dataset", f"npz:{npz}", "--seeds", "1",
            "--epochs", "1", "--out", str(out), "--metrics", "probe,coherence,recon", "--no-figures",
            "--latent-dim", "4", "--hidden", "16", "--backbone", "mlp", "--batch-size", "16", "--no-progress", *EVAL]
    assert main(argv) == 0
    for name, beta in (("wb", 0.5), ("wb", 2.0), ("mmvamp", 0.5), ("mmvamp", 2.0)):
        config = json.loads((out / f"{name}-beta{beta:g}-seed0" / "config.json").read_text())
        assert config["model"]["beta"] == beta
    table = (out / "results.md").read_text()
    assert "| wb beta=0.5 |" in table and "| mmvamp beta=2 |" in table
    assert (out / "figures" / "tradeoff_vs_reconstruction.png").is_file()
    capsys.readouterr()
    assert main([*argv, "--beta", "1"]) == 2
    assert "--betas" in one_error_line(capsys)
    assert main(["benchmark", "--betas", "1,x", "--dataset", f"npz:{npz}", "--out", str(tmp_path / "b")]) == 2
    assert "--betas" in one_error_line(capsys)


def test_benchmark_user_errors(npz, tmp_path, capsys):
    assert main(["benchmark", "--models", "wb,nope", "--dataset", f"npz:{npz}", "--out", str(tmp_path / "b")]) == 2
    assert "'nope'" in one_error_line(capsys)
    assert main(["benchmark", "--seeds", "0", "--dataset", f"npz:{npz}", "--out", str(tmp_path / "b")]) == 2
    assert "--seeds" in one_error_line(capsys)
    assert not (tmp_path / "b").exists()


def test_a_run_on_npz_data_can_be_evaluated_from_another_folder(tmp_path, monkeypatch, capsys):
    write_tiny_npz(tmp_path / "data.npz", n=40)
    assert main(["train", "--dataset", "npz:data.npz", "--epochs", "1", *TINY, "--out", "run"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["evaluate", str(tmp_path / "run"), "--metrics", "recon", "--no-figures", *EVAL]) == 0


def test_evaluate_reports_hmc_statistics_of_a_jnf_run_and_none_for_closed_form_models(npz, run, tmp_path, capsys):
    jnf_run = tmp_path / "jnf"
    assert main(["train", "--model", "jnf", "--dataset", f"npz:{npz}", "--epochs", "1", *TINY,
                 "--set", "hmc_steps=3", "--set", "hmc_leapfrog=2", "--set", "flow_hidden=8",
                 "--out", str(jnf_run)]) == 0
    assert main(["evaluate", str(jnf_run), "--metrics", "coherence", "--no-figures", *EVAL]) == 0
    capsys.readouterr()
    results = json.loads((jnf_run / "eval.json").read_text())
    stats = results["sampler"]["coherence"]
    assert 0.0 <= stats["acceptance_rate"] <= 1.0
    # The three pairs of the three modalities need HMC, one chain per test row each, 3 steps.
    test_rows = results["run"]["test samples"]
    assert stats["chain_steps"] >= 3 * test_rows * 3 and stats["chain_steps"] % 3 == 0
    assert stats["hmc_steps"] == 3 and stats["leapfrog_steps"] == 2
    assert stats["chain_steps_per_second"] == pytest.approx(stats["chain_steps"] / stats["seconds"])
    assert "HMC for subset posteriors" in (jnf_run / "report.md").read_text()

    assert main(["evaluate", str(run), "--metrics", "coherence", "--no-figures", *EVAL]) == 0
    assert "sampler" not in json.loads((run / "eval.json").read_text())


# -- protocols, progress and merging (issue 17) ---------------------------------------------
def test_protocol_paper_resolves_to_the_published_settings_and_flags_override_it():
    from omnivae.cli import build_parser
    from omnivae.cli.evaluate import eval_options as _eval_options
    from omnivae.evaluate import ALL, PROTOCOLS

    def resolved(*argv):
        args = build_parser().parse_args(["evaluate", "RUN", *argv])
        options = _eval_options(args, args.metrics)
        return options, options.resolved()

    options, paper = resolved("--protocol", "paper")
    assert (paper.num_importance_samples, paper.num_test, paper.likelihood_num_test, paper.num_train) == (
        1000, ALL, ALL, ALL)
    assert (paper.classifier_epochs, paper.joint_coherence_samples) == (30, 10000)
    assert options.overrides() == []
    _, fast = resolved()
    assert fast.protocol == "fast" and fast.num_importance_samples == PROTOCOLS["fast"]["num_importance_samples"]
    assert fast.num_importance_samples <= 50 and fast.num_train != ALL and fast.likelihood_num_test != ALL
    # One flag changes one setting and is recorded as a change from the protocol.
    options, changed = resolved("--protocol", "paper", "--num-importance-samples", "50", "--num-train", "all")
    assert changed.num_importance_samples == 50 and changed.num_train == ALL and changed.classifier_epochs == 30
    assert options.overrides() == ["num_importance_samples"]


@pytest.mark.parametrize("argv, expected", [
    (["--protocol", "quick"], ["--protocol", "'quick'"]),
    (["--num-test", "0"], ["--num-test", ">= 1"]),
    (["--num-train", "some"], ["--num-train", "'some'"]),
    (["--joint-coherence-samples", "0"], ["--joint-coherence-samples", ">= 1"]),
])
def test_evaluate_protocol_option_errors(argv, expected, run, capsys):
    assert main(["evaluate", str(run), "--device", "cpu", *argv]) == 2
    line = one_error_line(capsys)
    for text in expected:
        assert text in line, line
    assert not (run / "eval.json").exists()


def test_progress_bars_go_to_stderr_unless_no_progress(run, capsys):
    argv = ["evaluate", str(run), "--metrics", "recon,probe,likelihood", "--no-figures", *EVAL]
    assert main(argv) == 0
    captured = capsys.readouterr()
    for bar in ("recon", "probe", "likelihood (subsets, K=3)", "likelihood (joint, K=3)"):
        assert bar in captured.err, captured.err
    assert "100%" in captured.err and "|" not in captured.out
    assert main([*argv, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "eval.json" in captured.out


def test_a_second_evaluation_merges_into_the_first(run, capsys):
    assert main(["evaluate", str(run), "--metrics", "coherence,recon", "--no-figures", *EVAL, "--no-progress"]) == 0
    first = json.loads((run / "eval.json").read_text())
    assert first["metrics"] == ["coherence", "recon"]
    assert main(["evaluate", str(run), "--metrics", "probe", "--no-figures", *EVAL, "--no-progress",
                 "--num-train", "20"]) == 0
    second = json.loads((run / "eval.json").read_text())
    assert second["metrics"] == ["coherence", "probe", "recon"]
    for kept in ("coherence", "recon", "classifiers"):
        assert second[kept] == first[kept]
        assert kept == "classifiers" or second["settings"][kept] == first["settings"][kept]
    settings = second["settings"]["probe"]
    assert settings["protocol"] == "fast" and settings["overrides"] == ["num_train"]
    assert settings["num_train"] == 20 and settings["train_rows"] == 20 and settings["test_rows"] == second["run"]["test samples"]
    assert settings["computed_at"].endswith("+00:00") and settings["seconds"] == second["seconds"]["probe"]
    report = (run / "report.md").read_text()
    for section in ("## Coherence", "## Latent linear probe", "## Reconstruction", "How each metric was computed"):
        assert section in report
    # Recomputing a metric replaces only its own entry.
    assert main(["evaluate", str(run), "--metrics", "recon", "--no-figures", *EVAL, "--no-progress",
                 "--num-test", "5"]) == 0
    third = json.loads((run / "eval.json").read_text())
    assert third["settings"]["recon"]["test_rows"] == 5 and third["recon"] != second["recon"]
    for kept in ("coherence", "probe"):
        assert third[kept] == second[kept] and third["settings"][kept] == second["settings"][kept]


def test_results_of_an_earlier_model_state_are_not_merged():
    from omnivae.evaluate import merge_results

    earlier = {"metrics": ["probe"], "probe": {"by_size": {"1": 0.5}}, "settings": {"probe": {"seed": 0}},
               "seconds": {"probe": 1.0}, "run": {"model sha256": "old"}}
    new = {"recon": {"self": {}}, "settings": {"recon": {"seed": 0}}, "seconds": {"recon": 2.0},
           "run": {"model sha256": "new"}}
    assert merge_results(earlier, new, ["recon"])["metrics"] == ["recon"]
    same = merge_results(earlier, {**new, "run": {"model sha256": "old"}}, ["recon"])
    assert same["metrics"] == ["probe", "recon"] and same["seconds"] == {"probe": 1.0, "recon": 2.0}
    assert same["probe"] == earlier["probe"]


def test_an_eval_json_that_is_not_ours_is_replaced(run, capsys):
    (run / "eval.json").write_text("[1, 2]")
    assert main(["evaluate", str(run), "--metrics", "recon", "--no-figures", *EVAL, "--no-progress"]) == 0
    assert json.loads((run / "eval.json").read_text())["metrics"] == ["recon"]


def test_fd_with_your_own_inception_scores_images_with_it_and_other_modalities_with_the_classifiers(run, tmp_path, capsys):
    """``--inception FILE``: Frechet distances of image modalities in that network's feature
    space (here a TorchScript probe returning 4 features), of the others in the classifiers'."""
    import torch
    from torch import Tensor, nn

    class Probe(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return torch.cat([x.mean((2, 3)), x.std((2, 3)).mean(1, keepdim=True)], 1)

    probe = tmp_path / "probe.pt"
    torch.jit.script(Probe()).save(str(probe))
    assert main(["evaluate", str(run), "--metrics", "fd", "--no-figures", "--inception", str(probe), *EVAL]) == 0
    results = json.loads((run / "eval.json").read_text())
    assert results["settings"]["fd"]["inception"] == str(probe)
    unconditional = results["fd"]["unconditional"]
    assert set(unconditional) == {"img", "vec", "bits"} and all(v >= 0 for v in unconditional.values())

    from omnivae.metrics import image_features
    from omnivae.train import load_run

    loaded = load_run(run)
    calls = []
    fn = image_features(lambda x: calls.append(x.shape) or x.mean((1, 2, 3))[:, None], _FakeClassifiers(), loaded.modalities)
    assert fn("img", torch.zeros(2, 3, 28, 28)).shape == (2, 1) and calls == [(2, 3, 28, 28)]
    assert fn("vec", torch.zeros(2, 6)).shape == (2, 7) and len(calls) == 1


class _FakeClassifiers:
    def features(self, name, x):
        import torch

        return torch.zeros(len(x), 7)
