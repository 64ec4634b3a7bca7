from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from pyg_tensorpot.models.base import AtomisticModel
from pyg_tensorpot.nn.conv.tensor_embedding import TensorEmbedding
from pyg_tensorpot.nn.conv.tensor_interaction import TensorInteraction
from pyg_tensorpot.nn.heads import DipoleHead, PolarizabilityHead, ScalarHead
from pyg_tensorpot.nn.radial import ExpNormalSmearing, GaussianSmearing
from pyg_tensorpot.nn.readout import TensorInvariantReadout

OUTPUTS = ('energy', 'dipole', 'polarizability')


class TensorNet(AtomisticModel):
    r"""TensorNet, from the `"TensorNet: Cartesian Tensor Representations for Efficient
    Learning of Molecular Potentials" <https://arxiv.org/abs/2306.06482>`_ paper
    (Simeon & De Fabritiis, NeurIPS 2023), numerically identical to torchmd-net 3.1.0.

    Atoms carry :math:`H` channels of a rank-2 Cartesian tensor
    :math:`\mathbf{X}_i = I_i\mathbf{1} + \mathbf{A}_i + \mathbf{S}_i`, built by
    :class:`~pyg_tensorpot.nn.TensorEmbedding`, refined by :obj:`num_layers`
    :class:`~pyg_tensorpot.nn.TensorInteraction` layers, and read out as invariants by
    :class:`~pyg_tensorpot.nn.TensorInvariantReadout`. With :obj:`output="energy"`,

    .. math::
        E = \mu + \sum_i \left(\sigma\,\varepsilon(\mathbf{x}_i) + E^\mathrm{ref}_{z_i}\right),

    and the forces are :math:`-\partial E / \partial \mathbf{r}_i`
    (:meth:`energy_and_forces`). :obj:`output="dipole"` returns molecular dipole vectors
    :math:`(B, 3)` and :obj:`output="polarizability"` polarizability tensors :math:`(B, 3, 3)`.

    As in torchmd-net, the neighbour sums include each atom's self-loop and the squared
    Frobenius norm is used throughout.

    Args:
        hidden_channels (int, optional): Tensor channels :math:`H`. (default: :obj:`128`)
        num_layers (int, optional): Number of interaction layers. (default: :obj:`2`)
        num_rbf (int, optional): Number of radial basis functions. (default: :obj:`32`)
        cutoff (float, optional): Cutoff radius in Angstrom. (default: :obj:`4.5`)
        max_z (int, optional): Atomic numbers must be below this. (default: :obj:`128`)
        equivariance (str, optional): :obj:`"O(3)"` or :obj:`"SO(3)"`.
            (default: :obj:`"O(3)"`)
        rbf_type (str, optional): :obj:`"expnorm"` or :obj:`"gauss"`.
            (default: :obj:`"expnorm"`)
        trainable_rbf (bool, optional): Learn the radial basis. (default: :obj:`False`)
        activation (str, optional): Activation function. (default: :obj:`"silu"`)
        cutoff_lower (float, optional): Lower cutoff in Angstrom. (default: :obj:`0.0`)
        max_num_neighbors (int, optional): Per-atom neighbour budget; exceeding it is an
            error. (default: :obj:`None`)
        output (str, optional): :obj:`"energy"`, :obj:`"dipole"` or :obj:`"polarizability"`.
            (default: :obj:`"energy"`)
    """
    def __init__(
        self,
        hidden_channels: int = 128,
        num_layers: int = 2,
        num_rbf: int = 32,
        cutoff: float = 4.5,
        max_z: int = 128,
        equivariance: str = 'O(3)',
        rbf_type: str = 'expnorm',
        trainable_rbf: bool = False,
        activation: str = 'silu',
        cutoff_lower: float = 0.0,
        max_num_neighbors: Optional[int] = None,
        output: str = 'energy',
    ):
        super().__init__(cutoff=cutoff, max_z=max_z, self_loops=True,
                         max_num_neighbors=max_num_neighbors)
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got '{output}'")
        if num_layers < 0 or hidden_channels < 2 or num_rbf < 1:
            raise ValueError('need num_layers >= 0, hidden_channels >= 2 and num_rbf >= 1')
        self.hidden_channels = hidden_channels
        self.num_layers = num_layers
        self.num_rbf = num_rbf
        self.equivariance = equivariance
        self.rbf_type = rbf_type
        self.trainable_rbf = trainable_rbf
        self.activation = activation
        self.cutoff_lower = float(cutoff_lower)
        self.output = output

        if rbf_type == 'expnorm':
            self.rbf = ExpNormalSmearing(cutoff_lower, cutoff, num_rbf, trainable_rbf)
        elif rbf_type == 'gauss':
            self.rbf = GaussianSmearing(cutoff_lower, cutoff, num_rbf, trainable_rbf)
        else:
            raise ValueError(f"rbf_type must be 'expnorm' or 'gauss', got '{rbf_type}'")
        self.embedding = TensorEmbedding(hidden_channels, num_rbf, cutoff, max_z, activation,
                                         cutoff_lower)
        self.interactions = torch.nn.ModuleList([
            TensorInteraction(hidden_channels, num_rbf, cutoff, equivariance, activation,
                              cutoff_lower) for _ in range(num_layers)
        ])
        self.readout = TensorInvariantReadout(hidden_channels, activation)
        if output == 'energy':
            self.head = ScalarHead(hidden_channels, activation)
        elif output == 'dipole':
            self.head = DipoleHead(hidden_channels, activation)
        else:
            self.head = PolarizabilityHead(hidden_channels, activation)

    def reset_parameters(self):
        if hasattr(self.rbf, 'reset_parameters'):
            self.rbf.reset_parameters()
        self.embedding.reset_parameters()
        for interaction in self.interactions:
            interaction.reset_parameters()
        self.readout.reset_parameters()
        self.head.reset_parameters()

    def representation(
        self,
        z: Tensor,
        pos: Tensor,
        batch: Optional[Tensor] = None,
        edge_index: Optional[Tensor] = None,
        total_charge: Optional[Tensor] = None,
        cell: Optional[Tensor] = None,
        pbc: Optional[Union[bool, Tensor]] = None,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        r"""Invariant features :math:`(N, H)`, final tensor features :math:`(N, 3, 3, H)` and
        the batch vector."""
        graph_is_ours = edge_index is None
        batch, edge_index, edge_vec, edge_weight = self.build_graph(z, pos, batch, edge_index,
                                                                    cell, pbc)
        is_self = (edge_weight == 0).unsqueeze(-1)
        edge_unit = edge_vec / torch.where(is_self, torch.ones_like(edge_weight.unsqueeze(-1)),
                                           edge_weight.unsqueeze(-1))
        radial_index = None
        if graph_is_ours:
            # radius_graph's order: P pairs, the same pairs reversed, N self-loops. Radial
            # filters depend on the length only: evaluate them once per pair (and once for
            # all self-loops, at d = 0).
            num_pairs = (edge_weight.size(0) - z.size(0)) // 2
            radial_index = torch.cat([
                torch.arange(num_pairs, device=z.device).repeat(2),
                torch.full_like(z, num_pairs)
            ])
            edge_weight = torch.cat([edge_weight[:num_pairs], edge_weight.new_zeros(1)])
        edge_attr = self.rbf(edge_weight)
        charge = None if total_charge is None else total_charge[batch]
        x = self.embedding(z, edge_index, edge_weight, edge_unit, edge_attr, radial_index)
        for interaction in self.interactions:
            x = interaction(x, edge_index, edge_weight, edge_attr, charge, radial_index)
        return self.readout(x), x, batch

    def forward(
        self,
        z: Tensor,
        pos: Tensor,
        batch: Optional[Tensor] = None,
        edge_index: Optional[Tensor] = None,
        total_charge: Optional[Tensor] = None,
        cell: Optional[Tensor] = None,
        pbc: Optional[Union[bool, Tensor]] = None,
        num_graphs: Optional[int] = None,
    ) -> Tensor:
        r"""
        Args:
            z (torch.Tensor): Atomic numbers :obj:`[num_atoms]`.
            pos (torch.Tensor): Positions in Angstrom :obj:`[num_atoms, 3]`.
            batch (torch.Tensor, optional): Structure of every atom. (default: :obj:`None`)
            edge_index (torch.Tensor, optional): A caller-supplied graph (row 0 neighbour,
                row 1 receiver); built with the cutoff if :obj:`None`. (default: :obj:`None`)
            total_charge (torch.Tensor, optional): Total charge of each structure, in e, for
                torchmd-net's :math:`(1 + 0.1 Q)` factor. (default: :obj:`None`)
            cell (torch.Tensor, optional): Periodic cell(s) :obj:`[3, 3]` or :obj:`[B, 3, 3]`.
                (default: :obj:`None`)
            pbc (bool or torch.Tensor, optional): Periodic directions. (default: :obj:`None`)
            num_graphs (int, optional): Number of structures (saves a device sync).
                (default: :obj:`None`)
        """
        x, tensor, batch = self.representation(z, pos, batch, edge_index, total_charge, cell,
                                               pbc)
        if num_graphs is None:
            num_graphs = int(batch.max()) + 1
        if self.output == 'energy':
            return self.reduce_energy(self.head(x), z, batch, num_graphs)
        if self.output == 'dipole':
            return self.head(x, tensor, z, pos, batch, num_graphs, total_charge)
        return self.head(x, tensor, batch, num_graphs)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(hidden_channels={self.hidden_channels}, '
                f'num_layers={self.num_layers}, num_rbf={self.num_rbf}, cutoff={self.cutoff}, '
                f'equivariance={self.equivariance}, output={self.output})')
