"""The catalogue of user mistakes (issue 8): one named row per mistake, and what the user sees.

Each row is a mistake a user can make on the command line (``CLI``), in a data file
(``file``, read through ``omnivae train --dataset npz:/csv:/hdf5:``) or in the Python API
(``API``), with fragments of the message the user must see. It is the list users and
reviewers read; some rows repeat checks made elsewhere (tests/test_cli.py, test_train.py,
test_data*.py) on purpose.

Command-line and data-file rows run ``omnivae.cli.main`` in-process and check that

- the exit status is 2;
- stderr is exactly one line, ``omnivae: error: ...``, with no traceback, and it holds
  every fragment: the valid names for an unknown name, the modality and the first bad
  row for NaN or infinite values, the flag to change for a bad value;
- nothing is half-written: every file and folder under the case's working folder (the
  current directory, where outputs and default run folders go, and ``$OMNIVAE_CACHE``)
  and under the shared trained run is exactly as before -- no output folder, no partial
  or temporary file, no run file touched.

API rows check the exception type (:mod:`omnivae.errors`: ``UserError`` and its
subclasses ``DataError`` and ``RunDirError``), that the message is one line holding every
fragment, and that nothing was written either.

The catalogue, by where the mistake is made:

- names: unknown model, dataset, aggregator, prior, backbone, metric, flag; an
  abbreviated flag; unknown ``--set`` key; unknown device; a GPU that is not there;
- values: latent size 0, negative or infinite beta, K = 0, missing rate outside [0, 1),
  ``--epochs`` 0 or negative, negative ``--lr``, batch size 0 or larger than the data,
  ``--hidden`` malformed or empty, ``--set`` malformed or of the wrong type, a text
  where a number belongs;
- ``--config``: missing, not JSON, an unknown key, a value of the wrong type;
- run folders: ``--out`` that already holds files, ``--resume``/``evaluate``/``sample``/
  ``impute`` on a folder that is not a run, ``--resume`` that changes the model's
  settings or shortens the run;
- data files: a missing file, a folder or a non-archive given as npz, a truncated npz,
  a pickled (object) array, which is never unpickled, a string dtype, a scalar modality,
  mismatched sample counts, NaN and infinite values, a row with every modality masked, an
  empty dataset, a mask or labels of the wrong length; a missing CSV folder, a file given
  as one, a ragged or non-numeric CSV; a file that is not HDF5;
- evaluate: unknown metric, metrics that need labels on unlabelled data, K = 0, zero
  classifier epochs, a missing Inception file;
- sample: an unknown ``--given`` modality, ``--n 0``, an output that is not a PNG;
- impute: modalities, shapes or dtypes that do not match the run, NaN in the input, a
  missing input, an output of the wrong format, batch size 0, an unknown device;
- benchmark: an unknown model, a bad model setting, malformed ``--betas``;
- issue 16: modality names that could be paths (absolute, ``a/b``, ``a.b``, ``..``, empty,
  too long, equal after case-folding) in npz, CSV, HDF5 and the API; outputs under a file,
  a folder where a file belongs, an existing ``impute --output`` without ``--force``, a
  read-only folder (a tmpfs remounted read-only) and a full disk (a 16 KiB tmpfs, or
  ``os.fsync`` raising ENOSPC); a closed pipe; non-finite options; ``--config`` of the
  wrong shape or nested 100,000 deep; memory that cannot fit; npz headers claiming
  terabytes, compressed npz/HDF5 inflating past the cap, zip members cut short; labels
  beyond 100,000 classes or missing; values beyond float32; broken HDF5 links; and the
  results that must never be silently wrong (observed values back exactly, subsets
  sampled above 10 modalities, fewer samples than asked said);
- API: the same mistakes through ``ModelConfig``, ``TrainConfig``, ``load_dataset``,
  ``build_aggregator``, ``EvalOptions``, ``dataset_from_arrays``, ``MultimodalDataset``,
  ``read_npz``, ``load_run``, ``evaluate_run``, ``MultimodalVAE.impute``,
  ``resolve_device`` and ``train``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import tiny_arrays, tiny_config, tiny_splits
from omnivae.aggregators import build_aggregator
from omnivae.cli import main
from omnivae.data import load_dataset, load_npz
from omnivae.data.arrays import dataset_from_arrays, read_npz
from omnivae.data.base import ModalitySpec, MultimodalDataset
from omnivae.errors import DataError, RunDirError, UserError
from omnivae.evaluate import EvalOptions, evaluate_run
from omnivae.metrics.common import require_labels
from omnivae.models import ModelConfig
from omnivae.train import TrainConfig, load_run, resolve_device, train

N = 40  # rows of the shared data file; 32 train and 8 test (no labels, so a plain 80/20 split)
TINY = ("--backbone", "mlp", "--hidden", "16", "--latent-dim", "4", "--batch-size", "16", "--epochs", "1", "--no-progress")
TRAIN = ("train", "--model", "wb", "--dataset", "npz:{npz}", *TINY, "--device", "cpu", "--out", "{tmp}/out")


def data_arrays(n: int = N, seed: int = 0) -> dict[str, np.ndarray]:
    """The tiny modalities (uint8 image, float vector, bool bits) plus a 1-D float ``age``;
    no labels, so that metrics needing them can be refused."""
    arrays = tiny_arrays(n, seed)
    del arrays["labels"]
    arrays["age"] = np.random.default_rng(seed + 50).normal(40.0, 10.0, size=n)
    return arrays


@dataclass
class Ctx:
    """What a case's command line and setup can refer to."""

    tmp: Path  # the case's own working folder (the current directory)
    npz: Path  # the shared, valid data file
    run: Path  # a run trained on it
    data: Path | None = None  # what the case's setup wrote

    def fill(self, text: str) -> str:
        return text.format(tmp=self.tmp, npz=self.npz, run=self.run, data=self.data)


# -- setups: each writes the case's bad input into the case's folder and returns its path --


def npz_with(change: Callable[[dict[str, np.ndarray]], None], n: int = N) -> Callable[[Path], Path]:
    """A setup writing the shared layout after ``change`` edits its arrays."""

    def setup(tmp: Path) -> Path:
        arrays = data_arrays(n)
        change(arrays)
        np.savez(tmp / "data.npz", **arrays)
        return tmp / "data.npz"

    return setup


def _set(key: str, value) -> Callable[[dict[str, np.ndarray]], None]:
    return lambda arrays: arrays.__setitem__(key, value)


def _nan_vec(arrays: dict[str, np.ndarray]) -> None:
    arrays["vec"][7, 2] = np.nan
    arrays["vec"][9, 0] = np.nan


def _inf_age(arrays: dict[str, np.ndarray]) -> None:
    arrays["age"][12] = -np.inf


def _empty_row(arrays: dict[str, np.ndarray]) -> None:
    for name in ("img", "vec", "bits", "age"):
        mask = np.ones(N, dtype=bool)
        mask[3] = False
        arrays[f"mask_{name}"] = mask


def _empty(arrays: dict[str, np.ndarray]) -> None:
    for name in list(arrays):
        arrays[name] = arrays[name][:0]


class _Trap:
    """Unpickling this object would create the folder ``marker``: loading must never do it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def pickled_npz(tmp: Path) -> Path:
    traps = np.empty(N, dtype=object)
    traps[:] = [_Trap(str(tmp / "unpickled")) for _ in range(N)]
    arrays = data_arrays()
    np.savez(tmp / "data.npz", **{**arrays, "vec": traps})
    return tmp / "data.npz"


def text_file(name: str, text: str) -> Callable[[Path], Path]:
    def setup(tmp: Path) -> Path:
        (tmp / name).write_text(text)
        return tmp / name

    return setup


def folder(name: str) -> Callable[[Path], Path]:
    def setup(tmp: Path) -> Path:
        (tmp / name).mkdir()
        return tmp / name

    return setup


def truncated_npz(tmp: Path) -> Path:
    np.savez(tmp / "whole.npz", **data_arrays())
    whole = (tmp / "whole.npz").read_bytes()
    (tmp / "whole.npz").unlink()
    (tmp / "data.npz").write_bytes(whole[: len(whole) // 2])
    return tmp / "data.npz"


def csv_folder(vec_csv: str) -> Callable[[Path], Path]:
    def setup(tmp: Path) -> Path:
        (tmp / "table").mkdir()
        (tmp / "table" / "vec.csv").write_text(vec_csv)
        (tmp / "table" / "bits.csv").write_text("a,b\n1,0\n0,1\n1,1\n")
        return tmp / "table"

    return setup


def out_with_a_file(tmp: Path) -> Path:
    (tmp / "out").mkdir()
    (tmp / "out" / "keep.txt").write_text("mine")
    return tmp / "out"


def config_file(obj: object) -> Callable[[Path], Path]:
    return text_file("options.json", json.dumps(obj))


def impute_input(change: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Path], Path]:
    return npz_with(change, n=6)


# -- the catalogue: command line and data files ----------------------------------------------


@dataclass(frozen=True)
class CliCase:
    """A mistake made through the ``omnivae`` command line.

    Attributes:
        id: a short readable name.
        where: ``CLI`` (flags, run folders) or ``file`` (the content of a data file).
        mistake: what the user did, for the catalogue table.
        argv: the command line, with ``{tmp}``, ``{npz}``, ``{run}`` and ``{data}`` filled in.
        expected: fragments the error line must hold.
        setup: writes the case's input into its folder; its path is ``{data}``.
    """

    id: str
    where: str
    mistake: str
    argv: tuple[str, ...]
    expected: tuple[str, ...]
    setup: Callable[[Path], Path] | None = None


def T(*extra: str) -> tuple[str, ...]:
    """``omnivae train`` on the shared data with tiny settings, plus ``extra`` (later flags win)."""
    return (*TRAIN, *extra)


def D(*extra: str) -> tuple[str, ...]:
    """``omnivae train`` on the case's own npz file."""
    return T("--dataset", "npz:{data}", *extra)


IMPUTE = ("impute", "{run}", "--input", "{data}", "--output", "{tmp}/filled.npz", "--device", "cpu")
SAMPLE = ("sample", "{run}", "--out", "{tmp}/samples.png", "--device", "cpu")
EVALUATE = ("evaluate", "{run}", "--device", "cpu", "--no-figures")
BENCH = ("benchmark", "--dataset", "npz:{npz}", "--out", "{tmp}/bench", "--seeds", "1", "--epochs", "1", "--no-progress")

CLI_CASES = [
    # names
    CliCase("unknown-model", "CLI", "--model nope", T("--model", "nope"),
            ("unknown model 'nope'", "choose one of", "mwb", "poe")),
    CliCase("unknown-dataset", "CLI", "--dataset mnist-ish", T("--dataset", "mnist-ish"),
            ("unknown dataset 'mnist-ish'", "polymnist", "npz:FILE", "csv:DIR")),
    CliCase("noise-unknown-modality", "CLI", "--dataset DATA+noise=MODALITY naming no modality of DATA",
            T("--dataset", "npz:{npz}+noise=audio"), ("cannot corrupt 'audio'", "not one of its modalities")),
    CliCase("noise-every-modality", "CLI", "--dataset DATA+noise= naming every modality",
            T("--dataset", "npz:{npz}+noise=img,vec,bits,age"), ("corrupting every modality", "leave one clean")),
    CliCase("noise-malformed", "CLI", "--dataset DATA+noise= without a modality", T("--dataset", "mfeat+noise="),
            ("write a corrupted dataset as DATASET+noise=MODALITY",)),
    CliCase("unknown-aggregator", "CLI", "--aggregator median", T("--aggregator", "median"),
            ("unknown aggregator 'median'", "mopoe", "poe", "mwb")),
    CliCase("unknown-prior", "CLI", "--prior cauchy", T("--prior", "cauchy"),
            ("unknown prior 'cauchy'", "laplace", "normal")),
    CliCase("unknown-backbone", "CLI", "--backbone transformer", T("--backbone", "transformer"),
            ("unknown backbone 'transformer'", "mlp", "conv")),
    CliCase("unknown-tracker", "CLI", "--track tensorboard,comet", T("--track", "tensorboard,comet"),
            ("unknown tracking backend 'comet'", "mlflow", "tensorboard", "wandb")),
    CliCase("unknown-flag", "CLI", "a flag omnivae does not have", T("--frobnicate", "3"),
            ("--frobnicate", "--help")),
    CliCase("abbreviated-flag", "CLI", "--latent for --latent-dim", T("--latent", "3"), ("--latent",)),
    CliCase("text-for-a-number", "CLI", "--epochs x", T("--epochs", "x"), ("--epochs", "'x'")),
    CliCase("unknown-set-key", "CLI", "--set with a key the method lacks",
            T("--model", "mmvae+", "--set", "nope=3"), ("mmvae+ has no option 'nope'", "w_dim")),
    CliCase("malformed-set", "CLI", "--set without =VALUE", T("--model", "mmvae+", "--set", "w_dim"),
            ("--set takes KEY=VALUE", "'w_dim'")),
    CliCase("set-wrong-type", "CLI", "--set w_dim=abc for an integer option",
            T("--model", "mmvae+", "--set", "w_dim=abc"), ("w_dim", "mmvae+", "integer", "'abc'")),
    CliCase("unknown-device", "CLI", "--device tpu", T("--device", "tpu"), ("'tpu'", "auto, cpu or cuda")),
    CliCase("absent-gpu", "CLI", "--device cuda:99 (no such GPU here)", T("--device", "cuda:99"),
            ("--device", "cuda")),
    # values
    CliCase("latent-size-zero", "CLI", "--latent-dim 0", T("--latent-dim", "0"), ("--latent-dim", ">= 1", "got 0")),
    CliCase("negative-beta", "CLI", "--beta -1", T("--beta=-1"), ("--beta", ">= 0", "-1")),
    CliCase("infinite-beta", "CLI", "--beta inf", T("--beta", "inf"), ("--beta", "finite", "inf")),
    CliCase("k-zero", "CLI", "--num-samples 0 (K importance samples)", T("--model", "moe", "--num-samples", "0"),
            ("K", "--num-samples", ">= 1", "got 0")),
    CliCase("missing-rate-above-one", "CLI", "--missing-rate 1.5", T("--missing-rate", "1.5"),
            ("--missing-rate", "[0, 1)", "1.5")),
    CliCase("missing-rate-negative", "CLI", "--missing-rate -0.1", T("--missing-rate=-0.1"),
            ("--missing-rate", "[0, 1)", "-0.1")),
    CliCase("epochs-zero", "CLI", "--epochs 0 for a new run", T("--epochs", "0"), ("--epochs", ">= 1", "got 0")),
    CliCase("epochs-negative", "CLI", "--epochs -3", T("--epochs=-3"), ("--epochs", "got -3")),
    CliCase("negative-lr", "CLI", "--lr -0.01", T("--lr=-0.01"), ("--lr", "positive", "-0.01")),
    CliCase("batch-size-zero", "CLI", "--batch-size 0", T("--batch-size", "0"), ("--batch-size", ">= 1", "got 0")),
    CliCase("batch-larger-than-data", "CLI", "--batch-size 1000 with 32 training rows", T("--batch-size", "1000"),
            ("--batch-size 1000", "32 training samples", "use at most 32")),
    CliCase("malformed-hidden", "CLI", "--hidden 16,a", T("--hidden", "16,a"), ("--hidden", "integers", "'16,a'")),
    CliCase("empty-hidden", "CLI", "--hidden ,", T("--hidden", ","), ("--hidden", "no width")),
    # --config
    CliCase("config-missing", "CLI", "--config of a file that is not there", T("--config", "nowhere.json"),
            ("--config nowhere.json", "no such file")),
    CliCase("config-not-json", "CLI", "--config of a file that is not JSON", T("--config", "{data}"),
            ("--config", "not valid JSON"), text_file("options.json", "{model: mwb")),
    CliCase("config-unknown-key", "CLI", "--config with a misspelt option", T("--config", "{data}"),
            ("unknown option", "latnet_dim (did you mean latent_dim?)"), config_file({"latnet_dim": 3})),
    CliCase("config-wrong-type", "CLI", "--config with a text for a number", T("--config", "{data}"),
            ("'latent_dim'", "integer", '"4"'), config_file({"latent_dim": "4"})),
    # run folders
    CliCase("out-not-empty", "CLI", "--out of a folder that holds files", T("--out", "{data}"),
            ("already exists and is not empty", "--resume"), out_with_a_file),
    CliCase("resume-not-a-run", "CLI", "--resume of a folder that is not a run", ("train", "--resume", "{tmp}"),
            ("not an omnivae run", "config.json", "'omnivae train' wrote")),
    CliCase("resume-other-settings", "CLI", "--resume of a finished run with other model settings",
            ("train", "--resume", "{run}", "--model", "poe", "--latent-dim", "8"),
            ("--latent-dim, --model cannot change them", "start a new run")),
    CliCase("resume-shorter", "CLI", "--resume with fewer --epochs than the run has",
            ("train", "--resume", "{run}", "--epochs", "0"), ("--epochs 0 would shorten", "--epochs 1 or more")),
    CliCase("evaluate-not-a-run", "CLI", "evaluate a folder that is not a run", ("evaluate", "{tmp}"),
            ("not an omnivae run", "config.json is missing")),
    CliCase("sample-not-a-run", "CLI", "sample a run folder that is not there",
            ("sample", "{tmp}/nothing", "--out", "{tmp}/samples.png"), ("is not a directory", "omnivae train")),
    CliCase("impute-not-a-run", "CLI", "impute with a folder that is not a run",
            ("impute", "{tmp}", "--input", "{npz}", "--output", "{tmp}/filled.npz"), ("not an omnivae run",)),
    # data files
    CliCase("npz-missing", "file", "npz:FILE of a file that is not there", T("--dataset", "npz:{tmp}/absent.npz"),
            ("absent.npz", "not found", "npz:FILE")),
    CliCase("npz-is-a-folder", "file", "npz:FILE naming a folder", D(), ("is a folder, not an .npz file",),
            folder("data.npz")),
    CliCase("npz-not-an-archive", "file", "a text file named .npz", D(),
            ("not a valid .npz file", "numpy.savez"), text_file("data.npz", "a,b\n1,2\n")),
    CliCase("npz-truncated", "file", "an .npz file cut short", D(), ("not a valid .npz file",), truncated_npz),
    CliCase("npz-pickled-objects", "file", "a modality stored as Python objects (pickled)", D(),
            ("'vec' holds Python objects", "never loads"), pickled_npz),
    CliCase("npz-string-dtype", "file", "a modality of strings", D(),
            ("modality 'vec' has dtype <U", "store uint8 images"), npz_with(_set("vec", np.array([["a", "b"]] * N)))),
    CliCase("npz-scalar-modality", "file", "a modality that is one number", D(),
            ("modality 'vec' is a single value", "first axis must be samples"), npz_with(_set("vec", np.float32(3)))),
    CliCase("npz-sample-counts", "file", "modalities with different numbers of rows", D(),
            ("modality 'vec' has 39 samples", "'img' has 40"),
            npz_with(lambda a: a.__setitem__("vec", a["vec"][:39]))),
    CliCase("npz-nan", "file", "NaN values in a modality", D(),
            ("modality 'vec'", "NaN or infinite values in row 7", "mask_vec[7] = False"), npz_with(_nan_vec)),
    CliCase("npz-infinite", "file", "an infinite value in a modality", D(),
            ("modality 'age'", "row 12", "mask_age[12] = False"), npz_with(_inf_age)),
    CliCase("npz-row-all-masked", "file", "a row with every modality masked", D(),
            ("row 3 has every modality masked", "drop it"), npz_with(_empty_row)),
    CliCase("npz-empty", "file", "a dataset with 0 rows", D(), ("0 rows", "at least one sample"), npz_with(_empty)),
    CliCase("npz-mask-length", "file", "a mask_<modality> of the wrong length", D(),
            ("mask_vec has shape (39,)", "expected (40,)"), npz_with(_set("mask_vec", np.ones(39, dtype=bool)))),
    CliCase("npz-labels-length", "file", "labels of the wrong length", D(),
            ("labels has shape (39,)", "(40,)"), npz_with(_set("labels", np.zeros(39, dtype=np.int64)))),
    CliCase("csv-missing", "file", "csv:DIR of a folder that is not there", T("--dataset", "csv:{tmp}/absent"),
            ("CSV folder", "not found", "csv:DIR")),
    CliCase("csv-is-a-file", "file", "csv:DIR naming a file", T("--dataset", "csv:{npz}"),
            ("is a file, not a folder", "npz:FILE")),
    CliCase("csv-ragged", "file", "a CSV row with a cell missing", T("--dataset", "csv:{data}"),
            ("vec.csv line 3 has 2 cells but the header has 3 columns",), csv_folder("a,b,c\n1,2,3\n4,5\n6,7,8\n")),
    CliCase("csv-not-a-number", "file", "a CSV cell that is not a number", T("--dataset", "csv:{data}"),
            ("vec.csv line 3, column 'b': 'abc' is not a number",), csv_folder("a,b,c\n1,2,3\n4,abc,6\n6,7,8\n")),
    CliCase("hdf5-not-hdf5", "file", "hdf5:FILE of a file that is not HDF5", T("--dataset", "hdf5:{data}"),
            ("data.h5", "HDF5"), text_file("data.h5", "not hdf5")),
    # evaluate
    CliCase("evaluate-unknown-tracker", "CLI", "evaluate --track comet", (*EVALUATE, "--track", "comet"),
            ("unknown tracking backend 'comet'", "mlflow", "tensorboard", "wandb")),
    CliCase("evaluate-unknown-metric", "CLI", "evaluate --metrics probe,bleu", (*EVALUATE, "--metrics", "probe,bleu"),
            ("unknown metric 'bleu'", "coherence", "likelihood", "recon")),
    CliCase("evaluate-needs-labels", "CLI", "evaluate metrics that need labels on unlabelled data",
            (*EVALUATE, "--metrics", "probe,coherence,recon"),
            ("the probe, coherence metrics need labels", "has none", "--metrics recon")),
    CliCase("evaluate-k-zero", "CLI", "evaluate --num-importance-samples 0", (*EVALUATE, "--num-importance-samples", "0"),
            ("--num-importance-samples", ">= 1", "got 0")),
    CliCase("evaluate-classifier-epochs-zero", "CLI", "evaluate --classifier-epochs 0",
            (*EVALUATE, "--classifier-epochs", "0"), ("--classifier-epochs", ">= 1")),
    CliCase("evaluate-missing-inception", "CLI", "evaluate --inception of a file that is not there",
            (*EVALUATE, "--inception", "{tmp}/absent.pt"), ("--inception", "absent.pt", "no such file")),
    CliCase("evaluate-unknown-sampler", "CLI", "evaluate --sampler flow", (*EVALUATE, "--sampler", "flow"),
            ("unknown sampler 'flow'", "prior, gmm, maf", "--sampler")),
    # sample
    CliCase("sample-unknown-sampler", "CLI", "sample --sampler flow", (*SAMPLE, "--sampler", "flow"),
            ("--sampler 'flow' is not a sampler", "prior, gmm, maf")),
    CliCase("sample-unknown-given", "CLI", "sample --given a modality the run lacks", (*SAMPLE, "--given", "vec,sound"),
            ("--given sound", "not a modality of this run", "img, vec, bits, age")),
    CliCase("sample-n-zero", "CLI", "sample --n 0", (*SAMPLE, "--n", "0"), ("--n", ">= 1")),
    CliCase("sample-not-png", "CLI", "sample --out of a .jpg", (*SAMPLE, "--out", "{tmp}/samples.jpg"), (".png",)),
    # impute
    CliCase("impute-unknown-modality", "file", "impute input with a modality the run lacks", IMPUTE,
            ("['sound'] are not in the run", "'img'"), impute_input(_set("sound", np.zeros((6, 3), np.float32)))),
    CliCase("impute-wrong-shape", "file", "impute input whose modality has another shape", IMPUTE,
            ("'vec'", "(7,)", "the run expects (6,)"), impute_input(_set("vec", np.zeros((6, 7), np.float32)))),
    CliCase("impute-wrong-dtype", "file", "impute input with an image stored as floats", IMPUTE,
            ("'img'", "reads as vector data", "expects image", "uint8"),
            impute_input(lambda a: a.__setitem__("img", a["img"].astype(np.float32)))),
    CliCase("impute-nan", "file", "impute input with NaN in an observed row", IMPUTE,
            ("modality 'vec'", "row 2"), impute_input(lambda a: a["vec"].__setitem__((2, 0), np.nan))),
    CliCase("impute-missing-input", "CLI", "impute --input of a file that is not there",
            ("impute", "{run}", "--input", "{tmp}/absent.npz", "--output", "{tmp}/filled.npz"),
            ("absent.npz", "not found")),
    CliCase("impute-output-format", "CLI", "impute --output .txt for an npz input",
            ("impute", "{run}", "--input", "{npz}", "--output", "{tmp}/filled.txt"), ("--output", "must end in .npz")),
    CliCase("impute-batch-size-zero", "CLI", "impute --batch-size 0",
            ("impute", "{run}", "--input", "{npz}", "--output", "{tmp}/filled.npz", "--batch-size", "0"),
            ("--batch-size", ">= 1", "got 0")),
    CliCase("impute-unknown-device", "CLI", "impute --device tpu",
            ("impute", "{run}", "--input", "{npz}", "--output", "{tmp}/filled.npz", "--device", "tpu"),
            ("'tpu'", "cpu")),
    # benchmark
    CliCase("benchmark-unknown-model", "CLI", "benchmark --models poe,nope", (*BENCH, "--models", "poe,nope"),
            ("unknown model 'nope'", "mwb")),
    CliCase("benchmark-latent-size-zero", "CLI", "benchmark --latent-dim 0", (*BENCH, "--models", "poe", "--latent-dim", "0"),
            ("--latent-dim", ">= 1")),
    CliCase("benchmark-malformed-betas", "CLI", "benchmark --betas 1,x", (*BENCH, "--models", "poe", "--betas", "1,x"),
            ("--betas", "numbers", "'1,x'")),
]


# -- the catalogue: the Python API --------------------------------------------------------------


@dataclass(frozen=True)
class ApiCase:
    """A mistake made through the Python API: ``call(ctx)`` must raise ``error``."""

    id: str
    mistake: str
    call: Callable[[Ctx], object]
    error: type[UserError]
    expected: tuple[str, ...]


def _arrays(**extra: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"a": rng.normal(size=(10, 3)).astype(np.float32), "b": rng.random((10, 2)) < 0.5, **extra}


def _nan_row_5() -> dict[str, np.ndarray]:
    arrays = _arrays()
    arrays["a"][5, 1] = np.nan
    return arrays


def _masked_row_4() -> dict[str, np.ndarray]:
    mask = np.ones(10, dtype=bool)
    mask[4] = False
    return _arrays(mask_a=mask, mask_b=mask)


def _labelled_run_options() -> EvalOptions:
    return EvalOptions(metrics=("probe", "recon"), device="cpu", figures=False, progress=False)


def _train_into_existing_folder(ctx: Ctx) -> object:
    out_with_a_file(ctx.tmp)
    config = TrainConfig(epochs=1, batch_size=16, device="cpu", progress=False)
    return train(tiny_config("wb"), config, tiny_splits(48, 16), "tiny", ctx.tmp / "out")


API_CASES = [
    ApiCase("api-unknown-model", "ModelConfig(model='nope')", lambda c: ModelConfig(model="nope").validate(),
            UserError, ("unknown model 'nope'", "mwb", "poe")),
    ApiCase("api-unknown-aggregator", "build_aggregator('median')", lambda c: build_aggregator("median"),
            UserError, ("unknown aggregator 'median'", "mopoe")),
    ApiCase("api-unknown-dataset", "load_dataset('mnist-ish')", lambda c: load_dataset("mnist-ish"),
            UserError, ("unknown dataset 'mnist-ish'", "polymnist")),
    ApiCase("api-unknown-metric", "EvalOptions(metrics=('bleu',))", lambda c: EvalOptions(metrics=("bleu",)).validate(),
            UserError, ("unknown metric 'bleu'", "probe")),
    ApiCase("api-unknown-option", "ModelConfig(model='mmvae+', options={'nope': 1})",
            lambda c: ModelConfig(model="mmvae+", options={"nope": 1}).validate(), UserError, ("no option 'nope'", "w_dim")),
    ApiCase("api-latent-size-zero", "ModelConfig(latent_dim=0)", lambda c: ModelConfig(latent_dim=0).validate(),
            UserError, ("latent size", ">= 1")),
    ApiCase("api-negative-beta", "ModelConfig(beta=-0.5)", lambda c: ModelConfig(beta=-0.5).validate(),
            UserError, ("beta", ">= 0", "-0.5")),
    ApiCase("api-k-zero", "ModelConfig(num_samples=0)", lambda c: ModelConfig(num_samples=0).validate(),
            UserError, ("importance samples K", ">= 1")),
    ApiCase("api-missing-rate", "TrainConfig(missing_rate=1.5)", lambda c: TrainConfig(missing_rate=1.5).validate(),
            UserError, ("missing-rate", "[0, 1)")),
    ApiCase("api-negative-epochs", "TrainConfig(epochs=-1)", lambda c: TrainConfig(epochs=-1).validate(),
            UserError, ("epochs", ">= 0")),
    ApiCase("api-batch-larger-than-data", "TrainConfig(batch_size=64) for 48 rows",
            lambda c: TrainConfig(batch_size=64).validate(48), UserError, ("larger than the 48 training samples",)),
    ApiCase("api-wrong-type", "TrainConfig(lr='1e-3')", lambda c: TrainConfig(lr="1e-3").validate(),
            UserError, ("lr must be a number",)),
    ApiCase("api-nan", "dataset_from_arrays with NaN in row 5", lambda c: dataset_from_arrays(_nan_row_5()),
            DataError, ("modality 'a'", "row 5")),
    ApiCase("api-sample-counts", "dataset_from_arrays with 10 and 9 rows",
            lambda c: dataset_from_arrays(_arrays(b=np.zeros((9, 2), bool))), DataError, ("'b' has 9 samples", "10")),
    ApiCase("api-row-all-masked", "dataset_from_arrays with row 4 masked everywhere",
            lambda c: dataset_from_arrays(_masked_row_4()), DataError, ("row 4 has every modality masked",)),
    ApiCase("api-wrong-dtype", "dataset_from_arrays with a complex modality",
            lambda c: dataset_from_arrays(_arrays(a=np.zeros((10, 3), np.complex64))), DataError, ("'a'", "complex64")),
    ApiCase("api-empty-dataset", "MultimodalDataset of 0 rows",
            lambda c: MultimodalDataset((ModalitySpec("a", (3,)),), {"a": torch.zeros(0, 3)}), DataError, ("empty",)),
    ApiCase("api-wrong-shape", "MultimodalDataset whose data does not fit its spec",
            lambda c: MultimodalDataset((ModalitySpec("a", (3,)),), {"a": torch.zeros(4, 2)}),
            DataError, ("'a'", "(2,)", "expected (3,)")),
    ApiCase("api-pickled-npz", "read_npz of an object array", lambda c: read_npz(pickled_npz(c.tmp)),
            DataError, ("holds Python objects",)),
    ApiCase("api-missing-file", "load_npz of a missing file", lambda c: load_npz(c.tmp / "absent.npz"),
            DataError, ("absent.npz", "not found")),
    ApiCase("api-not-a-run", "load_run of a folder that is not a run", lambda c: load_run(c.tmp),
            RunDirError, ("not an omnivae run",)),
    ApiCase("api-needs-labels", "evaluate_run with the probe on unlabelled data",
            lambda c: evaluate_run(c.run, _labelled_run_options()), DataError, ("probe metric needs labels",)),
    ApiCase("api-require-labels", "require_labels on unlabelled data",
            lambda c: require_labels(load_npz(c.npz).test, "coherence"), DataError, ("coherence metric needs labels",)),
    ApiCase("api-impute-unknown-modality", "model.impute with a modality the model lacks",
            lambda c: load_run(c.run).model.impute({"vec": torch.zeros(2, 6), "sound": torch.zeros(2, 3)}),
            DataError, ("['sound']", "not in this model")),
    ApiCase("api-impute-wrong-shape", "model.impute with a modality of another shape",
            lambda c: load_run(c.run).model.impute({"vec": torch.zeros(2, 7)}), DataError, ("'vec'", "(7,)", "(6,)")),
    ApiCase("api-unknown-device", "resolve_device('tpu')", lambda c: resolve_device("tpu"),
            UserError, ("'tpu'",)),
    ApiCase("api-absent-gpu", "resolve_device('cuda:99')", lambda c: resolve_device("cuda:99"), UserError, ("cuda",)),
    ApiCase("api-existing-run-folder", "train into a folder that holds files", _train_into_existing_folder,
            UserError, ("already exists", "resume=True")),
]


# -- issue 16 (parts 2-4): names as paths, writes that cannot happen, sizes, never silently wrong --


def npz_keyed(key: str) -> Callable[[Path], Path]:
    """The shared layout plus a modality stored under ``key`` (a name that is a path, say)."""

    def change(arrays: dict[str, np.ndarray]) -> None:
        arrays[key] = arrays["vec"].copy()

    return npz_with(change)


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npz_member_cut_short(tmp: Path) -> Path:
    """A valid zip archive whose ``vec.npy`` member holds 100 bytes less than its header says."""
    import zipfile

    with zipfile.ZipFile(tmp / "data.npz", "w") as archive:
        for key, array in data_arrays().items():
            data = _npy(array)
            archive.writestr(f"{key}.npy", data[:-100] if key == "vec" else data)
    return tmp / "data.npz"


def npz_claiming_terabytes(tmp: Path) -> Path:
    """A member whose .npy header claims (10**9, 1000) float64 (7.3 TiB) over 64 bytes of data."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**9, 1000)})
    with zipfile.ZipFile(tmp / "data.npz", "w") as archive:
        for key, array in data_arrays().items():
            archive.writestr(f"{key}.npy", _npy(array))
        archive.writestr("big.npy", header.getvalue() + bytes(64))
    return tmp / "data.npz"


def compressed_npz(tmp: Path) -> Path:
    """A compressed npz whose 8 MiB of zeros deflate to a few KiB (a small zip bomb)."""
    arrays = data_arrays()
    arrays["wide"] = np.zeros((N, 52_430), dtype=np.float32)  # 40 x 52,430 x 4 bytes = 8.0 MiB
    np.savez_compressed(tmp / "data.npz", **arrays)
    return tmp / "data.npz"


def compressed_hdf5(tmp: Path) -> Path:
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp / "data.h5", "w") as handle:
        for key, array in data_arrays().items():
            handle.create_dataset(key, data=array)
        handle.create_dataset("wide", data=np.zeros((N, 52_430), np.float32), compression="gzip")
    return tmp / "data.h5"


def hdf5_with_link(tmp: Path) -> Path:
    """An HDF5 file whose modality ``more`` is an external link to a file that is not there."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp / "data.h5", "w") as handle:
        for key, array in data_arrays().items():
            handle.create_dataset(key, data=array)
        handle["more"] = h5py.ExternalLink("gone.h5", "/more")
    return tmp / "data.h5"


def hdf5_keyed(key: str) -> Callable[[Path], Path]:
    def setup(tmp: Path) -> Path:
        h5py = pytest.importorskip("h5py")
        with h5py.File(tmp / "data.h5", "w") as handle:
            for name, array in {**data_arrays(), key: data_arrays()["vec"]}.items():
                handle.create_dataset(name, data=array)
        return tmp / "data.h5"

    return setup


def csv_with(files: dict[str, str]) -> Callable[[Path], Path]:
    def setup(tmp: Path) -> Path:
        (tmp / "table").mkdir()
        for name, text in files.items():
            (tmp / "table" / name).write_text(text)
        return tmp / "table"

    return setup


def csv_input_and_output(tmp: Path) -> Path:
    """A CSV input folder ``table`` and an earlier output folder ``filled`` beside it."""
    for name in ("table", "filled"):
        (tmp / name).mkdir()
        (tmp / name / "vec.csv").write_text("a,b,c,d,e,f\n" + "1,2,3,4,5,6\n" * 3)
    return tmp / "table"


def _overflow(arrays: dict[str, np.ndarray]) -> None:
    arrays["vec"] = arrays["vec"].astype(np.float64)
    arrays["vec"][5, 1] = 1e39


def _deep_config(tmp: Path) -> Path:
    (tmp / "options.json").write_text('{"latent_dim": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return tmp / "options.json"


def a_file(name: str) -> Callable[[Path], Path]:
    return text_file(name, "mine")


CSV_BITS = "a,b\n1,0\n0,1\n1,1\n"
SAMPLE_CONDITIONAL = ("sample", "{run}", "--given", "vec", "--device", "cpu")

CLI_CASES.extend([
    # modality names become file names: validated at load, whatever the format
    CliCase("name-absolute-path", "file", "a modality named with an absolute path (npz key /somewhere/X)", D(),
            ("modality name '/somewhere/X' is not allowed", "letters, digits, _ or -"), npz_keyed("/somewhere/X")),
    CliCase("name-with-slash", "file", "a modality named a/b", D(), ("modality name 'a/b' is not allowed",),
            npz_keyed("a/b")),
    CliCase("name-with-dot", "file", "a modality named a.b", D(), ("modality name 'a.b' is not allowed",),
            npz_keyed("a.b")),
    CliCase("name-dot-dot", "file", "a modality named ..", D(), ("modality name '..' is not allowed",), npz_keyed("..")),
    CliCase("name-empty", "file", "a modality with an empty name", D(), ("modality name '' is empty",), npz_keyed("")),
    CliCase("name-too-long", "file", "a modality name of 65 characters", D(), ("is not allowed", "1 to 64"),
            npz_keyed("x" * 65)),
    CliCase("name-case-duplicate", "file", "modalities vec and Vec", D(), ("'vec' and 'Vec' differ only in case",),
            npz_keyed("Vec")),
    CliCase("csv-name-with-dot", "file", "a CSV modality file a.b.csv", T("--dataset", "csv:{data}"),
            ("modality name 'a.b' is not allowed",), csv_with({"a.b.csv": "x,y\n1,2\n3,4\n", "bits.csv": CSV_BITS[:-4]})),
    CliCase("hdf5-name-with-dot", "file", "an HDF5 dataset named a.b", T("--dataset", "hdf5:{data}"),
            ("modality name 'a.b' is not allowed",), hdf5_keyed("a.b")),
    # where outputs go
    CliCase("out-is-a-file", "CLI", "train --out of an existing file", T("--out", "{data}"),
            ("is a file, not a folder", "--out"), a_file("taken")),
    CliCase("out-under-a-file", "CLI", "train --out under an existing file", T("--out", "{data}/run"),
            ("is a file, not a folder", "--out"), a_file("taken")),
    CliCase("impute-output-under-a-file", "CLI", "impute --output under an existing file",
            ("impute", "{run}", "--input", "{npz}", "--output", "{data}/filled.npz"),
            ("--output", "is a file, not a folder"), a_file("taken")),
    CliCase("impute-output-exists", "CLI", "impute --output of an existing file, without --force",
            ("impute", "{run}", "--input", "{npz}", "--output", "{data}"), ("already exists", "--force"),
            a_file("filled.npz")),
    CliCase("impute-output-is-input", "CLI", "impute --output naming the input file, with --force",
            ("impute", "{run}", "--input", "{data}", "--output", "{data}", "--force"), ("is the input",),
            impute_input(lambda a: None)),
    CliCase("impute-csv-output-exists", "CLI", "impute --output of an existing CSV folder, without --force",
            ("impute", "{run}", "--input", "{data}", "--output", "{tmp}/filled"), ("already exists", "--force"),
            csv_input_and_output),
    CliCase("sample-out-under-a-file", "CLI", "sample --out under an existing file", (*SAMPLE, "--out", "{data}/s.png"),
            ("--out", "is a file, not a folder"), a_file("taken")),
    CliCase("sample-out-is-a-folder", "CLI", "sample --out of a folder", (*SAMPLE, "--out", "{data}"),
            ("is a folder", ".png"), folder("grid.png")),
    CliCase("jnf-toy-out-under-a-file", "CLI", "jnf-toy --out under an existing file",
            ("jnf-toy", "--out", "{data}/toy.png", "--no-progress"), ("--out", "is a file, not a folder"), a_file("taken")),
    CliCase("benchmark-no-models", "CLI", "benchmark --models , (no name)", (*BENCH, "--models", ","),
            ("--models ','", "names no model")),
    CliCase("benchmark-out-is-a-file", "CLI", "benchmark --out of an existing file",
            (*BENCH, "--models", "poe", "--out", "{data}"), ("is a file, not a folder",), a_file("taken")),
    # --config
    CliCase("config-set-options-wrong-type", "CLI", "--config with set_options a number, not a list of KEY=VALUE",
            T("--config", "{data}"), ("'set_options' must be a list", "KEY=VALUE"), config_file({"set_options": 3})),
    CliCase("config-deeply-nested", "CLI", "--config with 100,000 levels of nesting", T("--config", "{data}"),
            ("nested too deeply",), _deep_config),
    CliCase("config-nan", "CLI", "--config with a NaN token", T("--config", "{data}"),
            ("not valid JSON", "NaN"), text_file("options.json", '{"lr": NaN}')),
    CliCase("config-overflowing-number", "CLI", "--config with 1e999 (parses as infinity)", T("--config", "{data}"),
            ("'lr' must be a finite number",), text_file("options.json", '{"lr": 1e999}')),
    # non-finite values
    CliCase("warmup-nan", "CLI", "--warmup-epochs nan", T("--warmup-epochs", "nan"),
            ("--warmup-epochs", "finite", "'nan'")),
    CliCase("lr-nan", "CLI", "--lr nan", T("--lr", "nan"), ("--lr", "finite", "'nan'")),
    CliCase("missing-rate-nan", "CLI", "--missing-rate nan", T("--missing-rate", "nan"), ("--missing-rate", "finite")),
    CliCase("set-nan", "CLI", "--set with a NaN value", T("--model", "mmvae+", "--set", "w_dim=nan"),
            ("--set w_dim=nan", "finite")),
    CliCase("benchmark-beta-inf", "CLI", "benchmark --beta inf", (*BENCH, "--models", "poe", "--beta", "inf"),
            ("--beta", "finite")),
    # memory that cannot fit (estimated before anything is built or written)
    CliCase("latent-size-beyond-memory", "CLI", "--latent-dim 1000000000", T("--latent-dim", "1000000000"),
            ("training needs at least", "GiB of memory", "is free", "--latent-dim")),
    CliCase("k-beyond-memory", "CLI", "--num-samples 1000000000 (K)", T("--model", "moe", "--num-samples", "1000000000"),
            ("training needs at least", "--num-samples")),
    CliCase("sample-n-beyond-memory", "CLI", "sample --n 10^12", (*SAMPLE, "--n", str(10**12)),
            ("--n 1000000000000 needs at least", "is free", "at most")),
    # sizes and damage, found before reading
    CliCase("npz-header-claims-terabytes", "file", "an npz member whose header claims 7.3 TiB", D(),
            ("'big'", "7.3 TiB", "OMNIVAE_MAX_LOAD_GB"), npz_claiming_terabytes),
    CliCase("npz-member-cut-short", "file", "a zip member cut short", D(),
            ("array 'vec' is truncated", "header promises"), npz_member_cut_short),
    CliCase("label-beyond-classes", "file", "a label of 10^12", D(),
            ("label 1000000000000 in row 3", "below 100000"),
            npz_with(lambda a: a.__setitem__("labels", np.where(np.arange(N) == 3, 10**12, 1)))),
    CliCase("npz-float-overflow", "file", "1e39 in a modality (beyond float32)", D(),
            ("modality 'vec' row 5 holds 1e+39", "float32"), npz_with(_overflow)),
    CliCase("csv-float-overflow", "file", "a CSV cell of 1e39", T("--dataset", "csv:{data}"),
            ("vec.csv line 3, column 'b'", "1e+39", "float32"), csv_folder("a,b,c\n1,2,3\n4,1e39,6\n6,7,8\n")),
    CliCase("csv-label-nan", "file", "a CSV label nan", T("--dataset", "csv:{data}"),
            ("labels.csv line 3", "'nan'", "a missing label, not a class"),
            csv_with({"vec.csv": "a,b\n1,2\n3,4\n5,6\n", "labels.csv": "label\n0\nnan\n1\n"})),
    CliCase("csv-label-empty", "file", "an empty CSV label", T("--dataset", "csv:{data}"),
            ("labels.csv line 3", "empty label", "a missing label, not a class"),
            csv_with({"vec.csv": "a,b\n1,2\n3,4\n5,6\n", "labels.csv": "label,note\n0,a\n,b\n1,c\n"})),
    CliCase("npz-label-nan", "file", "a string label 'nan' in an npz", D(), ("label 'nan' in row 2", "missing label"),
            npz_with(lambda a: a.__setitem__("labels", np.where(np.arange(N) == 2, "nan", "cat")))),
    CliCase("hdf5-broken-external-link", "file", "an HDF5 external link to a missing file", T("--dataset", "hdf5:{data}"),
            ("/more is a link to gone.h5:/more", "cannot be opened"), hdf5_with_link),
])

API_CASES.extend([
    ApiCase("api-name-with-slash", "dataset_from_arrays with a modality named a/b",
            lambda c: dataset_from_arrays(_arrays(**{"a/b": np.zeros((10, 2), np.float32)})), DataError,
            ("modality name 'a/b' is not allowed",)),
    ApiCase("api-name-in-dataset", "MultimodalDataset with a modality named ../x",
            lambda c: MultimodalDataset((ModalitySpec("../x", (3,)),), {"../x": torch.zeros(4, 3)}), DataError,
            ("modality name '../x' is not allowed",)),
    ApiCase("api-nan-option", "TrainConfig(warmup_epochs=nan)",
            lambda c: TrainConfig(warmup_epochs=float("nan")).validate(), UserError, ("warmup_epochs", "finite", "nan")),
    ApiCase("api-infinite-option", "TrainConfig(lr=inf)",
            lambda c: TrainConfig(lr=float("inf")).validate(), UserError, ("lr", "finite", "inf")),
    ApiCase("api-label-beyond-classes", "dataset_from_arrays with a label of 10^12",
            lambda c: dataset_from_arrays(_arrays(labels=np.full(10, 10**12))), DataError, ("below 100000",)),
])


@pytest.mark.parametrize("case_id", ["npz", "hdf5"])
def test_an_inflating_file_is_capped(case_id: str, ctx: Ctx, capsys, monkeypatch):
    """8 MiB of compressed zeros against a 1 MiB cap: refused from the headers, before
    inflating; the message says how to raise the cap, and raising it lets the file load."""
    from omnivae.data.arrays import MAX_LOAD_ENV, read_npz
    from omnivae.data.tables import read_hdf5

    monkeypatch.setenv(MAX_LOAD_ENV, str(1 / 1024))
    setup, prefix = (compressed_npz, "npz") if case_id == "npz" else (compressed_hdf5, "hdf5")
    case = CliCase(f"{prefix}-inflates", "file", "", T("--dataset", prefix + ":{data}"),
                   ("would take 8.", "above the 1.0 MiB", "OMNIVAE_MAX_LOAD_GB"), setup)
    run_cli_case(case, ctx, capsys)
    monkeypatch.setenv(MAX_LOAD_ENV, "1")
    arrays = read_npz(ctx.data) if case_id == "npz" else read_hdf5(ctx.data)
    assert arrays["wide"].shape == (N, 52_430)


def test_a_bad_load_limit_is_one_line(ctx: Ctx, capsys, monkeypatch):
    monkeypatch.setenv("OMNIVAE_MAX_LOAD_GB", "lots")
    case = CliCase("bad-limit", "CLI", "", T(), ("OMNIVAE_MAX_LOAD_GB must be a positive number", "'lots'"))
    run_cli_case(case, ctx, capsys)


def test_an_unreadable_csv_folder_is_one_line(ctx: Ctx, capsys, monkeypatch):
    """Root reads any folder whatever its permission bits, so the test makes listing it
    fail as it does for an unprivileged user (PermissionError from the directory read)."""
    csv_with({"vec.csv": "a,b\n1,2\n3,4\n"})(ctx.tmp)
    real = Path.iterdir

    def iterdir(self):
        if self.name == "table":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    case = CliCase("csv-unreadable", "file", "", T("--dataset", "csv:{tmp}/table"), ("cannot be read", "Permission denied"))
    run_cli_case(case, ctx, capsys)


def test_names_can_never_write_outside_the_output_folder(tmp_path: Path):
    """Defence in depth behind the load-time check: even a name that got past it (from a
    tampered run, say) cannot make the CSV writer leave its folder."""
    from omnivae.data.csv_write import _write_folder

    for bad in ("../escaped.csv", "/tmp/escaped.csv", "..", "sub/x.csv"):
        with pytest.raises(DataError, match="outside the output folder"):
            _write_folder(tmp_path / "out", {"ok.csv": b"a\n1\n", bad: b"a\n1\n"})
        assert sorted(p.name for p in tmp_path.iterdir()) == [], bad  # no output, no temporary
    assert not (tmp_path.parent / "escaped.csv").exists()


# -- read-only folders and full disks: real mounts where the machine allows them ------------------


def _mount(target: Path, options: str) -> bool:
    import subprocess

    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    return done.returncode == 0


def _umount(target: Path) -> None:
    import subprocess

    subprocess.run(["umount", str(target)], capture_output=True)


@pytest.fixture
def read_only(ctx: Ctx, monkeypatch):
    """A read-only folder ``{tmp}/ro`` holding a copy of the shared run (``{tmp}/ro/run``):
    a tmpfs filled, then remounted read-only, which binds root too. Where mounting is not
    allowed, ``os.access`` is made to report the folder read-only instead (what the commands
    check before writing)."""
    import shutil

    target = ctx.tmp / "ro"
    if _mount(target, "size=8m"):
        shutil.copytree(ctx.run, target / "run")
        import subprocess

        subprocess.run(["mount", "-o", "remount,ro", str(target)], check=True)
        yield target
        _umount(target)
    else:
        shutil.copytree(ctx.run, target / "run")
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(target) in str(p) else real(p, mode, **kw))
        yield target


@pytest.mark.parametrize("command", ["train", "impute", "sample", "evaluate", "benchmark"])
def test_writing_into_a_read_only_folder_is_one_line(command: str, read_only: Path, ctx: Ctx, capsys):
    argv = {
        "train": T("--out", "{tmp}/ro/new-run"),
        "impute": ("impute", "{run}", "--input", "{npz}", "--output", "{tmp}/ro/filled.npz"),
        "sample": (*SAMPLE, "--out", "{tmp}/ro/s.png"),
        "evaluate": ("evaluate", "{tmp}/ro/run", "--metrics", "recon", "--device", "cpu", "--no-figures"),
        "benchmark": (*BENCH, "--models", "poe", "--out", "{tmp}/ro/bench"),
    }[command]
    expected = ("read-only",) + (("copy the run",) if command == "evaluate" else ())
    run_cli_case(CliCase(f"{command}-read-only", "CLI", "", argv, expected), ctx, capsys)


@pytest.fixture
def full_disk(ctx: Ctx):
    """``{tmp}/full``: a 16 KiB tmpfs, too small for any output below (ENOSPC mid-write)."""
    target = ctx.tmp / "full"
    if not _mount(target, "size=16k"):
        pytest.skip("cannot mount a tmpfs here; test_a_full_disk_at_the_final_write covers the same path")
    yield target
    _umount(target)


@pytest.mark.parametrize("command", ["impute", "impute-csv", "impute-hdf5", "sample"])
def test_a_full_disk_is_one_line_and_leaves_nothing(command: str, full_disk: Path, ctx: Ctx, capsys):
    if command == "impute-csv":
        csv_with({"vec.csv": "a,b,c,d,e,f\n" + "1,2,3,4,5,6\n" * 400})(ctx.tmp)
    if command == "impute-hdf5":  # h5py reports ENOSPC with several lines of its own
        hdf5_keyed("more")(ctx.tmp)
        with __import__("h5py").File(ctx.tmp / "data.h5", "a") as handle:
            del handle["more"]
    argv = {
        "impute": ("impute", "{run}", "--input", "{npz}", "--output", "{tmp}/full/filled.npz"),
        "impute-csv": ("impute", "{run}", "--input", "{tmp}/table", "--output", "{tmp}/full/filled"),
        "impute-hdf5": ("impute", "{run}", "--input", "{tmp}/data.h5", "--output", "{tmp}/full/filled.h5"),
        "sample": (*SAMPLE, "--n", "32", "--out", "{tmp}/full/s.png"),
    }[command]
    line = run_cli_case(CliCase(f"{command}-full", "CLI", "", argv, ("cannot write", "No space left on device")), ctx, capsys)
    assert "nothing was written" in line
    assert list(full_disk.iterdir()) == []


@pytest.mark.parametrize("command", ["impute", "sample", "evaluate"])
def test_a_full_disk_at_the_final_write(command: str, ctx: Ctx, capsys, monkeypatch):
    """The same without a mount: the flush to disk (where delayed allocation reports a full
    disk) fails with ENOSPC; the temporary file is removed and the run is unchanged."""
    import errno

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    from tqdm import tqdm

    # Progress bars on stderr would add lines before the one line checked here.
    monkeypatch.setattr("omnivae.metrics.common.tqdm", lambda *a, **k: tqdm(*a, **{**k, "disable": True}), raising=False)
    argv = {
        "impute": ("impute", "{run}", "--input", "{npz}", "--output", "{tmp}/filled.npz", "--device", "cpu"),
        "sample": (*SAMPLE,),
        "evaluate": ("evaluate", "{run}", "--metrics", "recon", "--device", "cpu", "--no-figures"),
    }[command]
    run_cli_case(CliCase(f"{command}-enospc", "CLI", "", argv, ("cannot write", "No space left on device")), ctx, capsys)


def test_a_closed_pipe_ends_quietly(tmp_path: Path):
    """``omnivae models | head -1``: no traceback, nothing on stderr, the status of a tool
    stopped by SIGPIPE."""
    import subprocess
    import sys

    # The reader (true) is gone before omnivae prints: the write must fail, every time.
    code = "import sys, time; from omnivae.cli import main; time.sleep(1); sys.exit(main(['models']))"
    done = subprocess.run(f"{sys.executable} -c \"{code}\" | true; exit ${{PIPESTATUS[0]}}",
                          shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert done.stderr == "", done.stderr
    assert done.returncode == 141


@pytest.mark.parametrize("code", ["EACCES", "ENOSPC", "EIO"])
def test_an_os_error_anywhere_is_one_line_unless_it_is_a_fault(code: str, capsys, monkeypatch):
    """The last net in ``main``: permission, path, space and read-only errors wherever they
    happen are one line (a permission error need not be a write); EIO is a fault and keeps
    its traceback."""
    import errno

    def fail(args):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), "/data/x.npz")

    monkeypatch.setattr("omnivae.cli.listings.cmd_models", fail)
    if code == "EIO":
        with pytest.raises(OSError):
            main(["models"])
        return
    assert main(["models"]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "/data/x.npz" in line
    assert ("cannot write" in line) == (code == "ENOSPC")


def test_a_closed_pipe_in_process(capsys, monkeypatch):
    class Closed:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", Closed())
    assert main(["datasets"]) == 141
    assert capsys.readouterr().err == ""


# -- never silently wrong ---------------------------------------------------------------------------


def test_impute_returns_observed_values_exactly_in_their_dtype(ctx: Ctx, capsys):
    """int64 values above 2**24 (float32 would change them) and float64 come back bit for
    bit; imputed cells of the integer modality are whole numbers in its dtype."""
    from omnivae.data.arrays import read_npz

    arrays = data_arrays(8)
    big = 2**40 + np.arange(8 * 6, dtype=np.int64).reshape(8, 6) * 7 + 1
    arrays["vec"] = big
    arrays["age"] = np.pi * 10 ** np.arange(8, dtype=np.float64)
    mask = np.ones(8, dtype=bool)
    mask[[2, 5]] = False
    arrays["mask_vec"] = mask
    np.savez(ctx.tmp / "in.npz", **arrays)
    assert main(["impute", str(ctx.run), "--input", str(ctx.tmp / "in.npz"), "--output", str(ctx.tmp / "out.npz"),
                 "--device", "cpu"]) == 0
    out = read_npz(ctx.tmp / "out.npz")
    assert out["vec"].dtype == np.int64 and out["age"].dtype == np.float64
    assert np.array_equal(out["vec"][mask], big[mask])
    assert np.array_equal(out["age"], arrays["age"])
    assert not np.array_equal(out["vec"][~mask], big[~mask])  # filled by the model, not copied
    assert np.array_equal(out["mask_vec"], mask)


def test_impute_force_replaces_an_existing_output(ctx: Ctx, capsys):
    (ctx.tmp / "filled.npz").write_text("old")
    argv = ["impute", str(ctx.run), "--input", str(ctx.npz), "--output", str(ctx.tmp / "filled.npz"), "--device", "cpu"]
    assert main(argv) == 2 and (ctx.tmp / "filled.npz").read_text() == "old"
    assert main([*argv, "--force"]) == 0
    assert np.load(ctx.tmp / "filled.npz")["vec"].shape == (N, 6)


def test_sample_says_when_it_drew_fewer_rows_than_asked(ctx: Ctx, capsys):
    """Conditional samples need test rows: --n 10^12 draws the 8 there are (no memory
    refusal: one sample per row), and says so."""
    assert main([*(ctx.fill(a) for a in SAMPLE_CONDITIONAL), "--n", str(10**12), "--out", str(ctx.tmp / "s.png")]) == 0
    out = capsys.readouterr().out
    assert f"8 rows (--n {10**12}, but the test split has only 8 example(s)" in out


def test_likelihood_samples_subsets_above_ten_modalities():
    """2**20 - 1 subsets are never enumerated: 1,023 are scored, always the singletons and
    the full set (last), the same ones on every call; up to 10 modalities all are."""
    from omnivae.metrics.likelihood import likelihood_subsets

    names = [f"m{i}" for i in range(20)]
    table, keys, info = likelihood_subsets(names)
    assert info == {"scored": 1023, "of": 2**20 - 1, "sampled": True, "seed": 0}
    assert table.shape == (1023, 20) and len(set(keys)) == 1023
    assert table[:20].sum(1).eq(1).all() and table[-1].all()
    assert (table.sum(1)[1:] >= table.sum(1)[:-1]).all()  # ordered by size
    again, keys_again, _ = likelihood_subsets(names)
    assert torch.equal(table, again) and keys == keys_again
    small, _, info = likelihood_subsets(names[:10])
    assert small.shape == (1023, 10) and not info["sampled"]


def test_likelihood_on_twenty_modalities_runs_and_says_so():
    from omnivae.metrics.likelihood import conditional_log_likelihoods
    from omnivae.models import build_model

    specs = tuple(ModalitySpec(f"m{i}", (2,)) for i in range(20))
    data = MultimodalDataset(specs, {s.name: torch.randn(4, 2) for s in specs})
    model, _ = build_model(ModelConfig(model="wb", latent_dim=2, hidden=[4], backbone="mlp"), specs)
    out = conditional_log_likelihoods(model, data, num_samples=2, batch_size=4, seed=0)
    assert out["subsets"]["sampled"] and out["subsets"]["scored"] == 1023
    assert len(out["joint_given_subset"]) == 1023 and "+".join(s.name for s in specs) in out["joint_given_subset"]


# -- running a case ---------------------------------------------------------------------------


# -- run folders: damaged files of valid JSON, runs stopped early, a second writer ----------
_HELD_LOCKS: list = []  # locks the "being trained" cases hold, as another process would


def run_copy(change: Callable[[Path], None] | None = None) -> Callable[[Path], Path]:
    """A setup copying the shared run to ``run`` in the case's folder, then ``change(copy)``."""

    def setup(tmp: Path) -> Path:
        import shutil

        shutil.copytree(CTX_RUN[0], tmp / "run")
        if change is not None:
            change(tmp / "run")
        return tmp / "run"

    return setup


def _pointer(run: Path, obj: object) -> None:
    (run / "checkpoint.json").write_text(obj if isinstance(obj, str) else json.dumps(obj))


def _state(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """Edit the published state.json and record its new checksum: valid JSON, consistent
    checksums, a wrong shape that only the shape checks catch."""

    def edit(run: Path) -> None:
        import hashlib

        from omnivae.train.checkpoint import published_checkpoint

        path = published_checkpoint(run).path("state.json")
        state = json.loads(path.read_text())
        change(state)
        data = json.dumps(state).encode()
        path.write_bytes(data)
        pointer = json.loads((run / "checkpoint.json").read_text())
        pointer["sha256"]["state.json"] = hashlib.sha256(data).hexdigest()
        _pointer(run, pointer)

    return edit


def _unpublished(run: Path) -> None:
    import shutil

    (run / "checkpoint.json").unlink()
    shutil.rmtree(run / "checkpoints")


def _held(run: Path) -> None:
    from omnivae.train.checkpoint import RunLock

    _HELD_LOCKS.append(RunLock.acquire(run))


def _other_data(run: Path) -> None:
    np.savez(run.parent / "data.npz", **data_arrays(seed=1))
    config = json.loads((run / "config.json").read_text())
    config["dataset"]["name"] = f"npz:{run.parent / 'data.npz'}"
    (run / "config.json").write_text(json.dumps(config))


def _pointer_edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        pointer = json.loads((run / "checkpoint.json").read_text())
        change(pointer)
        _pointer(run, pointer)

    return edit


CTX_RUN: list[Path] = []  # the shared run, set by the ctx fixture before any setup runs
RESUME = ("train", "--resume", "{data}", "--no-progress")
SAMPLE_RUN = ("sample", "{data}", "--out", "{tmp}/samples.png", "--device", "cpu")

CLI_CASES.extend([
    CliCase("run-pointer-a-list", "CLI", "a run whose checkpoint.json holds a JSON list", SAMPLE_RUN,
            ("checkpoint.json is damaged", "JSON list"), run_copy(lambda run: _pointer(run, []))),
    CliCase("run-pointer-deeply-nested", "CLI", "a run whose checkpoint.json nests 100,000 levels", SAMPLE_RUN,
            ("checkpoint.json is damaged", "nested too deeply"),
            run_copy(lambda run: _pointer(run, "[" * 100_000 + "]" * 100_000))),
    CliCase("run-checksum-a-string", "CLI", "a run whose checksums are a string, not a map", SAMPLE_RUN,
            ("checkpoint.json is damaged", "'sha256' must map file names"),
            run_copy(_pointer_edit(lambda p: p.__setitem__("sha256", "abc")))),
    CliCase("run-generation-a-string", "CLI", "a run whose checkpoint generation is a string", SAMPLE_RUN,
            ("checkpoint.json is damaged", "'generation' must be an integer >= 0"),
            run_copy(_pointer_edit(lambda p: p.__setitem__("generation", "1")))),
    CliCase("run-epoch-a-string", "CLI", "--resume of a run whose state.json epoch is a string", RESUME,
            ("state.json is damaged", "'epoch' must be an integer >= 0", '"1"'),
            run_copy(_state(lambda s: s.__setitem__("epoch", "1")))),
    CliCase("run-negative-epoch", "CLI", "--resume of a run whose state.json epoch is -1", RESUME,
            ("state.json is damaged", "'epoch' must be an integer >= 0", "-1"),
            run_copy(_state(lambda s: s.__setitem__("epoch", -1)))),
    CliCase("run-unknown-stage", "CLI", "--resume of a run whose state.json names stage 7", RESUME,
            ("state.json is damaged", "stage 7 does not exist"), run_copy(_state(lambda s: s.__setitem__("stage", 7)))),
    CliCase("run-missing-key", "CLI", "--resume of a run whose state.json lacks global_step", RESUME,
            ("state.json is damaged", "'global_step' is missing"), run_copy(_state(lambda s: s.pop("global_step")))),
    CliCase("seed-beyond-64-bits", "CLI", "--seed 2**64", T("--seed", str(2**64)),
            ("--seed must be an integer from -2**63 to 2**64 - 1",)),
    CliCase("resume-no-checkpoint", "CLI", "--resume of a run killed before its first checkpoint", RESUME,
            ("stopped before its first checkpoint", "--overwrite"), run_copy(_unpublished)),
    CliCase("out-no-checkpoint", "CLI", "--out of a run killed before its first checkpoint", T("--out", "{data}"),
            ("holds a run that stopped before its first checkpoint", "--overwrite"), run_copy(_unpublished)),
    CliCase("overwrite-not-a-run", "CLI", "--overwrite of a folder that is not a run", T("--overwrite"),
            ("overwrite refused", "--overwrite", "not an omnivae run", "not deleted"), out_with_a_file),
    CliCase("out-being-trained", "CLI", "--out of a run another process is training", T("--out", "{data}"),
            ("is being trained by another process (pid", "wait for it"), run_copy(_held)),
    CliCase("resume-being-trained", "CLI", "--resume of a run another process is training", RESUME,
            ("is being trained by another process (pid",), run_copy(_held)),
    CliCase("overwrite-being-trained", "CLI", "--overwrite of a run another process is training",
            T("--out", "{data}", "--overwrite"), ("is being trained by another process (pid",), run_copy(_held)),
    CliCase("resume-changed-data", "CLI", "--resume on data that changed since the run started", RESUME,
            ("differ from the data", "--allow-data-change"), run_copy(_other_data)),
    CliCase("allow-data-change-without-resume", "CLI", "--allow-data-change for a new run", T("--allow-data-change"),
            ("--allow-data-change only applies to --resume",)),
])


def tree(*roots: Path) -> dict[str, tuple[int, int] | None]:
    """Every file (size, mtime) and folder (None) under ``roots``."""
    state: dict[str, tuple[int, int] | None] = {}
    for root in roots:
        for path in [root, *root.rglob("*")] if root.exists() else []:
            stat = path.stat()
            state[str(path)] = None if path.is_dir() else (stat.st_size, stat.st_mtime_ns)
    return state


def run_cli_case(case: CliCase, ctx: Ctx, capsys) -> str:
    """Run the case's command line; check status, the one line and the file tree; return the line."""
    if case.setup is not None:
        ctx.data = case.setup(ctx.tmp)
    argv = [ctx.fill(arg) for arg in case.argv]
    before = tree(ctx.tmp, ctx.run)
    capsys.readouterr()
    status = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert status == 2, (status, captured.err)
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), captured.err
    line = lines[0]
    assert line.startswith("omnivae: error: ")
    for fragment in case.expected:
        assert ctx.fill(fragment) in line, (fragment, line)
    assert tree(ctx.tmp, ctx.run) == before, "a failed command must leave no file behind and change none"
    return line


def run_api_case(case: ApiCase, ctx: Ctx) -> str:
    """Call the case; check the exception type, its one-line message and the file tree; return it."""
    before = tree(ctx.run)
    with pytest.raises(UserError) as info:
        case.call(ctx)
    assert isinstance(info.value, case.error), (type(info.value), info.value)
    message = str(info.value)
    assert "\n" not in message and message.strip()
    for fragment in case.expected:
        assert fragment in message, (fragment, message)
    assert tree(ctx.run) == before
    assert not (ctx.tmp / "unpickled").exists()
    return message


# -- fixtures and tests ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> tuple[Path, Path]:
    """The valid data file and a run trained on it for one epoch."""
    folder = tmp_path_factory.mktemp("bad-input")
    npz = folder / "data.npz"
    np.savez(npz, **data_arrays())
    run = folder / "run"
    argv = ["train", "--model", "wb", "--dataset", f"npz:{npz}", *TINY, "--device", "cpu", "--out", str(run)]
    assert main(argv) == 0
    return npz, run


@pytest.fixture
def ctx(shared, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # default run folders and relative paths land here
    monkeypatch.setenv("OMNIVAE_CACHE", str(work / "cache"))
    npz, run = shared
    CTX_RUN[:] = [run]
    yield Ctx(tmp=work, npz=npz, run=run)
    while _HELD_LOCKS:
        _HELD_LOCKS.pop().release()


def test_the_catalogue_is_complete():
    ids = [c.id for c in CLI_CASES] + [c.id for c in API_CASES]
    assert len(ids) == len(set(ids)), "case names are unique"
    assert len(ids) >= 26
    for case in CLI_CASES:
        assert case.where in ("CLI", "file") and case.expected


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_command_line_mistake(case: CliCase, ctx: Ctx, capsys):
    if case.id == "hdf5-not-hdf5":
        pytest.importorskip("h5py")
    run_cli_case(case, ctx, capsys)


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_api_mistake(case: ApiCase, ctx: Ctx):
    run_api_case(case, ctx)


def test_a_pickled_array_is_never_unpickled(ctx: Ctx, capsys):
    """The trap's ``__reduce__`` would create a folder if anything unpickled it."""
    case = next(c for c in CLI_CASES if c.id == "npz-pickled-objects")
    run_cli_case(case, ctx, capsys)
    assert not (ctx.tmp / "unpickled").exists()
    with pytest.raises(ValueError):  # numpy itself refuses without allow_pickle
        np.load(ctx.data, allow_pickle=False)["vec"]
    assert not (ctx.tmp / "unpickled").exists()
