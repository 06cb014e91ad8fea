"""Benchmarks: each module measures one thing beside its bare baseline, in the same run.

Run them all: ``python -m tests.bench`` (``--quick`` for a short smoke run, ``--only NAME``
for one module). Each module exposes ``run(ctx: BenchContext) -> list[Row]``; a row carries
our figure, the baseline's, and the goal, and the runner prints one table.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class Row:
    """One line of the table. ``ratio`` is ours / baseline unless given."""

    name: str
    ours: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    goal: str = ""
    met: bool | None = None
    ratio: float | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.ratio is None and self.baseline:
            self.ratio = self.ours / self.baseline


@dataclass
class BenchContext:
    """What every benchmark gets: where Redis is, how big to go, a scratch dir."""

    redis_url: str
    quick: bool = False
    workdir: str = ""
    extra: dict = field(default_factory=dict)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * pct / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def format_table(rows: list[Row]) -> str:
    headers = ["benchmark", "ours", "baseline", "ratio", "goal", "met"]
    lines = []
    for r in rows:
        base = f"{r.baseline:,.3f} {r.unit} ({r.baseline_name})" if r.baseline is not None else "-"
        lines.append([
            r.name + (f" [{r.note}]" if r.note else ""),
            f"{r.ours:,.3f} {r.unit}",
            base,
            f"{r.ratio:.2f}x" if r.ratio is not None else "-",
            r.goal or "-",
            {True: "yes", False: "NO", None: "-"}[r.met],
        ])
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(headers)]
    out = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
            for line in lines]
    return "\n".join(out)
