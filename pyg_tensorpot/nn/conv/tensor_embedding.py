from typing import Optional, Union

import torch
from torch import Tensor
from torch_geometric.nn import MessagePassing

from pyg_tensorpot.nn.activations import activation_resolver
from pyg_tensorpot.nn.cutoff import CosineCutoff
from pyg_tensorpot.nn.message import embedding_scatter, recomputed_embedding_scatter
from pyg_tensorpot.nn.radial import recomputed_filter
from pyg_tensorpot.nn.tensor_algebra import (
    mix_parts,
    packed_squared_norms,
    scale_parts,
    traceless_outer,
    unpack,
)

class TensorEmbedding(MessagePassing):
    r"""The Cartesian rank-2 embedding of TensorNet, from the
    `"TensorNet: Cartesian Tensor Representations for Efficient Learning of Molecular
    Potentials" <https://arxiv.org/abs/2306.06482>`_ paper (Simeon & De Fabritiis, NeurIPS 2023)

    .. math::
        \mathbf{X}_i = \sum_{j \in \mathcal{N}(i) \cup \{i\}} f^I_{ij}\,\mathbf{1}
        + f^A_{ij}\,[\hat{\mathbf{r}}_{ij}]_\times
        + f^S_{ij}\left(\hat{\mathbf{r}}_{ij}\hat{\mathbf{r}}_{ij}^\top
        - \tfrac{1}{3}\mathbf{1}\right),
        \qquad f^c_{ij} = (\mathbf{W}_c\,\mathbf{e}(d_{ij}) + \mathbf{b}_c)\,\phi(d_{ij})\,
        \mathbf{Z}_{ij},

    with the pair embedding :math:`\mathbf{Z}_{ij} = \mathbf{W}_z[\mathbf{E}(z_i) \|
    \mathbf{E}(z_j)] + \mathbf{b}_z`, :math:`\hat{\mathbf{r}}_{ij}` the unit vector from
    :math:`j` to :math:`i` (zero on self-loops) and :math:`\phi` the cosine cutoff. The parts are
    then mixed over channels and gated by an MLP of the layer-normalised squared norms,

    .. math::
        \mathbf{X}_i \leftarrow n^I_i\,(\mathbf{W}_I I_i)\mathbf{1} + n^A_i\,\mathbf{W}_A
        \mathbf{A}_i + n^S_i\,\mathbf{W}_S\mathbf{S}_i, \qquad
        (n^I, n^A, n^S)_i = \sigma(\mathbf{W}_2\,\sigma(\mathbf{W}_1
        \operatorname{LN}(\|\mathbf{X}_i\|^2) + \mathbf{b}_1) + \mathbf{b}_2),

    where :math:`\|\cdot\|^2` is the squared Frobenius norm per channel, as in torchmd-net.

    In eager mode the radial projection is evaluated in row blocks and not kept for the
    backward pass (:func:`~pyg_tensorpot.nn.radial.recomputed_filter`); in evaluation mode the
    filters :math:`[R, 3, H]` are not kept either but recomputed inside the message
    contraction's backward pass, and the pair embeddings enter it at atom level
    (:func:`~pyg_tensorpot.nn.message.recomputed_embedding_scatter`).

    Args:
        hidden_channels (int): Number of tensor channels :math:`H`.
        num_rbf (int): Number of radial basis functions fed in as :obj:`edge_attr`.
        cutoff (float): Cutoff radius :math:`r_c` of :math:`\phi` in Angstrom.
        max_z (int, optional): Size of the atom-type embedding table. (default: :obj:`128`)
        activation (str or torch.nn.Module, optional): The activation :math:`\sigma`.
            (default: :obj:`"silu"`)
        cutoff_lower (float, optional): Lower cutoff of :math:`\phi`. (default: :obj:`0.0`)

    Shapes:
        - **input:** atomic numbers :math:`(N)`, edge indices :math:`(2, E)` (self-loops
          included), edge lengths :math:`(R)`, edge unit vectors :math:`(E, 3)`, radial basis
          :math:`(R, K)`, optional row of each edge :math:`(E)`
        - **output:** tensor features :math:`(N, 3, 3, H)`
    """
    # Arguments of the generic propagate() path (forward() uses message_and_aggregate()).
    propagate_type = {'radial': Tensor, 'pair': Tensor, 'edge_unit': Tensor}

    def __init__(self, hidden_channels: int, num_rbf: int, cutoff: float, max_z: int = 128,
                 activation: Union[str, torch.nn.Module] = 'silu', cutoff_lower: float = 0.0):
        super().__init__(aggr='add', node_dim=0)
        self.hidden_channels = hidden_channels
        self.num_rbf = num_rbf
        self.max_z = max_z
        self.cutoff_fn = CosineCutoff(cutoff, cutoff_lower)
        self.atom_embedding = torch.nn.Embedding(max_z, hidden_channels)
        self.pair_embedding = torch.nn.Linear(2 * hidden_channels, hidden_channels)
        # The three K -> H radial projections of the I, A and S filters, stacked.
        self.radial_projection = torch.nn.Linear(num_rbf, 3 * hidden_channels)
        self.mixing = torch.nn.ModuleList(
            [torch.nn.Linear(hidden_channels, hidden_channels, bias=False) for _ in range(3)])
        self.norm = torch.nn.LayerNorm(hidden_channels)
        self.gate_mlp = torch.nn.Sequential(
            torch.nn.Linear(hidden_channels, 2 * hidden_channels),
            activation_resolver(activation),
            torch.nn.Linear(2 * hidden_channels, 3 * hidden_channels),
            activation_resolver(activation),
        )
        self.reset_parameters()

    def reset_parameters(self):
        self.atom_embedding.reset_parameters()
        self.pair_embedding.reset_parameters()
        # Three independent K -> H layers, each with torch's default initialisation.
        for block in self.radial_projection.weight.detach().chunk(3, dim=0):
            torch.nn.init.kaiming_uniform_(block, a=5**0.5)
        bound = 1.0 / self.num_rbf**0.5
        torch.nn.init.uniform_(self.radial_projection.bias, -bound, bound)
        for linear in self.mixing:
            linear.reset_parameters()
        self.norm.reset_parameters()
        for module in self.gate_mlp:
            if isinstance(module, torch.nn.Linear):
                module.reset_parameters()

    def forward(self, z: Tensor, edge_index: Tensor, edge_weight: Tensor, edge_unit: Tensor,
                edge_attr: Tensor, radial_index: Optional[Tensor] = None) -> Tensor:
        r"""
        Args:
            z (torch.Tensor): Atomic numbers :obj:`[N]`.
            edge_index (torch.Tensor): Row 0 neighbour :math:`j`, row 1 receiver :math:`i`,
                self-loops included, :obj:`[2, E]`.
            edge_weight (torch.Tensor): Edge lengths :obj:`[R]`.
            edge_unit (torch.Tensor): Unit vectors :math:`\hat{\mathbf{r}}_{ij}` :obj:`[E, 3]`
                (zero on self-loops).
            edge_attr (torch.Tensor): Radial basis :math:`\mathbf{e}(d_{ij})` :obj:`[R, K]`.
            radial_index (torch.Tensor, optional): Row of :obj:`edge_weight` and
                :obj:`edge_attr` for each edge :obj:`[E]`, when edges of equal length share a
                row (as both directions of a pair do); :obj:`R = E` if :obj:`None`.
                (default: :obj:`None`)
        """
        H = self.hidden_channels
        atom = self.atom_embedding(z)
        # W_z [E(z_i) || E(z_j)] + b_z, evaluated per atom then summed per edge.
        weight_i, weight_j = self.pair_embedding.weight.split(H, dim=1)
        receiver = torch.nn.functional.linear(atom, weight_i, self.pair_embedding.bias)
        sender = torch.nn.functional.linear(atom, weight_j)
        envelope = self.cutoff_fn(edge_weight)
        eager = not (torch.jit.is_scripting() or torch.compiler.is_compiling())
        if eager and not self.training:
            components = self._recomputed_aggregate(edge_index, edge_attr, envelope, receiver,
                                                    sender, edge_unit, radial_index)
        else:
            source, target = edge_index[0], edge_index[1]
            pair = receiver.index_select(0, target) + sender.index_select(0, source)
            if eager:
                radial = self._recomputed_radial(edge_attr, envelope)
            else:
                radial = self.radial_projection(edge_attr) * envelope.unsqueeze(-1)
            components = self.message_and_aggregate(edge_index, radial.unflatten(-1, (3, H)),
                                                    pair, edge_unit, z.size(0), radial_index)
        norm_i, norm_a, norm_s = packed_squared_norms(components)
        gates = self.gate_mlp(self.norm(norm_i + norm_a + norm_s)).unflatten(-1, (3, H))
        mixed = mix_parts(components, self.mixing[0].weight, self.mixing[1].weight,
                          self.mixing[2].weight)
        return unpack(scale_parts(mixed, gates))

    @torch.jit.unused
    def _recomputed_radial(self, edge_attr: Tensor, envelope: Tensor) -> Tensor:
        # The same numbers, without keeping the [R, 3H] projection for the backward pass.
        return recomputed_filter(self.radial_projection, edge_attr, envelope)

    @torch.jit.unused
    def _recomputed_aggregate(self, edge_index: Tensor, edge_attr: Tensor, envelope: Tensor,
                              receiver: Tensor, sender: Tensor, edge_unit: Tensor,
                              radial_index: Optional[Tensor]) -> Tensor:
        # Evaluation mode: message_and_aggregate() keeping neither the radial filters
        # [R, 3, H] (recomputed in the backward pass; a Linear layer, so cheaply) nor the pair
        # embeddings [E, H] (formed per pass from the atom-level terms), about 46 kB per atom
        # for liquid water at 4.5 A, H = 128, float32.
        return recomputed_embedding_scatter(self.radial_projection, edge_attr, envelope,
                                            receiver, sender, self._geometry(edge_unit),
                                            edge_index, radial_index)

    def _geometry(self, edge_unit: Tensor) -> Tensor:
        # [E, 10]: the packed components (1, u, u u^T - |u|^2/3 Id) of the edge direction.
        return torch.cat([torch.ones_like(edge_unit[:, :1]), edge_unit,
                          traceless_outer(edge_unit)], dim=-1)

    def message(self, radial: Tensor, pair: Tensor, edge_unit: Tensor) -> Tensor:
        # [E, 10, H]: (f^I, f^A u, f^S (u u^T - |u|^2/3 Id)) in packed components, with
        # f = radial filter * pair embedding; forward() uses the fused equivalent below.
        filters = radial * pair.unsqueeze(1)
        return torch.cat([
            filters[:, 0:1],
            filters[:, 1:2] * edge_unit.unsqueeze(-1),
            filters[:, 2:3] * traceless_outer(edge_unit).unsqueeze(-1),
        ], dim=1)

    def message_and_aggregate(self, edge_index: Tensor, radial: Tensor, pair: Tensor,
                              edge_unit: Tensor, num_nodes: int,
                              radial_index: Optional[Tensor] = None) -> Tensor:
        # Equal to propagate() with message() above (radial rows picked by radial_index),
        # without keeping per-edge [E, 10, H] tensors alive for the backward pass.
        return embedding_scatter(radial, pair, self._geometry(edge_unit), edge_index, num_nodes,
                                 radial_index)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.hidden_channels}, num_rbf={self.num_rbf}, '
                f'max_z={self.max_z}, cutoff={self.cutoff_fn.cutoff_upper})')
