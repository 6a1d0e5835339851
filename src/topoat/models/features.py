"""Reading a model's representation: its penultimate features, its logits or any named layer.

This sits beside the models so that measuring (analysis) and training objectives both read it from here.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import TopoatError

POOLED = ":pool"  # "<module>:pool": that module's output averaged over its spatial positions


def representation(model: nn.Module, x: Tensor, layer: str) -> tuple[Tensor, Tensor]:
    """(logits, representation) of `x`: "features" is the penultimate layer, "logits" the output,
    any other name a module of the model (read with a forward hook, flattened; with the suffix ":pool",
    averaged over its spatial positions first)."""
    if layer == "features":
        return model(x, return_features=True)
    if layer == "logits":
        logits = model(x)
        return logits, logits
    pooled = layer.endswith(POOLED)
    name = layer.removesuffix(POOLED)
    module = dict(model.named_modules()).get(name)
    if module is None:
        raise ValueError(f"model has no layer named {name!r}")
    captured: list[Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    out = captured[-1]
    if pooled and out.dim() > 2:
        out = out.mean(dim=tuple(range(2, out.dim())))
    return logits, out.flatten(1)


def check_layer(model: nn.Module, layer: str, key: str) -> None:
    """A one-line error naming `key` when `model` has no such layer, before any step is spent."""
    if layer in ("features", "logits") or layer.removesuffix(POOLED) in dict(model.named_modules()):
        return
    names = [name for name, _ in model.named_modules() if name]
    some = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    raise TopoatError(
        f"{key}: the model has no layer {layer!r}; use features, logits or a module name ({some}), "
        f"optionally with {POOLED} to average it over space"
    )
