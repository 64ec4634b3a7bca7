"""HIP-NN's interaction layer: its neighbour sums over ragged per-atom grids in eager mode
(fused in :mod:`~pyg_tensorpot.nn.conv.hipnn_sums`) and over the edge list under
torch.compile, in the same contraction order."""
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from pyg_tensorpot.nn.conv.hipnn_sums import (CHUNK_ELEMENTS, angular_pair_sum, block_views,
                                              covered_rows, pair_sum)
from pyg_tensorpot.nn.ragged_neighbors import ragged_neighbors
from pyg_tensorpot.nn.sensitivity import InverseGaussianSensitivity
from pyg_tensorpot.nn.tensor_algebra import traceless_outer

# (xx, xy, xz, yy, yz) out of traceless_outer's (xx, yy, zz, xy, xz, yz): hippynn's 5 components.
_QUADRUPOLE_COMPONENTS = (0, 3, 4, 1, 5)
_CONTRACTIONS = ('auto', 'project_first', 'environment_first')


class HIPNNLayout(NamedTuple):
    r"""Where every edge of a graph sits in the two per-atom grids of
    :class:`HIPNNInteraction`, built once per graph by :meth:`HIPNNInteraction.neighbor_layout`
    and shared by all its layers.

    Both grids hold the edges of an atom in one row, with the rows sorted by degree and cut
    into blocks, each as wide as its own largest degree
    (:func:`~pyg_tensorpot.nn.ragged_neighbors.ragged_neighbors`), stored flat: the *source*
    grid groups the edges by neighbour (:obj:`edge_index[0]`, :math:`S` slots), the
    *receiver* grid by receiver (:obj:`edge_index[1]`, :math:`R` slots). Sensitivities are
    looked up by *row* (a pair of atoms, whose two directed edges have the same distance, or
    an edge); padding slots read row :obj:`num_rows`, which the layer fills with zeros, so
    that they add exact zeros to every sum.

    Attributes:
        num_nodes (int): Atoms :math:`N`.
        num_rows (int): Rows of the sensitivity table (pairs, or edges).
        source_order (torch.Tensor): Atom of every row of the source grid, :obj:`[N]`.
        source_blocks (List[Tuple[int, int, int, int]]): :obj:`(start, end, width, offset)`
            of every block of the source grid.
        source_row (torch.Tensor): Sensitivity row of every source slot, :obj:`[S]`.
        source_target (torch.Tensor): Receiver of every source slot (0 on padding).
        receiver_rank (torch.Tensor): Row of every atom in the receiver grid, :obj:`[N]`.
        receiver_blocks (List[Tuple[int, int, int, int]]): The blocks of the receiver grid.
        receiver_row (torch.Tensor): Sensitivity row of every receiver slot, :obj:`[R]`.
        receiver_neighbor (torch.Tensor): Neighbour atom of every receiver slot (0 on padding).
        receiver_edge (torch.Tensor): Edge of every receiver slot (0 on padding).
        receiver_source_slot (torch.Tensor): Source slot of the edge of every receiver slot
            (that of edge 0 on padding).
        receiver_mask (torch.Tensor): :obj:`True` where a receiver slot holds an edge.
        padded (bool): Whether the layout holds grids; :obj:`False` for the layout built under
            :func:`torch.compile`, whose blocks (degrees) would be data-dependent shapes: its
            slots are then the edges themselves (no blocks, :obj:`source_row` the row of every
            edge) and the layer sums over edges with :meth:`~torch.Tensor.index_add`.
    """
    num_nodes: int
    num_rows: int
    source_order: Tensor
    source_blocks: List[Tuple[int, int, int, int]]
    source_row: Tensor
    source_target: Tensor
    receiver_rank: Tensor
    receiver_blocks: List[Tuple[int, int, int, int]]
    receiver_row: Tensor
    receiver_neighbor: Tensor
    receiver_edge: Tensor
    receiver_source_slot: Tensor
    receiver_mask: Tensor
    padded: bool


def _gather_rows(source: Tensor, index: Tensor) -> Tensor:
    # source[index] for a [num_rows, D] table.
    return torch.gather(source, 0, index.unsqueeze(-1).expand(-1, source.size(1)))


def _scatter_rows(values: Tensor, index: Tensor, num_rows: int) -> Tensor:
    # out[n] = sum of values[e] with index[e] = n, [num_rows, D].
    return values.new_zeros((num_rows, values.size(1))).scatter_add(
        0, index.unsqueeze(-1).expand_as(values), values)


class HIPNNInteraction(torch.nn.Module):
    r"""The interaction layer of HIP-NN, from the `"Hierarchical modeling of molecular energies
    using a deep neural network" <https://doi.org/10.1063/1.5011181>`_ paper (Lubbers, Smith &
    Barros, J. Chem. Phys. 148, 241715, 2018), with the tensor sensitivities of HIP-NN-TS from
    the `"Lightweight and effective tensor sensitivity for atomistic neural networks"
    <https://arxiv.org/abs/2212.03195>`_ paper (Chigaev et al., J. Chem. Phys. 158, 184108,
    2023), numerically identical to hippynn 0.1.3's ``InteractLayer`` (:obj:`max_order=0`),
    ``InteractLayerVec`` (1) and ``InteractLayerQuad`` (2).

    The tensor sensitivities :math:`s_\nu(r_{ij})\,Y^{(l)}(\hat{\mathbf{r}}_{ij})`, with
    :math:`\hat{\mathbf{r}}_{ij} = (\mathbf{r}_j - \mathbf{r}_i)/r_{ij}`, :math:`Y^{(0)} = 1`,
    :math:`Y^{(1)} = \hat{\mathbf{r}}` and :math:`Y^{(2)} = \hat{\mathbf{r}}\hat{\mathbf{r}}^\top
    - \frac{1}{3}\mathbf{1}`, are all contracted with the same weights :math:`\mathbf{V}`
    (weight tying):

    .. math::
        \mathbf{m}^{(l)}_i[g] = \sum_{j \in \mathcal{N}(i)} Y^{(l)}(\hat{\mathbf{r}}_{ij})
        \sum_{\nu, f} V_{\nu g f}\, s_\nu(r_{ij})\, x_j[f],

    and the layer returns (before the activation)

    .. math::
        y_i[g] = m^{(0)}_i[g] + \sum_{l=1}^{l_\mathrm{max}} \lambda_l[g]
        \sqrt{\|\mathbf{m}^{(l)}_i[g]\|^2 + \epsilon} + \sum_f W_{gf}\, x_i[f] + b_g,

    with one learnable scale :math:`\lambda_l[g]` per output feature and order, the Frobenius
    norm for :math:`l = 2`, and the cusp regulariser :math:`\epsilon` that keeps the gradient of
    the norm finite where :math:`\mathbf{m}^{(l)} = 0`. :obj:`max_order=0` is the original HIP-NN
    layer. The sensitivities are :class:`~pyg_tensorpot.nn.InverseGaussianSensitivity`.

    The sensitivities are evaluated once per pair of atoms (both directions of a pair have the
    same distance) when the caller passes :obj:`pair_weight` with a layout built from the
    graph's :obj:`pair_index`. The message is evaluated in the cheaper of two orders, with
    identical results: projecting :math:`\mathbf{x}_j` on :math:`\mathbf{V}` first, so that only
    the pair message :math:`c_{ij}[g] = \sum_{\nu, f} V_{\nu g f} s_\nu(r_{ij}) x_j[f]` is
    formed per edge (one :math:`[D, K] \times [K, F_\mathrm{out}]` product per neighbour over
    its :math:`D` edges, summed into the receivers straight from that grid for
    :math:`l_\mathrm{max} = 0`, or weighted by :math:`Y^{(l)}` with one
    :math:`[C, D] \times [D, F_\mathrm{out}]` product per receiver), or, for narrow inputs such
    as the one-hot species, forming the environment
    :math:`\sum_j s_\nu(r_{ij})\, Y^{(l)}(\hat{\mathbf{r}}_{ij})\, x_j[f]` as one
    :math:`[K, D] \times [D, C F_\mathrm{in}]` product per receiver and contracting it with
    :math:`\mathbf{V}` per atom, as hippynn does. Neither forms a per-edge :obj:`[E, K, F]`
    tensor. The per-atom grids are ragged (rows sorted by degree, each block of rows only as
    wide as its largest degree: :class:`HIPNNLayout`), and the per-slot products run over
    blocks of about :attr:`block_elements` elements (:obj:`CHUNK_ELEMENTS` by default), which
    stay in cache: for :math:`l_\mathrm{max} = 0` no per-slot :obj:`[S, F_\mathrm{out}]`
    tensor is formed at all, and for
    :math:`l_\mathrm{max} > 0` only the pair messages and their gradient (an autograd function
    whose backward pass stays differentiable, for force training). Under :func:`torch.compile`
    and :func:`torch.export`, whose graphs cannot hold the grid's data-dependent width,
    :meth:`neighbor_layout` returns the edge list itself and the same contractions are summed
    over the edges with :meth:`~torch.Tensor.index_add` (no graph break).

    Args:
        in_channels (int): Input features :math:`F_\mathrm{in}`.
        out_channels (int): Output features :math:`F_\mathrm{out}`.
        num_sensitivities (int): Number of sensitivity functions :math:`K`.
        soft_min (float): Initial centre of the innermost sensitivity, Angstrom.
        soft_max (float): Initial centre of the outermost sensitivity, Angstrom.
        cutoff (float): Hard cutoff :math:`r_c`, Angstrom.
        max_order (int, optional): Highest tensor order :math:`l_\mathrm{max}` (0, 1 or 2).
            (default: :obj:`0`)
        cusp_reg (float, optional): :math:`\epsilon`. (default: :obj:`1e-6`)
        contraction (str, optional): :obj:`"project_first"`, :obj:`"environment_first"` or
            :obj:`"auto"` (the one with fewer operations per edge). (default: :obj:`"auto"`)

    Shapes:
        - **input:** features :math:`(N, F_\mathrm{in})`, edge indices :math:`(2, E)` (row 0
          the neighbour :math:`j`, row 1 the receiver :math:`i`, no self-loops), edge lengths
          :math:`(E)`, edge vectors :math:`\mathbf{r}_i - \mathbf{r}_j` :math:`(E, 3)`,
          optionally the :meth:`neighbor_layout` of the edges and, with a layout built from
          a :obj:`pair_index`, the pair distances :math:`(P)`
        - **output:** :math:`(N, F_\mathrm{out})`
    """
    def __init__(self, in_channels: int, out_channels: int, num_sensitivities: int,
                 soft_min: float, soft_max: float, cutoff: float, max_order: int = 0,
                 cusp_reg: float = 1e-6, contraction: str = 'auto'):
        super().__init__()
        if max_order not in (0, 1, 2):
            raise ValueError(f'max_order must be 0 (HIP-NN), 1 or 2 (HIP-NN-TS), got {max_order}')
        if in_channels < 1 or out_channels < 1:
            raise ValueError('in_channels and out_channels must be positive')
        if not cusp_reg >= 0:
            raise ValueError(f'cusp_reg must be non-negative, got {cusp_reg}')
        if contraction not in _CONTRACTIONS:
            raise ValueError(f"contraction must be one of {_CONTRACTIONS}, got '{contraction}'")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_sensitivities = num_sensitivities
        self.max_order = max_order
        self.cusp_reg = float(cusp_reg)
        self.contraction = contraction
        self.block_elements = CHUNK_ELEMENTS
        self.sensitivity = InverseGaussianSensitivity(num_sensitivities, soft_min, soft_max,
                                                      cutoff)
        self.weight = torch.nn.Parameter(torch.empty(num_sensitivities, out_channels,
                                                     in_channels))
        self.lin_self = torch.nn.Linear(in_channels, out_channels)
        if max_order > 0:
            self.scale = torch.nn.Parameter(torch.empty(max_order, out_channels))
        else:
            self.register_parameter('scale', None)
        self.reset_parameters()

    @property
    def num_components(self) -> int:
        return (1, 4, 9)[self.max_order]

    def reset_parameters(self):
        self.sensitivity.reset_parameters()
        torch.nn.init.xavier_normal_(self.weight)
        self.lin_self.reset_parameters()
        torch.nn.init.xavier_normal_(self.lin_self.weight)
        if self.scale is not None:
            torch.nn.init.normal_(self.scale)

    def _project_first(self) -> bool:
        if self.contraction != 'auto':
            return self.contraction == 'project_first'
        # Multiply-adds per edge of the message and of the angular sum.
        C, K = self.num_components, self.num_sensitivities
        return (K + C) * self.out_channels <= (1 + C) * K * self.in_channels

    def angular(self, edge_vec: Tensor, edge_weight: Tensor) -> Optional[Tensor]:
        r"""The components :math:`[Y^{(0)}, Y^{(1)}, Y^{(2)}]` up to :obj:`max_order` per edge,
        :obj:`[E, 1 + 3 + 5]` (the traceless :math:`Y^{(2)}` as :math:`xx, xy, xz, yy, yz`);
        :obj:`None` for :obj:`max_order=0`."""
        if self.max_order == 0:
            return None
        unit = edge_vec / -edge_weight.unsqueeze(-1)  # r_j - r_i, hippynn's direction
        parts = [torch.ones_like(edge_weight).unsqueeze(-1), unit]
        if self.max_order == 2:
            # _QUADRUPOLE_COMPONENTS written out (TorchScript cannot index with a global).
            parts.append(traceless_outer(unit)[:, [0, 3, 4, 1, 5]])
        return torch.cat(parts, dim=-1)

    @staticmethod
    def neighbor_layout(edge_index: Tensor, num_nodes: int, pair_index: Optional[Tensor] = None,
                        num_pairs: Optional[int] = None,
                        block_slots: int = CHUNK_ELEMENTS // 128) -> HIPNNLayout:
        r"""The :class:`HIPNNLayout` of :obj:`edge_index`; pass it to every layer that shares
        the edges to build it once.

        Args:
            edge_index (torch.Tensor): Row 0 the neighbour, row 1 the receiver, :obj:`[2, E]`.
            num_nodes (int): Number of atoms.
            pair_index (torch.Tensor, optional): Row of every edge in the pair distances
                (the graph's :obj:`pair_index`; both directions of a pair share a row); the
                layer then needs those distances as :obj:`pair_weight`. If :obj:`None`, every
                edge is its own row. (default: :obj:`None`)
            num_pairs (int, optional): Number of pair rows (the length of
                :obj:`pair_weight`); counted from :obj:`pair_index` if :obj:`None`.
                (default: :obj:`None`)
            block_slots (int, optional): Slots per block of the source grid (a block of pair
                messages holds :obj:`block_slots * out_channels` numbers).
                (default: :obj:`CHUNK_ELEMENTS // 128`)
        """
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError('edge_index must have shape [2, num_edges], got '
                             + str(list(edge_index.shape)))
        num_edges = edge_index.size(1)
        if pair_index is None:
            rows = torch.arange(num_edges, device=edge_index.device)
            num_rows = num_edges
        else:
            if pair_index.dim() != 1 or pair_index.size(0) != num_edges:
                raise ValueError('pair_index must have one entry per edge ([' + str(num_edges)
                                 + ']), got ' + str(list(pair_index.shape)))
            rows = pair_index
            if num_pairs is None:
                if torch.compiler.is_compiling():
                    raise ValueError('under torch.compile pass num_pairs (the number of pair '
                                     'distances): counting them is a data-dependent size')
                num_rows = int(pair_index.max()) + 1 if num_edges > 0 else 0
            else:
                num_rows = num_pairs
        if torch.compiler.is_compiling():
            return HIPNNInteraction._edge_layout(edge_index, num_nodes, rows, num_rows)
        device = edge_index.device
        by_source = ragged_neighbors(edge_index[0], num_nodes, block_slots)
        source_row = torch.full((by_source.num_slots, ), num_rows, dtype=torch.long,
                                device=device)
        source_row[by_source.slot] = rows
        source_target = torch.zeros_like(source_row)
        source_target[by_source.slot] = edge_index[1]
        by_receiver = ragged_neighbors(edge_index[1], num_nodes, block_slots)
        receiver_mask = torch.zeros(by_receiver.num_slots, dtype=torch.bool, device=device)
        receiver_mask[by_receiver.slot] = True
        receiver_edge = torch.zeros(by_receiver.num_slots, dtype=torch.long, device=device)
        receiver_edge[by_receiver.slot] = torch.arange(num_edges, device=device)
        receiver_row = torch.full_like(receiver_edge, num_rows)
        receiver_row[by_receiver.slot] = rows
        receiver_neighbor = torch.zeros_like(receiver_edge)
        receiver_neighbor[by_receiver.slot] = edge_index[0]
        # (A graph without edges has no slots: both index tensors are empty.)
        receiver_source_slot = by_source.slot.index_select(0, receiver_edge)
        return HIPNNLayout(num_nodes, num_rows, by_source.order, by_source.blocks, source_row,
                           source_target, by_receiver.row, by_receiver.blocks, receiver_row,
                           receiver_neighbor, receiver_edge, receiver_source_slot,
                           receiver_mask, True)

    @staticmethod
    def _edge_layout(edge_index: Tensor, num_nodes: int, rows: Tensor,
                     num_rows: int) -> HIPNNLayout:
        # torch.compile's layout: no grid, whose width (the largest degree) is a
        # data-dependent size that breaks the graph; every edge is its own slot.
        edges = torch.arange(edge_index.size(1), device=edge_index.device)
        atoms = torch.arange(num_nodes, device=edge_index.device)
        no_blocks: List[Tuple[int, int, int, int]] = []
        return HIPNNLayout(num_nodes, num_rows, atoms, no_blocks, rows, edge_index[1], atoms,
                           no_blocks, rows, edge_index[0], edges, edges,
                           torch.ones_like(edges, dtype=torch.bool), False)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor, edge_vec: Tensor,
                layout: Optional[HIPNNLayout] = None,
                pair_weight: Optional[Tensor] = None) -> Tensor:
        num_nodes = x.size(0)
        if layout is None:
            if pair_weight is not None:
                raise ValueError('pair_weight needs the layout of its pair_index: pass '
                                 'neighbor_layout(edge_index, num_nodes, pair_index)')
            layout = self.neighbor_layout(
                edge_index, num_nodes,
                block_slots=max(1, self.block_elements // self.out_channels))
        distances = edge_weight if pair_weight is None else pair_weight
        if distances.size(0) != layout.num_rows or layout.num_nodes != num_nodes:
            raise ValueError('the layout belongs to another graph: it has '
                             + str(layout.num_rows) + ' distance rows and '
                             + str(layout.num_nodes) + ' atoms, got ' + str(distances.size(0))
                             + ' distances and ' + str(num_nodes) + ' atoms')
        sensitivity = self.sensitivity(distances)
        # Row num_rows, read by every padding slot: padding adds exact zeros.
        sensitivity = torch.cat([sensitivity, sensitivity.new_zeros(1, sensitivity.size(1))])
        # m in atom order, or in the receiver grid's row order (by_rank)
        by_rank = layout.padded and not (self.max_order == 0 and self._project_first())
        if not layout.padded:
            m = self._edge_sum(x, sensitivity, edge_index, edge_weight, edge_vec, layout)
        elif self._project_first():
            m = self._project_first_sum(x, sensitivity, edge_weight, edge_vec, layout)
        else:
            m = self._environment_first_sum(x, sensitivity, edge_weight, edge_vec, layout)

        out = m[:, 0]
        scale = self.scale  # None exactly when max_order == 0
        if scale is not None and self.max_order >= 1:
            vector = m[:, 1:4]
            norm = torch.sqrt(vector.square().sum(1) + self.cusp_reg)
            out = out + scale[0] * norm
        if scale is not None and self.max_order >= 2:
            quad = m[:, 4:9]
            frobenius = 2.0 * (quad.square().sum(1) + quad[:, 0] * quad[:, 3])
            out = out + scale[1] * torch.sqrt(frobenius + self.cusp_reg)
        if by_rank:
            out = out.index_select(0, layout.receiver_rank)
        return out + self.lin_self(x)

    def _edge_sum(self, x: Tensor, sensitivity: Tensor, edge_index: Tensor,
                  edge_weight: Tensor, edge_vec: Tensor, layout: HIPNNLayout) -> Tensor:
        # The sums of _project_first_sum / _environment_first_sum over the edge list (the
        # layout of torch.compile), in the same contraction order. Rows are moved with
        # gather / scatter_add, not index_select / index_add: inductor turns index_add (and
        # index_select's backward) into atomic adds, several times slower on CPU than the
        # scatter_add kernel it calls instead.
        N, K, C = layout.num_nodes, self.num_sensitivities, self.num_components
        neighbor, receiver = edge_index[0], edge_index[1]
        s = _gather_rows(sensitivity, layout.source_row)  # [E, K]
        angular = self.angular(edge_vec, edge_weight)  # [E, C] or None
        if self._project_first():
            F = self.out_channels
            projected = x @ self.weight.permute(2, 0, 1).reshape(self.in_channels, K * F)
            # c_ij[g] = sum_nu s_nu(r_ij) (V x_j)[nu, g]
            pair = (s.unsqueeze(-1) * _gather_rows(projected, neighbor).view(-1, K, F)).sum(1)
            if angular is None:
                return _scatter_rows(pair, receiver, N).unsqueeze(1)
            message = (angular.unsqueeze(-1) * pair.unsqueeze(1)).view(-1, C * F)
            return _scatter_rows(message, receiver, N).view(N, C, F)
        F = self.in_channels
        neighbors = _gather_rows(x, neighbor)  # [E, F_in]
        weight = neighbors.new_ones((neighbors.size(0), 1)) if angular is None else angular
        # The environment sum_j s_nu(r_ij) Y_c(r_ij) x_j[f], [N, K, C, F_in].
        message = (s[:, :, None, None] * weight[:, None, :, None]
                   * neighbors[:, None, None, :]).view(-1, K * C * F)
        environment = _scatter_rows(message, receiver, N)
        environment = environment.view(N, K, C, F).transpose(1, 2).reshape(N, C, K * F)
        return environment @ self.weight.permute(0, 2, 1).reshape(K * F, self.out_channels)

    def _receiver_angular(self, edge_weight: Tensor, edge_vec: Tensor,
                          layout: HIPNNLayout) -> Tensor:
        # Y of the edge in every receiver slot, [R, C], zero on padding.
        angular = self.angular(edge_vec.index_select(0, layout.receiver_edge),
                               edge_weight.index_select(0, layout.receiver_edge))
        assert angular is not None
        return angular * layout.receiver_mask.unsqueeze(-1).to(angular.dtype)

    def _project_first_sum(self, x: Tensor, sensitivity: Tensor, edge_weight: Tensor,
                           edge_vec: Tensor, layout: HIPNNLayout) -> Tensor:
        N, K, F = layout.num_nodes, self.num_sensitivities, self.out_channels
        # (V x_j)[nu, g] for every atom (rows in the source grid's order), then
        # c_ij[g] = sum_nu s_nu(r_ij) (V x_j)[nu, g] as one [D, K] @ [K, F] product per
        # neighbour j over its D source slots, instead of gathering (V x_j) [K, F] per edge.
        projected = (x.index_select(0, layout.source_order)
                     @ self.weight.permute(2, 0, 1).reshape(self.in_channels, K * F)).view(
                         N, K, F)
        grid = sensitivity.index_select(0, layout.source_row)
        if self.max_order == 0:
            # sum_j c_ij straight from the source grid into the receivers (padding rows of c
            # are exact zeros): no [E, F] or [S, F] tensor is formed or kept.
            return pair_sum(grid, projected, layout.source_target,
                            layout.source_blocks).unsqueeze(1)
        # sum_j Y(r_ij) (outer) c_ij as one [C, D] @ [D, F] product per receiver over its D
        # receiver slots. Only the narrow angular factor is masked: the padding rows of c are
        # multiplied by 0.
        return angular_pair_sum(grid, projected,
                                self._receiver_angular(edge_weight, edge_vec, layout),
                                layout.receiver_source_slot, layout.source_blocks,
                                layout.receiver_blocks)

    def _environment_first_sum(self, x: Tensor, sensitivity: Tensor, edge_weight: Tensor,
                               edge_vec: Tensor, layout: HIPNNLayout) -> Tensor:
        N, K, C = layout.num_nodes, self.num_sensitivities, self.num_components
        F = self.in_channels
        # The environment sum_j s_nu(r_ij) Y(r_ij) x_j[f] as one [K, D] @ [D, C F] product
        # per receiver over its D receiver slots, a block of receivers at a time so that
        # Y (outer) x_j stays in cache; the sensitivities are zero on padding slots, so
        # nothing is masked. Rows in the receiver grid's order.
        grid = sensitivity.index_select(0, layout.receiver_row)
        neighbors = x.index_select(0, layout.receiver_neighbor)
        if self.max_order == 0:
            angular = neighbors.new_ones((neighbors.size(0), 1))
        else:
            angular = self._receiver_angular(edge_weight, edge_vec, layout)
        blocks = layout.receiver_blocks
        sums = [
            torch.bmm(s.transpose(1, 2), (y.unsqueeze(-1) * n.unsqueeze(2)).view(
                n.size(0), n.size(1), C * F))
            for s, y, n in zip(block_views(grid, blocks), block_views(angular, blocks),
                               block_views(neighbors, blocks))
        ]
        sums.append(grid.new_zeros((N - covered_rows(blocks), K, C * F)))
        environment = torch.cat(sums)
        environment = environment.view(N, K, C, F).transpose(1, 2).reshape(N, C, K * F)
        return environment @ self.weight.permute(0, 2, 1).reshape(K * F, self.out_channels)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, {self.out_channels}, '
                f'num_sensitivities={self.num_sensitivities}, max_order={self.max_order})')
