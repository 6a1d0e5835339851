"""The accuracy of a saved model under attack, from its file to its numbers: what `topoat eval` does.

`evaluate_checkpoint` loads a topoat checkpoint (or a foreign model), rebuilds its test data and threat
model, runs the attacks on a fixed seeded choice of test images, optionally the gradient-masking checks,
and writes the result where asked (a JSON file, a run's results.json)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..attacks.threat import ThreatModel
from ..data import ImageDataset
from ..errors import TopoatError
from ..files import check_output_folder, write_text_atomic
from .accuracy import EvalResult, evaluate, format_result, held_out_subset, parse_attack
from .sanity import SanityReport
from .target import Target, load_target, recorded_threat

Echo = Callable[[str], None]


@dataclass
class CheckpointEvaluation:
    """What `evaluate_checkpoint` measured: on `result.n` test images of `target.data`, under `threat`."""

    target: Target
    threat: ThreatModel
    result: EvalResult
    sanity: SanityReport | None = None  # the gradient-masking checks, when asked for
    merged: str | None = None  # the checkpoint of the run the scores went into ("last" or "best")

    @property
    def passed(self) -> bool:
        """False when a sanity check failed: the robust accuracies are then probably overestimated."""
        return self.sanity is None or self.sanity.passed


def evaluate_checkpoint(
    checkpoint: str | Path | None,
    attacks: Sequence[str] = ("pgd-20",),
    *,
    dataset: str | None = None,
    root: str | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
    arch_args: dict | None = None,
    model: str | None = None,
    norm: str | None = None,
    eps: float | None = None,
    step_size: float | None = None,
    n: int | None = 1000,
    seed: int = 0,
    batch_size: int = 500,
    autoattack_n: int | None = None,
    device: str = "auto",
    sanity: bool = False,
    sanity_steps: int = 20,
    reference: str | Path | None = None,
    json_path: str | Path | None = None,
    results: str | Path | None = None,
    run: str | None = None,
    progress: bool = False,
    echo: Echo | None = None,
) -> CheckpointEvaluation:
    """Natural and robust accuracy of the model in `checkpoint` on a fixed choice of `n` test images
    (chosen by `seed`), as `topoat eval` measures and prints it.

    The checkpoint is a topoat checkpoint, a state_dict written by `topoat export`, a plain state_dict of
    architecture `arch` (with `num_classes`, `arch_args`), or weights for `model` ("MODULE:FACTORY", any
    importable model; the checkpoint is then optional). `dataset`, `norm` and `eps` default to the ones it
    records. `sanity` adds the gradient-masking checks (`reference`: a standard model for the transfer
    check); `json_path` writes the numbers to a JSON file; `results` with `run` merges them into that run
    of a topoat results.json. What the command prints goes to `echo` (e.g. `print`). Every mistake in the
    arguments is a one-line TopoatError before any file is read or any attack runs."""
    say = echo or _silent
    _check_request(attacks, sanity, reference, results, run, arch, model, json_path)
    from ..runtime import resolve_device

    on = resolve_device(device)
    target = load_target(
        None if checkpoint is None else str(checkpoint),
        on,
        dataset=dataset,
        root=root,
        arch=arch,
        num_classes=num_classes,
        factory=model,
        arch_args=arch_args,
    )
    threat = recorded_threat(target.record, norm, eps, step_size)
    if sanity and threat.eps == 0:
        raise TopoatError("eval: --sanity needs --eps > 0")
    if results and run is not None:  # a results.json that does not fit fails before the attacks run
        _check_results_fit(Path(results), run, checkpoint, target, threat, seed)
    standard = _sanity_reference(reference, target.data, on)
    x, y = held_out_subset(target.data, n, seed, on)
    _say_what(say, target, x, seed, threat)
    res = evaluate(
        target.model,
        x,
        y,
        list(attacks),
        norm=threat.norm,
        eps=threat.eps,
        step_size=step_size,
        batch_size=batch_size,
        progress=progress,
        autoattack_n=autoattack_n,
        seed=seed,
    )
    say(format_result(res))
    for note in res.notes:
        say(f"note: {note}")
    outcome = CheckpointEvaluation(target, threat, res)
    if sanity:
        from . import sanity as checks  # looked up when called, so a test can stand in for the checks

        outcome.sanity = checks.sanity_checks(
            target.model,
            x,
            y,
            norm=threat.norm,
            eps=threat.eps,
            step_size=step_size,
            steps=sanity_steps,
            reference=standard,
            autoattack_n=autoattack_n,
            known=res,
            batch_size=batch_size,
            progress=progress,
            seed=seed,
        )
        say("")
        say(outcome.sanity.format())
    if json_path:
        document = eval_document(outcome, checkpoint, step_size, seed)
        write_text_atomic(Path(json_path), json.dumps(document, indent=2) + "\n")
    if results and run is not None:
        outcome.merged = _merge(outcome, Path(results), run, checkpoint)
        say(f"merged into {results}: run {run} ({outcome.merged} checkpoint)")
    return outcome


def eval_document(
    outcome: CheckpointEvaluation, checkpoint: str | Path | None, step_size: float | None, seed: int
) -> dict:
    """The JSON of an evaluation (`topoat eval --json`): the accuracies and what they were measured on."""
    document = dict(
        outcome.result.as_dict(),
        checkpoint=str(checkpoint),
        dataset=outcome.target.data.name,
        norm=outcome.threat.norm,
        eps=outcome.threat.eps,
        step_size=outcome.threat.step(step_size),
        seed=seed,
    )
    if outcome.sanity is not None:
        document["sanity"] = outcome.sanity.as_dict()
    return document


def _silent(line: str) -> None:
    pass


def _check_request(
    attacks: Sequence[str],
    sanity: bool,
    reference: str | Path | None,
    results: str | Path | None,
    run: str | None,
    arch: str | None,
    model: str | None,
    json_path: str | Path | None,
) -> None:
    """Every check that needs no file read: a mistake costs no loading."""
    if not attacks:
        raise TopoatError("eval: --attacks lists no attack")
    for a in attacks:
        parse_attack(a)
    if (results is None) != (run is None):
        raise TopoatError("eval: --results and --run go together")
    if reference and not sanity:
        raise TopoatError("eval: --reference is used by --sanity only")
    if results and (arch is not None or model is not None):
        raise TopoatError("eval: --results merges into a topoat run; a model from --arch/--model has none")
    check_output_folder("--json", json_path)


def _check_results_fit(
    results: Path, run: str, checkpoint: str | Path | None, target: Target, threat: ThreatModel, seed: int
) -> None:
    """`results` names a run this checkpoint belongs to, scored on the same threat model and images."""
    from ..runs.merge import find_run_slot

    find_run_slot(results, run, Path(str(checkpoint)), norm=threat.norm, eps=threat.eps, dataset=target.data.name)
    config = target.record.config
    evaluation = config.get("evaluation") if isinstance(config, dict) else None
    run_seed = evaluation.get("seed", seed) if isinstance(evaluation, dict) else seed
    if run_seed != seed:
        raise TopoatError(
            f"eval: the run chose its test images with seed {run_seed}; pass --seed {run_seed} "
            "to merge into its results"
        )


def _sanity_reference(reference: str | Path | None, data: ImageDataset, device: torch.device) -> nn.Module | None:
    """The standard model of the sanity checks' transfer check, refused if it was made for other data."""
    if not reference:
        return None
    from ..runs.checkpoint import load_checkpoint, load_model
    from .target import check_fits

    model = load_model(reference, device)
    check_fits(model, load_checkpoint(reference), data, reference, device, role="--reference")
    return model


def _say_what(say: Echo, target: Target, x: Tensor, seed: int, threat: ThreatModel) -> None:
    epoch = f", epoch {target.record.epoch}" if target.record.epoch is not None else ""
    for note in target.notes:
        say(f"note: {note}")
    say(
        f"{target.label} ({target.record.arch}{epoch}) on {target.data.name} test: {x.shape[0]} images "
        f"(seed {seed}), {threat}"
    )


def _merge(outcome: CheckpointEvaluation, results: Path, run: str, checkpoint: str | Path | None) -> str:
    from ..runs.merge import merge_evaluation

    return merge_evaluation(
        results,
        run,
        Path(str(checkpoint)),
        outcome.result,
        norm=outcome.threat.norm,
        eps=outcome.threat.eps,
        dataset=outcome.target.data.name,
        sanity=outcome.sanity,
    )
