import math

import numpy as np
import pytest
import torch
from conftest import fp32_neighbour_slack
from scipy.optimize import brentq
from scipy.special import xlogy

from topoat import TopologyLoss
from topoat.topology import affinity_log_probs, knn_overlap, perplexity_precisions


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


def sharp_reference_loss(student, teacher, kernel, temperature=0.1, perplexity=30.0):
    """softmax-cosine and perplexity graphs from their definitions in float64: exp(cos / T) per row, and
    per-row Gaussians whose precision scipy's root finder (not bisection) sets to the target entropy."""

    def probs(z):
        n = len(z)
        off = ~np.eye(n, dtype=bool)
        if kernel == "softmax-cosine":
            unit = z / np.linalg.norm(z, axis=1, keepdims=True)
            logits = (unit @ unit.T) / temperature
        else:
            d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
            logits = np.zeros((n, n))
            for i in range(n):
                d = d2[i, off[i]]

                def entropy_gap(log_b, d=d):
                    w = np.exp(-np.exp(log_b) * (d - d.min()))
                    p = w / w.sum()
                    return -xlogy(p, p).sum() - math.log(perplexity)

                logits[i] = -np.exp(brentq(entropy_gap, -40, 40, xtol=1e-14)) * d2[i]
        p = np.where(off, np.exp(logits - logits.max(1, keepdims=True)), 0.0)
        return p / p.sum(1, keepdims=True)

    p_s, p_t = probs(student), probs(teacher)
    off = ~np.eye(len(student), dtype=bool)
    return float((p_t[off] * np.log(p_t[off] / p_s[off])).sum() / len(student))


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_softmax_cosine_matches_definition(temperature):
    rng = np.random.default_rng(1)
    student, teacher = np.abs(rng.normal(size=(9, 5))), np.abs(rng.normal(size=(9, 7)))  # post-ReLU-like
    got = TopologyLoss("softmax-cosine", temperature=temperature)(
        torch.tensor(student, dtype=torch.float32), torch.tensor(teacher, dtype=torch.float32)
    )
    assert got.item() == pytest.approx(
        sharp_reference_loss(student, teacher, "softmax-cosine", temperature), rel=1e-4, abs=1e-6
    )


@pytest.mark.parametrize("perplexity", [3.0, 7.5])
def test_perplexity_matches_definition(perplexity):
    rng = np.random.default_rng(2)
    student, teacher = rng.normal(size=(12, 5)), 3.0 * rng.normal(size=(12, 8))  # another scale on purpose
    got = TopologyLoss("perplexity", perplexity=perplexity)(
        torch.tensor(student, dtype=torch.float32), torch.tensor(teacher, dtype=torch.float32)
    )
    expected = sharp_reference_loss(student, teacher, "perplexity", perplexity=perplexity)
    assert got.item() == pytest.approx(expected, rel=1e-3, abs=1e-5)


def test_perplexity_rows_have_the_target_entropy():
    torch.manual_seed(0)
    z = torch.relu(torch.randn(64, 32)) * 10
    logp = affinity_log_probs(z, "perplexity", perplexity=12.0)
    entropy = -(logp.exp() * logp.masked_fill(torch.eye(64, dtype=torch.bool), 0.0)).sum(1)
    assert torch.allclose(entropy, torch.full_like(entropy, math.log(12.0)), atol=1e-4)


def test_perplexity_precision_is_detached():
    torch.manual_seed(0)
    student, teacher = torch.randn(10, 4, requires_grad=True), torch.randn(10, 4)
    TopologyLoss("perplexity", perplexity=4.0)(student, teacher).backward()
    # the same loss with the precisions frozen as constants: gradients agree only if they were detached
    z = student.detach().clone().requires_grad_(True)
    allowed = ~torch.eye(10, dtype=torch.bool)

    def graph(f, grad):
        d2 = ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1)
        b = perplexity_precisions(d2.detach(), 4.0, allowed)
        return torch.log_softmax((-b[:, None] * d2).masked_fill(~allowed, float("-inf")), dim=1)

    s, t = graph(z, True), graph(teacher, False)
    ((t.exp() * (t - s)).masked_fill(~allowed, 0.0).sum() / 10).backward()
    assert torch.allclose(student.grad, z.grad, rtol=1e-3, atol=1e-6)


def test_perplexity_needs_enough_samples_and_sharp_kernels_check_their_parameters():
    loss = TopologyLoss("perplexity", perplexity=9.0)
    with pytest.raises(ValueError, match="more than 10 samples, got 10"):
        loss(torch.randn(10, 3), torch.randn(10, 3))
    assert torch.isfinite(loss(torch.randn(11, 3), torch.randn(11, 3)))
    for bad in ({"temperature": 0.0}, {"temperature": float("nan")}, {"perplexity": 1.0}, {"perplexity": -3}):
        with pytest.raises(ValueError):
            TopologyLoss("softmax-cosine", **bad)


def test_sharp_kernels_are_sharper_than_cosine_on_post_relu_features():
    torch.manual_seed(0)
    z = torch.relu(torch.randn(128, 64))
    entropy = {}
    for kernel in ("cosine", "softmax-cosine", "perplexity"):
        logp = affinity_log_probs(z, kernel)
        entropy[kernel] = float(-(logp.exp() * logp.masked_fill(torch.eye(128, dtype=torch.bool), 0.0)).sum(1).mean())
    assert entropy["cosine"] > math.log(127) - 0.01  # nearly uniform
    assert entropy["softmax-cosine"] < entropy["cosine"] - 0.3
    assert entropy["perplexity"] == pytest.approx(math.log(30), abs=1e-3)


ALL_KERNELS = [
    ("cosine", {}),
    ("gaussian", {}),
    ("student-t", {}),
    ("softmax-cosine", {}),
    ("perplexity", {"perplexity": 2.5}),
]


@pytest.mark.parametrize("kernel,kw", ALL_KERNELS, ids=[k for k, _ in ALL_KERNELS])
def test_identical_is_zero_and_gradient_reaches_student_only(kernel, kw):
    torch.manual_seed(0)
    z = torch.randn(8, 6)
    assert TopologyLoss(kernel, **kw)(z, z).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(8, 6, requires_grad=True)
    teacher = torch.randn(8, 3, requires_grad=True)
    loss = TopologyLoss(kernel, **kw)(student, teacher)
    loss.backward()
    assert loss.item() > 0
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert teacher.grad is None


@pytest.mark.parametrize("kernel,kw", ALL_KERNELS, ids=[k for k, _ in ALL_KERNELS])
def test_degenerate_inputs_are_finite(kernel, kw):
    loss = TopologyLoss(kernel, **kw)
    zeros = torch.zeros(4, 5, requires_grad=True)
    dup = torch.ones(4, 5, requires_grad=True)
    for student in (zeros, dup):
        teacher = torch.randn(4, 5)
        value = loss(student, teacher)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(student.grad).all()
    if kernel != "perplexity":  # a perplexity above 1 needs at least 3 samples
        two = loss(torch.randn(2, 3), torch.randn(2, 3))  # n = 2: one neighbour per row, KL = 0
        assert two.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        loss(torch.randn(1, 3), torch.randn(1, 3))


@pytest.mark.parametrize("kernel,kw", ALL_KERNELS, ids=[k for k, _ in ALL_KERNELS])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_features_give_nan_not_a_perfect_score(kernel, kw, bad):
    # one bad value used to make every row invalid, and the mean over no rows was 0, the best score
    torch.manual_seed(0)
    loss = TopologyLoss(kernel, **kw)
    good = torch.randn(8, 6)
    broken = good.clone()
    broken[3, 2] = bad
    assert torch.isnan(loss(broken, torch.randn(8, 6)))
    assert torch.isnan(loss(torch.randn(8, 6), broken))
    assert torch.isnan(loss.rows(broken, torch.randn(8, 6), n_rows=4))
    assert torch.isfinite(loss(good, torch.randn(8, 6)))


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
    # numpy's generator gives these numbers on every CPU; torch.randn's differ between ATen's AVX2 and
    # other builds, and its seed-0 draw held a sample whose 10th and 11th neighbours were 1.5e-6 apart
    # (relative), which fp32's rounding of the distances may order either way
    z = torch.tensor(np.random.default_rng(0).normal(size=(200, 16)), dtype=torch.float32)
    assert knn_overlap(z, z, k=10) == 1.0  # one computation, twice
    # distances scaled (and the points shifted): the same neighbours, but for pairs fp32 cannot order
    slack, _ = fp32_neighbour_slack([z, z * 3 + 1], k=10)
    assert knn_overlap(z, z * 3 + 1, k=10) == pytest.approx(1.0, abs=slack + 1e-6)
    shuffled = z[torch.randperm(200, generator=torch.Generator().manual_seed(0))]
    assert knn_overlap(z, shuffled, k=10) < 0.1


@pytest.mark.parametrize("class_aware", ["off", "within"])
@pytest.mark.parametrize("kernel,kw", ALL_KERNELS, ids=[k for k, _ in ALL_KERNELS])
def test_terms_equal_one_loss_per_feature_set_in_value_and_gradient(kernel, kw, class_aware):
    # TRAIN's natural and adversarial terms in one call (the cosine kernels batched, the others one by one)
    torch.manual_seed(0)
    labels = torch.arange(12) % 3
    teacher = torch.randn(12, 5)
    nat, adv = (torch.randn(12, 2, 4, requires_grad=True) for _ in range(2))  # flattened inside, as feature maps
    loss = TopologyLoss(kernel, class_aware, **kw)
    fused = loss.terms([nat, adv], teacher, labels)
    fused_grads = torch.autograd.grad((fused * torch.tensor([3.0, 7.0])).sum(), [nat, adv])
    apart = torch.stack([loss(nat, teacher, labels), loss(adv, teacher, labels)])
    apart_grads = torch.autograd.grad((apart * torch.tensor([3.0, 7.0])).sum(), [nat, adv])
    torch.testing.assert_close(fused, apart, rtol=1e-4, atol=1e-6)
    for f, a in zip(fused_grads, apart_grads, strict=True):
        torch.testing.assert_close(f, a, rtol=1e-4, atol=1e-6)


def test_terms_mark_only_the_feature_set_that_is_not_finite():
    teacher = torch.randn(6, 3)
    bad = torch.randn(6, 4)
    bad[2, 1] = float("nan")
    values = TopologyLoss().terms([torch.randn(6, 4), bad], teacher)
    assert torch.isfinite(values[0]) and torch.isnan(values[1])
    with pytest.raises(ValueError, match="samples"):
        TopologyLoss().terms([torch.randn(6, 4), torch.randn(5, 4)], teacher)
    with pytest.raises(ValueError, match="stacked"):
        affinity_log_probs(torch.randn(2, 6, 4), "gaussian", stacked=True)


@pytest.mark.parametrize("scale", [1e19, 1e30, 1e37])
@pytest.mark.parametrize(
    "kernel,kw", [("cosine", {}), ("gaussian", {}), ("student-t", {}), ("softmax-cosine", {}), ("perplexity", {})]
)
def test_features_near_the_fp32_limit_give_the_float64_loss(kernel, kw, scale):
    # squares of 1e19 overflow fp32 in a sum of a few terms: the graphs were all zeros (a loss of exactly 0)
    # or, for the cosine kernels, uniform; the kernels now work on features scaled by a power of two
    rng = np.random.default_rng(2)
    student, teacher = rng.normal(size=(9, 5)), rng.normal(size=(9, 7))
    got = TopologyLoss(kernel, perplexity=3.0)(
        torch.tensor(student * scale, dtype=torch.float32), torch.tensor(teacher * scale, dtype=torch.float32)
    )
    if kernel in ("softmax-cosine", "perplexity"):  # both graphs are the same for any scale of the features
        want = sharp_reference_loss(student, teacher, kernel, perplexity=3.0)
    elif kernel == "student-t":  # 1 / (1 + d^2) is not: the reference works on the scaled features
        want = reference_loss(student * scale, teacher * scale, kernel)
    else:
        want = reference_loss(student, teacher, kernel)
    assert math.isfinite(got.item())
    assert got.item() == pytest.approx(want, rel=1e-3, abs=1e-6)
