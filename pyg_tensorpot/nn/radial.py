r"""Radial basis expansions :math:`e_k(d)` of interatomic distances."""
import math

import torch
from torch import Tensor

from pyg_tensorpot.nn.cutoff import CosineCutoff


class ExpNormalSmearing(torch.nn.Module):
    r"""The exponential-normal radial basis of PhysNet (Unke & Meuwly, 2019), as in TensorNet

    .. math::
        e_k(d) = \phi(d)\,\exp\left(-\beta_k\left(e^{-\alpha (d - r_l)} - \mu_k\right)^2\right),
        \qquad \alpha = \frac{5}{r_c - r_l},

    with :math:`\mu_k` evenly spaced in :math:`[e^{-(r_c - r_l)}, 1]`, one width
    :math:`\beta_k = \left(\frac{2}{K}(1 - e^{-(r_c - r_l)})\right)^{-2}` and :math:`\phi` the
    :class:`CosineCutoff` on :math:`[0, r_c]`.

    Args:
        cutoff_lower (float, optional): :math:`r_l` in Angstrom. (default: :obj:`0.0`)
        cutoff_upper (float, optional): :math:`r_c` in Angstrom. (default: :obj:`5.0`)
        num_rbf (int, optional): Number of functions :math:`K`. (default: :obj:`50`)
        trainable (bool, optional): If :obj:`True`, :math:`\mu` and :math:`\beta` are learned.
            (default: :obj:`False`)
    """
    def __init__(self, cutoff_lower: float = 0.0, cutoff_upper: float = 5.0, num_rbf: int = 50,
                 trainable: bool = False):
        super().__init__()
        self.cutoff_lower = float(cutoff_lower)
        self.cutoff_upper = float(cutoff_upper)
        self.num_rbf = int(num_rbf)
        self.trainable = trainable
        self.cutoff_fn = CosineCutoff(cutoff_upper)
        self.alpha = 5.0 / (self.cutoff_upper - self.cutoff_lower)
        means, betas = self._initial_params()
        if trainable:
            self.means = torch.nn.Parameter(means)
            self.betas = torch.nn.Parameter(betas)
        else:
            self.register_buffer('means', means)
            self.register_buffer('betas', betas)

    def _initial_params(self):
        start = math.exp(-(self.cutoff_upper - self.cutoff_lower))
        means = torch.linspace(start, 1.0, self.num_rbf)
        betas = torch.full((self.num_rbf, ), (2.0 / self.num_rbf * (1.0 - start))**-2)
        return means, betas

    def reset_parameters(self):
        means, betas = self._initial_params()
        with torch.no_grad():
            self.means.copy_(means)
            self.betas.copy_(betas)

    def forward(self, distances: Tensor) -> Tensor:
        d = distances.unsqueeze(-1)
        return self.cutoff_fn(d) * torch.exp(
            -self.betas * (torch.exp(self.alpha * (self.cutoff_lower - d)) - self.means)**2)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(cutoff_lower={self.cutoff_lower}, '
                f'cutoff_upper={self.cutoff_upper}, num_rbf={self.num_rbf}, '
                f'trainable={self.trainable})')


class GaussianSmearing(torch.nn.Module):
    r"""Gaussian radial basis with evenly spaced centres (SchNet)

    .. math::
        e_k(d) = \exp\left(-\frac{(d - \mu_k)^2}{2 \Delta^2}\right),

    with :math:`\mu_k` evenly spaced in :math:`[r_l, r_c]` and :math:`\Delta` their spacing.
    Like torchmd-net's ``gauss`` basis it has no cutoff envelope of its own.

    Args:
        cutoff_lower (float, optional): :math:`r_l` in Angstrom. (default: :obj:`0.0`)
        cutoff_upper (float, optional): :math:`r_c` in Angstrom. (default: :obj:`5.0`)
        num_rbf (int, optional): Number of functions :math:`K`. (default: :obj:`50`)
        trainable (bool, optional): If :obj:`True`, centres and width are learned.
            (default: :obj:`False`)
    """
    def __init__(self, cutoff_lower: float = 0.0, cutoff_upper: float = 5.0, num_rbf: int = 50,
                 trainable: bool = False):
        super().__init__()
        if num_rbf < 2:
            raise ValueError('GaussianSmearing needs num_rbf >= 2')
        self.cutoff_lower = float(cutoff_lower)
        self.cutoff_upper = float(cutoff_upper)
        self.num_rbf = int(num_rbf)
        self.trainable = trainable
        offset, coeff = self._initial_params()
        if trainable:
            self.offset = torch.nn.Parameter(offset)
            self.coeff = torch.nn.Parameter(coeff)
        else:
            self.register_buffer('offset', offset)
            self.register_buffer('coeff', coeff)

    def _initial_params(self):
        offset = torch.linspace(self.cutoff_lower, self.cutoff_upper, self.num_rbf)
        coeff = torch.tensor(-0.5 / float(offset[1] - offset[0])**2)
        return offset, coeff

    def reset_parameters(self):
        offset, coeff = self._initial_params()
        with torch.no_grad():
            self.offset.copy_(offset)
            self.coeff.copy_(coeff)

    def forward(self, distances: Tensor) -> Tensor:
        return torch.exp(self.coeff * (distances.unsqueeze(-1) - self.offset)**2)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(cutoff_lower={self.cutoff_lower}, '
                f'cutoff_upper={self.cutoff_upper}, num_rbf={self.num_rbf}, '
                f'trainable={self.trainable})')
