import math

import numpy as np
import pytest
import torch

from topoat import TopologyLoss
from topoat.topology import knn_overlap


def reference_loss(student, teacher, kernel):
    """Straight from the definition, in float64 numpy, loops and all."""
    def kernel_matrix(z):
        n = len(z)
        k = np.zeros((n, n))
        d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
        off = ~np.eye(n, dtype=bool)
        s2 = np.median(d2[off])
        for i in range(n):
            for j in range(n):
                if kernel == "cosine":
                    c = z[i] @ z[j] / (np.linalg.norm(z[i]) * np.linalg.norm(z[j]))
                    k[i, j] = (1 + c) / 2
                elif kernel == "gaussian":
                    k[i, j] = math.exp(-d2[i, j] / (2 * s2))
                else:
                    k[i, j] = 1 / (1 + d2[i, j])
        return k

    def probs(z):
        k = kernel_matrix(z)
        np.fill_diagonal(k, 0)
        return k / k.sum(1, keepdims=True)

    p_s, p_t = probs(student), probs(teacher)
    n = len(student)
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += p_t[i, j] * math.log(p_t[i, j] / p_s[i, j])
    return total / n


@pytest.mark.parametrize("kernel", ["cosine", "gaussian", "student-t"])
def test_matches_definition(kernel):
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(5, 3)), rng.normal(size=(5, 4))  # different widths on purpose
    got = TopologyLoss(kernel)(torch.tensor(student, dtype=torch.float32), torch.tensor(teacher, dtype=torch.float32))
    assert got.item() == pytest.approx(reference_loss(student, teacher, kernel), rel=1e-4, abs=1e-7)


def test_hand_computed_cosine():
    # Three 2-D points: x-axis, y-axis, and the opposite of x. Student spreads them evenly instead.
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # cos kernel rows: k(0,1)=0.5, k(0,2)=0 -> p(.|0) = (1, 0) ; p(.|1) = (.5, .5) ; p(.|2) = (0, 1)
    student = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # all identical: every p = 1/2
    loss = TopologyLoss("cosine")(student, teacher)
    # rows 0 and 2: KL((1,0) || (.5,.5)) = log 2 (up to the epsilon); row 1: KL((.5,.5)||(.5,.5)) = 0
    assert loss.item() == pytest.approx(2 * math.log(2) / 3, rel=1e-5)


@pytest.mark.parametrize("kernel", ["cosine", "gaussian", "student-t"])
def test_identical_is_zero_and_gradient_reaches_student_only(kernel):
    torch.manual_seed(0)
    z = torch.randn(8, 6)
    assert TopologyLoss(kernel)(z, z).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(8, 6, requires_grad=True)
    teacher = torch.randn(8, 3, requires_grad=True)
    loss = TopologyLoss(kernel)(student, teacher)
    loss.backward()
    assert loss.item() > 0
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert teacher.grad is None


@pytest.mark.parametrize("kernel", ["cosine", "gaussian", "student-t"])
def test_degenerate_inputs_are_finite(kernel):
    loss = TopologyLoss(kernel)
    zeros = torch.zeros(4, 5, requires_grad=True)
    dup = torch.ones(4, 5, requires_grad=True)
    for student in (zeros, dup):
        teacher = torch.randn(4, 5)
        value = loss(student, teacher)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(student.grad).all()
    two = loss(torch.randn(2, 3), torch.randn(2, 3))  # n = 2: one neighbour per row, KL = 0
    assert two.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        loss(torch.randn(1, 3), torch.randn(1, 3))


def test_bf16_autocast_computes_in_fp32():
    torch.manual_seed(0)
    s, t = torch.randn(16, 8), torch.randn(16, 8)
    ref = TopologyLoss()(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = TopologyLoss()(s.bfloat16(), t.bfloat16())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=0.05)


def test_permutation_invariance():
    torch.manual_seed(1)
    s, t = torch.randn(10, 4), torch.randn(10, 4)
    p = torch.randperm(10)
    assert TopologyLoss()(s[p], t[p]).item() == pytest.approx(TopologyLoss()(s, t).item(), rel=1e-5)


def test_class_aware_masks_only_allowed_pairs():
    torch.manual_seed(0)
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    within = TopologyLoss(class_aware="within")(s, t, y)
    # within-class graphs of the two classes, computed separately, averaged over all 6 rows
    parts = [TopologyLoss()(s[y == c], t[y == c]) * 3 for c in (0, 1)]
    assert within.item() == pytest.approx(sum(parts).item() / 6, rel=1e-5)
    with pytest.raises(ValueError):
        TopologyLoss(class_aware="within")(s, t)


def test_knn_overlap_known_cases():
    torch.manual_seed(0)
    z = torch.randn(200, 16)
    assert knn_overlap(z, z, k=10) == pytest.approx(1.0)
    assert knn_overlap(z, z * 3 + 1, k=10) == pytest.approx(1.0)  # distances scaled: same neighbours
    shuffled = z[torch.randperm(200)]
    assert knn_overlap(z, shuffled, k=10) < 0.1
