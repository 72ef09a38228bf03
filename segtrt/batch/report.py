"""The run report (``OUT/segtrt_report.json``): rewritten atomically after every case and on Ctrl-C.

It says what the run was asked, what it chose and why (device, backend, aggregation), what discovery
found and skipped (with reasons), every case's status ('done', 'skipped' = done before and resumed,
'failed' with its reason), stage seconds, outputs, and a summary (counts, seconds per case, cases per
hour). ``state`` is 'running' while the run goes on, then 'finished' or 'interrupted'.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from segtrt import __version__
from segtrt.io.writers import atomic_write_bytes

REPORT_NAME = "segtrt_report.json"


@dataclass
class CaseRecord:
    """One case's outcome. status: 'done' | 'skipped' | 'failed' | 'pending'."""

    case_id: str
    status: str = "pending"
    output: Path | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    probabilities: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    reason: str | None = None
    inputs: list[str] = field(default_factory=list)
    aggregation: object | None = None
    statistics: list[dict] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in ("done", "skipped")

    def to_dict(self) -> dict:
        body = asdict(self)
        body.update(output=str(self.output) if self.output else None,
                    probabilities=str(self.probabilities) if self.probabilities else None, ok=self.ok)
        return body


@dataclass
class BatchReport:
    """Everything a run did. ``startup`` holds the seconds of model load and runner activation (compile,
    engine load), paid once per process; ``io`` the worker counts and waits (segtrt.batch.scheduler)."""

    path: Path
    settings: dict
    device: dict
    backend: dict
    model: dict
    cases: list[CaseRecord] = field(default_factory=list)
    discovery: dict = field(default_factory=dict)
    resume: dict = field(default_factory=dict)
    startup: dict = field(default_factory=dict)
    io: dict = field(default_factory=dict)
    batch_outputs: dict = field(default_factory=dict)
    state: str = "running"
    seconds_total: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    #: wall clock of the job's start and of the last write once it ended (to line it up with outside timings)
    started_epoch: float = field(default_factory=time.time)
    finished_epoch: float | None = None

    def counts(self) -> dict[str, int]:
        counts = {"done": 0, "skipped": 0, "failed": 0, "pending": 0}
        for case in self.cases:
            counts[case.status] = counts.get(case.status, 0) + 1
        return counts

    def summary(self) -> dict:
        counts = self.counts()
        predicted = [sum(c.seconds.values()) for c in self.cases if c.status == "done"]
        elapsed = time.perf_counter() - self.started
        return {**counts, "total": len(self.cases), "seconds_elapsed": round(elapsed, 3),
                "seconds_per_case": round(elapsed / counts["done"], 3) if counts["done"] else None,
                "cases_per_hour": round(3600 * counts["done"] / elapsed, 1) if counts["done"] and elapsed else None,
                "stage_seconds_per_case": round(sum(predicted) / len(predicted), 3) if predicted else None}

    def to_json(self) -> str:
        body = {
            "segtrt_version": __version__, "host": platform.node(), "state": self.state,
            "settings": self.settings, "device": self.device, "backend": self.backend, "model": self.model,
            "startup": self.startup, "io": self.io, "discovery": self.discovery, "resume": self.resume,
            "batch_outputs": self.batch_outputs,
            "summary": self.summary(), "failed": self.counts()["failed"],
            "cases": [c.to_dict() for c in self.cases], "seconds_total": round(self.seconds_total, 3),
            "started_epoch": round(self.started_epoch, 3),
            "finished_epoch": round(self.finished_epoch, 3) if self.finished_epoch else None,
        }
        return json.dumps(body, indent=2, default=_default)

    def write(self) -> None:
        self.seconds_total = time.perf_counter() - self.started
        if self.state != "running":
            self.finished_epoch = time.time()
        atomic_write_bytes(self.path, self.to_json().encode())


def _default(value: object) -> object:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)
