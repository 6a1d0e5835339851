"""The TRAIN regularizer: affinity graphs of a batch under a kernel, and the KL between two of them.

`TopologyLoss()(student, teacher)` is all a user needs in their own loop:

    topo = TopologyLoss()  # the softmax-cosine graph, temperature 0.1; or TopologyLoss(Perplexity(30))
    loss = base_loss + lam * topo(student_features, teacher_features.detach())

kernels.py holds the kernels (one class each, registered by name), graphs.py the graphs and the KL
between them, loss.py the loss, neighbours.py the kNN overlap the analysis reports.
"""

from .graphs import (
    CENTERINGS,
    DIVERGENCES,
    Centering,
    Divergence,
    affinity_log_probs,
    as_kernel,
    class_mask,
    entropy_excess,
    graph_divergence,
    graph_kl,
    log_kernel,
    row_entropy,
    temperature_for_perplexity,
)
from .kernels import (
    DEFAULT_PERPLEXITY,
    DEFAULT_TEMPERATURE,
    KERNELS,
    Cosine,
    Gaussian,
    Kernel,
    Perplexity,
    SoftmaxCosine,
    StudentT,
    kernel_from_settings,
    make_kernel,
    perplexity_precisions,
    register_kernel,
)
from .loss import TopologyLoss
from .neighbours import knn_indices, knn_overlap

__all__ = [
    "CENTERINGS",
    "DEFAULT_PERPLEXITY",
    "DEFAULT_TEMPERATURE",
    "DIVERGENCES",
    "KERNELS",
    "Centering",
    "Cosine",
    "Divergence",
    "Gaussian",
    "Kernel",
    "Perplexity",
    "SoftmaxCosine",
    "StudentT",
    "TopologyLoss",
    "affinity_log_probs",
    "as_kernel",
    "class_mask",
    "entropy_excess",
    "graph_divergence",
    "graph_kl",
    "kernel_from_settings",
    "knn_indices",
    "knn_overlap",
    "log_kernel",
    "make_kernel",
    "perplexity_precisions",
    "register_kernel",
    "row_entropy",
    "temperature_for_perplexity",
]
