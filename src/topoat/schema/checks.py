"""A config's checks across its sections: each a one-line TopoatError naming the key."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..attacks.names import parse_attack  # a misspelt attack fails at validation, not after the training
from ..attacks.threat import ThreatModel
from ..errors import TopoatError
from ..registry import DATASETS, KERNELS, METHODS

if TYPE_CHECKING:
    from .sections import TopologyConfig, TrainConfig

Checks = list[tuple[bool, str]]

# torch's generators take seeds of 64 bits; a margin keeps the derived seeds (val_seed + 1) inside too
SEED_RANGE = "must be an integer between -2**63 and 2**63 (exclusive)"


def seed_fits(seed: int) -> bool:
    return -(2**63) < seed < 2**63


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def validate(cfg: TrainConfig) -> None:
    """Raise the first failed check; fill in what `null` means (the attack's BatchNorm mode)."""
    METHODS.check(cfg.method.name, "method.name")
    DATASETS.check(cfg.data.dataset, "data.dataset")
    if cfg.topology is not None:
        KERNELS.check(cfg.topology.kernel, "topology.kernel")
    checks = [
        *_attack_checks(cfg),
        *_optim_checks(cfg),
        *_run_checks(cfg),
        *_method_checks(cfg),
        *(_topology_checks(cfg.topology, cfg.optim.batch_size) if cfg.topology is not None else []),
        *_evaluation_checks(cfg),
    ]
    if cfg.distillation is not None:
        d = cfg.distillation
        checks += [
            (_finite(d.lambda_) and d.lambda_ >= 0, "distillation.lambda must be >= 0 and finite"),
            (_finite(d.temperature) and d.temperature > 0, "distillation.temperature must be > 0 and finite"),
        ]
    for ok, message in checks:
        if not ok:
            raise TopoatError(f"config: {message}")
    try:
        DATASETS.get(cfg.data.dataset).check_args(cfg.data.args)
    except TopoatError as e:
        raise TopoatError(f"config: {e}") from None
    if cfg.topology is not None:
        _check_kernel(cfg.topology, cfg.optim.batch_size)
    if cfg.attack.eval_mode is None:
        cfg.attack.eval_mode = METHODS.get(cfg.method.name).attack_eval_mode
    for i, spec in enumerate(cfg.evaluation.attacks):
        try:
            parse_attack(spec)
        except TopoatError as e:
            raise TopoatError(f"config: evaluation.attacks[{i}]: {e}") from None


def _attack_checks(cfg: TrainConfig) -> Checks:
    a = cfg.attack
    ThreatModel(a.norm, a.eps, "attack")  # the norm and radius, checked where every threat model is
    return [
        (_finite(a.step_size) and a.step_size > 0, "attack.step_size must be > 0 and finite"),
        (a.steps >= 0, "attack.steps must be >= 0"),
    ]


def _optim_checks(cfg: TrainConfig) -> Checks:
    o = cfg.optim
    return [
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
    ]


def _run_checks(cfg: TrainConfig) -> Checks:
    seeds = [("seed", cfg.seed), ("data.val_seed", cfg.data.val_seed), ("evaluation.seed", cfg.evaluation.seed)]
    return [
        (cfg.runtime.threads is None or cfg.runtime.threads >= 1, "runtime.threads must be >= 1 (or null)"),
        *[(seed_fits(value), f"{key} {SEED_RANGE}, got {value}") for key, value in seeds],
        (_finite(cfg.runtime.ddp_timeout) and cfg.runtime.ddp_timeout > 0, "runtime.ddp_timeout must be > 0"),
        (cfg.validation.n >= 1, "validation.n must be >= 1"),
        (cfg.validation.attack_steps >= 0, "validation.attack_steps must be >= 0"),
        (cfg.data.val_size >= 0, "data.val_size must be >= 0"),
        # a negative padding would crop every image instead (F.pad accepts it)
        (cfg.data.augment.crop_padding >= 0, "data.augment.crop_padding must be >= 0"),
        (cfg.data.train_subset is None or cfg.data.train_subset >= 2, "data.train_subset must be >= 2"),
        (cfg.validation.every >= 1, "validation.every must be >= 1"),
    ]


def _method_checks(cfg: TrainConfig) -> Checks:
    checks = cfg.method.checks()
    awp = cfg.method.awp
    if awp is not None:
        adversarial = [spec.name for spec in METHODS if spec.adversarial]
        checks += [
            (
                METHODS.get(cfg.method.name).adversarial,
                f"method.awp needs an adversarial method ({', '.join(adversarial)})",
            ),
            (_finite(awp.gamma) and awp.gamma >= 0, "method.awp.gamma must be >= 0 and finite"),
            (awp.warmup_epochs >= 0, "method.awp.warmup_epochs must be >= 0"),
        ]
    return checks


def _topology_checks(t: TopologyConfig, batch_size: int) -> Checks:
    return [
        (
            _finite(t.lambda_nat, t.lambda_adv) and t.lambda_nat >= 0 and t.lambda_adv >= 0,
            "topology.lambda_nat and lambda_adv must be >= 0 and finite",
        ),
        (t.memory_bank >= 0, "topology.memory_bank must be >= 0"),
        (_finite(t.entropy_weight) and t.entropy_weight >= 0, "topology.entropy_weight must be >= 0 and finite"),
        (_finite(t.warmup_epochs) and t.warmup_epochs >= 0, "topology.warmup_epochs must be >= 0 and finite"),
        (t.diagnose_every >= 0, "topology.diagnose_every must be >= 0"),
        (t.projection >= 0, "topology.projection must be >= 0 (0: no head)"),
        (
            t.teacher_perplexity is None
            or (_finite(t.teacher_perplexity) and 1 < t.teacher_perplexity < batch_size - 1),
            f"topology.teacher_perplexity must lie between 1 and optim.batch_size - 1 = {batch_size - 1}",
        ),
        (
            t.teacher_perplexity is None or t.kernel == "softmax-cosine",
            "topology.teacher_perplexity sets the softmax-cosine temperature: use kernel softmax-cosine",
        ),
        (_finite(t.temperature) and t.temperature > 0, "topology.temperature must be > 0 and finite"),
        (_finite(t.perplexity) and t.perplexity > 1, "topology.perplexity must be > 1 and finite"),
    ]


def _check_kernel(t: TopologyConfig, batch_size: int) -> None:
    """The kernel builds from its parameters and takes graphs of a batch (checked in every training step
    otherwise, where it ended the run with a traceback)."""
    try:
        kernel = t.build_kernel()
    except (TypeError, ValueError) as e:
        raise TopoatError(f"config: topology.kernel {t.kernel}: {e}") from None
    except TopoatError as e:
        raise TopoatError(f"config: topology.kernel_args: {e}") from None
    problem = kernel.graph_size_problem(batch_size)
    if problem is not None:
        raise TopoatError(f"config: topology.kernel {t.kernel}: {problem} (optim.batch_size, per process under DDP)")


def _evaluation_checks(cfg: TrainConfig) -> Checks:
    e = cfg.evaluation
    step = e.step_size
    return [
        (e.n is None or e.n >= 1, "evaluation.n must be >= 1"),
        (step is None or _finite(step) and step > 0, "evaluation.step_size must be > 0 and finite"),
        (e.batch_size >= 1, "evaluation.batch_size must be >= 1"),
        (e.autoattack_n is None or e.autoattack_n >= 1, "evaluation.autoattack_n must be >= 1"),
    ]
