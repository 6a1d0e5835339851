"""Typed, validated configuration: YAML in, dataclasses out, one-line errors naming the key."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .attacks.names import parse_attack  # a misspelt attack fails at validation, not after the training
from .attacks.threat import ThreatModel
from .errors import TopoatError
from .yamltext import read_yaml_text, safe_load


@dataclass
class AugmentConfig:
    crop_padding: int = 0
    flip: bool = False


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"
    # What checkpoints, results.json and reports call the data set; null: the loader's own name (e.g.
    # "cifar10", "image-folder"). A copy of a known set says so: "CIFAR-10 (JPEG copy)".
    name: str | None = None
    root: str | None = None
    # cifar10/cifar100/tiny-imagenet: fetch the official archive into `root` (default ./data) when it
    # is not there, verifying its MD5. Off by default so nothing reaches the network unasked.
    download: bool = False
    train_subset: int | None = None  # first-k of a fixed shuffle of the train split
    val_size: int = 1000  # held out of train, fixed by val_seed so every run sees the same split
    val_seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # synthetic data only
    synthetic_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    synthetic_classes: int = 10
    synthetic_train: int = 512
    synthetic_test: int = 256

    @property
    def display_name(self) -> str:
        """The data set's name in results.json, as `load_configured` names the data set it loads (for
        every loader but npz, which names a data set after its file)."""
        return self.name or self.dataset


@dataclass
class ModelConfig:
    arch: str = "small-cnn"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttackConfig:
    norm: Literal["Linf", "L2"] = "Linf"
    eps: float = 0.1
    step_size: float = 0.025
    steps: int = 10
    random_start: bool = True
    # BatchNorm in eval mode while the training attack runs; null = what the method's authors do
    # (PGD-AT and AT-AWP: train mode, as in Rice et al.'s and Wu et al.'s code; TRADES, MART: eval mode).
    eval_mode: bool | None = None


# BatchNorm mode of each method's training attack in its authors' code: Rice et al.'s robust_overfitting
# and the AT-AWP code attack in train mode; TRADES' and MART's code switch to eval mode.
AUTHORS_ATTACK_EVAL_MODE = {"standard": True, "pgd-at": False, "trades": True, "mart": True}


@dataclass
class AWPConfig:
    gamma: float = 5e-3  # each weight tensor moves by gamma * its own norm
    warmup_epochs: int = 0  # epochs of the plain method before AWP starts


@dataclass
class MethodConfig:
    name: Literal["standard", "pgd-at", "trades", "mart"] = "pgd-at"
    beta: float = 6.0  # TRADES and MART: weight of the KL term
    # PGD-AT only: (1 - natural_weight) * CE(f(x'), y) + natural_weight * CE(f(x), y), PGD-AT's own
    # natural/robust knob (0 = Madry et al.)
    natural_weight: float = 0.0
    awp: AWPConfig | None = None  # adversarial weight perturbation around the method (not standard)


@dataclass
class TopologyConfig:
    teacher: str | None = None  # checkpoint path; a study fills it from a run name
    # The frontier study's winner (docs/RESULTS.md): the sharp softmax-cosine graph at lambda 10.
    lambda_nat: float = 10.0
    lambda_adv: float = 10.0
    kernel: Literal["cosine", "gaussian", "student-t", "softmax-cosine", "perplexity"] = "softmax-cosine"
    temperature: float = 0.1  # softmax-cosine: p(j|i) proportional to exp(cos(z_i, z_j) / temperature)
    perplexity: float = 30.0  # perplexity: each row's entropy is ln(perplexity) (the t-SNE affinity)
    layer: str = "features"  # "features" (penultimate), "logits", or a named module
    teacher_layer: str | None = None  # defaults to `layer`
    class_aware: Literal["off", "within", "across"] = "off"
    memory_bank: int = 0  # number of past teacher/student feature pairs kept as extra graph nodes
    global_graph: bool = False  # under DDP: one graph over the global batch, not one per process
    attack_uses_topology: bool = False  # the attack also ascends lambda_adv * L_topo(h_f(x'), h_g(x))
    # forward KL(P_teacher || P_student), reverse KL(P_student || P_teacher), or their mean
    divergence: Literal["forward", "reverse", "symmetric"] = "forward"
    entropy_weight: float = 0.0  # adds weight * mean_i max(0, H(student row i) - H(teacher row i))
    center: Literal["none", "batch", "sample"] = "none"  # features centred before the kernel
    # BatchNorm in TRAIN's own clean forward: train (batch statistics, running ones updated), frozen (batch
    # statistics, running ones untouched) or eval (running statistics)
    clean_batchnorm: Literal["train", "frozen", "eval"] = "train"
    # the lambdas rise linearly from 0 over these epochs, so that the base loss shapes the features first: without
    # it a PreAct ResNet student flattens its graph in the first epoch and loses accuracy (docs/RESULTS.md)
    warmup_epochs: float = 1.0
    balance: bool = False  # lambda = each term's gradient norm at the features relative to the base loss's
    # softmax-cosine: the temperature set on the first batch so that the teacher's rows have this perplexity
    teacher_perplexity: float | None = None
    diagnose_every: int = 0  # > 0: log the base and topology parameter-gradient norms every that many steps
    projection: int = 0  # > 0: the student's graph is built on a learnable 2-layer head of this width


@dataclass
class DistillationConfig:
    """Logit distillation from a frozen standard model on natural inputs: the control for TRAIN (does the
    topology matter, or does any pull towards the standard model do the same?)."""

    teacher: str | None = None  # checkpoint path; a study fills it from a run name
    # `lambda` in YAML: the loss adds lambda * temperature^2 * KL(softmax(teacher/T) || softmax(student/T))
    lambda_: float = field(default=1.0, metadata={"key": "lambda"})
    temperature: float = 4.0


@dataclass
class OptimConfig:
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: Literal["constant", "multistep", "cosine", "onecycle"] = "multistep"
    milestones: list[float] = field(default_factory=list)  # in epochs; fractions allowed
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    max_loss: float = 1e4  # a larger (or non-finite) training loss stops the run
    grad_clip: float | None = None  # clip the gradient's global norm to this before each step


@dataclass
class ValidationConfig:
    every: int = 1
    n: int = 1000
    attack_steps: int = 10  # PGD steps for the validation robust accuracy
    topology: bool = True  # log graph KL and kNN overlap to the reference model per epoch
    # Checkpoint of the reference (standard) model those metrics compare with; TRAIN runs default to
    # their teacher, other runs log no topology metrics without one (a study fills it from `reference`).
    reference: str | None = None


@dataclass
class EvaluationConfig:
    n: int | None = 1000  # test images, a fixed seeded choice; null = the whole test set
    attacks: list[str] = field(default_factory=lambda: ["pgd-20"])
    step_size: float | None = None  # PGD/CW step; default eps / 4
    batch_size: int = 500
    seed: int = 0
    # AutoAttack attacks (costly) run on a fixed subset of this many of the n images; null = all n
    autoattack_n: int | None = None
    # which checkpoints the attacks run on; one left out gets its natural accuracy only
    checkpoints: list[Literal["last", "best"]] = field(default_factory=lambda: ["last", "best"])


@dataclass
class RuntimeConfig:
    device: str = "auto"
    deterministic: bool = False
    amp: Literal["auto", "off", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 elsewhere
    # torch.compile of the training model (attack and training step); auto: on for CUDA, off elsewhere
    compile: Literal["auto", "on", "off"] = "auto"
    # torch.compile's mode: "reduce-overhead" adds CUDA graphs (every training batch has one shape)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    channels_last: Literal["auto", "on", "off"] = "auto"
    sync_bn: bool = False  # under DDP: BatchNorm statistics over the global batch
    # under DDP: seconds a process waits for the others (to start, or in a step) before it stops with an error
    ddp_timeout: float = 600.0
    progress: bool = True
    tensorboard: bool = False  # also write each epoch's metrics to <run>/tensorboard (needs the package)
    threads: int | None = None


@dataclass
class TrainConfig:
    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    topology: TopologyConfig | None = None
    distillation: DistillationConfig | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def _seeds(self) -> list[tuple[str, int]]:
        return [("seed", self.seed), ("data.val_seed", self.data.val_seed), ("evaluation.seed", self.evaluation.seed)]

    def validate(self) -> TrainConfig:
        o = self.optim
        ThreatModel(self.attack.norm, self.attack.eps, "attack")
        checks = [
            (_finite(self.attack.step_size) and self.attack.step_size > 0, "attack.step_size must be > 0 and finite"),
            (self.attack.steps >= 0, "attack.steps must be >= 0"),
            (o.epochs >= 1, "optim.epochs must be >= 1"),
            (o.batch_size >= 2, "optim.batch_size must be >= 2"),
            (_finite(o.lr) and o.lr > 0, "optim.lr must be > 0 and finite"),
            (o.grad_clip is None or (_finite(o.grad_clip) and o.grad_clip > 0), "optim.grad_clip must be > 0"),
            (_finite(o.momentum) and o.momentum >= 0, "optim.momentum must be >= 0 and finite"),
            (_finite(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay must be >= 0 and finite"),
            (not o.nesterov or o.momentum > 0, "optim.nesterov needs optim.momentum > 0"),
            (_finite(o.gamma) and o.gamma >= 0, "optim.gamma must be >= 0 and finite"),
            (_finite(o.warmup_epochs) and o.warmup_epochs >= 0, "optim.warmup_epochs must be >= 0 and finite"),
            (_finite(*o.milestones), "optim.milestones must be finite numbers"),
            (o.max_loss > 0, "optim.max_loss must be > 0 (.inf turns the check off)"),
            (self.runtime.threads is None or self.runtime.threads >= 1, "runtime.threads must be >= 1 (or null)"),
            *[(seed_fits(value), f"{key} {SEED_RANGE}, got {value}") for key, value in self._seeds()],
            (_finite(self.runtime.ddp_timeout) and self.runtime.ddp_timeout > 0, "runtime.ddp_timeout must be > 0"),
            (self.validation.n >= 1, "validation.n must be >= 1"),
            (self.validation.attack_steps >= 0, "validation.attack_steps must be >= 0"),
            (self.data.val_size >= 0, "data.val_size must be >= 0"),
            # a negative padding would crop every image instead (F.pad accepts it)
            (self.data.augment.crop_padding >= 0, "data.augment.crop_padding must be >= 0"),
            (self.data.train_subset is None or self.data.train_subset >= 2, "data.train_subset must be >= 2"),
            (self.validation.every >= 1, "validation.every must be >= 1"),
            (_finite(self.method.beta) and self.method.beta >= 0, "method.beta must be >= 0 and finite"),
            (0 <= self.method.natural_weight <= 1, "method.natural_weight must be in [0, 1]"),
            (
                self.method.natural_weight == 0 or self.method.name == "pgd-at",
                "method.natural_weight applies to pgd-at only (TRADES and MART weigh their terms with method.beta)",
            ),
        ]
        if self.method.awp is not None:
            checks += [
                (self.method.name != "standard", "method.awp needs an adversarial method (pgd-at, trades, mart)"),
                (
                    _finite(self.method.awp.gamma) and self.method.awp.gamma >= 0,
                    "method.awp.gamma must be >= 0 and finite",
                ),
                (self.method.awp.warmup_epochs >= 0, "method.awp.warmup_epochs must be >= 0"),
            ]
        if self.topology is not None:
            t = self.topology
            checks += [
                (
                    _finite(t.lambda_nat, t.lambda_adv) and t.lambda_nat >= 0 and t.lambda_adv >= 0,
                    "topology.lambda_nat and lambda_adv must be >= 0 and finite",
                ),
                (t.memory_bank >= 0, "topology.memory_bank must be >= 0"),
                (
                    _finite(t.entropy_weight) and t.entropy_weight >= 0,
                    "topology.entropy_weight must be >= 0 and finite",
                ),
                (_finite(t.warmup_epochs) and t.warmup_epochs >= 0, "topology.warmup_epochs must be >= 0 and finite"),
                (t.diagnose_every >= 0, "topology.diagnose_every must be >= 0"),
                (t.projection >= 0, "topology.projection must be >= 0 (0: no head)"),
                (
                    t.teacher_perplexity is None
                    or (_finite(t.teacher_perplexity) and 1 < t.teacher_perplexity < o.batch_size - 1),
                    f"topology.teacher_perplexity must lie between 1 and optim.batch_size - 1 = {o.batch_size - 1}",
                ),
                (
                    t.teacher_perplexity is None or t.kernel == "softmax-cosine",
                    "topology.teacher_perplexity sets the softmax-cosine temperature: use kernel softmax-cosine",
                ),
                (_finite(t.temperature) and t.temperature > 0, "topology.temperature must be > 0 and finite"),
                (_finite(t.perplexity) and t.perplexity > 1, "topology.perplexity must be > 1 and finite"),
                # checked in every training step otherwise, where it ended the run with a traceback
                (
                    t.kernel != "perplexity" or t.perplexity < o.batch_size - 1,
                    f"topology.perplexity {t.perplexity:g} needs graphs of more than {t.perplexity + 1:g} samples: "
                    f"raise optim.batch_size (per process under DDP) or lower the perplexity",
                ),
            ]
        if self.distillation is not None:
            d = self.distillation
            checks += [
                (_finite(d.lambda_) and d.lambda_ >= 0, "distillation.lambda must be >= 0 and finite"),
                (_finite(d.temperature) and d.temperature > 0, "distillation.temperature must be > 0 and finite"),
            ]
        step = self.evaluation.step_size
        checks += [
            (self.evaluation.n is None or self.evaluation.n >= 1, "evaluation.n must be >= 1"),
            (step is None or _finite(step) and step > 0, "evaluation.step_size must be > 0 and finite"),
            (self.evaluation.batch_size >= 1, "evaluation.batch_size must be >= 1"),
            (
                self.evaluation.autoattack_n is None or self.evaluation.autoattack_n >= 1,
                "evaluation.autoattack_n must be >= 1",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise TopoatError(f"config: {message}")
        if self.attack.eval_mode is None:
            self.attack.eval_mode = AUTHORS_ATTACK_EVAL_MODE[self.method.name]
        for i, spec in enumerate(self.evaluation.attacks):
            try:
                parse_attack(spec)
            except TopoatError as e:
                raise TopoatError(f"config: evaluation.attacks[{i}]: {e}") from None
        return self


# torch's generators take seeds of 64 bits; a margin keeps the derived seeds (val_seed + 1) inside too
SEED_RANGE = "must be an integer between -2**63 and 2**63 (exclusive)"


def seed_fits(seed: int) -> bool:
    return -(2**63) < seed < 2**63


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently convert) `value` against annotation `tp`; raise naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except TopoatError as e:
                errors.append(str(e))
        raise TopoatError(errors[0] if errors else f"config: {key}: bad value {value!r}")
    if origin is Literal:
        if isinstance(value, bool) and ("on" if value else "off") in args:
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
        if value not in args:
            raise TopoatError(f"config: {key} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a dataclass annotation, not an instance
        return from_dict(tp, value, prefix=key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise TopoatError(f"config: {key} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise TopoatError(f"config: {key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("on", "off"):
            value = value.lower() == "on"  # a quoted "on"/"off" means what the bare word means
        if not isinstance(value, bool):
            raise TopoatError(f"config: {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TopoatError(f"config: {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise TopoatError(f"config: {key} must be a number, got {value!r}")  # NaN means nothing anywhere
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TopoatError(f"config: {key} must be a string, got {value!r}")
        return value
    raise TopoatError(f"config: {key}: unsupported type {_type_name(tp)}")


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types are TopoatErrors."""
    if data is None:
        data = {}
    where = prefix or "top level"
    if not isinstance(data, dict):
        raise TopoatError(f"config: {where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {_key(f): f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            full = f"{prefix}.{key}" if prefix else str(key)
            raise TopoatError(f"config: unknown key '{full}' (allowed: {', '.join(sorted(fields))})")
    kwargs = {}
    for key, name in fields.items():
        if key in data:
            full = f"{prefix}.{key}" if prefix else key
            kwargs[name] = _coerce(data[key], hints[name], full)
    return cls(**kwargs)


def _key(f: dataclasses.Field) -> str:
    """A field's YAML key: its name, or metadata["key"] where the name is a Python keyword (lambda)."""
    return f.metadata.get("key", f.name)


def to_dict(cfg: Any) -> Any:
    """A config (or any part of one) as plain YAML-ready data, with the YAML keys."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {_key(f): to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def _parse_scalar(text: str, key: str) -> Any:
    try:
        return safe_load(text, f"--set {key}")
    except yaml.YAMLError:
        return text


def override(key: str, value: Any) -> str:
    """The `key=value` override that sets `key` to exactly `value`: the value written as JSON, which YAML
    reads back as it was (a path holding ' #' or ': ', a name such as `yes`, `12` or `~` stay strings)."""
    return f"{key}={json.dumps(value, ensure_ascii=False)}"


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `key.sub=value` strings (values parsed as YAML) to a nested mapping."""
    for item in overrides:
        if "=" not in item:
            raise TopoatError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise TopoatError(f"--set: bad key {key!r}")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
                node[part] = child
            if not isinstance(child, dict):
                raise TopoatError(f"--set: {key}: '{part}' is not a section")
            node = child
        node[parts[-1]] = _parse_scalar(text, key.strip())
    return data


PRESETS = Path(__file__).resolve().parent / "presets"  # the configs/ and studies/ the package ships


def preset_path(name: str | Path, kind: str = "configs") -> Path:
    """A config (`kind` "configs") or study ("studies") file: `name` as a path when that file exists,
    else the packaged one of that name, e.g. `fashion-mnist/pgd-at` -> presets/configs/fashion-mnist/pgd-at.yaml,
    so the shipped files work from any folder after `pip install`."""
    path = Path(name).expanduser()
    if path.is_file() or path.is_absolute():
        return path
    stem = str(name)[: -len(".yaml")] if str(name).endswith(".yaml") else str(name)
    for candidate in (stem, stem.removeprefix(f"{kind}/")):
        packaged = PRESETS / kind / f"{candidate}.yaml"
        if packaged.is_file():
            return packaged
    return path  # not found either way: read_yaml names the path as given


def preset_names(kind: str = "configs") -> list[str]:
    """The packaged configs or studies, by the names `preset_path` accepts."""
    root = PRESETS / kind
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = read_yaml_text(path, "config file")
    except FileNotFoundError:
        raise TopoatError(
            f"config file not found: {path} (nor a packaged one of that name; `topoat configs` lists them)"
        ) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise TopoatError(f"cannot read config file {path}: {e.__class__.__name__}") from None
    except OSError as e:
        raise TopoatError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        data = safe_load(text, f"config file {path}")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise TopoatError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TopoatError(f"config file {path} must hold a mapping at the top level")
    return data


def read_config_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A config file's mapping with its `base:` chain resolved: `base: pgd-at.yaml` (relative to the file)
    starts from that config, and this file's keys are merged over it, section by section."""
    path = Path(path)
    if path.resolve() in _seen:
        raise TopoatError(f"config file {path}: its base: chain comes back to it")
    raw = read_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise TopoatError(f"config file {path}: base must be the path of another config file, got {base!r}")
    inherited = read_config_yaml(path.parent / base, _seen + (path.resolve(),))
    for key, value in raw.items():
        if value is None and isinstance(inherited.get(key), dict):  # `optim:` with its keys lost or forgotten
            raise TopoatError(
                f"config file {path}: '{key}:' is empty, which would drop the {key} section of its base; "
                f"give its keys, or remove the line to keep the base's (--set {key}=null drops it on purpose)"
            )
    return merge_sections(inherited, raw)


def merge_sections(base: dict, over: dict) -> dict:
    """`over` merged into `base`: mappings key by key, anything else (lists, null) replaced whole."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_sections(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None
) -> TrainConfig:
    raw = dict(data or {}) if path is None else read_config_yaml(preset_path(path, "configs"))
    raw = apply_overrides(raw, list(overrides or []))
    return from_dict(TrainConfig, raw).validate()


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
