from typing import Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter

from pyg_tensorpot.nn.padded_neighbors import PaddedNeighbors, padded_neighbors
from pyg_tensorpot.nn.sensitivity import InverseGaussianSensitivity
from pyg_tensorpot.nn.tensor_algebra import traceless_outer

# (xx, xy, xz, yy, yz) out of traceless_outer's (xx, yy, zz, xy, xz, yz): hippynn's 5 components.
_QUADRUPOLE_COMPONENTS = (0, 3, 4, 1, 5)
_CONTRACTIONS = ('auto', 'project_first', 'environment_first')


class HIPNNInteraction(MessagePassing):
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

    The message is evaluated in the cheaper of two orders, with identical results: projecting
    :math:`\mathbf{x}_j` on :math:`\mathbf{V}` first, so that only the pair message
    :math:`c_{ij}[g] = \sum_{\nu, f} V_{\nu g f} s_\nu(r_{ij}) x_j[f]` is formed per edge
    (one :math:`[D, K] \times [K, F_\mathrm{out}]` product per neighbour over its :math:`D`
    edges), or, for narrow inputs such as the one-hot species, sending
    :math:`s_\nu(r_{ij})\, x_j[f]` and contracting with :math:`\mathbf{V}` per atom, as hippynn
    does. The angular sum over neighbours is one batched product per receiver. Neither forms
    a per-edge :obj:`[E, K, F]` tensor.

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
          optionally the :meth:`neighbor_layout` of the edges
        - **output:** :math:`(N, F_\mathrm{out})`
    """
    # Argument types of propagate(), for TorchScript.
    propagate_type = {'features': Tensor, 'sensitivity': Tensor, 'angular': Optional[Tensor],
                      'project_first': bool, 'by_source': PaddedNeighbors,
                      'by_receiver': PaddedNeighbors}

    def __init__(self, in_channels: int, out_channels: int, num_sensitivities: int,
                 soft_min: float, soft_max: float, cutoff: float, max_order: int = 0,
                 cusp_reg: float = 1e-6, contraction: str = 'auto'):
        super().__init__(aggr='add', node_dim=0)
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
    def neighbor_layout(edge_index: Tensor,
                        num_nodes: int) -> Tuple[PaddedNeighbors, PaddedNeighbors]:
        r"""The edges grouped by neighbour (row 0) and by receiver (row 1), as
        :class:`~pyg_tensorpot.nn.padded_neighbors.PaddedNeighbors`; pass it to every layer
        that shares :obj:`edge_index` to build it once."""
        return (padded_neighbors(edge_index[0], num_nodes),
                padded_neighbors(edge_index[1], num_nodes))

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor, edge_vec: Tensor,
                layout: Optional[Tuple[PaddedNeighbors, PaddedNeighbors]] = None) -> Tensor:
        num_nodes = x.size(0)
        if layout is None:
            layout = self.neighbor_layout(edge_index, num_nodes)
        by_source, by_receiver = layout
        sensitivity = self.sensitivity(edge_weight)
        angular = self.angular(edge_vec, edge_weight)
        if self._project_first():
            # (V x_j)[nu, g] for every atom, then c_ij[g] = sum_nu s_nu(r_ij) (V x_j)[nu, g].
            features = (x @ self.weight.permute(2, 0, 1).reshape(self.in_channels, -1)).view(
                num_nodes, self.num_sensitivities, self.out_channels)
            m = self.propagate(edge_index, features=features, sensitivity=sensitivity,
                               angular=angular, project_first=True, by_source=by_source,
                               by_receiver=by_receiver, size=(num_nodes, num_nodes))
        else:
            # The message s(r_ij) (outer) x_j; V contracts the per-atom sum.
            m = self.propagate(edge_index, features=x, sensitivity=sensitivity, angular=angular,
                               project_first=False, by_source=by_source,
                               by_receiver=by_receiver, size=(num_nodes, num_nodes))
            m = m @ self.weight.permute(0, 2, 1).reshape(-1, self.out_channels)

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
        return out + self.lin_self(x)

    def message(self, features: Tensor, sensitivity: Tensor, edge_index_j: Tensor,
                project_first: bool, by_source: PaddedNeighbors) -> Tensor:
        if not project_first:
            x_j = features.index_select(0, edge_index_j)
            return (sensitivity.unsqueeze(-1) * x_j.unsqueeze(1)).flatten(1)
        # c_ij as one [D, K] @ [K, F] product per neighbour j over its D edges, instead of
        # gathering (V x_j) [K, F] for every edge.
        num_nodes, width = by_source.num_nodes, by_source.width
        grid = sensitivity.index_select(0, by_source.edge_of_slot).view(
            num_nodes, width, sensitivity.size(-1))
        pair = torch.bmm(grid, features).view(num_nodes * width, features.size(-1))
        return pair.index_select(0, by_source.slot)

    def aggregate(self, inputs: Tensor, index: Tensor, dim_size: Optional[int],
                  angular: Optional[Tensor], by_receiver: PaddedNeighbors) -> Tensor:
        if angular is None:
            return scatter(inputs, index, 0, dim_size=dim_size, reduce='sum').unsqueeze(1)
        # sum_j Y(r_ij) (outer) message_ij as one [C, D] @ [D, W] product per receiver. Only
        # the narrow angular factor is masked: padding rows of the messages are multiplied by 0.
        num_nodes, width = by_receiver.num_nodes, by_receiver.width
        rows = inputs.index_select(0, by_receiver.edge_of_slot).view(num_nodes, width,
                                                                     inputs.size(-1))
        weights = angular.index_select(0, by_receiver.edge_of_slot)
        weights = weights * by_receiver.mask.unsqueeze(-1).to(weights.dtype)
        weights = weights.view(num_nodes, width, angular.size(-1)).transpose(1, 2)
        return torch.bmm(weights, rows)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, {self.out_channels}, '
                f'num_sensitivities={self.num_sensitivities}, max_order={self.max_order})')
