"""The config's sections as typed dataclasses, with their defaults; `TrainConfig.validate` checks them.

A section that names a registered entry (method.name, topology.kernel, data.dataset) takes that entry's
own settings: a method's subclass of MethodConfig, a kernel's parameters, a data set's `args`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..errors import TopoatError
from ..registry import METHODS
from .checks import validate
from .mapping import from_dict, to_dict

if TYPE_CHECKING:
    from ..topology import Kernel


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
    # the loader's own options, e.g. synthetic's {shape: [1, 28, 28], classes: 10, train: 512, test: 256}
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def display_name(self) -> str:
        """The data set's name in results.json, as `load_configured` names the data set it loads (for
        every loader but npz, which names a data set after its file)."""
        return self.name or self.dataset

    @classmethod
    def resolve_section(cls, data: Any, key: str) -> tuple[type, Any]:
        """Files written before `data.args` have `synthetic_shape`, `_classes`, `_train` and `_test` (every
        data set's, defaults included): they still load, as the synthetic set's args."""
        if not isinstance(data, dict) or not any(k in LEGACY_SYNTHETIC for k in data):
            return cls, data
        data = dict(data)
        legacy = {LEGACY_SYNTHETIC[k]: data.pop(k) for k in list(data) if k in LEGACY_SYNTHETIC}
        if data.get("dataset") == "synthetic":  # the other loaders never read them
            args = data.get("args") or {}
            data["args"] = {**legacy, **args} if isinstance(args, dict) else args
        return cls, data


# data.synthetic_* (before data.args) -> the synthetic loader's argument
LEGACY_SYNTHETIC = {
    "synthetic_shape": "shape",
    "synthetic_classes": "classes",
    "synthetic_train": "train",
    "synthetic_test": "test",
}


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


@dataclass
class AWPConfig:
    gamma: float = 5e-3  # each weight tensor moves by gamma * its own norm
    warmup_epochs: int = 0  # epochs of the plain method before AWP starts


@dataclass
class MethodConfig:
    """The method section. `name` is a registered method (topoat.objectives.register_method); the method's
    own MethodConfig subclass adds its keys (TRADES' and MART's `beta`, PGD-AT's `natural_weight`)."""

    name: str = "pgd-at"
    awp: AWPConfig | None = None  # adversarial weight perturbation around the method (not standard)

    def checks(self) -> list[tuple[bool, str]]:
        """(ok, message) pairs for the method's own keys, checked with the rest of the config."""
        return []

    @classmethod
    def resolve_section(cls, data: Any, key: str) -> tuple[type, Any]:
        """The registered method's config class for a method section, and the section without the keys
        that belong to another method and hold that method's default (files written before each method
        had its own keys have them all); another method's key set to anything else is an error."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            return cls, data
        name = data.get("name", cls.name)
        METHODS.check(name, f"{key}.name")
        own = METHODS.get(name).config
        kept = {k: v for k, v in data.items() if not _foreign_default(k, v, own, name, key)}
        return own, kept


def _foreign_default(item: str, value: Any, own: type, name: str, key: str) -> bool:
    """Whether `item` belongs to other methods only and holds their default (then it is dropped)."""
    if item in _field_defaults(own):
        return False
    owners = [spec for spec in METHODS if item in _field_defaults(spec.config)]
    if not owners:
        return False  # an unknown key: from_dict says so
    if value == _field_defaults(owners[0].config)[item]:
        return True
    raise TopoatError(f"config: {key}.{item} applies to {', '.join(s.name for s in owners)} only, not {name}")


def _field_defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls)}


@dataclass
class TopologyConfig:
    teacher: str | None = None  # checkpoint path; a study fills it from a run name
    # The frontier study's winner (docs/RESULTS.md): the sharp softmax-cosine graph at lambda 10.
    lambda_nat: float = 10.0
    lambda_adv: float = 10.0
    kernel: str = "softmax-cosine"  # a registered kernel (topoat.topology.register_kernel)
    # The kernel's parameters: temperature and perplexity for a kernel with a parameter of that name (the
    # others ignore them), any other in kernel_args
    temperature: float = 0.1  # softmax-cosine: p(j|i) proportional to exp(cos(z_i, z_j) / temperature)
    perplexity: float = 30.0  # perplexity: each row's entropy is ln(perplexity) (the t-SNE affinity)
    kernel_args: dict[str, Any] = field(default_factory=dict)
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

    def build_kernel(self) -> Kernel:
        """The configured kernel object, with its parameters."""
        from ..topology import kernel_from_settings  # the kernels import torch; a config alone does not

        shared = {"temperature": self.temperature, "perplexity": self.perplexity}
        return kernel_from_settings(self.kernel, shared, self.kernel_args)


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
    method: MethodConfig = field(default_factory=MethodConfig)  # its method's own subclass once validated
    attack: AttackConfig = field(default_factory=AttackConfig)
    topology: TopologyConfig | None = None
    distillation: DistillationConfig | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def validate(self) -> TrainConfig:
        """Check every section (a one-line TopoatError naming the key) and fill in what null means; the
        method section becomes its method's own config class."""
        cls, data = MethodConfig.resolve_section(to_dict(self.method), "method")
        if type(self.method) is not cls:
            self.method = from_dict(cls, data, "method")
        validate(self)
        return self
