"""The manifest: what a batch has done, so that a rerun (after a crash, Ctrl-C or with new cases) resumes.

``OUT/segtrt_manifest.jsonl`` holds one JSON object per line, appended and fsynced after each case, so
a killed run loses at most the case it was writing (whose output is atomic, so never half-written).
For each case: its name, its inputs with a fingerprint (path, size and modification time of every
file), the model's identity (a content hash of its files), the key of the settings that change the
result, the outputs, the status ('done' or 'failed'), the failure reason and the stage seconds.

Before a run writes anything, it appends a 'pending' record for every case it is about to compute, so
an output whose case has a record was written by segtrt (and may be replaced); an output file without
one is someone else's and is never replaced without ``--overwrite``.

A case is skipped on a rerun when its last record is 'done' with the same inputs, model and settings
and every output it lists still exists. A line that cannot be parsed (the tail of a killed append) is
ignored with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from segtrt.io.cases import Case
from segtrt.io.writers import TEMPORARY_NAME, flush_folder

logger = logging.getLogger(__name__)

MANIFEST_NAME = "segtrt_manifest.jsonl"
#: Temporary files of segtrt's atomic writer (segtrt.io.writers.atomic_path).
TEMPORARY_FILE = TEMPORARY_NAME


def fingerprint(case: Case) -> list[dict]:
    """Path, size and modification time (ns) of every file of ``case``; a DICOM folder lists its files."""
    entries = []
    for path in _files(case):
        stat = path.stat()
        entries.append({"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return entries


def settings_key(result_settings: Mapping[str, object]) -> str:
    """sha256 (16 hex digits) of the settings that change what is computed, in a stable JSON form."""
    text = json.dumps(result_settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Decision:
    """What to do with a case: 'run' or 'skip', and why (for the log and the report)."""

    action: str
    reason: str


class Manifest:
    """Append-only record of finished cases in ``folder``; only the calling thread appends."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / MANIFEST_NAME
        self.records: dict[str, dict] = {}
        self.existed = self.path.is_file()
        if self.existed:
            self.records = _read_records(self.path)

    def decide(self, case: Case, model_identity: str, key: str, overwrite: bool) -> Decision:
        """Skip a case done before with the same inputs, model and settings whose outputs all exist."""
        if overwrite:
            return Decision("run", "--overwrite")
        record = self.records.get(case.case_id)
        if record is None:
            return Decision("run", "not done before")
        if record.get("status") != "done":
            return Decision("run", f"it {record.get('status', 'did not finish')} before")
        if record.get("model") != model_identity:
            return Decision("run", "the model changed")
        if record.get("settings_key") != key:
            return Decision("run", "result-changing settings changed")
        try:
            if record.get("inputs") != fingerprint(case):
                return Decision("run", "its input files changed")
        except OSError as error:
            return Decision("run", f"its inputs cannot be checked ({error.strerror})")
        missing = [p for p in record.get("outputs", {}).values() if not (self.path.parent / p).is_file()]
        if missing:
            return Decision("run", f"an output is missing ({missing[0]})")
        return Decision("skip", "done before with the same inputs, model and settings")

    def announce(self, case_ids: list[str], model_identity: str, key: str) -> None:
        """Record, before any output is written, that this run owns the outputs of ``case_ids``
        (status 'pending'): after a kill between an output's rename and its 'done' record, a rerun knows
        that segtrt wrote that file and may replace it."""
        if not case_ids:
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        lines = "".join(json.dumps({"case": case_id, "status": "pending", "model": model_identity,
                                    "settings_key": key, "recorded_at": stamp}, sort_keys=True) + "\n"
                        for case_id in case_ids)
        self._write(lines)
        for case_id in case_ids:
            self.records.setdefault(case_id, {"case": case_id, "status": "pending"})

    def append(self, record: dict) -> None:
        """Append one case's record and make it durable (fsync) before returning."""
        record = {**record, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self._write(json.dumps(record, default=str, sort_keys=True) + "\n")
        self.records[record["case"]] = record

    def _write(self, lines: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())
        if not self.existed:
            flush_folder(self.path.parent)
            self.existed = True


def remove_temporary_files(folder: Path) -> list[Path]:
    """Delete leftovers of atomic writes interrupted by a kill (only names segtrt's writer makes)."""
    removed = []
    if not Path(folder).is_dir():
        return removed
    for root, _, files in os.walk(folder):
        for name in files:
            if TEMPORARY_FILE.match(name):
                path = Path(root) / name
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted run in %s", len(removed), folder)
    return removed


def _files(case: Case) -> Iterable[Path]:
    for path in case.input_files():
        if path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.is_file())
        else:
            yield path


def _read_records(path: Path) -> dict[str, dict]:
    records: dict[str, dict] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                records[record["case"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                logger.warning("%s line %d cannot be read (an interrupted append?); ignoring it", path, number)
    return records
