"""`write_report`: report.md, report.html, analysis.json and figures/*.png for the runs of study or run folders."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import TopoatError
from ..files import write_text_atomic
from ..runs.results import as_entry
from .collect import Run, assign_references, collect_runs
from .figures import plot_accuracy_curves, plot_lambda_ablation, plot_topology_curves, plot_tradeoff, plot_tsne
from .html import markdown_to_html
from .measurements import Analysis, ReportSettings, analyse_runs
from .tables import fewer_images_notes, paired_section, results_section, skipped_pairs_notes, topology_section

Picture = tuple[str, Path, str]  # heading, file, caption


def write_report(
    run_dirs: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    reference: str | Path | None = None,
    settings: ReportSettings | None = None,
    echo: Callable[[str], None] = print,
) -> Path:
    """Write report.md, report.html (the same page with its pictures inline), analysis.json and
    figures/*.png for the runs in `run_dirs` into `out` (default: the only run folder given). Returns the
    path of report.md."""
    from ..runs.folder import write_json_atomic

    settings = settings or ReportSettings()
    out = _check_arguments(run_dirs, out, reference, settings)
    runs, info = collect_runs(run_dirs)
    if not runs:
        raise TopoatError("report: no runs in " + ", ".join(map(str, run_dirs)))
    assign_references(runs, reference)
    figures = out / "figures"
    try:
        figures.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TopoatError(f"report: cannot create {out}: {e.strerror}") from None

    for note in skipped_pairs_notes(runs):  # said now as well as in the report: a pairing the user may expect
        echo(f"report: note: {note}")
    analysis = analyse_runs(runs, settings, echo)
    dataset = info["datasets"][0]
    threat = runs[0].threat
    threat_text = f"{threat.get('norm', '?')} eps={threat.get('eps', 0):.4g}"
    title = f"{dataset}, {threat_text}"
    pictures = _tsne_picture(analysis, figures, dataset) + _run_pictures(runs, figures, title, settings.k)
    frontiers = frontier_sections(runs, figures, title)

    document = {
        "dataset": dataset,
        "threat": threat,
        "n": analysis.n,
        "k": settings.k,
        "attack": analysis.attack,
        "graph_size": settings.graph_size,
        "seed": settings.seed,
        "runs": analysis.metrics,
    }
    write_json_atomic(document, out / "analysis.json")
    text = _markdown(runs, info, analysis, pictures, settings, out, dataset, threat_text, frontiers)
    report = out / "report.md"
    write_text_atomic(report, text)
    page = out / "report.html"  # the same, self-contained, for a browser
    write_text_atomic(page, markdown_to_html(text, out))
    echo(f"report: {report} (and {page.name}, for a browser)")
    return report


def _check_arguments(
    run_dirs: Sequence[str | Path], out: str | Path | None, reference: str | Path | None, settings: ReportSettings
) -> Path:
    """Where the report goes; refuses what would fail only after minutes of analysis."""
    if not run_dirs:
        raise TopoatError("report: give at least one study or run folder")
    if out is None:
        if len(run_dirs) > 1:
            raise TopoatError("report: several folders given; choose where the report goes with --out")
        out = run_dirs[0]
    if settings.n <= 2 * settings.k or settings.k < 1:
        raise TopoatError(f"report: --n must be more than twice --k (got n={settings.n}, k={settings.k})")
    if settings.attack_steps < 1 or settings.tsne_points < 10:
        raise TopoatError("report: --attack-steps must be >= 1 and --tsne-points >= 10")
    if reference is not None and not Path(reference).is_file():
        raise TopoatError(f"report: reference checkpoint not found: {reference}")
    return Path(out)


def _tsne_picture(analysis: Analysis, figures: Path, dataset: str) -> list[Picture]:
    if not analysis.tsne or analysis.labels is None:  # the labels are set whenever maps were drawn
        return []
    attack = analysis.attack.upper()
    path = plot_tsne(
        analysis.tsne,
        analysis.labels,
        analysis.class_names,
        figures / "tsne.png",
        attack,
        f"t-SNE of penultimate features, {dataset} test images (top) and their "
        f"{attack} examples against each model (bottom), coloured by true class",
    )
    return [
        (
            "Representations: natural and adversarial test images",
            path,
            "Each column is one model; natural (top) and adversarial (bottom) points share one "
            "map per model, so an adversarial point inside another class's cluster is one the "
            "attack moved there. The accuracies in the titles are on the plotted images, from the "
            "report's own attack (its random start differs from the evaluation's).",
        )
    ]


def _run_pictures(runs: Sequence[Run], figures: Path, title: str, k: int) -> list[Picture]:
    """The pictures drawn from the runs' own records (metrics.jsonl, results.json), those with anything
    to draw."""
    plots = [
        (
            "Accuracy per epoch",
            "accuracy.png",
            lambda p: plot_accuracy_curves(runs, p, f"Validation accuracy per epoch ({title})"),
            "Mean over seeds, band ± one std where there are several.",
        ),
        (
            "Topology per epoch",
            "topology.png",
            lambda p: plot_topology_curves(
                runs, p, "Topology to the reference (standard) model per epoch, validation images", k
            ),
            "Logged by runs that know a reference model (a TRAIN run's teacher, or validation.reference).",
        ),
        (
            "Natural vs robust accuracy",
            "tradeoff.png",
            lambda p: plot_tradeoff(runs, p, f"Trade-off on the test set ({title})"),
            "One point per adversarially trained run; λ is the TRAIN weight (0 = the base method).",
        ),
        (
            "TRAIN weight ablation",
            "lambda.png",
            lambda p: plot_lambda_ablation(runs, p, f"Accuracy against the TRAIN weight ({title})"),
            "Mean ± one std over seeds at each λ; λ = 0 is the base method without TRAIN.",
        ),
    ]
    pictures = []
    for heading, filename, plot, caption in plots:
        path = plot(figures / filename)
        if path is not None:
            pictures.append((heading, path, caption))
    return pictures


def frontier_sections(runs: Sequence[Run], figures: Path, title: str) -> list[tuple[str, str, Path]]:
    """(heading, text, picture) of the natural/robust frontier under each attack the base curves ran,
    AutoAttack's APGD-CE + APGD-T first."""
    from .frontier import HEADLINE_ATTACK, frontier, frontier_section, plot_frontier

    scored = [part for r in runs for part in as_entry(r.entry).checkpoints.values()]
    attacks = [HEADLINE_ATTACK] + [
        a for a in dict.fromkeys(a for part in scored for a in part.robust_acc) if a not in (HEADLINE_ATTACK, "worst")
    ]
    models = sorted({_model_label(r) for r in runs if r.config is not None and r.method != "standard"})
    if models:  # the same study is run with more than one network: say which one each picture shows
        title = f"{title}; {', '.join(models)}"
    sections = []
    for attack in attacks:
        f = frontier(runs, attack)
        if f is None or not f.points:
            continue
        slug = re.sub(r"[^a-z0-9]+", "-", attack.lower()).strip("-")
        path = plot_frontier(f, figures / f"frontier-{slug}.png", f"Natural/robust frontier under {attack} ({title})")
        sections.append((f"Frontier under {attack}", frontier_section(f), path))
    return sections


def _model_label(run: Run) -> str:
    """e.g. `preact-resnet18 width=16` (the config's arch and its model.args)."""
    assert run.config is not None
    model = run.config.model
    return " ".join([model.arch, *(f"{k}={v}" for k, v in sorted(model.args.items()))])


def _markdown(
    runs: Sequence[Run],
    info: dict,
    analysis: Analysis,
    pictures: Sequence[Picture],
    settings: ReportSettings,
    out: Path,
    dataset: str,
    threat_text: str,
    frontiers: Sequence[tuple[str, str, Path]] = (),
) -> str:
    def relative(path: Path) -> str:  # links that still work when the report folder is moved
        return Path(os.path.relpath(path, out)).as_posix()

    parts = [
        f"# topoat report: {dataset}, {threat_text}",
        "",
        "Runs from " + ", ".join(f"`{s}`" for s in info["sources"]) + ". Accuracies in percent on the "
        "fixed test subset each run was evaluated on (last checkpoint); mean ± sample std over seeds "
        "(runs named `NAME-sK`).",
        "",
    ]
    parts += _results_part(runs, info["failed"])
    for heading, text, path in frontiers:
        parts += ["", f"## {heading}", "", text, "", f"![{heading}]({relative(path)})"]
    if analysis.metrics:
        parts += _topology_part(runs, analysis, settings)
    for note in analysis.notes:
        parts += ["", f"- {note}"]
    if pictures:
        parts += ["", "## Pictures"]
        for heading, path, caption in pictures:
            parts += ["", f"### {heading}", "", f"![{heading}]({relative(path)})", "", caption]
    return "\n".join(parts) + "\n"


def _results_part(runs: Sequence[Run], failed: dict[str, str]) -> list[str]:
    parts = ["## Results", "", results_section(runs)]
    parts += [line for note in fewer_images_notes(runs) for line in ("", note)]
    if any((best := r.scores("best")) is not None and best.natural_acc is not None for r in runs):
        parts += ["", "Best checkpoint by validation robust accuracy:", "", results_section(runs, "best")]
    paired = paired_section(runs)
    if paired:
        parts += [
            "",
            "### TRAIN minus its base method, per seed",
            "",
            "Paired by seed (same initialisation and data order); points of accuracy; `-` where one of "
            "the pair did not run that attack.",
            "",
            paired,
        ]
    parts += [line for note in skipped_pairs_notes(runs) for line in ("", f"- {note}")]
    for name, why in failed.items():
        parts += ["", f"- **{name} failed**: {why}"]
    return parts


def _topology_part(runs: Sequence[Run], analysis: Analysis, settings: ReportSettings) -> list[str]:
    return [
        "",
        "## Topology against the standard model",
        "",
        f"On {analysis.n} held-out test images (seed {settings.seed}), penultimate features, each model "
        f"against its reference (standard) model. Graph KL: the TRAIN loss between cosine affinity graphs "
        f"of {min(settings.graph_size, analysis.n)} images (0 = identical neighbourhoods; lower is closer); "
        "adversarial: "
        f"the model's features of {analysis.attack.upper()} examples made against itself, against the "
        f"reference's natural graph. kNN overlap: mean Jaccard overlap of the {settings.k} nearest "
        f"neighbours (1 = identical). Trustworthiness (scikit-learn, k={settings.k}): the reference as "
        f"the original space, the model as the embedding (1 = no false neighbours; about 0.5 = "
        f"unrelated). The reference's own row is the sanity check (0, 1, 1).",
        "",
        topology_section(runs, analysis, settings.k),
    ]
