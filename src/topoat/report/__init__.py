"""The report of finished runs: results and topology tables, matplotlib pictures, report.md.

`write_report([study_or_run_folder, ...], out)` reads each folder's results.json (a study's, holding
several runs, or a single run's), analyses every run's last checkpoint against its reference (standard)
model on a fixed held-out test set (see `topoat.evaluation.graph_metrics`) and writes into `out`:
  report.md                    results (mean ± std over seeds), paired TRAIN - base differences per
                               seed, the natural/robust frontier, topology metrics, the pictures
  report.html                  the same page for a browser, self-contained (pictures inline, base64)
  analysis.json                the topology metrics, per run
  figures/tsne.png             natural and adversarial t-SNE maps, one column per model
  figures/accuracy.png         validation natural and robust accuracy per epoch
  figures/topology.png         validation graph KL and kNN overlap to the reference per epoch
  figures/tradeoff.png         test natural vs robust accuracy, one point per run (several AT runs only)
  figures/lambda.png           accuracy against the TRAIN weight (three or more weights of one method)
  figures/frontier-ATTACK.png  each TRAIN run against its base method's own trade-off (`topoat.report.frontier`)

The modules, in the order write_report uses them:
  collect   the runs of the folders, grouped by seed, each with its reference model
  measurements  topology metrics and t-SNE maps of the checkpoints (the part that runs the models)
  stats     mean ± std over seeds, TRAIN runs paired with their base method by seed
  tables    the markdown tables of report.md, and the text topology table of `topoat analyze`
  figures   the pictures
  html      report.md as one self-contained HTML page
  write     write_report: assembles report.md and writes the files
"""

from ..table_format import markdown_table
from .collect import Run, lambda_ablation
from .figures import plot_lambda_ablation
from .measurements import MAX_TSNE_COLUMNS, ReportSettings, tsne_selection
from .stats import format_spread
from .tables import format_topology_table, paired_section
from .write import frontier_sections, write_report

__all__ = [
    "MAX_TSNE_COLUMNS",
    "ReportSettings",
    "Run",
    "format_spread",
    "format_topology_table",
    "frontier_sections",
    "lambda_ablation",
    "markdown_table",
    "paired_section",
    "plot_lambda_ablation",
    "tsne_selection",
    "write_report",
]
