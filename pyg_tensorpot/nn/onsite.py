r"""HIP-NN's nonlinear wrapping of its layers and its on-site (atom) layers."""
from typing import Final, Optional, Union

import torch
from torch import Tensor

from pyg_tensorpot.nn.activations import activation_resolver


class ResidualWrapper(torch.nn.Module):
    r"""Applies HIP-NN's nonlinearity around a layer :math:`L` whose first input is the atom
    features :math:`\mathbf{x}`, either in the residual form that hippynn uses by default
    (``ResNetWrapper``)

    .. math::
        \mathbf{x}' = \mathbf{R}\,\sigma(L(\mathbf{x}, \dots)) + \mathbf{b}_R
        + \mathbf{S}\mathbf{x},

    with a linear map :math:`\mathbf{R}` and, only when the widths differ, a bias-free
    :math:`\mathbf{S}` (else :math:`\mathbf{S}\mathbf{x} = \mathbf{x}`), or in the plain form of
    the `"Hierarchical modeling of molecular energies using a deep neural network"
    <https://doi.org/10.1063/1.5011181>`_ paper (Lubbers, Smith & Barros, 2018),
    :math:`\mathbf{x}' = \sigma(L(\mathbf{x}, \dots))`.

    Args:
        layer (torch.nn.Module): :math:`L`, returning :math:`(N, F_\mathrm{mid})`.
        in_channels (int): Width :math:`F_\mathrm{in}` of :math:`\mathbf{x}`.
        mid_channels (int): Output width :math:`F_\mathrm{mid}` of :math:`L`.
        out_channels (int): Output width (must equal :obj:`mid_channels` in the plain form).
        activation (str or torch.nn.Module, optional): :math:`\sigma`.
            (default: :obj:`"softplus"`)
        residual (bool, optional): Residual (hippynn) or plain (2018 paper) form.
            (default: :obj:`True`)

    Shapes:
        - **input:** :math:`(N, F_\mathrm{in})` and whatever else :math:`L` takes
        - **output:** :math:`(N, F_\mathrm{out})`
    """
    # A TorchScript constant: whether the wrapped layer takes the graph (an interaction) or
    # only x (an on-site layer), so that a model's loop over its layers compiles only the call
    # each layer takes (isinstance on submodules is not reliable in TorchScript once a class
    # has been compiled in two configurations in one process).
    needs_graph: Final[bool]

    def __init__(self, layer: torch.nn.Module, in_channels: int, mid_channels: int,
                 out_channels: int, activation: Union[str, torch.nn.Module] = 'softplus',
                 residual: bool = True):
        super().__init__()
        if not residual and mid_channels != out_channels:
            raise ValueError('the plain (non-residual) form needs mid_channels == out_channels')
        self.layer = layer
        self.needs_graph = True
        self.in_channels = in_channels
        self.mid_channels = mid_channels
        self.out_channels = out_channels
        self.residual = residual
        self.act = activation_resolver(activation)
        self.lin_residual: Optional[torch.nn.Linear] = None
        self.lin_adjust: Optional[torch.nn.Linear] = None
        if residual:
            self.lin_residual = torch.nn.Linear(mid_channels, out_channels)
            if in_channels != out_channels:
                self.lin_adjust = torch.nn.Linear(in_channels, out_channels, bias=False)
        self.reset_parameters()

    def reset_parameters(self):
        if hasattr(self.layer, 'reset_parameters'):
            self.layer.reset_parameters()
        for linear in (self.lin_residual, self.lin_adjust):
            if linear is not None:
                linear.reset_parameters()

    # Any layer signature: TorchScript code calls the layer itself and then combine().
    @torch.jit.ignore
    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        return self.combine(x, self.layer(x, *args, **kwargs))

    def combine(self, x: Tensor, inner: Tensor) -> Tensor:
        r"""The wrapped output from the input :math:`\mathbf{x}` and the layer's output
        :math:`L(\mathbf{x}, \dots)`."""
        hidden = self.act(inner)
        lin_residual = self.lin_residual
        if lin_residual is None:
            return hidden
        lin_adjust = self.lin_adjust
        shortcut = x if lin_adjust is None else lin_adjust(x)
        return lin_residual(hidden) + shortcut

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.layer}, {self.in_channels}, '
                f'{self.out_channels}, residual={self.residual})')


class OnSiteLayer(ResidualWrapper):
    r"""HIP-NN's on-site ("atom") layer: a linear map with Xavier-normal weights,
    :math:`L(\mathbf{x}) = \mathbf{W}\mathbf{x} + \mathbf{b}`, wrapped by
    :class:`ResidualWrapper`; residual (hippynn's default)

    .. math::
        \mathbf{x}' = \mathbf{R}\,\sigma(\mathbf{W}\mathbf{x} + \mathbf{b}) + \mathbf{b}_R
        + \mathbf{x}

    or plain, :math:`\mathbf{x}' = \sigma(\mathbf{W}\mathbf{x} + \mathbf{b})` (Lubbers et al.,
    2018).

    Args:
        in_channels (int): Input width.
        out_channels (int): Output width.
        activation (str or torch.nn.Module, optional): :math:`\sigma`.
            (default: :obj:`"softplus"`)
        residual (bool, optional): Residual or plain form. (default: :obj:`True`)
        mid_channels (int, optional): Width of :math:`\mathbf{W}\mathbf{x}` in the residual
            form. (default: :obj:`out_channels`)

    Shapes:
        - **input:** :math:`(N, F_\mathrm{in})`
        - **output:** :math:`(N, F_\mathrm{out})`
    """
    def __init__(self, in_channels: int, out_channels: int,
                 activation: Union[str, torch.nn.Module] = 'softplus', residual: bool = True,
                 mid_channels: Optional[int] = None):
        mid_channels = out_channels if mid_channels is None else mid_channels
        super().__init__(torch.nn.Linear(in_channels, mid_channels), in_channels, mid_channels,
                         out_channels, activation, residual)
        self.needs_graph = False

    def reset_parameters(self):
        super().reset_parameters()
        torch.nn.init.xavier_normal_(self.layer.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.combine(x, self.layer(x))

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, {self.out_channels}, '
                f'residual={self.residual})')
