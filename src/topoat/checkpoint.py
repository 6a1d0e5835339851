"""Checkpoints: written atomically, read with weights_only=True so a hostile pickle cannot run code."""
from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import TopoatError
from .files import write_atomic
from .models import ImageClassifier, build_model

FORMAT = "topoat-checkpoint"
VERSION = 1


def model_record(model: ImageClassifier, arch: str, arch_args: dict, num_classes: int,
                 in_channels: int) -> dict:
    """Everything needed to rebuild `model` without its code path: architecture, arguments, normalisation."""
    model = unwrap(model)
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "arch_args": dict(arch_args),
        "num_classes": int(num_classes),
        "in_channels": int(in_channels),
        "normalization": {"mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()},
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind DDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise TopoatError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise TopoatError(f"refusing to load {path}: it is not a plain-weights checkpoint "
                          "(it would need to run code to load)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise TopoatError(f"cannot read checkpoint {path}: corrupt or not a torch file "
                          f"({e.__class__.__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise TopoatError(f"{path} is not a topoat checkpoint")
    if ckpt.get("version") != VERSION:
        raise TopoatError(f"{path}: checkpoint version {ckpt.get('version')} is not supported (need {VERSION})")
    return ckpt


def model_from_record(ckpt: dict, device: str | torch.device = "cpu") -> ImageClassifier:
    norm = ckpt["normalization"]
    model = build_model(ckpt["arch"], ckpt["num_classes"], ckpt["in_channels"], norm["mean"], norm["std"],
                        **ckpt.get("arch_args", {}))
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise TopoatError(f"checkpoint weights do not match architecture {ckpt['arch']}: {first}") from None
    return model.to(device)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> ImageClassifier:
    """An eval-mode model from a topoat checkpoint (the architecture and normalisation come with it)."""
    model = model_from_record(load_checkpoint(path, map_location="cpu"), device)
    return model.eval()
