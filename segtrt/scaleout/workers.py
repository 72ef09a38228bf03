"""``--ray``: the batch's cases on long-lived Ray actors, one warm predictor each; the driver (this
process) owns discovery, the manifest, the report and the progress, exactly as on one machine.

Dispatch: each actor holds up to ``cases_per_actor`` cases at once (it reads and writes some while its
device predicts another: segtrt.scaleout.actor); whichever actor has room takes the next (largest input
first). A case tried again runs alone on an idle actor, so that a loss it suffers there is its own: the
cases that were held together with a case that kills its worker are not charged for it twice.
A case is recorded once, by the driver, when its actor returns it. When an actor is lost
mid-case (its process killed, its node gone) or a case raises something that is not a segtrt error,
the case is queued again, at most ``max_retries`` times, and the lost actor is replaced; a case that
keeps failing is quarantined: failed, with every attempt's reason in the record and in
``report.io['quarantined']``. Actors write atomically, so a case run again after a lost actor simply
replaces the first attempt's files. A killed driver leaves the manifest as on one machine: a rerun
skips the cases recorded done and recomputes the rest.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, replace
from pathlib import Path

from segtrt.batch.multi_device import largest_first
from segtrt.batch.job import manifest_record
from segtrt.batch.report import CaseRecord
from segtrt.config import PredictSettings, ScaleSettings
from segtrt.errors import BackendUnavailableError, ModelFolderError
from segtrt.io import Case, DicomSeries
from segtrt.nnunet import ModelFolder, model_identity, read_model_folder
from segtrt.scaleout.actor import CaseWorker
from segtrt.scaleout.cluster import LOCAL, check_address, check_shared_output, connect, import_ray, write_marker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriverModel:
    """What the driver needs of the model (no network is loaded on the driver)."""

    folder: ModelFolder
    identity: str


class RayWorkers:
    """The workers of ``--ray`` for segtrt.batch.job: connect, start actors, dispatch, record, stop."""

    def __init__(self, scale: ScaleSettings, model_dir: Path, settings: PredictSettings) -> None:
        self.ray = import_ray()
        self.scale, self.settings = scale, settings
        self.address = check_address(scale.ray_address)
        self.actor_device = _actor_device(scale, settings)
        self.model_dir = Path(model_dir).resolve()
        folder = read_model_folder(self.model_dir, settings.configuration, settings.folds, settings.checkpoint_name,
                                   trust=settings.trust_checkpoint)
        self.model = DriverModel(folder, model_identity(folder))
        self.device_entry = {"device": "ray", "reason": f"--ray {self.address}: actors on {self.actor_device}"}
        self.connection = None
        self.actors: list = []
        self.slots: list[dict] = []
        self.options: dict = {}
        self.arguments: tuple = ()

    def start(self, output_dir: Path, outputs) -> dict:
        """Connect, start the actors and wait until each has its model loaded; the report's backend entry."""
        check_shared_output(output_dir, self.address)
        self.connection = connect(self.address)
        count, self.options = self._sizing()
        self.arguments = (str(self.model_dir), self.settings, str(Path(output_dir).resolve()), outputs,
                          self.actor_device)
        marker, token = write_marker(Path(output_dir))
        try:
            self.actors = [self._new_actor() for _ in range(count)]
            described = self.ray.get([actor.describe.remote(str(marker.resolve()), token) for actor in self.actors])
        except BaseException:
            self.close()
            raise
        finally:
            marker.unlink(missing_ok=True)
        for info in described:
            if info["model_identity"] != self.model.identity:
                self.close()
                raise ModelFolderError(f"the Ray worker on {info['host']} reads other model files at {self.model_dir} "
                                       "than the driver; every node must see the same model folder")
        self.slots = [{"slot": i, **{k: info[k] for k in ("pid", "host", "device", "startup_seconds")},
                       "holding": [], "cases": 0, "replaced": 0} for i, info in enumerate(described)]
        log.info("%d Ray actor(s) ready (%s each)", count, self.options)
        return {**described[0]["backend"], "ray": {"address": self.address, "actors": count,
                                                    "actor_options": self.options,
                                                    "cases_per_actor": self.scale.cases_per_actor}}

    def _sizing(self) -> tuple[int, dict]:
        """How many actors, and the resources each asks for; refused when the cluster has too few
        (actors that cannot be placed would wait forever)."""
        resources = self.ray.cluster_resources()
        if self.scale.ray_cpu_only:
            count, options = self.scale.ray_workers, {"num_cpus": 1, "num_gpus": 0}
        else:
            gpus = int(resources.get("GPU", 0))
            if gpus == 0:
                raise BackendUnavailableError(f"the Ray cluster ({self.address}) has no GPU; start nodes with GPUs, "
                                              "or use --ray-cpu-only --ray-workers N")
            count = self.scale.ray_workers or gpus * self.scale.actors_per_gpu
            options = {"num_cpus": 1, "num_gpus": 1 / self.scale.actors_per_gpu}
        for name, kind in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
            wanted, present = count * options[name], resources.get(kind, 0)
            if wanted > present + 1e-9:
                raise BackendUnavailableError(
                    f"{count} Ray actor(s) need {wanted:g} {kind}(s) but the cluster ({self.address}) has "
                    f"{present:g}; pass fewer --ray-workers (or more --ray-actors-per-gpu), or add nodes")
        return count, options

    def _new_actor(self):
        remote = self.ray.remote(CaseWorker).options(max_restarts=0, max_task_retries=0,
                                                     max_concurrency=self.scale.cases_per_actor, **self.options)
        return remote.remote(*self.arguments)

    def run_cases(self, report, to_run, manifest, batch, listener, writer) -> None:
        """Every case of ``to_run`` on the actors, recorded here as each returns."""
        del batch, writer  # the actors read and write; the driver only records
        ordered = [_absolute(case) for case in largest_first(to_run)]
        dispatch = _Dispatch(self, report, ordered, manifest, listener)
        report.io = {"mode": "ray", "order": "largest input first", "workers": self.slots, "retries": [],
                     "quarantined": [], "max_retries": self.scale.max_retries, "started_epoch": time.time(),
                     "timeline": []}
        try:
            dispatch.run()
        except BaseException as exc:
            report.state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            report.write()
            raise
        report.state = "finished"
        report.write()

    def replace(self, slot: int) -> bool:
        """A new actor in ``slot`` after its actor was lost; False when the replacements are spent."""
        replaced = sum(s["replaced"] for s in self.slots)
        if replaced >= len(self.slots) * (self.scale.max_retries + 1):
            log.error("Ray actor %d lost and not replaced (%d replacements made already)", slot, replaced)
            return False
        try:
            self.ray.kill(self.actors[slot], no_restart=True)  # it may only be unreachable: never keep two
        except Exception:  # already gone
            pass
        self.actors[slot] = self._new_actor()
        self.slots[slot].update(replaced=self.slots[slot]["replaced"] + 1, pid=None, host=None)
        return True

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:  # already gone
                pass
        self.actors = []
        if self.connection is not None:
            self.connection.close()
            self.connection = None


class _Dispatch:
    """The driver's loop: one case per free actor, results recorded as they arrive, bounded retries."""

    def __init__(self, workers: RayWorkers, report, ordered: list[Case], manifest, listener) -> None:
        self.workers, self.ray, self.report = workers, workers.ray, report
        self.ordered, self.manifest, self.listener = ordered, manifest, listener
        self.queue = deque(range(len(ordered)))
        slots = range(len(workers.actors))
        # one entry per case an actor can take; round-robin, so the first cases spread over the actors
        self.free = deque(slot for _ in range(workers.scale.cases_per_actor) for slot in slots)
        self.generation = [0 for _ in slots]  # bumped when a slot's actor is replaced
        self.alive = [True for _ in slots]
        self.in_flight: dict = {}  # object ref -> (slot, its actor's generation, case index, places taken)
        self.reasons: list[list[str]] = [[] for _ in ordered]
        self.by_id = {record.case_id: record for record in report.cases}
        self.position = {record.case_id: i for i, record in enumerate(report.cases)}

    def run(self) -> None:
        while self.queue or self.in_flight:
            self._submit()
            if not self.in_flight:
                self._fail_remaining("no Ray worker left to run it (every actor was lost and the replacements "
                                     "are spent)")
                return
            ready, _ = self.ray.wait(list(self.in_flight), num_returns=1)
            slot, generation, index, places = self.in_flight.pop(ready[0])
            holding = self.workers.slots[slot]["holding"]
            if self.ordered[index].case_id in holding:
                holding.remove(self.ordered[index].case_id)
            record = self._result(ready[0], slot, generation, index)
            self._give_back(slot, places)
            self._submit()  # keep the actors busy before recording
            if record is not None:
                self._finished(index, record)

    def _submit(self) -> None:
        while self.free and self.queue:
            index = self.queue[0]
            if self.reasons[index]:  # tried before: alone, on an actor that holds nothing
                slot = self._idle_slot()
                if slot is None:
                    return  # wait until an actor has finished what it holds
                places = self.workers.scale.cases_per_actor
                self.free = deque(other for other in self.free if other != slot)
            else:
                slot, places = self.free.popleft(), 1
            self.queue.popleft()
            case = self.ordered[index]
            ref = self.workers.actors[slot].run_case.remote(case, self.by_id[case.case_id].inputs)
            self.in_flight[ref] = (slot, self.generation[slot], index, places)
            self.workers.slots[slot]["holding"].append(case.case_id)

    def _idle_slot(self) -> int | None:
        """An actor with every one of its places free (it holds no case), if there is one."""
        counts = Counter(self.free)
        idle = [slot for slot, free in counts.items() if free == self.workers.scale.cases_per_actor]
        return idle[0] if idle else None

    def _give_back(self, slot: int, places: int) -> None:
        """The places a finished case took on ``slot``, unless its actor is gone for good."""
        if self.alive[slot]:
            self.free.extend([slot] * places)

    def _result(self, ref, slot: int, generation: int, index: int) -> CaseRecord | None:
        """The case's record, or None when it was queued again (or quarantined, recorded here).

        When an actor is lost, every case it held fails here: the first one replaces the actor (once per
        actor), and each returns its place to the new actor."""
        exceptions = self.ray.exceptions
        try:
            record = self.ray.get(ref)
        except exceptions.RayActorError as error:
            reason = f"its Ray worker (actor {slot}, pid {self.workers.slots[slot]['pid']}) was lost: " \
                     f"{type(error).__name__}"
            if generation == self.generation[slot]:
                self.alive[slot] = self.workers.replace(slot)
                self.generation[slot] += 1
                self.workers.slots[slot]["holding"] = []
                if not self.alive[slot]:  # no replacement: none of its places may be taken again
                    self.free = deque(other for other in self.free if other != slot)
            return self._again(index, reason)
        except exceptions.RayError as error:
            cause = getattr(error, "cause", None) or error
            return self._again(index, f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}")
        record, timing = record
        self.workers.slots[slot].update(cases=self.workers.slots[slot]["cases"] + 1, pid=timing["pid"])
        start = self.report.io["started_epoch"]
        for step, (begin, end) in timing["steps"].items():  # as segtrt.batch.scheduler's timeline
            self.report.io["timeline"].append([index, step, f"actor-{slot}", round(begin - start, 4),
                                               round(end - start, 4)])
        return record

    def _again(self, index: int, reason: str) -> CaseRecord | None:
        case = self.ordered[index]
        self.reasons[index].append(reason)
        attempts = len(self.reasons[index])
        log.warning("%s: attempt %d failed: %s", case.case_id, attempts, reason)
        if attempts <= self.workers.scale.max_retries:
            self.report.io["retries"].append({"case": case.case_id, "attempt": attempts, "reason": reason})
            self.queue.appendleft(index)
            return None
        error = f"quarantined after {attempts} attempts: " + "; ".join(self.reasons[index])
        self.report.io["quarantined"].append({"case": case.case_id, "attempts": attempts,
                                              "reasons": list(self.reasons[index])})
        log.error("%s: %s", case.case_id, error)
        return CaseRecord(case.case_id, "failed", error=error, inputs=self.by_id[case.case_id].inputs)

    def _finished(self, index: int, record: CaseRecord) -> None:
        self.by_id[record.case_id] = record
        self.report.cases[self.position[record.case_id]] = record
        self.manifest.append(manifest_record(self.ordered[index], record, self.report.model["identity"],
                                              self.report.model["settings_key"]))
        self.report.write()
        if self.listener is not None:
            self.listener.case_finished(record, self.report)

    def _fail_remaining(self, reason: str) -> None:
        while self.queue:
            index = self.queue.popleft()
            case = self.ordered[index]
            self._finished(index, CaseRecord(case.case_id, "failed", error=reason,
                                             inputs=self.by_id[case.case_id].inputs))


def _actor_device(scale: ScaleSettings, settings: PredictSettings) -> str:
    """The device inside each actor: its one GPU (Ray sets CUDA_VISIBLE_DEVICES), or the CPU."""
    if scale.ray_cpu_only:
        if settings.device not in ("auto", "cpu"):
            raise BackendUnavailableError(f"--ray-cpu-only runs on the CPU; got --device {settings.device}")
        return "cpu"
    if settings.device not in ("auto", "cuda"):
        raise BackendUnavailableError(f"with --ray each actor uses the GPU Ray gives it; got --device "
                                      f"{settings.device} (leave --device out, or add --ray-cpu-only)")
    return "cuda"


def _absolute(case: Case) -> Case:
    """``case`` with absolute input paths (an actor's working folder is not the driver's)."""
    channels = tuple(replace(c, files=tuple(f.resolve() for f in c.files)) if isinstance(c, DicomSeries)
                     else Path(c).resolve() for c in case.channels)
    return replace(case, channels=channels)



