"""Checkpoints: written atomically, read with weights_only=True so a hostile pickle cannot run code.

A checkpoint is a `CheckpointRecord`: the model record (what rebuilds the model without its code path),
what it was trained on and, by kind, what chose it (best.pt: the validation line) or what resumes it
(last.pt: a `ResumeState`). On disk it is the plain dict `CheckpointRecord.to_dict` writes; `read_checkpoint`
and `write_checkpoint` are the reader and the writer, `load_checkpoint` the checked dict underneath.
"""

from __future__ import annotations

import io
import pickle
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..data import to_float
from ..errors import TopoatError
from ..files import write_atomic
from ..models import ImageClassifier, build_model

FORMAT = "topoat-checkpoint"
VERSION = 1


def model_record(
    model: nn.Module,
    arch: str,
    arch_args: dict,
    num_classes: int,
    in_channels: int,
    image_size: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
) -> dict:
    """Everything needed to rebuild `model` without its code path: architecture, arguments, normalisation;
    and the (height, width) of the images it was trained on, when known, so other data can be refused,
    and the name of each class (output k is `class_names[k]`), when the data set names them."""
    plain = cast(ImageClassifier, unwrap(model))  # a topoat model: it holds its normalisation
    record = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "arch_args": dict(arch_args),
        "num_classes": int(num_classes),
        "in_channels": int(in_channels),
        "normalization": {"mean": plain.mean.flatten().tolist(), "std": plain.std.flatten().tolist()},
        "model_state": {k: v.detach().cpu() for k, v in plain.state_dict().items()},
    }
    if image_size is not None:
        record["image_size"] = [int(v) for v in image_size]
    if class_names is not None:
        record["class_names"] = [str(v) for v in class_names]
    return record


MODEL_KEYS = ("format", "version", "arch", "arch_args", "num_classes", "in_channels", "normalization", "model_state")
RESUME_KEYS = (
    "optimizer",
    "objective",
    "step",
    "perm",
    "rng",
    "data_rng",
    "best",
    "train_seconds",
    "epoch_totals",
    "last_record",
)


@dataclass
class ResumeState:
    """What last.pt holds beyond the model so a run continues exactly where it stopped."""

    optimizer: dict
    objective: dict
    step: int  # steps done in epoch `epoch + 1` (0 at an epoch's end)
    perm: Tensor | None  # that epoch's shuffle, None at an epoch's end
    rng: dict  # the global generators (torch, CUDA, numpy, random)
    data_rng: Tensor  # the loader's generator
    best: dict  # {"metric": best validation score so far, "epoch": its epoch}
    train_seconds: float
    epoch_totals: dict | None  # the running sums of an interrupted epoch
    last_record: dict | None  # the last metrics line (a torn metrics.jsonl gets it back)

    @classmethod
    def from_dict(cls, d: dict) -> ResumeState:
        """KeyError when a resume key is missing; the two optional ones came later."""
        return cls(
            optimizer=d["optimizer"],
            objective=d.get("objective", {}),
            step=int(d["step"]),
            perm=d["perm"],
            rng=d["rng"],
            data_rng=d["data_rng"],
            best=dict(d["best"]),
            train_seconds=float(d["train_seconds"]),
            epoch_totals=d.get("epoch_totals"),
            last_record=d.get("last_record"),
        )


@dataclass
class CheckpointRecord:
    """One checkpoint. `model` is the model record (`model_record`: architecture, its arguments, classes,
    channels, normalisation, weights, image size and class names when known); `config` and `dataset` say
    what it was trained with (a run's checkpoints have them, a hand-made one may not); `epoch` is the
    epochs done. best.pt has `validation` (the validation line that chose it), last.pt `resume`."""

    model: dict
    config: dict | None = None
    dataset: str | None = None
    epoch: int | None = None
    validation: dict | None = None
    resume: ResumeState | None = None
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept as they are

    @property
    def arch(self) -> str:
        return self.model["arch"]

    @property
    def step(self) -> int | None:
        return None if self.resume is None else self.resume.step

    def to_dict(self) -> dict:
        """The on-disk dict, key for key as the training loop has always written it."""
        d = dict(self.model)
        if self.resume is not None:
            r = self.resume
            d.update({"config": self.config, "dataset": self.dataset, "optimizer": r.optimizer})
            d.update({"objective": r.objective, "epoch": self.epoch, "step": r.step, "perm": r.perm, "rng": r.rng})
            d.update({"data_rng": r.data_rng, "best": r.best, "train_seconds": r.train_seconds})
            d.update({"epoch_totals": r.epoch_totals, "last_record": r.last_record})
        else:
            optional = {"epoch": self.epoch, "config": self.config, "dataset": self.dataset}
            d.update({k: v for k, v in optional.items() if v is not None})
            if self.validation is not None:
                d["validation"] = self.validation
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CheckpointRecord:
        """The record of a checked checkpoint dict (`load_checkpoint`). Resume keys that do not make a whole
        `ResumeState` (a damaged last.pt) stay in `extra`, so a resume can refuse it while a teacher loads."""
        model_keys = (*MODEL_KEYS, "image_size", "class_names")
        try:
            resume = ResumeState.from_dict(d) if "optimizer" in d else None
        except (KeyError, TypeError, ValueError):
            resume = None
        epoch, config, dataset = d.get("epoch"), d.get("config"), d.get("dataset")
        typed: dict[str, Any] = {
            "epoch": epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
            "config": config if isinstance(config, dict) else None,
            "dataset": dataset if isinstance(dataset, str) else None,
        }
        known = {*model_keys, "validation", *(RESUME_KEYS if resume else ())}
        known |= {k for k, v in typed.items() if v is not None or d.get(k) is None}  # odd values stay as they are
        return cls(
            model={k: d[k] for k in model_keys if k in d},
            validation=d.get("validation"),
            resume=resume,
            extra={k: v for k, v in d.items() if k not in known},
            epoch=typed["epoch"],
            config=typed["config"],
            dataset=typed["dataset"],
        )

    @property
    def is_training_checkpoint(self) -> bool:
        """last.pt (it holds the optimiser), rather than best.pt or a model made elsewhere."""
        return self.resume is not None or "optimizer" in self.extra


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> CheckpointRecord:
    """A topoat checkpoint as a record (one-line TopoatError for anything else, as `load_checkpoint`)."""
    return CheckpointRecord.from_dict(load_checkpoint(path, map_location))


def write_checkpoint(record: CheckpointRecord, path: str | Path) -> None:
    save_atomic(record.to_dict(), path)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind DDP and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
        else:
            return model


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save `obj` to `path` atomically. It is serialised in memory first: on a full disk torch.save
    itself raises a RuntimeError that hides the cause, while a plain write reports ENOSPC."""
    buffer = io.BytesIO()
    try:
        torch.save(obj, buffer)
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise TopoatError(f"cannot write {path}: {first}") from None
    write_atomic(path, buffer.getbuffer())


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip (or, before torch 1.6, a pickle, whose first byte is the PROTO opcode)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise TopoatError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise TopoatError(f"checkpoint not found: {path}")
    if not _looks_like_torch_file(path):
        raise TopoatError(f"{path} is not a torch checkpoint (neither a zip nor a pickle)")
    try:
        # damaged bytes make torch warn (e.g. "Detected pickle protocol 49") before it fails: the one line
        # below says it all, so the warnings are shown only for a file that loads
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    except pickle.UnpicklingError:
        raise TopoatError(
            f"refusing to load {path}: it is not a plain-weights checkpoint (it would need to run code to load)"
        ) from None
    except Exception as e:  # damaged bytes surface as almost any exception inside torch.load
        raise TopoatError(
            f"cannot read checkpoint {path}: corrupt or not a torch file ({e.__class__.__name__})"
        ) from None
    if plain_weights(ckpt):  # non-empty weights without a model record
        raise TopoatError(
            f"{path} is a plain state_dict, not a topoat checkpoint: give its architecture "
            "(topoat eval: --arch NAME --num-classes K, or --model MODULE:FACTORY)"
        )
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise TopoatError(f"{path} is not a topoat checkpoint")
    if ckpt.get("version") != VERSION:
        raise TopoatError(f"{path}: checkpoint version {ckpt.get('version')} is not supported (need {VERSION})")
    _check_record(ckpt, path)
    return ckpt


def plain_weights(obj: Any) -> dict[str, torch.Tensor] | None:
    """The weights of a plain state_dict, bare or wrapped as {"state_dict": ...} (names to tensors, without
    a model record); None for anything else."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    return None


def _check_record(ckpt: dict, path: Path) -> None:
    """The model record's keys and types, so a damaged or hand-made checkpoint fails here, naming the key."""

    def positive_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    def numbers(v: object) -> bool:
        return isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)

    norm = ckpt.get("normalization")
    size = ckpt.get("image_size")
    names = ckpt.get("class_names")
    checks = [
        ("arch", isinstance(ckpt.get("arch"), str), "a string"),
        ("arch_args", isinstance(ckpt.get("arch_args", {}), dict), "a mapping"),
        ("num_classes", positive_int(ckpt.get("num_classes")), "an integer >= 1"),
        ("in_channels", positive_int(ckpt.get("in_channels")), "an integer >= 1"),
        (
            "normalization",
            isinstance(norm, dict) and numbers(norm.get("mean")) and numbers(norm.get("std")),
            "a mapping of mean and std lists",
        ),
        (
            "model_state",
            isinstance(ckpt.get("model_state"), dict)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt["model_state"].items()),
            "a mapping of names to tensors",
        ),
        (
            "image_size",
            size is None or (isinstance(size, (list, tuple)) and len(size) == 2 and all(positive_int(v) for v in size)),
            "[height, width]",
        ),
        (
            "class_names",
            names is None
            or (
                isinstance(names, list)
                and all(isinstance(v, str) for v in names)
                and len(names) == ckpt.get("num_classes")
            ),
            "a list of one name per class",
        ),
    ]
    for key, ok, what in checks:
        if not ok:
            state = "is missing" if key not in ckpt else f"must be {what}"
            raise TopoatError(f"{path} is a damaged topoat checkpoint: '{key}' {state}")


def state_mismatch(model: nn.Module, state: dict) -> str | None:
    """The first difference between a model's state and a checkpoint's, in one line (load_state_dict's
    own message spreads over many lines and begins with a header only)."""
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state:
            return f"'{key}' is missing"
        if tuple(state[key].shape) != tuple(value.shape):
            return f"'{key}' has shape {list(state[key].shape)} in the checkpoint, {list(value.shape)} in the model"
    unexpected = [k for k in state if k not in expected]
    return f"unexpected key '{unexpected[0]}'" if unexpected else None


def model_from_record(ckpt: dict, device: str | torch.device = "cpu") -> ImageClassifier:
    norm = ckpt["normalization"]
    model = build_model(
        ckpt["arch"], ckpt["num_classes"], ckpt["in_channels"], norm["mean"], norm["std"], **ckpt.get("arch_args", {})
    )
    mismatch = state_mismatch(model, ckpt["model_state"])
    if mismatch is not None:
        raise TopoatError(
            f"checkpoint weights do not match architecture {ckpt['arch']} {ckpt.get('arch_args', {})}: {mismatch}"
        )
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise TopoatError(f"checkpoint weights do not match architecture {ckpt['arch']}: {first}") from None
    return model.to(device)


def check_fits_data(
    ckpt: dict, path: str | Path, role: str, num_classes: int, in_channels: int, image_size: Sequence[int], dataset: str
) -> None:
    """A teacher, reference or evaluated model must have been made for this data: same classes, channels
    and image size. A model for other images can still run (the normalisation broadcasts one channel
    to three, adaptive pooling takes any size), so nothing else would catch it."""
    have: list[tuple[str, object, object]] = [
        ("classes", ckpt["num_classes"], num_classes),
        ("input channels", ckpt["in_channels"], in_channels),
    ]
    if ckpt.get("image_size") is not None:  # recorded since image sizes are checked; older checkpoints lack it
        have.append(("image size", "x".join(map(str, ckpt["image_size"])), "x".join(map(str, image_size))))
    for what, theirs, ours in have:
        if theirs != ours:
            raise TopoatError(f"{role} {path} was made for {theirs} {what}, but {dataset} has {ours} {what}")


def check_takes_images(model: nn.Module, x: Tensor, what: str, dataset: str) -> None:
    """One image through `model` (eval mode, no gradient): images too small for its pooling, or a model
    built wrongly (a width of 0), fail here in one line rather than inside the first step."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(to_float(x))
    except RuntimeError as e:
        raise TopoatError(
            f"{what} cannot take {dataset} images of shape {list(x.shape[1:])}: {str(e).strip().splitlines()[0]}"
        ) from None
    finally:
        model.train(was_training)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> ImageClassifier:
    """An eval-mode model from a topoat checkpoint (the architecture and normalisation come with it)."""
    model = model_from_record(load_checkpoint(path, map_location="cpu"), device)
    return model.eval()
