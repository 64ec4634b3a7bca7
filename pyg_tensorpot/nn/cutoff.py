r"""Smooth cutoff envelopes :math:`\phi(d)` that take radial filters to zero at the cutoff."""
import math

import torch
from torch import Tensor


class CosineCutoff(torch.nn.Module):
    r"""The cosine cutoff of SchNet, PhysNet and TensorNet

    .. math::
        \phi(d) = \frac{1}{2}\left(\cos\left(\frac{\pi d}{r_c}\right) + 1\right)
        \quad (d < r_c), \qquad 0 \text{ otherwise}.

    With :obj:`cutoff_lower` :math:`r_l > 0` it is the bump
    :math:`\frac{1}{2}(\cos(\pi(2\frac{d - r_l}{r_c - r_l} + 1)) + 1)` on :math:`(r_l, r_c)`,
    as in torchmd-net.

    Args:
        cutoff_upper (float): Cutoff radius :math:`r_c` in Angstrom.
        cutoff_lower (float, optional): Lower cutoff :math:`r_l`. (default: :obj:`0.0`)
    """
    def __init__(self, cutoff_upper: float, cutoff_lower: float = 0.0):
        super().__init__()
        if not cutoff_upper > cutoff_lower >= 0:
            raise ValueError(f'need 0 <= cutoff_lower < cutoff_upper, got {cutoff_lower} and '
                             f'{cutoff_upper}')
        self.cutoff_lower = float(cutoff_lower)
        self.cutoff_upper = float(cutoff_upper)

    def forward(self, distances: Tensor) -> Tensor:
        if self.cutoff_lower > 0:
            width = self.cutoff_upper - self.cutoff_lower
            phi = 0.5 * (torch.cos(math.pi * (2 * (distances - self.cutoff_lower) / width + 1.0))
                         + 1.0)
            inside = (distances < self.cutoff_upper) & (distances > self.cutoff_lower)
        else:
            phi = 0.5 * (torch.cos(distances * (math.pi / self.cutoff_upper)) + 1.0)
            inside = distances < self.cutoff_upper
        return phi * inside.to(phi.dtype)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(cutoff_lower={self.cutoff_lower}, '
                f'cutoff_upper={self.cutoff_upper})')


class CosineSquaredCutoff(torch.nn.Module):
    r"""The :math:`\cos^2` cutoff of HIP-NN (Lubbers et al., J. Chem. Phys. 148, 241715, 2018)

    .. math::
        \phi(r) = \cos^2\left(\frac{\pi r}{2 r_c}\right) \quad (r \le r_c),
        \qquad 0 \text{ otherwise},

    with value 1 and zero slope at :math:`r = 0`, and zero value and slope at :math:`r_c`.

    Args:
        cutoff (float): Hard cutoff :math:`r_c` in Angstrom.
    """
    def __init__(self, cutoff: float):
        super().__init__()
        if not cutoff > 0:
            raise ValueError(f'cutoff must be positive, got {cutoff}')
        self.cutoff = float(cutoff)

    def forward(self, distances: Tensor) -> Tensor:
        phi = torch.cos(distances * (math.pi / (2.0 * self.cutoff)))**2
        return phi * (distances <= self.cutoff).to(phi.dtype)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(cutoff={self.cutoff})'
