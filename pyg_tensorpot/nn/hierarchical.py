r"""HIP-NN's hierarchical energy: one linear head per layer, summed, and the hierarchicality
regulariser."""
from typing import List, Optional, Sequence

import torch
from torch import Tensor
from torch_geometric.utils import scatter


class HierarchicalEnergyHead(torch.nn.Module):
    r"""The hierarchical energy of HIP-NN, from the `"Hierarchical modeling of molecular
    energies using a deep neural network" <https://doi.org/10.1063/1.5011181>`_ paper
    (Lubbers, Smith & Barros, 2018), as hippynn's ``HEnergy``

    .. math::
        \hat{E}^n_i = \mathbf{w}_n^\top \mathbf{x}^n_i + b_n, \qquad
        E = \sum_i \sum_{n=0}^{N} \hat{E}^n_i,

    one linear head per layer output :math:`\mathbf{x}^n` (:math:`n = 0` is the one-hot species
    input, whose head has no bias and so holds per-species reference energies).

    Args:
        feature_sizes (Sequence[int]): Widths of :math:`\mathbf{x}^0, \dots, \mathbf{x}^N`.

    Shapes:
        - **input:** list of :math:`N + 1` tensors :math:`(A, F_n)`
        - **output:** per-atom terms :math:`\hat{E}^n_i`, :math:`(A, N + 1)`
    """
    def __init__(self, feature_sizes: Sequence[int]):
        super().__init__()
        if len(feature_sizes) < 1:
            raise ValueError('feature_sizes needs at least the input width')
        self.feature_sizes = [int(f) for f in feature_sizes]
        self.layers = torch.nn.ModuleList([
            torch.nn.Linear(size, 1, bias=n > 0) for n, size in enumerate(self.feature_sizes)
        ])

    def reset_parameters(self):
        for layer in self.layers:
            layer.reset_parameters()

    def forward(self, features: List[Tensor]) -> Tensor:
        if len(features) != len(self.layers):
            raise ValueError(f'expected {len(self.layers)} feature tensors, got {len(features)}')
        outputs: List[Tensor] = []
        for n, layer in enumerate(self.layers):
            outputs.append(layer(features[n]))
        return torch.cat(outputs, dim=-1)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}({self.feature_sizes})'


def hierarchicality(terms: Tensor, batch: Optional[Tensor] = None,
                    num_graphs: Optional[int] = None) -> Tensor:
    r"""HIP-NN's hierarchicality of every structure (hippynn's ``hierarchicality`` output),
    a training penalty that makes each layer's energy correction smaller than the previous one's

    .. math::
        H = \sum_i \sum_{n=1}^{N} \frac{(\hat{E}^n_i)^2}{(\hat{E}^n_i)^2
        + (\hat{E}^{n-1}_i)^2}

    (a term with both energies zero counts 0).

    Args:
        terms (torch.Tensor): Per-atom terms :math:`\hat{E}^n_i`, :obj:`[num_atoms, N + 1]`.
        batch (torch.Tensor, optional): Structure of every atom. (default: :obj:`None`)
        num_graphs (int, optional): Number of structures. (default: :obj:`None`)

    Returns:
        torch.Tensor: :obj:`[num_graphs]`.
    """
    if terms.dim() != 2:
        raise ValueError(f'terms must have shape [num_atoms, num_terms], got {list(terms.shape)}')
    if batch is None:
        batch = terms.new_zeros(terms.size(0), dtype=torch.long)
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if batch.numel() else 0
    squares = terms.square()
    upper, lower = squares[:, 1:], squares[:, :-1]
    total = upper + lower
    safe = torch.where(total > 0, total, torch.ones_like(total))
    ratio = torch.where(total > 0, upper / safe, torch.zeros_like(total))
    return scatter(ratio.sum(-1), batch, 0, dim_size=num_graphs, reduce='sum')
