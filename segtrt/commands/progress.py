"""What ``segtrt predict`` shows while a batch runs: a progress bar on a terminal (case i of N, ETA,
failures so far), otherwise one line per finished case; and a summary table at the end."""

from __future__ import annotations

import sys
import time

from segtrt.batch.report import BatchReport, CaseRecord


class BatchProgress:
    """A segtrt.batch.BatchListener for the terminal. ``quiet``: only failures are printed."""

    def __init__(self, bar: bool, quiet: bool = False) -> None:
        self.use_bar, self.quiet = bar, quiet
        self.bar = None
        self.total = self.finished = self.failed = 0
        self.started_at = time.perf_counter()

    def started(self, total: int, to_run: int, skipped: int) -> None:
        self.total, self.finished = total, skipped
        if skipped and not self.quiet:
            print(f"{skipped} of {total} case(s) done before (manifest): skipping them", file=sys.stderr)
        if self.use_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=skipped, unit="case", desc="segtrt", dynamic_ncols=True)

    def case_finished(self, record: CaseRecord, report: BatchReport) -> None:
        self.finished += 1
        self.failed += record.status == "failed"
        if self.bar is not None:
            self.bar.set_postfix_str(f"failed {self.failed}" if self.failed else "", refresh=False)
            self.bar.update(1)
            if record.status == "failed":
                self.bar.write(f"{record.case_id}: FAILED: {record.error}", file=sys.stderr)
            return
        if record.status == "failed":
            print(f"[{self.finished}/{self.total}] {record.case_id}: FAILED: {record.error}", file=sys.stderr,
                  flush=True)
        elif not self.quiet:
            seconds = sum(record.seconds.values())
            print(f"[{self.finished}/{self.total}] {record.case_id}: {record.output}  ({seconds:.2f} s)", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def print_summary(report: BatchReport, quiet: bool = False) -> None:
    """The end-of-run table: done / skipped / failed (with reasons), seconds per case, cases per hour."""
    summary = report.summary()
    failed = [c for c in report.cases if c.status == "failed"]
    if quiet:
        if failed:
            print(f"segtrt: {len(failed)} of {summary['total']} case(s) failed; see {report.path}", file=sys.stderr)
        return
    rows = [("done", summary["done"]), ("skipped (done before)", summary["skipped"]), ("failed", summary["failed"]),
            ("inputs not used", len(report.discovery.get("skipped", [])))]
    per_case = summary["seconds_per_case"]
    print("")
    for label, value in rows:
        print(f"  {label:<24}{value}")
    if per_case is not None:
        print(f"  {'seconds per case':<24}{per_case:.2f}  ({summary['cases_per_hour']:.0f} cases per hour, "
              f"{summary['seconds_elapsed']:.1f} s in all)")
    for case in failed:
        print(f"  FAILED {case.case_id}: {case.error}", file=sys.stderr)
    unused = report.discovery.get("skipped", [])
    for entry in unused[:10]:
        print(f"  not used: {entry['path']}: {entry['reason']}")
    if len(unused) > 10:
        print(f"  ... and {len(unused) - 10} more inputs not used (all listed in the report)")
    print(f"report: {report.path}")
    if failed:
        print(f"segtrt: {len(failed)} of {summary['total']} case(s) failed", file=sys.stderr)
