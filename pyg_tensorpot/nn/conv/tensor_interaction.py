from typing import Optional, Union

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from torch_geometric.nn import MessagePassing

from pyg_tensorpot.nn.activations import activation_resolver
from pyg_tensorpot.nn.cutoff import CosineCutoff
from pyg_tensorpot.nn.message import filtered_gather_scatter, recomputed_gather_scatter
from pyg_tensorpot.nn.radial import recomputed_filter
from pyg_tensorpot.nn.tensor_algebra import (
    matmul,
    mix_parts,
    o3_product,
    pack_tensor,
    scale_parts,
    so3_product,
    squared_norm,
    unpack,
)

#: Atoms per block of the recomputed atom-level update (inference with forces).
ATOM_CHUNK = 4096
#: Filters of more numbers than this ([R, 3, H]; 2^25 is 128 MiB in float32, about 5,000
#: atoms of liquid water at 4.5 A with H = 128) are recomputed in the backward pass of
#: energy+forces instead of kept: one more filter MLP evaluation (about 15 % of the time)
#: for 27 kB per atom less memory, worth it only where memory is what limits the size.
RECOMPUTE_FILTER_ELEMENTS = 2**25
#: Atom features of more numbers than this ([N, 3, 3, H]; 2^21 is 8 MiB in float32, about
#: 1,800 atoms with H = 128) have their atom-level update recomputed in the backward pass of
#: energy+forces instead of kept: about 20 such tensors per layer less, for one more pass of
#: the update (about 14 % of energy+forces on a batch of 64 small molecules).
RECOMPUTE_ATOM_ELEMENTS = 2**21


class TensorInteraction(MessagePassing):
    r"""The interaction layer of TensorNet, from the
    `"TensorNet: Cartesian Tensor Representations for Efficient Learning of Molecular
    Potentials" <https://arxiv.org/abs/2306.06482>`_ paper, as torchmd-net 3.1.0 implements it

    .. math::
        \bar{\mathbf{X}}_i &= \mathbf{X}_i / (\|\mathbf{X}_i\|^2 + 1), \qquad
        \mathbf{Y}_i = (\mathbf{W}_0 \bar I_i)\mathbf{1} + \mathbf{W}_1\bar{\mathbf{A}}_i
        + \mathbf{W}_2\bar{\mathbf{S}}_i,

        \mathbf{M}_i &= \sum_{j \in \mathcal{N}(i) \cup \{i\}} g^I_{ij}\,I^Y_j\mathbf{1}
        + g^A_{ij}\,\mathbf{A}^Y_j + g^S_{ij}\,\mathbf{S}^Y_j, \qquad
        \mathbf{g}_{ij} = \phi(d_{ij})\,\mathrm{MLP}(\mathbf{e}(d_{ij})),

        \mathbf{C}_i &= (1 + 0.1\,Q)\,(\mathbf{M}_i\mathbf{Y}_i + \mathbf{Y}_i\mathbf{M}_i)
        \quad \text{(O(3))} \qquad \text{or} \qquad 2\,\mathbf{Y}_i\mathbf{M}_i
        \quad \text{(SO(3))},

        \Delta\mathbf{X}_i &= \frac{(\mathbf{W}_3 I^C_i)\mathbf{1} + \mathbf{W}_4
        \mathbf{A}^C_i + \mathbf{W}_5\mathbf{S}^C_i}{\|\mathbf{C}_i\|^2 + 1}, \qquad
        \mathbf{X}_i' = \bar{\mathbf{X}}_i + \Delta\mathbf{X}_i
        + (1 + 0.1\,Q)\,\Delta\mathbf{X}_i\Delta\mathbf{X}_i,

    where the MLP has three layers with an activation after each, :math:`\mathbf{W}_k` mix
    channels only, products are per-channel 3x3 matrix products, :math:`\|\cdot\|^2` is the
    squared Frobenius norm and :math:`Q` the total charge of the molecule (0 if not given).

    For large systems (filters of more than :obj:`RECOMPUTE_FILTER_ELEMENTS` numbers) the filter
    MLP is evaluated in row blocks and recomputed in the backward pass in eager mode: in
    training by :func:`~pyg_tensorpot.nn.radial.recomputed_filter`, in evaluation inside the
    message contraction (:func:`~pyg_tensorpot.nn.message.recomputed_gather_scatter`), so that
    energy+forces keep no per-layer intermediates beyond the packed features; smaller systems
    keep the MLP's intermediates, for speed. In evaluation mode the atom-level update of large
    systems (features of more than :obj:`RECOMPUTE_ATOM_ELEMENTS` numbers) is recomputed too
    (activation checkpointing in blocks of :obj:`ATOM_CHUNK` atoms); smaller systems and
    training mode keep its intermediates, for speed.

    Args:
        hidden_channels (int): Number of tensor channels :math:`H`.
        num_rbf (int): Number of radial basis functions fed in as :obj:`edge_attr`.
        cutoff (float): Cutoff radius :math:`r_c` of :math:`\phi` in Angstrom.
        equivariance (str, optional): :obj:`"O(3)"` (invariant energies under rotations and
            reflections) or :obj:`"SO(3)"` (rotations only). (default: :obj:`"O(3)"`)
        activation (str or torch.nn.Module, optional): The activation. (default: :obj:`"silu"`)
        cutoff_lower (float, optional): Lower cutoff of :math:`\phi`. (default: :obj:`0.0`)

    Shapes:
        - **input:** tensor features :math:`(N, 3, 3, H)`, edge indices :math:`(2, E)`
          (self-loops included), edge lengths :math:`(R)`, radial basis :math:`(R, K)`,
          optional per-atom total charge of the molecule :math:`(N)`, optional row of each
          edge :math:`(E)`
        - **output:** tensor features :math:`(N, 3, 3, H)`
    """
    # Arguments of the generic propagate() path (forward() uses message_and_aggregate()).
    propagate_type = {'y': Tensor, 'filters': Tensor}

    def __init__(self, hidden_channels: int, num_rbf: int, cutoff: float,
                 equivariance: str = 'O(3)', activation: Union[str, torch.nn.Module] = 'silu',
                 cutoff_lower: float = 0.0):
        super().__init__(aggr='add', node_dim=0)
        if equivariance not in ('O(3)', 'SO(3)'):
            raise ValueError(f"equivariance must be 'O(3)' or 'SO(3)', got '{equivariance}'")
        self.hidden_channels = hidden_channels
        self.num_rbf = num_rbf
        self.equivariance = equivariance
        self.cutoff_fn = CosineCutoff(cutoff, cutoff_lower)
        self.filter_mlp = torch.nn.Sequential(
            torch.nn.Linear(num_rbf, hidden_channels),
            activation_resolver(activation),
            torch.nn.Linear(hidden_channels, 2 * hidden_channels),
            activation_resolver(activation),
            torch.nn.Linear(2 * hidden_channels, 3 * hidden_channels),
            activation_resolver(activation),
        )
        self.mixing_in = torch.nn.ModuleList(
            [torch.nn.Linear(hidden_channels, hidden_channels, bias=False) for _ in range(3)])
        self.mixing_out = torch.nn.ModuleList(
            [torch.nn.Linear(hidden_channels, hidden_channels, bias=False) for _ in range(3)])
        self.reset_parameters()

    def reset_parameters(self):
        for module in self.filter_mlp:
            if isinstance(module, torch.nn.Linear):
                module.reset_parameters()
        for linear in [*self.mixing_in, *self.mixing_out]:
            linear.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor, edge_attr: Tensor,
                charge: Optional[Tensor] = None,
                radial_index: Optional[Tensor] = None) -> Tensor:
        r"""
        Args:
            x (torch.Tensor): Tensor features :obj:`[N, 3, 3, H]`.
            edge_index (torch.Tensor): Row 0 neighbour :math:`j`, row 1 receiver :math:`i`,
                self-loops included, :obj:`[2, E]`.
            edge_weight (torch.Tensor): Edge lengths :obj:`[R]`.
            edge_attr (torch.Tensor): Radial basis :obj:`[R, K]`.
            charge (torch.Tensor, optional): Total charge of each atom's molecule :obj:`[N]`.
                (default: :obj:`None`)
            radial_index (torch.Tensor, optional): Row of :obj:`edge_weight` and
                :obj:`edge_attr` for each edge :obj:`[E]` (see
                :class:`TensorEmbedding`); :obj:`R = E` if :obj:`None`. (default: :obj:`None`)
        """
        envelope = self.cutoff_fn(edge_weight)
        eager = not (torch.jit.is_scripting() or torch.compiler.is_compiling())
        recompute = eager and not self.training and torch.is_grad_enabled()
        checkpointed = recompute and self._atoms_are_many(x)
        if checkpointed:
            y = self._checkpointed_mix_in(x)
        else:
            y = self._mix_in(x)
        if recompute and self._filters_are_large(edge_attr):
            message = self._recomputed_aggregate(edge_index, y, edge_attr, envelope,
                                                 radial_index)
        else:
            # Small systems keep the MLP's intermediates: one MLP evaluation less (about 8 % of
            # energy+forces on a batch of small molecules) for memory that does not limit them.
            if eager and self._filters_are_large(edge_attr):
                filters = self._recomputed_filters(edge_attr, envelope)
            else:
                filters = self.filter_mlp(edge_attr) * envelope.unsqueeze(-1)
            filters = filters.unflatten(-1, (3, self.hidden_channels))
            message = self.message_and_aggregate(edge_index, y, filters, radial_index)
        if checkpointed:
            return self._checkpointed_update(x, y, message, charge)
        return self._update(x, y, message, charge)

    def _normalized(self, x: Tensor) -> Tensor:
        return x / (squared_norm(x) + 1.0).unsqueeze(-2).unsqueeze(-2)

    def _mix_in(self, x: Tensor) -> Tensor:
        # Packed Y = W_0 I 1 + W_1 A + W_2 S of the normalised features.
        return mix_parts(pack_tensor(self._normalized(x)), self.mixing_in[0].weight,
                         self.mixing_in[1].weight, self.mixing_in[2].weight)

    def _update(self, x: Tensor, y: Tensor, message: Tensor,
                charge: Optional[Tensor] = None) -> Tensor:
        # X' = X/(|X|^2 + 1) + dX + (1 + 0.1 Q) dX dX from the packed Y and M.
        x = self._normalized(x)
        message = unpack(message)
        y = unpack(y)
        charge_factor: Optional[Tensor] = None
        if charge is not None:
            charge_factor = (1.0 + 0.1 * charge).to(x.dtype)[:, None, None, None]
        if self.equivariance == 'O(3)':
            product = o3_product(message, y)
            if charge_factor is not None:
                product = charge_factor * product
        else:
            product = so3_product(message, y)

        inverse_norm = 1.0 / (squared_norm(product) + 1.0)
        dx = unpack(mix_parts(pack_tensor(product) * inverse_norm.unsqueeze(-2),
                              self.mixing_out[0].weight, self.mixing_out[1].weight,
                              self.mixing_out[2].weight))
        square = matmul(dx, dx)
        if charge_factor is not None:
            square = charge_factor * square
        return x + dx + square

    @torch.jit.unused
    def _checkpointed_mix_in(self, x: Tensor) -> Tensor:
        # Inference with forces: the atom-level intermediates (about 20 [N, 3, 3, H] tensors
        # per layer) are recomputed in the backward pass instead of being kept, in blocks of
        # ATOM_CHUNK atoms so that the recomputation does not hold them all at once either.
        return torch.cat([checkpoint(self._mix_in, block, use_reentrant=False)
                          for block in x.split(ATOM_CHUNK)])

    @torch.jit.unused
    def _checkpointed_update(self, x: Tensor, y: Tensor, message: Tensor,
                             charge: Optional[Tensor]) -> Tensor:
        blocks = [x.split(ATOM_CHUNK), y.split(ATOM_CHUNK), message.split(ATOM_CHUNK)]
        charges = [None] * len(blocks[0]) if charge is None else charge.split(ATOM_CHUNK)
        return torch.cat([checkpoint(self._update, *parts, q, use_reentrant=False)
                          for *parts, q in zip(*blocks, charges)])

    @torch.jit.unused
    def _atoms_are_many(self, x: Tensor) -> bool:
        # Eager only: see RECOMPUTE_ATOM_ELEMENTS.
        return x.numel() > RECOMPUTE_ATOM_ELEMENTS

    @torch.jit.unused
    def _recomputed_filters(self, edge_attr: Tensor, envelope: Tensor) -> Tensor:
        # The same numbers, without keeping the MLP's [R, H], [R, 2H] and [R, 3H]
        # intermediates for the backward pass (about 0.6 GB per layer at 5,000 atoms).
        return recomputed_filter(self.filter_mlp, edge_attr, envelope)

    @torch.jit.unused
    def _filters_are_large(self, edge_attr: Tensor) -> bool:
        # Eager only (TorchScript has no module globals): see RECOMPUTE_FILTER_ELEMENTS.
        return edge_attr.size(0) * 3 * self.hidden_channels > RECOMPUTE_FILTER_ELEMENTS

    @torch.jit.unused
    def _recomputed_aggregate(self, edge_index: Tensor, y: Tensor, edge_attr: Tensor,
                              envelope: Tensor, radial_index: Optional[Tensor]) -> Tensor:
        # Inference with forces: message_and_aggregate() with the filters [R, 3, H] (about
        # 27 kB per atom for liquid water at 4.5 A, H = 128, float32) recomputed in the
        # backward pass instead of being kept between the passes.
        return recomputed_gather_scatter(y, self.filter_mlp, edge_attr, envelope, edge_index,
                                         radial_index)

    def message(self, y_j: Tensor, filters: Tensor) -> Tensor:
        # The per-edge message [E, 10, H]; forward() uses the fused equivalent below.
        return scale_parts(y_j, filters)

    def message_and_aggregate(self, edge_index: Tensor, y: Tensor, filters: Tensor,
                              radial_index: Optional[Tensor] = None) -> Tensor:
        # Equal to propagate(edge_index, y=y, filters=filters[radial_index]) with message()
        # above, without keeping per-edge tensors alive for the backward pass.
        return filtered_gather_scatter(y, filters, edge_index, radial_index)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.hidden_channels}, num_rbf={self.num_rbf}, '
                f'equivariance={self.equivariance})')
