"""Models topoat did not train: a plain `state_dict` of a topoat architecture, or any importable model.

The field's shared currency is a bare `state_dict` or a model class (RobustBench's are built by a
factory and take [0, 1] inputs). Both become a model plus a record of the same shape as a checkpoint's
(architecture, classes, channels), so evaluation treats them like a topoat checkpoint. The reverse,
`export_checkpoint`, writes a topoat checkpoint as a plain `state_dict` and a JSON to rebuild it.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import TopoatError
from ..files import write_text_atomic
from ..models import build_model
from ..runs.checkpoint import load_checkpoint, plain_weights, save_atomic, state_mismatch

NORMALISATION_KEYS = ("mean", "std")  # topoat models hold these as buffers; a foreign state_dict may not


def load_state_dict_file(path: str | Path) -> dict:
    """A plain state_dict from `path`, read with weights_only=True (a pickle that runs code is refused)."""
    path = Path(path)
    if not path.is_file():
        raise TopoatError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise TopoatError(f"{path} holds more than tensors (it would need to run code to load)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise TopoatError(f"cannot read {path}: not a torch file ({e.__class__.__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("model_state"), dict):
        state = state["model_state"]  # a topoat checkpoint given as weights: its weights
    weights = plain_weights(state)
    if weights is None:
        raise TopoatError(f"{path} is not a state_dict (a mapping of names to tensors)")
    return weights


def model_from_state_dict(
    path: str | Path,
    arch: str,
    num_classes: int,
    in_channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    arch_args: dict | None = None,
) -> tuple[nn.Module, list[str]]:
    """A topoat architecture with the weights of a plain state_dict, and notes on what was assumed. The
    normalisation comes from the file when it holds one (as `topoat export` writes), else from `mean`/`std`."""
    state = load_state_dict_file(path)
    model = build_model(arch, num_classes, in_channels, mean, std, **(arch_args or {}))
    notes = []
    missing_norm = [k for k in NORMALISATION_KEYS if k not in state]
    if missing_norm:
        state = {**state, **{k: v for k, v in model.state_dict().items() if k in missing_norm}}
        notes.append(f"the weights hold no normalisation: the dataset's mean {list(mean)} and std {list(std)} are used")
    mismatch = state_mismatch(model, state)
    if mismatch is not None:
        described = f"{arch} {arch_args}" if arch_args else arch
        raise TopoatError(f"{path} does not hold {described} weights with {num_classes} classes: {mismatch}")
    model.load_state_dict(state)
    return model, notes


def model_from_factory(spec: str, weights: str | Path | None = None) -> nn.Module:
    """`module:factory` -> factory(), an nn.Module taking [0, 1] images and returning logits (normalising
    inside, as RobustBench models do); `weights`, if given, a state_dict loaded into it strictly."""
    module_name, _, factory_name = spec.partition(":")
    if not module_name or not factory_name:
        raise TopoatError(f"--model must be MODULE:FACTORY (e.g. mymodels:build), got {spec!r}")
    # as `python -m` would: a module in the current folder is found without PYTHONPATH=. (the `topoat`
    # script's own folder is first on sys.path, not the current one)
    here = os.getcwd()
    added = here not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise TopoatError(f"--model: cannot import {module_name} ({e})") from None
    finally:
        if added:
            sys.path.remove(here)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise TopoatError(f"--model: {module_name} has no callable {factory_name}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise TopoatError(f"--model: {spec}() returned {type(model).__name__}, not a torch nn.Module")
    if weights is not None:
        state = load_state_dict_file(weights)
        mismatch = state_mismatch(model, state)
        if mismatch is not None:
            raise TopoatError(f"--model: {weights} does not fit {spec}(): {mismatch}")
        model.load_state_dict(state)
    return model


def exported_description(weights: str | Path) -> dict | None:
    """What `export_checkpoint` wrote beside a state_dict (its .json), or None when there is none."""
    meta = Path(weights).with_suffix(".json")
    if Path(weights).suffix == ".json" or not meta.is_file():
        return None
    try:
        description = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TopoatError(f"cannot read {meta} (the description of {weights}): {e}") from None
    if not isinstance(description, dict) or "rebuild" not in description:
        return None  # some other JSON that happens to share the name
    arch, classes, args = description.get("arch"), description.get("num_classes"), description.get("arch_args")
    if not isinstance(arch, str) or not isinstance(classes, int) or not isinstance(args or {}, dict):
        raise TopoatError(f"{meta} is damaged: it must give 'arch', 'num_classes' and 'arch_args'")
    return description


def export_checkpoint(checkpoint: str | Path, out: str | Path, force: bool = False) -> tuple[Path, Path]:
    """A topoat checkpoint as a plain state_dict (`out`) and `out` with .json: what rebuilds the model
    (architecture and its arguments, classes, channels, image size, normalisation, dataset, threat model).
    An existing file is replaced only with `force` (`out` may be a run's last.pt, or the checkpoint itself)."""
    ckpt = load_checkpoint(checkpoint)
    out = Path(out)
    if out.suffix == ".json":
        raise TopoatError(f"export: {out} would be the state_dict; name it .pt (its .json comes beside it)")
    for path in (out, out.with_suffix(".json")):
        if not force and (path.exists() or path.is_symlink()):
            raise TopoatError(f"export: {path} exists; choose another name, or pass --force to replace it")
    description = {
        key: ckpt.get(key)
        for key in ("arch", "arch_args", "num_classes", "in_channels", "image_size", "normalization", "dataset")
    }
    raw_config = ckpt.get("config")
    config = raw_config if isinstance(raw_config, dict) else {}
    raw_attack = config.get("attack")
    attack = raw_attack if isinstance(raw_attack, dict) else {}
    description["threat"] = {"norm": attack.get("norm"), "eps": attack.get("eps")}
    description["data"] = config.get("data")  # how `topoat eval` reads the same test set again
    description["rebuild"] = (
        f"topoat.build_model({ckpt['arch']!r}, {ckpt['num_classes']}, {ckpt['in_channels']}, "
        f"mean, std, **arch_args).load_state_dict(torch.load(PATH, weights_only=True))"
    )
    save_atomic(ckpt["model_state"], out)
    meta = out.with_suffix(".json")
    write_text_atomic(meta, json.dumps(description, indent=2) + "\n")
    return out, meta
