import pytest
import torch

from topoat import build_model
from topoat.errors import TopoatError

SMALL_ARGS = {
    "small-cnn": {"width": 4, "feature_dim": 8},
    "preact-resnet18": {"width": 4},
    "resnet18": {"width": 4},
    "wrn-34-10": {"depth": 10, "widen_factor": 1},
}


@pytest.mark.parametrize("arch", sorted(SMALL_ARGS))
@pytest.mark.parametrize("shape,classes", [((1, 28, 28), 10), ((3, 32, 32), 100), ((3, 64, 64), 200), ((2, 9, 13), 3)])
def test_every_architecture_any_shape(arch, shape, classes):
    c = shape[0]
    model = build_model(arch, classes, c, [0.5] * c, [0.25] * c, **SMALL_ARGS[arch])
    x = torch.rand(2, *shape)
    logits, feats = model(x, return_features=True)
    assert logits.shape == (2, classes) and feats.shape[0] == 2 and feats.dim() == 2
    assert torch.allclose(model(x), logits)
    assert torch.allclose(model.head(feats), logits)


def test_normalisation_lives_inside():
    torch.manual_seed(0)
    a = build_model("small-cnn", 10, 1, [0.0], [1.0], width=4)
    b = build_model("small-cnn", 10, 1, [0.5], [0.25], width=4)
    b.load_state_dict({k: v for k, v in a.state_dict().items() if k not in ("mean", "std")}, strict=False)
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(b(x), a((x - 0.5) / 0.25), atol=1e-5)


def test_bad_arguments_are_user_errors():
    with pytest.raises(TopoatError, match="unknown architecture"):
        build_model("vgg", 10, 3, [0.5] * 3, [0.5] * 3)
    with pytest.raises(TopoatError, match="unknown argument"):
        build_model("small-cnn", 10, 1, [0.5], [0.5], depth=3)
    with pytest.raises(TopoatError, match="depth"):
        build_model("wrn-34-10", 10, 3, [0.5] * 3, [0.5] * 3, depth=11)


@pytest.mark.parametrize(
    "arch,args,message",
    [
        ("small-cnn", {"width": 0}, "model.args.width must be an integer >= 1 for small-cnn, got 0"),
        ("small-cnn", {"width": -3}, "model.args.width must be an integer >= 1"),
        ("small-cnn", {"feature_dim": 2.5}, "model.args.feature_dim must be an integer >= 1"),
        ("small-cnn", {"batchnorm": "no"}, "model.args.batchnorm must be true or false"),
        ("preact-resnet18", {"num_blocks": [0, 0, 0, 0]}, "model.args.num_blocks must be a list of integers >= 1"),
        ("resnet18", {"num_blocks": "abc"}, "model.args.num_blocks must be a list of integers >= 1"),
        ("wrn-34-10", {"depth": 10, "dropout": 2.0}, r"dropout must be in \[0, 1\), got 2.0"),
        ("wrn-34-10", {"depth": 10, "dropout": -1.0}, r"dropout must be in \[0, 1\)"),
        ("wrn-34-10", {"widen_factor": 0}, "model.args.widen_factor must be an integer >= 1"),
    ],
)
def test_sizes_and_switches_are_checked_when_the_model_is_built(arch, args, message):
    # each of these built a model that failed in its first step, or silently had no layers
    c = 3
    with pytest.raises(TopoatError, match=message):
        build_model(arch, 10, c, [0.5] * c, [0.25] * c, **args)


def test_pointwise_shortcut_is_a_strided_1x1_convolution():
    from topoat.models.base import PointwiseShortcut

    torch.manual_seed(0)
    reference = torch.nn.Conv2d(6, 10, 1, 2, bias=False).double()
    shortcut = PointwiseShortcut(6, 10, 2).double()
    shortcut.load_state_dict(reference.state_dict())  # the same parameters: old checkpoints load
    for size in (7, 8):  # odd sizes keep the last row and column, as the stride-2 kernel does
        x = torch.rand(3, 6, size, size, dtype=torch.float64, requires_grad=True)
        out, expected = shortcut(x), reference(x)
        assert out.shape == expected.shape
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        g = torch.rand_like(out)
        grads = torch.autograd.grad(out, [x, shortcut.weight], g)
        expected_grads = torch.autograd.grad(expected, [x, reference.weight], g)
        for a, b in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_channels_last_backward_of_few_channel_shortcuts_on_cpu():
    # A strided 1x1 convolution in channels-last with few channels hangs or corrupts the heap in torch
    # 2.13's CPU backward; the residual networks' shortcuts avoid that kernel. A subprocess, so a
    # regression fails this test instead of hanging or killing the suite.
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from topoat import build_model\n"
        "for arch, args in [('preact-resnet18', dict(width=4)), ('resnet18', dict(width=4)),\n"
        "                   ('wrn-34-10', dict(depth=10, widen_factor=1))]:\n"
        "    m = build_model(arch, 10, 3, [0.5] * 3, [0.25] * 3, **args).to(memory_format=torch.channels_last)\n"
        "    x = torch.rand(8, 3, 64, 64).contiguous(memory_format=torch.channels_last)\n"
        "    m(x).square().sum().backward()\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
