"""Markdown tables for ``report.md`` (one run) and ``results.md`` (a benchmark)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["table", "evaluation_markdown", "benchmark_markdown", "fmt"]


def fmt(value: object, digits: int = 3) -> str:
    """A number as text: fixed digits for small values, fewer for large ones; '-' for missing."""
    if value is None:
        return "-"
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return f"{fmt(value[0], digits)} ± {fmt(value[1], digits)}"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _by_size_table(title: str, by_size: Mapping[str, float]) -> str:
    sizes = sorted(by_size, key=int)
    return f"{title}\n\n" + table(["inputs", *sizes], [["mean", *[by_size[s] for s in sizes]]])


def _latents(results: Mapping, metric: str) -> str:
    """Where a metric's unconditional latents came from: the prior or a post-hoc sampler."""
    sampler = (results.get("settings") or {}).get(metric, {}).get("latent_sampler", "prior")
    return "prior" if sampler == "prior" else f"{sampler} sampler"


def evaluation_markdown(results: Mapping, header: Mapping[str, object]) -> str:
    """The report of one run: a header, then one section per metric that was computed."""
    out = ["# omnivae evaluation", ""]
    out += [f"- {k}: {v}" for k, v in header.items()]
    if "classifiers" in results:
        acc = results["classifiers"]["test_accuracy"]
        out += ["", "## Coherence classifiers (class-balanced test accuracy)", "",
                table(list(acc), [[acc[k] for k in acc]])]
    if "coherence" in results:
        coherence = results["coherence"]
        out += ["", "## Coherence", "",
                f"Joint coherence ({_latents(results, 'coherence')} samples, all classifiers agree): "
                f"{fmt(coherence.get('joint'))}", ""]
        out.append(_by_size_table("Conditional coherence by number of inputs (targets outside the subset):",
                                  coherence["by_size"]))
        rows = [[key, coherence["per_subset_mean"][key], *[f"{t}: {fmt(v)}" for t, v in targets.items()]]
                for key, targets in coherence["per_subset"].items()]
        width = max((len(r) for r in rows), default=2)
        out += ["", table(["given", "mean", *["target"] * (width - 2)], [r + [""] * (width - len(r)) for r in rows])]
    if "probe" in results:
        probe = results["probe"]
        out += ["", "## Latent linear probe (test accuracy of logistic regression on posterior means)", "",
                _by_size_table("By number of inputs:", probe["by_size"]), "",
                table(["subset", "accuracy"], list(probe["per_subset"].items()))]
    if "clustering" in results:
        clusters = results["clustering"]
        nmi, ari = clusters["nmi"], clusters["ari"]
        out += ["", f"## Latent clustering (k-means, k = {clusters.get('num_clusters')}, on posterior means; "
                "NMI and ARI against the labels)", "",
                _by_size_table("NMI by number of inputs:", nmi["by_size"]), "",
                table(["subset", "NMI", "ARI"], [[k, v, ari["per_subset"].get(k)] for k, v in nmi["per_subset"].items()])]
        if "model" in clusters:
            own = clusters["model"]
            out += ["", f"The model's own cluster assignments ({own.get('num_clusters')} clusters):", "",
                    table(["subset", "NMI", "ARI"],
                          [[k, v, own["ari"]["per_subset"].get(k)] for k, v in own["nmi"]["per_subset"].items()])]
    if "likelihood" in results:
        lik = results["likelihood"]
        out += ["", f"## Log-likelihoods (importance sampling, K = {lik.get('num_samples')})", "",
                f"Joint log p(X) with the joint posterior as proposal: {fmt(lik.get('joint'))}", ""]
        if "conditional_by_size" in lik:
            out.append(_by_size_table("Conditional log p(X_rest | x_S) by number of inputs:", lik["conditional_by_size"]))
        subsets = lik.get("subsets") or {}
        if subsets.get("sampled"):
            out += ["", f"{subsets['of']:,} subsets are too many to score: {subsets['scored']:,} of them are "
                    f"(every single modality, the full set and random subsets, seed {subsets.get('seed')})."]
        keys = list(lik.get("joint_given_subset", {})) or list(lik.get("conditional", {}))
        rows = [[k, lik.get("joint_given_subset", {}).get(k), lik.get("conditional", {}).get(k)] for k in keys]
        out += ["", table(["subset S", "log p(X), proposal q(z|x_S)", "log p(X_rest | x_S)"], rows)]
    if "fd" in results:
        fd = results["fd"]
        out += ["", "## Frechet distance (in the coherence classifiers' feature space)", "",
                table(["target", f"unconditional ({_latents(results, 'fd')} samples)"], list(fd["unconditional"].items()))]
        if "conditional_by_size" in fd:
            out += ["", _by_size_table("Conditional, by number of inputs:", fd["conditional_by_size"])]
    if "recon" in results:
        rec = results["recon"]
        names = list(rec["self"]) or list(rec["joint"])
        rows = [[n, rec["self"].get(n), rec.get("cross", {}).get(n), rec["joint"].get(n)] for n in names]
        out += ["", "## Reconstruction error (mean squared error)", "",
                table(["modality", "from itself", "from the others", "from all"], rows)]
    if results.get("skipped"):
        out += ["", "## Not computed for this model", "", table(["metric", "why"], list(results["skipped"].items()))]
    if "sampler" in results:
        rows = [[metric, stats.get("acceptance_rate"), stats.get("chain_steps"), stats.get("seconds"),
                 stats.get("chain_steps_per_second")] for metric, stats in results["sampler"].items()]
        any_stats = next(iter(results["sampler"].values()))
        settings = (f"{int(any_stats.get('hmc_steps', 0))} steps x {int(any_stats.get('leapfrog_steps', 0))} "
                    f"leapfrog, step size {fmt(any_stats.get('step_size'), 4)}")
        out += ["", f"## HMC for subset posteriors (Eq. 12; {settings})", "",
                table(["metric", "acceptance rate", "chain-steps", "seconds", "chain-steps / s"], rows)]
    if results.get("settings"):
        out += ["", "## How each metric was computed", "", _settings_table(results["settings"])]
        if any(entry.get("protocol") == "fast" for entry in results["settings"].values()):
            out += ["", "`fast` keeps each metric's definition with smaller samples than the papers (noisier "
                    "numbers, and a looser likelihood bound); `omnivae evaluate RUN --protocol paper` computes "
                    "the published protocols."]
    figures = results.get("figures", [])
    if figures:
        out += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    return "\n".join(out) + "\n"


_BOOKKEEPING = ("protocol", "overrides", "test_rows", "seed", "seconds", "computed_at")


def _settings_table(settings: Mapping[str, Mapping]) -> str:
    """One row per metric: protocol (and what was changed from it), rows, settings, date, time."""
    rows = []
    for metric, entry in settings.items():
        protocol = str(entry.get("protocol", "-"))
        if entry.get("overrides"):
            protocol += f" (changed: {', '.join(entry['overrides'])})"
        detail = ", ".join(f"{k}={v}" for k, v in entry.items() if k not in _BOOKKEEPING)
        rows.append([metric, protocol, entry.get("test_rows"), detail or "-", entry.get("computed_at"),
                     entry.get("seconds")])
    return table(["metric", "protocol", "test rows", "settings", "computed (UTC)", "seconds"], rows)


def benchmark_markdown(summary: Mapping[str, Mapping[str, tuple[float, float]]], header: Mapping[str, object]) -> str:
    """The benchmark table: one row per model, mean ± std over seeds for each summary metric."""
    metrics: list[str] = []
    for values in summary.values():
        metrics += [m for m in values if m not in metrics]
    rows = [[model, *[values.get(m) for m in metrics]] for model, values in summary.items()]
    out = ["# omnivae benchmark", ""] + [f"- {k}: {v}" for k, v in header.items()]
    out += ["", "Mean ± standard deviation over seeds.", "", table(["model", *metrics], rows), ""]
    return "\n".join(out)
