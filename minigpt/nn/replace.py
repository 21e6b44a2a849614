"""Swapping a model's linear layers for other kinds in place (decode layout, int8), one layer at a time.

    names = plain_linear_names(model)
    replace_layers(model, names, lambda linear, i: Int8Linear(linear))

The walk holds layer names, not layers: each old layer, and its weight, is let go as soon as its
replacement is in place, so a model is never in memory twice over.
"""

from collections.abc import Callable

from torch import nn


def plain_linear_names(model: nn.Module, accept: Callable[[nn.Linear], bool] = lambda linear: True) -> list[str]:
    """The names of model's plain nn.Linear layers (not subclasses such as LoRALinear) that accept() takes,
    in named_modules() order; the model itself is never among them."""
    return [name for name, module in model.named_modules() if name and type(module) is nn.Linear and accept(module)]


def replace_layers(model: nn.Module, names: list[str], build: Callable[[nn.Module, int], nn.Module]) -> None:
    """Put build(layer, i) where the i-th named layer of model was."""
    for i, name in enumerate(names):
        parent, _, attribute = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, attribute, build(getattr(owner, attribute), i))
