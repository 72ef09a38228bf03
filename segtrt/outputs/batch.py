"""Batch-level outputs: OUT/statistics.csv (with --statistics) and OUT/index.html (always).

The QA page is written for every batch, with or without --preview (without, it lists statuses,
failures, statistics and files, just no thumbnails): it is the one place to check a batch at a glance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from segtrt.io.writers import atomic_write_bytes
from segtrt.outputs.html_page import render_index_html
from segtrt.outputs.options import OutputOptions
from segtrt.outputs.statistics import statistics_csv_text

CASE_STATUSES = ("done", "failed", "skipped")


@dataclass(frozen=True)
class BatchCaseSummary:
    """One case of a batch as the outputs see it.

    status: 'done', 'failed' or 'skipped'; error: the reason for failed/skipped cases (one line);
    files: kind -> path of what was written (CaseOutputs.files plus the caller's own, e.g. 'nifti');
    statistics: CaseOutputs.statistics (None when not computed); warnings: CaseOutputs.warnings.
    """

    case_id: str
    status: str
    error: str | None = None
    files: dict[str, Path] = field(default_factory=dict)
    statistics: list[dict[str, Any]] | None = None
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.status not in CASE_STATUSES:
            raise ValueError(f"case status {self.status!r} is not one of {CASE_STATUSES}")


def write_batch_outputs(output_dir: Path, cases: Sequence[BatchCaseSummary], options: OutputOptions,
                        title: str = "segtrt batch") -> dict[str, Path]:
    """Write the batch's statistics CSV (when options.statistics) and index.html; returns kind -> path."""
    output_dir = Path(output_dir)
    written: dict[str, Path] = {}
    if options.statistics:
        rows = [(c.case_id, c.statistics) for c in cases if c.statistics]
        written["statistics"] = output_dir / "statistics.csv"
        atomic_write_bytes(written["statistics"], statistics_csv_text(rows).encode("utf-8"))
    written["index"] = output_dir / "index.html"
    atomic_write_bytes(written["index"], render_index_html(output_dir, cases, title).encode("utf-8"))
    return written
