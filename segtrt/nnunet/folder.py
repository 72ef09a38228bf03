"""Read a trained nnU-Net v2 model folder: dataset.json, plans.json and the fold checkpoints.

Layout (as written by nnU-Net's trainer)::

    <model folder>/dataset.json      channel_names, labels, file_ending, optional regions_class_order
    <model folder>/plans.json        configurations (patch size, spacing, architecture, ...)
    <model folder>/fold_K/checkpoint_final.pth

Spacings and patch sizes are in nnU-Net's transposed array order (z, y, x after
``transpose_forward``); spacings in mm, patch sizes in voxels.
"""

from __future__ import annotations

import json
import logging
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from segtrt.errors import ModelFolderError
from segtrt.nnunet.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = "checkpoint_final.pth"


@dataclass(frozen=True)
class ModelFolder:
    """A validated nnU-Net model folder with one 3D configuration chosen.

    configuration: the chosen configuration of plans.json with ``inherits_from`` resolved.
    folds: fold names as in ``fold_<name>``, e.g. ("0", "1") or ("all",).
    """

    path: Path
    dataset: dict
    plans: dict
    configuration_name: str
    configuration: dict
    folds: tuple[str, ...]
    checkpoint_name: str

    def checkpoint_path(self, fold: int | str) -> Path:
        return self.path / f"fold_{fold}" / self.checkpoint_name

    @property
    def channel_names(self) -> tuple[str, ...]:
        """Input channel names in channel order (dataset.json ``channel_names``, legacy ``modality``)."""
        names = _channel_name_dict(self.dataset)
        return tuple(names[k] for k in sorted(names, key=int))

    @property
    def num_input_channels(self) -> int:
        return len(self.channel_names)

    @property
    def labels(self) -> dict[str, Any]:
        """dataset.json ``labels``: name -> int label, or name -> list of labels for regions."""
        return self.dataset["labels"]

    @property
    def has_regions(self) -> bool:
        return _has_regions(self.labels)

    @property
    def regions_class_order(self) -> tuple[int, ...] | None:
        """Label value written for each region output (region training only), else None."""
        if not self.has_regions:
            return None
        return tuple(int(v) for v in self.dataset["regions_class_order"])

    @property
    def num_segmentation_heads(self) -> int:
        """Network outputs K: one per label including background, or one per foreground region."""
        return _num_segmentation_heads(self.labels)

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.configuration["patch_size"])

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in self.configuration["spacing"])

    @property
    def file_ending(self) -> str:
        return self.dataset["file_ending"]

    @property
    def transpose_forward(self) -> tuple[int, ...]:
        return tuple(int(a) for a in self.plans["transpose_forward"])

    @property
    def transpose_backward(self) -> tuple[int, ...]:
        return tuple(int(a) for a in self.plans["transpose_backward"])


# ----------------------------------------------------------------------------------------------
# dataset.json


def _channel_name_dict(dataset: dict) -> dict[str, str]:
    return dataset["channel_names"] if "channel_names" in dataset else dataset["modality"]


def _is_region(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 1


def _has_regions(labels: dict[str, Any]) -> bool:
    return any(_is_region(v) for v in labels.values())


def _is_background(value: Any) -> bool:
    values = value if isinstance(value, (list, tuple)) else [value]
    return all(int(v) == 0 for v in values)


def _num_segmentation_heads(labels: dict[str, Any]) -> int:
    entries = {k: v for k, v in labels.items() if k != "ignore"}
    if _has_regions(entries):
        return sum(1 for v in entries.values() if not _is_background(v))
    values = set()
    for v in entries.values():
        values.update(int(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
    return len(values)


def _validate_dataset(dataset: dict, path: Path) -> None:
    if "channel_names" not in dataset and "modality" not in dataset:
        raise ModelFolderError(f"{path} has no 'channel_names'; expected a dataset.json written by nnU-Net v2")
    for key in ("labels", "file_ending"):
        if key not in dataset:
            raise ModelFolderError(f"{path} has no '{key}'; expected a dataset.json written by nnU-Net v2")
    labels = dataset["labels"]
    try:
        heads = _num_segmentation_heads(labels)
        background_ok = _is_background(labels["background"])
    except (AttributeError, KeyError, TypeError, ValueError):
        background_ok = False
    if not background_ok:
        raise ModelFolderError(
            f"{path}: 'labels' must map names to integer labels (or lists of them for regions), "
            f"with 'background' = 0; got {labels!r}"
        )
    if _has_regions(labels):
        order = dataset.get("regions_class_order")
        if not isinstance(order, list) or len(order) != heads:
            raise ModelFolderError(
                f"{path} defines {heads} regions but 'regions_class_order' is {order!r}; "
                "expected one label value per region"
            )


# ----------------------------------------------------------------------------------------------
# plans.json


def resolve_configuration(plans: dict, name: str) -> dict:
    """The configuration ``name`` of ``plans`` with its ``inherits_from`` chain merged in.

    A child's keys replace its parent's (top-level keys only, as nnU-Net does).
    """
    configurations = plans.get("configurations", {})
    chain: list[str] = []
    current = name
    while True:
        if current not in configurations:
            raise ModelFolderError(
                f"configuration '{current}' is not in plans.json; available: {sorted(configurations)}"
            )
        if current in chain:
            raise ModelFolderError(f"plans.json configurations inherit in a circle: {' -> '.join(chain + [current])}")
        chain.append(current)
        parent = configurations[current].get("inherits_from")
        if parent is None:
            break
        current = parent
    resolved: dict = {}
    for link in reversed(chain):
        resolved.update(deepcopy(configurations[link]))
    resolved.pop("inherits_from", None)
    return resolved


def _three_d_configurations(plans: dict) -> list[str]:
    names = []
    for name in plans.get("configurations", {}):
        try:
            config = resolve_configuration(plans, name)
        except ModelFolderError:
            continue  # a broken configuration is only an error when it is the one requested
        if len(config.get("patch_size", ())) == 3 and config.get("previous_stage") is None:
            names.append(name)
    return names


def _validate_configuration(plans: dict, name: str, config: dict, folder: Path) -> None:
    patch = config.get("patch_size")
    if not isinstance(patch, list) or len(patch) != 3:
        choices = _three_d_configurations(plans)
        raise ModelFolderError(
            f"segtrt runs 3D configurations; '{name}' in {folder} has {len(patch or [])}d patches "
            f"{patch}; choose one of {choices} with --configuration"
        )
    if config.get("previous_stage") is not None:
        raise ModelFolderError(
            f"configuration '{name}' is a cascade stage that needs the segmentation of "
            f"'{config['previous_stage']}' as extra input; segtrt does not run cascades"
        )
    if "architecture" not in config:
        raise ModelFolderError(
            f"configuration '{name}' has no 'architecture' (plans.json from an older nnU-Net v2); "
            "re-run nnUNetv2_plan_experiment with nnU-Net >= 2.3 to update it"
        )
    for key in ("spacing", "normalization_schemes"):
        if key not in config:
            raise ModelFolderError(f"configuration '{name}' in {folder / 'plans.json'} has no '{key}'")


# ----------------------------------------------------------------------------------------------
# folds and the folder


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelFolderError(f"missing {path}; expected a trained nnU-Net v2 model folder")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelFolderError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(content, dict):
        raise ModelFolderError(f"{path} must hold a JSON object, got {type(content).__name__}")
    return content


def _detect_folds(folder: Path, checkpoint_name: str) -> tuple[str, ...]:
    """Numbered folds that hold the checkpoint (as nnU-Net does); ("all",) when only fold_all has it."""
    found = [p.name[len("fold_"):] for p in folder.glob("fold_*") if (p / checkpoint_name).is_file()]
    numbered = sorted((f for f in found if f.isdigit()), key=int)
    if numbered:
        if "all" in found:
            log.info("using folds %s of %s; fold_all is left out as nnU-Net does", numbered, folder)
        return tuple(numbered)
    if "all" in found:
        log.info("no numbered folds in %s; using fold_all", folder)
        return ("all",)
    raise ModelFolderError(
        f"no fold_*/{checkpoint_name} in {folder}; expected e.g. {folder / 'fold_0' / checkpoint_name}"
    )


def _check_folds(folder: Path, folds: Iterable[int | str], checkpoint_name: str) -> tuple[str, ...]:
    names = tuple(str(int(f)) if str(f).isdigit() else str(f) for f in folds)  # "00" -> "0" as nnU-Net
    if not names:
        raise ModelFolderError("an empty list of folds was given; give fold numbers, 'all', or none to use every fold")
    for name in names:
        path = folder / f"fold_{name}" / checkpoint_name
        if not path.is_file():
            raise ModelFolderError(f"missing {path}; fold {name} was requested")
    return names


def _recorded_configuration(checkpoint_path: Path, plans: dict, trust: bool,
                            read: Callable[[Path], dict] | None) -> str:
    """The configuration a checkpoint was trained with; else the only 3D configuration."""
    checkpoint = read(checkpoint_path) if read is not None else load_checkpoint(checkpoint_path, trust=trust, mmap=True)
    recorded = (checkpoint.get("init_args") or {}).get("configuration")
    if isinstance(recorded, str):
        return recorded
    candidates = _three_d_configurations(plans)
    if len(candidates) == 1:
        log.info("%s records no configuration; using the only 3D one, %s", checkpoint_path, candidates[0])
        return candidates[0]
    raise ModelFolderError(
        f"{checkpoint_path} does not record its configuration and plans.json has {len(candidates)} 3D "
        f"configurations {candidates}; choose one with --configuration"
    )


def read_model_folder(path: str | Path, configuration: str | None = None,
                      folds: Sequence[int | str] | None = None,
                      checkpoint_name: str = DEFAULT_CHECKPOINT, *, trust: bool = False,
                      read_checkpoint: Callable[[Path], dict] | None = None) -> ModelFolder:
    """Read and check an nnU-Net model folder.

    configuration: None -> the one recorded in the first fold's checkpoint (``init_args``).
    folds: None -> every numbered ``fold_*`` holding ``checkpoint_name``, in numeric order.
    trust: passed to :func:`load_checkpoint` when the configuration is read from a checkpoint.
    read_checkpoint: reads a checkpoint for that lookup instead (segtrt.nnunet.CheckpointReader, so that
        load_model reads each file once).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder not found: {folder}")
    dataset = _read_json(folder / "dataset.json")
    _validate_dataset(dataset, folder / "dataset.json")
    plans = _read_json(folder / "plans.json")
    for key in ("configurations", "transpose_forward", "transpose_backward"):
        if key not in plans:
            raise ModelFolderError(f"{folder / 'plans.json'} has no '{key}'; expected plans written by nnU-Net v2")
    fold_names = _detect_folds(folder, checkpoint_name) if folds is None else _check_folds(folder, folds, checkpoint_name)
    if configuration is None:
        configuration = _recorded_configuration(folder / f"fold_{fold_names[0]}" / checkpoint_name, plans, trust,
                                                read_checkpoint)
    resolved = resolve_configuration(plans, configuration)
    _validate_configuration(plans, configuration, resolved, folder)
    return ModelFolder(path=folder, dataset=dataset, plans=plans, configuration_name=configuration,
                       configuration=resolved, folds=fold_names, checkpoint_name=checkpoint_name)
