"""A scikit-learn estimator around omnivae's multimodal VAEs, for tabular data with gaps.

:class:`MultimodalVAE` learns one latent space from groups of columns (the modalities),
with whole groups or single cells missing (``NaN``); ``transform`` gives posterior means,
``impute`` fills the missing cells from the observed groups, ``sample`` draws new rows.

How the column groups are given:

- a dict of arrays ``{name: array [n] or [n, d]}``: one modality per key. Later calls
  may leave a key out: that modality is then missing in every row;
- a pandas DataFrame with ``modalities={name: [column names]}``, or with two-level
  ``MultiIndex`` columns whose first level names the modality;
- a 2-D array with ``modalities={name: [column indices]}``;
- a DataFrame or 2-D array without ``modalities``: one modality (named ``x``) of all
  columns (then ``impute`` has no other modality to fill from, as for any one-view model).

A modality counts as observed in a row when every one of its cells is there; a row with
some of its cells ``NaN`` is given to the encoders without that modality, and ``impute``
fills those cells (keeping the observed ones). Rows with nothing observed are skipped in
``fit``, get the prior's mean in ``transform`` and its decoding in ``impute``.

The networks train in float32; after ``fit`` the model is kept in float64, so
``transform`` of a row does not depend on the batch it comes in (scikit-learn's
invariance checks compare to 1e-7).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.sparse import issparse
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from omnivae.data import ModalitySpec, MultimodalDataset
from omnivae.data.base import MODALITY_NAME
from omnivae.errors import DataError, UserError
from omnivae.models import ModelConfig, build_model
from omnivae.models import MultimodalVAE as _Model
from omnivae.train import TrainConfig, Trainer

__all__ = ["MultimodalVAE"]

#: The modality of a DataFrame or array given without ``modalities``.
SINGLE = "x"

Layout = dict[str, list[int]]


class MultimodalVAE(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """A multimodal VAE as a scikit-learn transformer and imputer.

    Parameters are omnivae's training options (``omnivae train --help``); the default
    method is MWB-VAE (Qiu et al., AAAI 2025, Remark 3). ``random_state`` is
    scikit-learn's name for ``seed``: an int gives the same model on every ``fit``
    (scikit-learn's checks set it), None a new one.

    Args:
        model: a registered method (``omnivae models``), e.g. ``"mwb"``, ``"mopoe"``, ``"poe"``.
        latent_dim: size of the latent space (the number of ``transform`` columns; methods
            with a latent block per modality, MM-VAMP and MMVAE+, give more).
        epochs: passes over the rows.
        batch_size: rows per step (cut to the number of rows when larger).
        lr: Adam's learning rate.
        beta: weight of the KL term. Vector modalities get a unit-variance Gaussian
            likelihood, and on standardised columns a beta-ELBO with unit variance is the
            ELBO with noise variance beta (up to a constant factor): the default 0.1 treats a
            tenth of each column's variance as noise (omnivae train's default, 1, treats all
            of it as noise and fits tabular data poorly).
        hidden: widths of the MLP layers of every encoder and decoder.
        aggregator: another aggregation than the method's (``"poe"``, ``"moe"``, ...).
        missing_rate: probability of hiding each observed modality at each step, so that
            the model learns to infer from any subset (0.3 suits imputation).
        standardize: scale each column to mean 0 and variance 1 (over its observed cells)
            before training, and back in ``impute`` and ``sample``.
        modalities: the column groups of a DataFrame (names) or array (indices).
        random_state: the seed of the networks' initialisation and of training.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.

    Attributes:
        model_: the trained :class:`omnivae.models.MultimodalVAE` (float64, on the CPU, in
            eval mode; ``device`` applies to training only).
        model_config_: its :class:`omnivae.models.ModelConfig` (for
            :func:`omnivae.hub.save_pretrained`).
        modalities_: ``{name: [column positions]}`` in the order of the fitted columns.
        n_features_in_: number of columns seen in ``fit``.
        feature_names_in_: column names, when fit on a DataFrame with string names.
        mean_, scale_: per-column standardisation (zeros and ones when ``standardize`` is False).
        history_: the mean training loss of each epoch.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> X = {"a": rng.normal(size=(64, 3)), "b": rng.normal(size=(64, 2))}
        >>> X["b"][:8] = np.nan                       # eight rows without b
        >>> vae = MultimodalVAE(latent_dim=2, epochs=2, hidden=(16,)).fit(X)
        >>> vae.transform(X).shape
        (64, 2)
        >>> bool(np.isnan(vae.impute(X)["b"]).any())
        False
    """

    def __init__(
        self,
        model: str = "mwb",
        latent_dim: int = 8,
        epochs: int = 30,
        batch_size: int = 64,
        lr: float = 1e-3,
        beta: float = 0.1,
        hidden: Sequence[int] = (128, 128),
        aggregator: str | None = None,
        missing_rate: float = 0.0,
        standardize: bool = True,
        modalities: Mapping[str, Sequence[Any]] | None = None,
        random_state: int | None = 0,
        device: str = "cpu",
    ) -> None:
        self.model = model
        self.latent_dim = latent_dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.beta = beta
        self.hidden = hidden
        self.aggregator = aggregator
        self.missing_rate = missing_rate
        self.standardize = standardize
        self.modalities = modalities
        self.random_state = random_state
        self.device = device

    # -- scikit-learn API ------------------------------------------------------------

    def fit(self, X: Any, y: Any = None) -> MultimodalVAE:
        """Train on ``X`` (see the module docstring for its forms); ``y`` is ignored."""
        values, layout = self._read(X, reset=True)
        self.modalities_ = layout
        if self.standardize:
            with warnings.catch_warnings():  # an all-NaN column: mean 0 and scale 1 below
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(values, axis=0) if len(values) else np.zeros(values.shape[1])
                scale = np.nanstd(values, axis=0) if len(values) else np.ones(values.shape[1])
            mean = np.where(np.isfinite(mean), mean, 0.0)
            scale = np.where(np.isfinite(scale) & (scale > 1e-12), scale, 1.0)
        else:
            mean, scale = np.zeros(values.shape[1]), np.ones(values.shape[1])
        self.mean_, self.scale_ = mean, scale
        data, masks = self._tensors(values, torch.float32)
        keep = torch.stack(list(masks.values())).any(0)
        if not bool(keep.any()):
            raise DataError("X has no row with a modality observed (every modality has a NaN cell in every row)")
        specs = tuple(ModalitySpec(name, (len(cols),), "vector") for name, cols in layout.items())
        dataset = MultimodalDataset(
            specs, {k: v[keep] for k, v in data.items()}, {k: v[keep] for k, v in masks.items()}, name="X"
        )
        seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1)) if self.random_state is None \
            else int(self.random_state)
        model_config = ModelConfig(
            model=self.model, aggregator=self.aggregator, latent_dim=int(self.latent_dim), beta=float(self.beta),
            backbone="mlp", hidden=[int(h) for h in self.hidden],
        )
        train_config = TrainConfig(
            epochs=int(self.epochs), batch_size=int(min(self.batch_size, len(dataset))), lr=float(self.lr),
            seed=seed, device=self.device, missing_rate=float(self.missing_rate), progress=False,
        )
        with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
            torch.manual_seed(seed)
            model, objective = build_model(model_config, specs)
            trainer = Trainer(model, objective, dataset, train_config)
            trainer.fit()
        self.model_config_ = model_config
        self.model_: _Model = trainer.model.to("cpu").double().eval()
        self.history_ = [float(row["train_loss"]) for row in trainer.history if "train_loss" in row]
        # methods with one latent block per modality (MM-VAMP, MMVAE+) expose a wider vector
        with torch.no_grad():
            probe = {name: torch.zeros(1, len(cols), dtype=torch.float64) for name, cols in layout.items()}
            self._n_features_out = int(self.model_.encode(probe).mean.shape[-1])
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Posterior means given the observed modalities of each row: ``[n, latent_dim]``."""
        check_is_fitted(self)
        values, _ = self._read(X, reset=False)
        with torch.no_grad():
            return self._latent_mean(values).numpy()

    def impute(self, X: Any) -> Any:
        """``X`` with its NaN cells filled: each row's missing cells are the decoded
        posterior mean given its observed modalities; observed cells are kept as given.

        Returns the form of ``X``: a dict of float arrays (every fitted modality, those
        left out of ``X`` included), a DataFrame (same index and columns) or an array.
        """
        check_is_fitted(self)
        values, _ = self._read(X, reset=False)
        with torch.no_grad():
            z = self._latent_mean(values)
            decoded = self.model_.decode_mean(z)
        filled = values.copy()
        for name, cols in self.modalities_.items():
            columns = decoded[name].numpy() * self.scale_[cols] + self.mean_[cols]
            block = filled[:, cols]
            missing = np.isnan(block)
            block[missing] = columns[missing]
            filled[:, cols] = block
        return self._like(X, filled)

    def sample(self, n_samples: int = 1, random_state: int | None = None) -> Any:
        """``n_samples`` new rows: z from the prior, decoded to every modality's mean, in the
        form ``fit`` was given (dict, DataFrame or array)."""
        check_is_fitted(self)
        if not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise UserError(f"n_samples must be a positive integer, got {n_samples!r}", parameter="n_samples")
        seed = int(check_random_state(random_state).randint(0, 2**31 - 1))
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            decoded = self.model_.generate(int(n_samples))
        out = np.empty((int(n_samples), self.n_features_in_))
        for name, cols in self.modalities_.items():
            out[:, cols] = decoded[name].numpy() * self.scale_[cols] + self.mean_[cols]
        return self._like(self._fit_form, out)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # NaN marks missing modalities and cells
        tags.non_deterministic = self.random_state is None
        return tags

    # -- input forms -----------------------------------------------------------------

    def _read(self, X: Any, reset: bool) -> tuple[np.ndarray, Layout]:
        """``X`` as a float64 ``[n, n_features]`` array in the fitted column order, and its
        layout ``{modality: [columns]}``; records the input form when ``reset``."""
        if isinstance(X, Mapping) and not issparse(X):  # scipy's dok_matrix is a dict
            return self._read_dict(X, reset)
        columns: Any = getattr(X, "columns", None)
        multi = columns is not None and getattr(columns, "nlevels", 1) > 1
        if multi:
            if self.modalities is not None:
                raise UserError("give either MultiIndex columns or modalities=, not both", parameter="modalities")
            names = [str(level0) for level0 in columns.get_level_values(0)]
            frame = X
            X = X.set_axis([f"{a}__{b}" for a, b in zip(names, columns.get_level_values(1), strict=True)], axis=1)
        values = validate_data(self, X, reset=reset, dtype=np.float64, ensure_all_finite="allow-nan")
        if reset:
            if multi:
                layout: Layout = {}
                for position, name in enumerate(names):
                    layout.setdefault(name, []).append(position)
                self._check_names(list(layout))
                self._fit_form: Any = frame.iloc[:0]
            else:
                layout = self._layout_from_parameter(values.shape[1])
                self._fit_form = X.iloc[:0] if columns is not None else np.empty((0, values.shape[1]))
            return values, layout
        return values, self.modalities_

    def _read_dict(self, X: Mapping[str, Any], reset: bool) -> tuple[np.ndarray, Layout]:
        if self.modalities is not None:
            raise UserError("modalities= groups the columns of a DataFrame or array; a dict's keys "
                            "are its modalities already", parameter="modalities")
        if not X:
            raise DataError("X is an empty dict; give one array per modality")
        self._check_names(list(X))
        blocks: dict[str, np.ndarray] = {}
        for name, array in X.items():
            block = check_array(array, dtype=np.float64, ensure_all_finite="allow-nan", ensure_2d=False,
                                input_name=f"X[{name!r}]")
            if block.ndim == 1:
                block = block[:, None]
            if block.ndim != 2:
                raise DataError(f"X[{name!r}] has {block.ndim} dimensions; give [n] or [n, d] arrays")
            blocks[name] = block
        lengths = {name: len(block) for name, block in blocks.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"the arrays of X have different numbers of rows: {lengths}")
        n = next(iter(lengths.values()))
        if reset:
            layout: Layout = {}
            start = 0
            for name, block in blocks.items():
                layout[name] = list(range(start, start + block.shape[1]))
                start += block.shape[1]
            self.n_features_in_ = start
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
            self._fit_form = {name: block[:0] for name, block in blocks.items()}
            return np.concatenate(list(blocks.values()), axis=1), layout
        if self._fit_form.__class__ is not dict:
            raise DataError("X is a dict, but this model was fit on a DataFrame or an array; give X in that form")
        unknown = [name for name in blocks if name not in self.modalities_]
        if unknown:
            raise DataError(f"modalities {unknown} were not seen in fit (it had {list(self.modalities_)})")
        values = np.full((n, self.n_features_in_), np.nan)
        for name, block in blocks.items():
            cols = self.modalities_[name]
            if block.shape[1] != len(cols):
                raise DataError(f"X[{name!r}] has {block.shape[1]} columns; fit had {len(cols)}")
            values[:, cols] = block
        return values, self.modalities_

    def _layout_from_parameter(self, n_features: int) -> Layout:
        if self.modalities is None:
            return {SINGLE: list(range(n_features))}
        if not isinstance(self.modalities, Mapping) or not self.modalities:
            raise UserError("modalities must be a non-empty dict {name: [columns]}", parameter="modalities")
        self._check_names(list(self.modalities))
        names = getattr(self, "feature_names_in_", None)
        index = {str(c): i for i, c in enumerate(names)} if names is not None else None
        layout: Layout = {}
        seen: dict[int, str] = {}
        for name, cols in self.modalities.items():
            positions = []
            for col in cols:
                if index is not None and isinstance(col, str):
                    if col not in index:
                        raise UserError(f"modalities[{name!r}] names column {col!r}, which X lacks",
                                        parameter="modalities")
                    position = index[col]
                elif isinstance(col, (int, np.integer)) and 0 <= int(col) < n_features:
                    position = int(col)
                else:
                    raise UserError(f"modalities[{name!r}] holds {col!r}, neither a column name of X nor a "
                                    f"column index below {n_features}", parameter="modalities")
                if position in seen:
                    raise UserError(f"column {col!r} is in both modalities {seen[position]!r} and {name!r}",
                                    parameter="modalities")
                seen[position] = name
                positions.append(position)
            if not positions:
                raise UserError(f"modalities[{name!r}] has no columns", parameter="modalities")
            layout[name] = positions
        if len(seen) != n_features:
            left = sorted(set(range(n_features)) - set(seen))
            shown = [str(names[i]) if names is not None else str(i) for i in left[:5]]
            raise UserError(f"{len(left)} columns of X are in no modality ({', '.join(shown)}...); "
                            "group every column, or drop the others first", parameter="modalities")
        return layout

    @staticmethod
    def _check_names(names: list[Any]) -> None:
        bad = [n for n in names if not isinstance(n, str) or not MODALITY_NAME.fullmatch(n)]
        if bad:
            raise UserError(f"modality name {bad[0]!r} is not allowed; use 1 to 64 letters, digits, _ or -, "
                            "starting with a letter or digit", parameter="modalities")

    def _like(self, X: Any, values: np.ndarray) -> Any:
        """``values`` (in the fitted column order) in the form of ``X``."""
        if isinstance(X, Mapping) and not issparse(X):
            return {name: values[:, cols] for name, cols in self.modalities_.items()}
        if hasattr(X, "columns") and hasattr(X, "iloc"):
            index = X.index if len(X) == len(values) else None
            return type(X)(values, columns=X.columns, index=index)
        return values

    # -- the model -------------------------------------------------------------------

    def _tensors(self, values: np.ndarray, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Standardised values (NaN as 0) and observation masks per modality."""
        data, masks = {}, {}
        scaled = (values - self.mean_) / self.scale_
        for name, cols in self.modalities_.items():
            block = scaled[:, cols]
            observed = ~np.isnan(block).any(axis=1)
            data[name] = torch.from_numpy(np.nan_to_num(block, nan=0.0)).to(dtype)
            masks[name] = torch.from_numpy(observed)
        return data, masks

    def _latent_mean(self, values: np.ndarray) -> torch.Tensor:
        data, masks = self._tensors(values, torch.float64)
        n = len(values)
        out = torch.zeros(n, self._n_features_out, dtype=torch.float64)
        any_observed = torch.stack(list(masks.values())).any(0)
        if bool(any_observed.any()):
            rows = any_observed.nonzero().squeeze(1)
            x = {k: v[rows] for k, v in data.items()}
            mask = {k: v[rows] for k, v in masks.items()}
            out[rows] = self.model_.encode(x, mask).mean
        if not bool(any_observed.all()):
            out[~any_observed] = _prior_mean(self.model_, self._n_features_out)
        return out


def _prior_mean(model: _Model, width: int) -> torch.Tensor:
    """The prior's mean, or zeros (the N(0, I) blocks' mean) where the prior has no fixed
    mean of the latent vector's width (MM-VAMP's prior is built from the observed data)."""
    try:
        mean = model.prior().mean
    except (NotImplementedError, RuntimeError, TypeError, ValueError):
        return torch.zeros(width, dtype=torch.float64)
    if mean.dim() > 1:
        mean = mean.reshape(-1, mean.shape[-1])[0]
    if mean.shape[-1] != width:
        return torch.zeros(width, dtype=torch.float64)
    return mean.to(torch.float64)
