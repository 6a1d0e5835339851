"""Everything a run trains with, built from its config: data on the device, the model, the frozen teacher
and reference models, the objective, the optimiser and the loader. The training loop (loop.py) only
loops over them; the benchmark builds the same parts to time one step."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

import torch
from torch import Tensor, nn

from ..data import DeviceLoader, ImageDataset, dataset_from_config, to_float
from ..errors import TopoatError
from ..models import build_model, check_layer, representation
from ..objectives import Objective, build_objective
from ..runs.checkpoint import (
    CheckpointRecord,
    check_fits_data,
    check_takes_images,
    model_from_record,
    read_checkpoint,
)
from ..runtime import (
    as_channels_last,
    compiled,
    resolve_device,
    seed_everything,
    set_deterministic,
    set_threads,
    use_channels_last,
    use_compile,
)
from ..schema import TrainConfig
from .distributed import SINGLE, DistContext, device_for

M = TypeVar("M", bound=nn.Module)


@dataclass
class RunParts:
    data: ImageDataset
    device: torch.device
    channels_last: bool
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor | None  # the validation images as floats in [0, 1], at most validation.n
    y_val: Tensor | None
    model: nn.Module  # the plain model: saved, validated and evaluated
    train_model: nn.Module  # what the objective trains through: the model, compiled and/or under DDP
    teacher: nn.Module | None  # TRAIN's frozen standard model
    reference: nn.Module | None  # what the per-epoch topology metrics compare with
    distillation_teacher: nn.Module | None
    objective: Objective
    optimizer: torch.optim.Optimizer
    loader: DeviceLoader
    data_generator: torch.Generator  # the loader's shuffling and augmentation (saved for resume)


def build_run(cfg: TrainConfig, dataset: ImageDataset | None = None, dist: DistContext = SINGLE) -> RunParts:
    """The parts of a run, built in a fixed order after seeding, so a run starts from the same weights
    and batches every time. Every mismatch (teacher for other data, a layer the model lacks, a batch
    larger than the data) is a one-line TopoatError before anything trains."""
    device = resolve_device(device_for(dist, cfg.runtime.device))
    set_threads(cfg.runtime.threads)
    set_deterministic(cfg.runtime.deterministic)
    seed_everything(cfg.seed)
    d = dataset if dataset is not None else dataset_from_config(cfg.data)
    classes = d.y_train.unique()
    if classes.numel() < 2:  # every prediction of the one label is right: 100 % that means nothing
        raise TopoatError(
            f"{d.name}: the training set has only one class (every label is {int(classes[0])}); "
            "a classifier needs at least 2"
        )
    padding = cfg.data.augment.crop_padding
    if padding >= min(d.image_size):  # the padded batch would be huge, and a crop could miss the image entirely
        raise TopoatError(
            f"data.augment.crop_padding {padding} must be smaller than the images ({d.image_size[0]}x{d.image_size[1]})"
        )
    x_train, y_train = d.x_train.to(device), d.y_train.to(device)
    x_val = y_val = None
    if d.x_val is not None and d.y_val is not None:
        n_val = min(cfg.validation.n, d.x_val.shape[0])
        x_val, y_val = to_float(d.x_val[:n_val].to(device)), d.y_val[:n_val].to(device)
    channels_last = use_channels_last(cfg.runtime.channels_last)
    model = build_model(cfg.model.arch, d.num_classes, d.in_channels, d.mean, d.std, **cfg.model.args).to(device)
    check_takes_images(model, x_train[:1], f"model {cfg.model.arch}", d.name)
    if channels_last:
        model = as_channels_last(model)

    def frozen(path: str, role: str, layout: bool = True) -> nn.Module:
        return frozen_model(path, role, d, x_train[:1], device, channels_last and layout)

    teacher, reference, distillation_teacher = _frozen_models(cfg, model, frozen)
    if dist.enabled and cfg.runtime.sync_bn:
        model = _sync_batchnorm(model, device, dist)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    loader = DeviceLoader(
        x_train,
        y_train,
        cfg.optim.batch_size // dist.world,
        shuffle=True,
        crop_padding=padding,
        flip=cfg.data.augment.flip,
        drop_last=True,
        generator=generator,
        shard=(dist.rank, dist.world),
    )
    if len(loader) == 0:
        raise TopoatError(
            f"optim.batch_size {cfg.optim.batch_size} is larger than the training set ({x_train.shape[0]} images)"
        )
    objective = _objective(cfg, device, teacher, distillation_teacher, _student_width(cfg, model, x_train[:2]))
    return RunParts(
        data=d,
        device=device,
        channels_last=channels_last,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        model=model,
        train_model=_training_model(model, cfg, device, dist),
        teacher=teacher,
        reference=reference,
        distillation_teacher=distillation_teacher,
        objective=objective,
        optimizer=_optimizer([*model.parameters(), *objective.parameters()], cfg, device),
        loader=loader,
        data_generator=generator,
    )


def _frozen_models(
    cfg: TrainConfig, model: nn.Module, frozen: Callable[..., nn.Module]
) -> tuple[nn.Module | None, nn.Module | None, nn.Module | None]:
    """TRAIN's teacher, the reference of the per-epoch topology metrics (validation.reference, else the
    teacher) and the distillation teacher; one model where two of them name the same checkpoint."""
    teacher = distillation_teacher = None
    t = cfg.topology
    if t is not None:
        if not t.teacher:
            raise TopoatError("topology.teacher: give the path of a standard model's checkpoint")
        teacher = frozen(t.teacher, "topology.teacher")
        check_layer(model, t.layer, "topology.layer")
        check_layer(
            teacher,
            t.teacher_layer or t.layer,
            "topology.teacher_layer" if t.teacher_layer else "topology.layer (of the teacher)",
        )
    reference = teacher
    ref = cfg.validation.reference
    if ref and cfg.validation.topology and not (t is not None and _same_file(ref, t.teacher)):
        reference = frozen(ref, "validation.reference", layout=False)
        if t is not None:
            check_layer(reference, t.teacher_layer or t.layer, "topology.layer (of validation.reference)")
    kd = cfg.distillation
    if kd is not None:
        if not kd.teacher:
            raise TopoatError("distillation.teacher: give the path of a standard model's checkpoint")
        same = t is not None and teacher is not None and _same_file(kd.teacher, t.teacher)
        distillation_teacher = teacher if same else frozen(kd.teacher, "distillation.teacher")
    return teacher, reference, distillation_teacher


def _training_model(model: nn.Module, cfg: TrainConfig, device: torch.device, dist: DistContext) -> nn.Module:
    """What the objective trains through: the model, compiled where runtime.compile says, under DDP."""
    train_model = compiled(model, cfg.runtime.compile_mode) if use_compile(device, cfg.runtime.compile) else model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        train_model = DistributedDataParallel(train_model, device_ids=ids)
    return train_model


def _student_width(cfg: TrainConfig, model: nn.Module, example: Tensor) -> int | None:
    """The width of the student's representation at topology.layer, when a projection head needs it."""
    if cfg.topology is None or cfg.topology.projection <= 0:
        return None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return representation(model, to_float(example), cfg.topology.layer)[1].shape[1]
    finally:
        model.train(was_training)


def _sync_batchnorm(model: M, device: torch.device, dist: DistContext) -> M:
    """runtime.sync_bn: BatchNorm statistics over the global batch. PyTorch synchronises them on CUDA only;
    elsewhere each process keeps its own statistics (as without sync_bn), which is said once, not a traceback."""
    if device.type == "cuda":
        return cast(M, nn.SyncBatchNorm.convert_sync_batchnorm(model))
    if dist.is_main:
        print(
            f"topoat: warning: runtime.sync_bn needs CUDA; on {device.type} each process keeps its own "
            "BatchNorm statistics",
            file=sys.stderr,
        )
    return model


def _objective(
    cfg: TrainConfig,
    device: torch.device,
    teacher: nn.Module | None,
    distillation_teacher: nn.Module | None,
    student_width: int | None = None,
) -> Objective:
    """The objective, with its own parts (teachers, the topology terms) compiled where the training model is."""
    objective = build_objective(cfg, teacher, distillation_teacher, student_width)
    for parameter in objective.parameters():  # a projection head is made on the CPU, as models are
        parameter.data = parameter.data.to(device)
    if use_compile(device, cfg.runtime.compile):
        objective.compile_parts(lambda part: compiled(part, cfg.runtime.compile_mode))
    return objective


def _optimizer(parameters: list[nn.Parameter], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    o = cfg.optim
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}  # one kernel for all parameters
    return torch.optim.SGD(
        parameters, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov, **fused
    )


def frozen_model(
    path: str, role: str, data: ImageDataset, example: Tensor, device: torch.device, channels_last: bool
) -> nn.Module:
    """A teacher (or reference) checkpoint made for this data, eval-mode on `device`. One from other data
    is refused: it would still run (see check_fits_data) and train against a meaningless graph."""
    ckpt = read_checkpoint(path)
    check_finished(ckpt, path, role)
    check_fits_data(ckpt.model, path, role, data.num_classes, data.in_channels, data.image_size, data.name)
    trained_on = ckpt.dataset
    if trained_on is not None and trained_on != data.name:  # same shape, other images: nothing else sees it
        raise TopoatError(
            f"{role} {path} was trained on {trained_on}, but this run trains on {data.name} "
            "(name both alike with data.name if they are the same images)"
        )
    model = model_from_record(ckpt.model, device).eval()
    check_takes_images(model, example, f"{role} {path}", data.name)
    return as_channels_last(model) if channels_last else model


def check_finished(ckpt: CheckpointRecord, path: str | Path, role: str) -> None:
    """A training checkpoint (last.pt: it holds the optimiser) of a run stopped before its last epoch is a
    half-trained model; a best.pt or an exported model is whatever its maker chose, and is taken as it is."""
    if not ckpt.is_training_checkpoint:
        return
    epoch, step = ckpt.epoch, ckpt.step
    optim = (ckpt.config or {}).get("optim")
    epochs = optim.get("epochs") if isinstance(optim, dict) else None
    if epoch is not None and isinstance(epochs, int) and (epoch < epochs or (step is not None and step > 0)):
        where = f"epoch {epoch} of {epochs}" + (f", step {step} of epoch {epoch + 1}" if step else "")
        raise TopoatError(
            f"{role} {path} is the checkpoint of an unfinished run (stopped after {where}); "
            "finish that run first (--resume)"
        )


def _same_file(a: str, b: str | None) -> bool:
    return b is not None and Path(a).resolve() == Path(b).resolve()
