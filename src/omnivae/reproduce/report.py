"""``reproduce.md``: our numbers beside the paper's, and each claim marked reproduced or not."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from omnivae.reproduce.spec import Preset, Values, mean_std

__all__ = ["reproduce_markdown", "claim_verdicts"]

_LEARNING = ("probe (1 input)", "coherence (1 input)")


def _cell(seq: Sequence[float] | None) -> str:
    if not seq:
        return "-"
    mean, std = mean_std(list(seq))
    return f"{mean:.3f} ± {std:.3f}" if len(seq) > 1 else f"{mean:.3f}"


def claim_verdicts(preset: Preset, values: Values) -> list[tuple[bool, list]]:
    """``(reproduced, checks)`` for each claim of ``preset``, in order."""
    return [claim.evaluate(values) for claim in preset.claims]


def _row(cells: Sequence[str]) -> str:
    # A "|" inside a cell ("q(z | x)") would end it: markdown needs it escaped.
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def reproduce_markdown(
    preset: Preset,
    values: Values,
    untrained: Mapping[tuple[str, str, str], float],
    meta: Mapping,
) -> str:
    """The report: protocol, claims with their deciding numbers, published tables beside
    ours, our full table per experiment and the learning check against untrained models."""
    lines = [f"# Reproduction: {preset.title}", ""]
    lines.append(f"Scale `{preset.scale}`, {meta.get('seeds', preset.seeds)} seeds, mean ± standard deviation over "
                 "seeds. Command: `" + str(meta.get("command", "")) + "`.")
    if "wall_seconds" in meta:
        parts = ", ".join(f"{k} {v / 60:.1f} min" for k, v in meta.get("step_seconds", {}).items())
        lines.append(f"Wall time of this invocation: {meta['wall_seconds'] / 60:.1f} min ({parts}); runs finished "
                     "by an earlier invocation were skipped and are not in it.")
    lines.append("")
    lines.append("## Protocol")
    lines.append("")
    for exp in preset.experiments:
        lines.append(f"- `{exp.name}`: {exp.protocol}.")
    for extra in preset.extras:
        lines.append(f"- `{extra.name}`: {extra.description}.")
    if preset.deviations:
        lines.append("")
        lines.append("Departures from the paper:")
        lines.append("")
        lines.extend(f"- {d}." for d in preset.deviations)
    lines.append("")

    verdicts = claim_verdicts(preset, values)
    done = sum(ok for ok, _ in verdicts)
    lines.append(f"## Claims: {done} of {len(verdicts)} reproduced")
    lines.append("")
    lines.append("Each claim holds when every one of its conditions holds; tolerances were fixed in the preset "
                 f"(`omnivae/reproduce/{preset.paper}.py`) before any run.")
    lines.append("")
    for number, (claim, (ok, checks)) in enumerate(zip(preset.claims, verdicts, strict=False), start=1):
        lines.append(f"{number}. **{'reproduced' if ok else 'not reproduced'}**: {claim.statement} ({claim.source})")
        for check in checks:
            lines.append(f"   - {'✓' if check.passed else '✗'} {check.text}")
    lines.append("")

    lines.append("## The paper's numbers beside ours")
    lines.append("")
    for table in preset.published:
        lines.append(f"### {table.title}")
        lines.append("")
        if table.note:
            lines.append(table.note)
            lines.append("")
        if not table.rows:
            continue
        header = ["model"]
        for label, metric in table.columns:
            header.append(f"{label} paper")
            if metric is not None:
                header.append(f"{label} ours")
        lines.append(_row(header))
        lines.append(_row(["---"] * len(header)))
        for run, printed in table.rows.items():
            cells = [run]
            for (_label, metric), paper in zip(table.columns, printed, strict=False):
                cells.append(paper)
                if metric is not None:
                    cells.append(_cell(values.get((table.experiment, run, metric))))
            lines.append(_row(cells))
        lines.append("")

    lines.append("## Our results")
    lines.append("")
    for exp in preset.experiments:
        metrics = list(preset.headline_metrics)
        lines.append(f"### `{exp.name}` ({exp.dataset})")
        lines.append("")
        lines.append(_row(["run", *metrics]))
        lines.append(_row(["---"] * (len(metrics) + 1)))
        for key in exp.run_keys():
            lines.append(_row([key, *(_cell(values.get((exp.name, key, m))) for m in metrics)]))
        lines.append("")
        lines.append("Learning check (past the trough): the untrained model (same networks and seed 0, no step) "
                     "against the trained ones; chance coherence is about 1 / number of classes.")
        lines.append("")
        header = ["run"]
        for m in _LEARNING:
            header += [f"{m} untrained", f"{m} trained"]
        lines.append(_row(header))
        lines.append(_row(["---"] * len(header)))
        for key in exp.run_keys():
            model = key.split(" beta=")[0]
            cells = [key]
            for m in _LEARNING:
                before = untrained.get((exp.name, model, m))
                cells += ["-" if before is None else f"{before:.3f}", _cell(values.get((exp.name, key, m)))]
            lines.append(_row(cells))
        lines.append("")
    for extra in preset.extras:
        rows = sorted({run for (e, run, _m) in values if e == extra.name})
        metrics = sorted({m for (e, _r, m) in values if e == extra.name})
        if not rows:
            continue
        lines.append(f"### `{extra.name}`: {extra.description}")
        lines.append("")
        lines.append(_row(["", *metrics]))
        lines.append(_row(["---"] * (len(metrics) + 1)))
        for run in rows:
            lines.append(_row([run, *(_cell(values.get((extra.name, run, m))) for m in metrics)]))
        lines.append("")
    return "\n".join(lines)
