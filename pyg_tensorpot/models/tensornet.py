from typing import Final, Optional, Tuple

import torch
from torch import Tensor

from pyg_tensorpot.models.base import AtomisticModel
from pyg_tensorpot.nn.graph import AtomGraph
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
    # Which head the model has, as TorchScript constants: only that head's branch is compiled
    # (isinstance on submodules is not reliable in TorchScript once a class has been compiled
    # in two configurations in one process).
    predicts_energy: Final[bool]
    predicts_dipole: Final[bool]

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
        self.predicts_energy = output == 'energy'
        self.predicts_dipole = output == 'dipole'

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

    def representation(self, z: Tensor, graph: AtomGraph,
                       total_charge: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        r"""Invariant features :math:`(N, H)` and final tensor features :math:`(N, 3, 3, H)`
        of the atoms of :obj:`graph` (:meth:`graph`)."""
        # Radial filters depend on the distance only: evaluated once per pair (both directions
        # of a pair, and all self-loops at d = 0, share a row of graph.pair_weight).
        edge_attr = self.rbf(graph.pair_weight)
        charge = None if total_charge is None else total_charge[graph.batch]
        x = self.embedding(z, graph.edge_index, graph.pair_weight, graph.edge_unit, edge_attr,
                           graph.pair_index)
        for interaction in self.interactions:
            x = interaction(x, graph.edge_index, graph.pair_weight, edge_attr, charge,
                            graph.pair_index)
        return self.readout(x), x

    def atomic_terms(self, z: Tensor, pos: Tensor, graph: AtomGraph,
                     total_charge: Optional[Tensor] = None) -> Tensor:
        if not self.predicts_energy:
            raise ValueError("this TensorNet predicts " + self.output + ", not energies")
        x, _ = self.representation(z, graph, total_charge)
        return self.head(x) * self.std

    def graph_outputs(self, z: Tensor, pos: Tensor, graph: AtomGraph,
                      total_charge: Optional[Tensor] = None) -> Tensor:
        r"""What :meth:`~pyg_tensorpot.models.AtomisticModel.forward` returns, by
        :obj:`output`: energies :obj:`[B]` (float64), dipoles :obj:`[B, 3]` or
        polarizabilities :obj:`[B, 3, 3]`; :obj:`total_charge` enters torchmd-net's
        :math:`(1 + 0.1 Q)` factor (and the dipole head's charge neutralisation)."""
        if self.predicts_energy:
            terms = self.atomic_terms(z, pos, graph, total_charge)
            return self.reduce_energy(terms, z, graph.batch, graph.num_graphs)
        x, tensor = self.representation(z, graph, total_charge)
        if self.predicts_dipole:
            return self.head(x, tensor, z, pos, graph.batch, graph.num_graphs, total_charge)
        return self.head(x, tensor, graph.batch, graph.num_graphs)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(hidden_channels={self.hidden_channels}, '
                f'num_layers={self.num_layers}, num_rbf={self.num_rbf}, cutoff={self.cutoff}, '
                f'equivariance={self.equivariance}, output={self.output})')
