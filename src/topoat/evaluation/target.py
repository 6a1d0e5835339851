"""The model an evaluation or an analysis runs on, with the test data and the threat model it was
trained for: read from a topoat checkpoint, or given for a model topoat did not train (a plain
state_dict with --arch, or any importable model with --model). `topoat eval` and `topoat analyze`
rebuild their test set and radius here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks.threat import ThreatModel
from ..data import ImageDataset, load_configured, load_dataset, to_float
from ..errors import TopoatError
from ..runs.checkpoint import CheckpointRecord, check_fits_data, check_takes_images, model_from_record, read_checkpoint
from ..schema import TrainConfig, from_dict


@dataclass
class Target:
    model: nn.Module  # eval mode, on the device
    record: CheckpointRecord  # the checkpoint's, or one made of what --arch / --model / an export tell
    data: ImageDataset
    label: str  # the path or --model spec, as the user gave it
    notes: list[str] = field(default_factory=list)  # what was assumed to rebuild a model topoat did not train


def load_target(
    checkpoint: str | None,
    device: torch.device,
    *,
    dataset: str | None = None,
    root: str | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
    arch_args: dict | None = None,
    factory: str | None = None,
    command: str = "eval",
    role: str = "checkpoint",
) -> Target:
    """A topoat checkpoint, or (with `arch` or `factory`) a foreign model, ready to evaluate on the test
    split it fits; every mismatch is a one-line TopoatError before any attack runs."""
    if arch is not None or factory is not None:
        return _foreign(checkpoint, device, dataset, root, arch, num_classes, arch_args, factory, command)
    if checkpoint is None:
        raise TopoatError(f"{command}: give a checkpoint (or a model with --arch or --model)")
    from .external import exported_description

    description = exported_description(checkpoint)
    if description is not None:
        return _exported(checkpoint, description, device, dataset, root, command, role)
    saved = read_checkpoint(checkpoint)
    data = recorded_dataset(saved, dataset, root, command)
    model = model_from_record(saved.model, device).eval()
    check_fits(model, saved, data, checkpoint, device, role)
    return Target(model, saved, data, str(checkpoint))


def _as_record(record: CheckpointRecord | dict) -> CheckpointRecord:
    """A checkpoint's record, also from its dict or from what --arch / --model / an export tell in its place."""
    return record if isinstance(record, CheckpointRecord) else CheckpointRecord.from_dict(record)


def recorded_dataset(
    record: CheckpointRecord | dict, dataset: str | None = None, root: str | None = None, command: str = "eval"
) -> ImageDataset:
    """The test data for a checkpoint: `dataset` (default: the one it records), read with the checkpoint's
    own data settings (root, args, name) when it names the same dataset; `root` overrides the root.
    The recorded name may be a display name (`data.name`): the recorded config says which loader it is."""
    saved = _as_record(record)
    recorded = saved.dataset
    data = None
    if saved.config is not None:
        try:
            data = from_dict(TrainConfig, saved.config).data
        except TopoatError:
            data = None  # a config from another topoat version: use the dataset name alone
    if data is not None and dataset in (None, data.dataset, recorded):
        return load_configured(data, root, download=False)
    name = dataset or recorded
    if not name:
        raise TopoatError(f"{command}: --dataset is required (the checkpoint does not name its dataset)")
    return load_dataset(name, root)


def recorded_threat(
    record: CheckpointRecord | dict,
    norm: str | None = None,
    eps: float | None = None,
    step_size: float | None = None,
    command: str = "eval",
) -> ThreatModel:
    """The threat model to attack with: the norm and radius given, else those the checkpoint's config records."""
    attack = (_as_record(record).config or {}).get("attack")
    attack = attack if isinstance(attack, dict) else {}
    value: Any = eps if eps is not None else attack.get("eps")
    if value is None:
        raise TopoatError(f"{command}: --eps is required (the checkpoint does not record its threat model)")
    threat = ThreatModel(norm or attack.get("norm", "Linf"), value, command)
    if step_size is not None and step_size <= 0:
        raise TopoatError(f"{command}: --step-size must be > 0, got {step_size:g}")
    return threat


def check_fits(
    model: nn.Module,
    record: CheckpointRecord | dict,
    data: ImageDataset,
    path: Any,
    device: torch.device,
    role: str = "checkpoint",
) -> None:
    """A model built for other images or classes fails here with one line, not deep inside an attack."""
    described = _as_record(record).model
    check_fits_data(described, path, role, data.num_classes, data.in_channels, data.image_size, data.name)
    check_takes_images(model, data.x_test[:1].to(device), str(path), data.name)


def _exported(
    weights: str,
    description: dict,
    device: torch.device,
    dataset: str | None,
    root: str | None,
    command: str,
    role: str,
) -> Target:
    """A state_dict written by `topoat export`, rebuilt from the JSON beside it: its architecture, classes,
    test data and threat model, as its checkpoint had them."""
    from .external import model_from_state_dict

    sections = {"data": description.get("data"), "attack": description.get("threat")}
    config = {
        key: {k: v for k, v in value.items() if v is not None}
        for key, value in sections.items()
        if isinstance(value, dict)
    }
    described: dict[str, Any] = {
        key: description.get(key) for key in ("arch", "arch_args", "num_classes", "in_channels", "image_size")
    }
    record = CheckpointRecord(described, config=config, dataset=description.get("dataset"))
    data = recorded_dataset(record, dataset, root, command)
    described["in_channels"] = described["in_channels"] or data.in_channels
    model, notes = model_from_state_dict(
        weights,
        described["arch"],
        described["num_classes"],
        described["in_channels"],
        data.mean,
        data.std,
        described["arch_args"],
    )
    notes = [f"{described['arch']} rebuilt as {Path(weights).with_suffix('.json')} describes it", *notes]
    model = model.to(device).eval()
    check_fits(model, record, data, weights, device, role)
    return Target(model, record, data, str(weights), notes)


def _foreign(
    weights: str | None,
    device: torch.device,
    dataset: str | None,
    root: str | None,
    arch: str | None,
    num_classes: int | None,
    arch_args: dict | None,
    factory: str | None,
    command: str,
) -> Target:
    """A model from --arch (a plain state_dict of a topoat architecture) or --model (MODULE:FACTORY), with a
    record of the same shape as a checkpoint's completed from the data it is evaluated on."""
    from .external import model_from_factory, model_from_state_dict

    if arch is not None and factory is not None:
        raise TopoatError(f"{command}: give --arch (with a state_dict file) or --model, not both")
    if arch is not None and (weights is None or num_classes is None):
        raise TopoatError(f"{command}: --arch needs the state_dict file and --num-classes")
    if dataset is None:
        raise TopoatError(f"{command}: --dataset is required for a model from --arch or --model")
    data = load_dataset(dataset, root)
    described: dict[str, Any] = {
        "arch": arch or "importable model",
        "num_classes": num_classes,
        "in_channels": data.in_channels,
    }
    model: nn.Module
    notes: list[str] = []
    if arch is not None:
        assert weights is not None and num_classes is not None  # checked above
        model, notes = model_from_state_dict(
            weights, arch, num_classes, data.in_channels, data.mean, data.std, arch_args
        )
    else:
        assert factory is not None
        model = model_from_factory(factory, weights).eval()
        try:
            with torch.no_grad():
                logits = model(to_float(data.x_test[:1]))
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise TopoatError(f"--model {factory} does not take {data.name} images: {first}") from None
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise TopoatError(f"--model {factory} must return logits of shape (batch, classes)")
        described["num_classes"] = num_classes or int(logits.shape[1])
    record = CheckpointRecord(described, dataset=dataset)
    model = model.to(device).eval()
    check_fits(model, record, data, weights or factory, device)
    return Target(model, record, data, str(weights or factory), notes)
