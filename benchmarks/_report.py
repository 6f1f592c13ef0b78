"""Printing the rows of ``benchmarks/posteriors.py``: per-posterior details and a Markdown table."""

from __future__ import annotations

import math

from _suite import Reference


def _number(value: float, digits: int) -> str:
    return "–" if not math.isfinite(value) else f"{value:.{digits}f}"


def print_detail(row: dict) -> None:
    reference = row["reference"]
    ref_rhat = "" if math.isnan(reference.rhat) else f", R̂ {reference.rhat:.3f}"
    suspect = " (R̂ > 1.01: reference not converged!)" if reference.rhat > 1.01 else ""
    print(
        f"\n## {row['posterior']} ({row['params']} parameters; reference: {reference.source}"
        f"{ref_rhat}){suspect}"
    )
    for label, name in (("flowmc", "FlowMCKernel"), ("nuts", "NUTS")):
        weight = row[f"{label}_weight_error"]
        weight_text = f", |w-2/3| {weight:.4f}" if math.isfinite(weight) else ""
        print(
            f"  {name:<12} max|Δ|/sd {_number(row[f'{label}_error'], 3)} at "
            f"{row[f'{label}_worst']}{weight_text}, R̂ {_number(row[f'{label}_rhat'], 3)}, "
            f"{row[f'{label}_seconds']:.1f} s, min ESS/s {row[f'{label}_ess_per_second']:.1f}; "
            f"{row[f'{label}_notes']}",
            flush=True,
        )


def _reference_text(reference: Reference) -> str:
    if reference.source == "analytic":
        return "analytic"
    return f"NUTS, R̂ {reference.rhat:.3f}"


def markdown_table(rows: list[dict]) -> str:
    columns = [
        "posterior", "params", "reference", "FlowMC max \\|Δ\\|/sd", "NUTS max \\|Δ\\|/sd",
        "FlowMC \\|w−2/3\\|", "NUTS \\|w−2/3\\|", "FlowMC R̂", "NUTS R̂", "FlowMC s", "NUTS s",
        "FlowMC/NUTS", "FlowMC min ESS/s", "NUTS min ESS/s", "within 0.1 sd", "≤ 1.5× time",
    ]  # fmt: skip
    alignment = ["---", "---:", "---", *["---:"] * 11, ":---:", ":---:"]
    header = f"| {' | '.join(columns)} |\n|{'|'.join(alignment)}|"
    lines = [header]
    for row in rows:
        lines.append(
            f"| {row['posterior']} | {row['params']} | {_reference_text(row['reference'])} "
            f"| {_number(row['flowmc_error'], 3)} "
            f"| {_number(row['nuts_error'], 3)} | {_number(row['flowmc_weight_error'], 3)} "
            f"| {_number(row['nuts_weight_error'], 3)} | {_number(row['flowmc_rhat'], 3)} "
            f"| {_number(row['nuts_rhat'], 3)} | {row['flowmc_seconds']:.1f} "
            f"| {row['nuts_seconds']:.1f} | {row['ratio']:.2f} "
            f"| {row['flowmc_ess_per_second']:.0f} | {row['nuts_ess_per_second']:.0f} "
            f"| {'yes' if row['accurate'] else 'no'} | {'yes' if row['fast'] else 'no'} |"
        )
    return "\n".join(lines)
