from typing import Union

import torch
from torch import Tensor

from pyg_tensorpot.nn.activations import activation_resolver
from pyg_tensorpot.nn.tensor_algebra import pack_tensor, packed_squared_norms


class TensorInvariantReadout(torch.nn.Module):
    r"""Turns rank-2 tensor features into invariant scalar features, as TensorNet's readout

    .. math::
        \mathbf{x}_i = \sigma\left(\mathbf{W}\,\operatorname{LN}\left(\left[
        \|I_i\mathbf{1}\|^2 \,\|\, \|\mathbf{A}_i\|^2 \,\|\, \|\mathbf{S}_i\|^2\right]\right)
        + \mathbf{b}\right),

    with squared Frobenius norms per channel (:math:`\|I\mathbf{1}\|^2 = 3I^2`), concatenated in
    block order I | A | S.

    Args:
        hidden_channels (int): Number of tensor channels :math:`H`; the output has :math:`H`
            features too.
        activation (str or torch.nn.Module, optional): The activation :math:`\sigma`.
            (default: :obj:`"silu"`)

    Shapes:
        - **input:** :math:`(N, 3, 3, H)`
        - **output:** :math:`(N, H)`
    """
    def __init__(self, hidden_channels: int, activation: Union[str, torch.nn.Module] = 'silu'):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.norm = torch.nn.LayerNorm(3 * hidden_channels)
        self.linear = torch.nn.Linear(3 * hidden_channels, hidden_channels)
        self.act = activation_resolver(activation)
        self.reset_parameters()

    def reset_parameters(self):
        self.norm.reset_parameters()
        self.linear.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        invariants = torch.cat(packed_squared_norms(pack_tensor(x)), dim=-1)
        return self.act(self.linear(self.norm(invariants)))

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}({self.hidden_channels})'
