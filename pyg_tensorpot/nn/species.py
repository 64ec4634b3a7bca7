r"""One-hot encoding of the chemical species, HIP-NN's input features."""
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from pyg_tensorpot.utils.elements import symbol


class SpeciesOneHot(torch.nn.Module):
    r"""One-hot encoding of the atomic numbers over a fixed list of elements

    .. math::
        x_i[s] = \delta_{z_i, Z_s}, \qquad s = 1, \dots, S,

    the input of HIP-NN (hippynn's ``OneHotSpecies`` with the padding column dropped). Columns
    follow the order of :obj:`elements`.

    Args:
        elements (Sequence[int]): Atomic numbers of the :math:`S` known elements, e.g.
            :obj:`[1, 6, 7, 8]` for H, C, N, O.

    Shapes:
        - **input:** atomic numbers :math:`(N)`
        - **output:** :math:`(N, S)` (float, in the default dtype unless :obj:`dtype` is given)
    """
    def __init__(self, elements: Sequence[int]):
        super().__init__()
        elements = [int(e) for e in elements]
        if not elements:
            raise ValueError('elements must list at least one atomic number')
        if len(set(elements)) != len(elements):
            raise ValueError(f'elements has duplicates: {elements}')
        if min(elements) < 1:
            raise ValueError(f'atomic numbers must be positive, got {elements}')
        self.elements: List[int] = elements
        lookup = torch.full((max(elements) + 1, ), -1, dtype=torch.long)
        lookup[torch.tensor(elements)] = torch.arange(len(elements))
        self.register_buffer('lookup', lookup, persistent=False)

    __jit_unused_properties__ = ['num_species']

    @property
    def num_species(self) -> int:
        return len(self.elements)

    def forward(self, z: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
        in_range = (z > 0) & (z < self.lookup.numel())
        column = self.lookup[torch.where(in_range, z, torch.zeros_like(z))]
        unknown = column < 0
        # torch.compile / torch.export trace without the check (no host sync in the graph).
        if not torch.compiler.is_compiling() and bool(unknown.any()):
            if torch.jit.is_scripting():
                raise ValueError('unknown element: this model only knows atomic numbers '
                                 + str(self.elements))
            self._raise_unknown(z, unknown)
        # dtype None: torch's default dtype.
        eye = torch.eye(len(self.elements), dtype=dtype, device=z.device)
        return eye.index_select(0, column)

    @torch.jit.unused
    def _raise_unknown(self, z: Tensor, unknown: Tensor) -> None:
        bad = sorted(set(z[unknown].tolist()))
        names = ', '.join(f'{symbol(v)} (Z={v})' for v in bad)
        known = ', '.join(symbol(e) for e in self.elements)
        raise ValueError(f'unknown element {names}: this model only knows {known}')

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}({self.elements})'
