r"""HIP-NN's sensitivity functions: Gaussians in inverse distance with learnable centres and
widths, times the :math:`\cos^2` cutoff."""
import math

import torch
from torch import Tensor

from pyg_tensorpot.nn.cutoff import CosineSquaredCutoff


class InverseGaussianSensitivity(torch.nn.Module):
    r"""The distance sensitivities of HIP-NN, from the `"Hierarchical modeling of molecular
    energies using a deep neural network" <https://doi.org/10.1063/1.5011181>`_ paper (Lubbers,
    Smith & Barros, J. Chem. Phys. 148, 241715, 2018), as hippynn 0.1.3 implements them

    .. math::
        s_\nu(r) = \exp\left(-\frac{\sigma_\nu^2}{2}\left(\frac{1}{r} - \frac{1}{\mu_\nu}
        \right)^2\right)\,\phi(r), \qquad
        \phi(r) = \cos^2\left(\frac{\pi r}{2 r_c}\right)\ (r \le r_c),

    with learnable centres :math:`\mu_\nu` and widths :math:`\sigma_\nu` (in Angstrom; the
    Gaussian's width in :math:`1/r` is :math:`1/\sigma_\nu`). At initialisation the
    :math:`1/\mu_\nu` are evenly spaced from :math:`1/r_\mathrm{soft,max}` to
    :math:`1/r_\mathrm{soft,min}` and every :math:`\sigma_\nu = 2 K r_\mathrm{soft,min}`.
    hippynn's ``"linear"`` sensitivity type evaluates this same function.

    Args:
        num_sensitivities (int): Number of functions :math:`K`.
        soft_min (float): Centre of the innermost function, Angstrom.
        soft_max (float): Centre of the outermost function, Angstrom.
        cutoff (float): Hard cutoff :math:`r_c` of :math:`\phi`, Angstrom.

    Shapes:
        - **input:** distances :math:`(E)` (positive)
        - **output:** :math:`(E, K)`
    """
    def __init__(self, num_sensitivities: int, soft_min: float, soft_max: float, cutoff: float):
        super().__init__()
        if num_sensitivities < 1:
            raise ValueError(f'num_sensitivities must be at least 1, got {num_sensitivities}')
        if not 0 < soft_min < soft_max:
            raise ValueError(f'need 0 < soft_min < soft_max (Angstrom), got {soft_min} and '
                             f'{soft_max}')
        if not cutoff > 0:
            raise ValueError(f'cutoff must be positive (Angstrom), got {cutoff}')
        self.num_sensitivities = num_sensitivities
        self.soft_min = float(soft_min)
        self.soft_max = float(soft_max)
        self.cutoff_fn = CosineSquaredCutoff(cutoff)
        self.mu = torch.nn.Parameter(torch.empty(num_sensitivities))
        self.sigma = torch.nn.Parameter(torch.empty(num_sensitivities))
        self.reset_parameters()

    @property
    def cutoff(self) -> float:
        return self.cutoff_fn.cutoff

    def reset_parameters(self):
        with torch.no_grad():
            inverse = torch.linspace(1.0 / self.soft_max, 1.0 / self.soft_min,
                                     self.num_sensitivities, dtype=torch.float64)
            self.mu.copy_(1.0 / inverse)
            self.sigma.fill_(2.0 * self.num_sensitivities * self.soft_min)

    def forward(self, distances: Tensor) -> Tensor:
        scaled = (distances.reciprocal().unsqueeze(-1) - self.mu.reciprocal()) * self.sigma
        # Evaluated as exp(log phi - scaled^2 / 2), and set to 0 where that exponent is below
        # log(tiny) + 7 (values under 1e-35 in float32, 1e-304 in float64): the narrow
        # Gaussians of HIP-NN make many results, and the products with phi many more, that
        # would be subnormal numbers, and subnormals slow exp and every product they enter tens
        # of times on x86 CPUs. In the log domain no intermediate is ever subnormal; the
        # rounding this adds is |exponent| * eps relative (1e-13 in float64).
        # the smallest normal number (torch.finfo is not TorchScript, which the MD engines need)
        tiny = 2.2250738585072014e-308 if distances.dtype == torch.float64 \
            else 1.1754943508222875e-38
        floor = math.log(tiny) + 7.0
        log_phi = torch.log(self.cutoff_fn(distances).clamp(min=tiny)).unsqueeze(-1)
        exponent = log_phi - 0.5 * scaled * scaled
        return torch.exp(exponent.clamp(min=floor)) * (exponent > floor)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.num_sensitivities}, soft_min={self.soft_min}, '
                f'soft_max={self.soft_max}, cutoff={self.cutoff})')
