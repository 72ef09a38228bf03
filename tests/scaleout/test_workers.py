"""The driver's dispatch on fake actors (no cluster): a case whose worker keeps dying is quarantined after
the bounded retries with every reason, the others are each recorded once, lost actors are replaced, and
a run whose replacements are spent fails the remaining cases instead of waiting forever."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import ray.exceptions  # a test dependency (segtrt[ray])

from segtrt.batch.manifest import Manifest
from segtrt.batch.report import BatchReport, CaseRecord
from segtrt.config import ScaleSettings
from segtrt.io import Case
from segtrt.scaleout.workers import _Dispatch


class FakeRef:
    def __init__(self, outcome) -> None:
        self.outcome = outcome  # evaluated when the driver gets it


class FakeActor:
    """Returns a done record, or dies (ActorDiedError) on the cases in ``dies_on``; once dead, every case
    it still holds fails the same way (as a killed actor process's tasks do)."""

    def __init__(self, dies_on: set[str], log: list) -> None:
        self.run_case = SimpleNamespace(remote=self._submit)
        self.dies_on, self.log, self.dead = dies_on, log, False

    def _submit(self, case: Case, inputs) -> FakeRef:
        self.log.append(case.case_id)
        return FakeRef(lambda: self._outcome(case, inputs))

    def _outcome(self, case: Case, inputs):
        if self.dead or case.case_id in self.dies_on:
            self.dead = True
            return ray.exceptions.ActorDiedError()
        return CaseRecord(case.case_id, "done", inputs=inputs), {"pid": 7, "steps": {"predict": (1.0, 2.0)}}


def fake_ray():
    def get(ref):
        outcome = ref.outcome()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return SimpleNamespace(exceptions=ray.exceptions, wait=lambda refs, num_returns: (refs[:1], refs[1:]), get=get)


class FakeWorkers:
    def __init__(self, actors: int, dies_on: set[str], max_retries: int, replacements: int,
                 cases_per_actor: int = 1) -> None:
        self.ray, self.log, self.dies_on = fake_ray(), [], dies_on
        self.scale = ScaleSettings(ray_address="local", ray_workers=actors, ray_cpu_only=True, max_retries=max_retries,
                                   cases_per_actor=cases_per_actor)
        self.actors = [FakeActor(dies_on, self.log) for _ in range(actors)]
        self.slots = [{"slot": i, "pid": 100 + i, "holding": [], "cases": 0, "replaced": 0} for i in range(actors)]
        self.replacements = replacements

    def replace(self, slot: int) -> bool:
        if self.replacements == 0:
            return False
        self.replacements -= 1
        self.actors[slot] = FakeActor(self.dies_on, self.log)
        self.slots[slot]["replaced"] += 1
        return True


def dispatch(tmp_path: Path, workers: FakeWorkers, names: list[str]) -> BatchReport:
    cases = [Case(name, (tmp_path / f"{name}.nii.gz",)) for name in names]
    report = BatchReport(path=tmp_path / "report.json", settings={}, device={}, backend={},
                         model={"identity": "m", "settings_key": "k"}, cases=[CaseRecord(n) for n in names])
    report.io = {"workers": workers.slots, "retries": [], "quarantined": [], "started_epoch": 0.0, "timeline": []}
    _Dispatch(workers, report, cases, Manifest(tmp_path), None).run()
    return report


def manifest_statuses(tmp_path: Path) -> list[tuple[str, str]]:
    lines = (tmp_path / "segtrt_manifest.jsonl").read_text().splitlines()
    return sorted((json.loads(line)["case"], json.loads(line)["status"]) for line in lines)


def test_a_case_that_keeps_killing_its_worker_is_quarantined(tmp_path: Path) -> None:
    workers = FakeWorkers(actors=2, dies_on={"poison"}, max_retries=2, replacements=10)
    report = dispatch(tmp_path, workers, ["a", "poison", "b", "c"])
    by_id = {c.case_id: c for c in report.cases}
    assert workers.log.count("poison") == 3, "tried once and retried twice"
    assert by_id["poison"].status == "failed" and by_id["poison"].error.startswith("quarantined after 3 attempts")
    assert by_id["poison"].error.count("was lost") == 3
    assert [q["case"] for q in report.io["quarantined"]] == ["poison"]
    assert [r["attempt"] for r in report.io["retries"]] == [1, 2]
    assert sum(s["replaced"] for s in workers.slots) == 3
    assert manifest_statuses(tmp_path) == [("a", "done"), ("b", "done"), ("c", "done"), ("poison", "failed")]
    assert sorted(entry[0] for entry in report.io["timeline"]) == [0, 2, 3], "a timeline entry per case done"


def test_no_retries_quarantines_at_the_first_loss(tmp_path: Path) -> None:
    workers = FakeWorkers(actors=1, dies_on={"poison"}, max_retries=0, replacements=10)
    report = dispatch(tmp_path, workers, ["poison", "a"])
    assert workers.log == ["poison", "a"] and report.counts()["failed"] == 1 and report.counts()["done"] == 1


def test_when_every_worker_is_lost_the_rest_fail_instead_of_waiting(tmp_path: Path) -> None:
    workers = FakeWorkers(actors=1, dies_on={"poison"}, max_retries=2, replacements=0)
    report = dispatch(tmp_path, workers, ["poison", "a", "b"])
    by_id = {c.case_id: c for c in report.cases}
    assert workers.log == ["poison"]
    assert by_id["a"].status == by_id["b"].status == "failed" and "no Ray worker left" in by_id["a"].error
    assert by_id["poison"].status == "failed" and "no Ray worker left" in by_id["poison"].error
    assert len(manifest_statuses(tmp_path)) == 3, "every case recorded once"


def test_cases_held_with_a_poison_case_are_retried_alone_and_not_quarantined(tmp_path: Path) -> None:
    # one actor holding 3 cases at a time: "poison" kills it, taking "a" and "b" down with it; each is then
    # tried alone, so only "poison" is charged its further losses and quarantined
    workers = FakeWorkers(actors=1, dies_on={"poison"}, max_retries=2, replacements=10, cases_per_actor=3)
    report = dispatch(tmp_path, workers, ["poison", "a", "b", "c", "d"])
    by_id = {c.case_id: c for c in report.cases}
    assert workers.log[:3] == ["poison", "a", "b"], "three cases held at once"
    assert [c for c in "abcd" if by_id[c].status == "done"] == list("abcd")
    assert by_id["poison"].status == "failed" and by_id["poison"].error.startswith("quarantined after 3 attempts")
    assert workers.log.count("poison") == 3 and workers.log.count("a") == 2 and workers.log.count("c") == 1
    assert manifest_statuses(tmp_path) == [("a", "done"), ("b", "done"), ("c", "done"), ("d", "done"),
                                           ("poison", "failed")]


def test_several_cases_per_actor_spread_over_the_actors(tmp_path: Path) -> None:
    workers = FakeWorkers(actors=2, dies_on=set(), max_retries=2, replacements=0, cases_per_actor=2)
    report = dispatch(tmp_path, workers, [f"c{i}" for i in range(6)])
    assert report.counts()["done"] == 6 and workers.log == [f"c{i}" for i in range(6)]
    assert sorted(s["cases"] for s in workers.slots) == [3, 3], workers.slots
