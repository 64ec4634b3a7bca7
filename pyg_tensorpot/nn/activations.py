"""Activation functions by name, as TensorNet and HIP-NN configurations spell them."""
import math
from typing import Callable, Dict, Union

import torch
from torch import Tensor


class ShiftedSoftplus(torch.nn.Module):
    r"""SchNet's shifted softplus :math:`\log(1 + e^x) - \log 2` (zero at the origin)."""
    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.softplus(x) - math.log(2.0)


_ACTIVATIONS: Dict[str, Callable[[], torch.nn.Module]] = {
    'silu': torch.nn.SiLU,
    'ssp': ShiftedSoftplus,
    'softplus': torch.nn.Softplus,
    'tanh': torch.nn.Tanh,
    'sigmoid': torch.nn.Sigmoid,
    'mish': torch.nn.Mish,
}


def activation_resolver(activation: Union[str, torch.nn.Module]) -> torch.nn.Module:
    """Returns a fresh activation module for a name such as ``'silu'``, or the module itself."""
    if isinstance(activation, torch.nn.Module):
        return activation
    try:
        return _ACTIVATIONS[activation.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation '{activation}'; choose one of "
                         f"{sorted(_ACTIVATIONS)}") from None
