from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import Data

from pyg_tensorpot.models.base import AtomisticModel
from pyg_tensorpot.nn.conv.hipnn_interaction import HIPNNInteraction
from pyg_tensorpot.nn.conv.hipnn_sums import CHUNK_ELEMENTS
from pyg_tensorpot.nn.graph import AtomGraph
from pyg_tensorpot.nn.hierarchical import HierarchicalEnergyHead, hierarchicality
from pyg_tensorpot.nn.onsite import OnSiteLayer, ResidualWrapper
from pyg_tensorpot.nn.species import SpeciesOneHot


class HIPNN(AtomisticModel):
    r"""HIP-NN, from the `"Hierarchical modeling of molecular energies using a deep neural
    network" <https://doi.org/10.1063/1.5011181>`_ paper (Lubbers, Smith & Barros, J. Chem.
    Phys. 148, 241715, 2018), and with :obj:`max_order >= 1` HIP-NN-TS, from the
    `"Lightweight and effective tensor sensitivity for atomistic neural networks"
    <https://arxiv.org/abs/2212.03195>`_ paper (Chigaev et al., J. Chem. Phys. 158, 184108,
    2023), numerically identical to hippynn 0.1.3's ``Hipnn`` / ``HipnnVec`` / ``HipnnQuad``
    with an ``HEnergy`` target.

    The one-hot species :math:`\mathbf{x}^0_i` (:class:`~pyg_tensorpot.nn.SpeciesOneHot`) pass
    through :obj:`num_interactions` blocks, each a
    :class:`~pyg_tensorpot.nn.HIPNNInteraction` followed by :obj:`num_atom_layers`
    :class:`~pyg_tensorpot.nn.OnSiteLayer` s, all wrapped by the activation in residual form
    (hippynn's default) or plain form (the 2018 paper); block :math:`n` outputs
    :math:`\mathbf{x}^n_i`. The energy is hierarchical
    (:class:`~pyg_tensorpot.nn.HierarchicalEnergyHead`),

    .. math::
        E = \mu + \sum_i \left( \hat{E}^0_i + \sigma \sum_{n=1}^{N} \hat{E}^n_i
        + E^\mathrm{ref}_{z_i} \right), \qquad \hat{E}^n_i = \mathbf{w}_n^\top
        \mathbf{x}^n_i + b_n,

    where :math:`\hat{E}^0_i` are per-species reference energies (fitted by
    :meth:`fit_reference_energies`) and :math:`\mu = 0`, :math:`\sigma = 1`,
    :math:`E^\mathrm{ref} = 0` unless set. Forces are :math:`-\partial E/\partial\mathbf{r}_i`
    (:meth:`energy_and_forces`). For training, the model adds hippynn's regularisers
    :obj:`"hierarchicality"` and :obj:`"l2"` (:meth:`graph_outputs_and_regularization`;
    weighted by ``loss.regularization``). The defaults are the ANI-1x size of hippynn's examples.

    Args:
        hidden_channels (int, optional): Width :math:`F` of every layer. (default: :obj:`128`)
        num_interactions (int, optional): Number of interaction blocks :math:`N`.
            (default: :obj:`2`)
        num_atom_layers (int, optional): On-site layers per block. (default: :obj:`3`)
        num_sensitivities (int, optional): Sensitivity functions per interaction.
            (default: :obj:`20`)
        soft_min (float, optional): Initial innermost sensitivity centre, Angstrom.
            (default: :obj:`0.75`)
        soft_max (float, optional): Initial outermost sensitivity centre, Angstrom.
            (default: :obj:`5.5`)
        cutoff (float, optional): Hard cutoff, Angstrom. (default: :obj:`6.5`)
        elements (Sequence[int], optional): Atomic numbers the model knows, in one-hot column
            order. (default: :obj:`(1, 6, 7, 8)`)
        max_order (int, optional): Tensor sensitivity order: 0 for HIP-NN, 1 or 2 for
            HIP-NN-TS. (default: :obj:`0`)
        cusp_reg (float, optional): Cusp regulariser of the HIP-NN-TS norms.
            (default: :obj:`1e-6`)
        residual (bool, optional): Residual (hippynn) or plain (2018 paper) layers.
            (default: :obj:`True`)
        activation (str or torch.nn.Module, optional): Activation. (default: :obj:`"softplus"`)
        max_num_neighbors (int, optional): Per-atom neighbour budget; exceeding it is an
            error. (default: :obj:`None`)
    """
    def __init__(
        self,
        hidden_channels: int = 128,
        num_interactions: int = 2,
        num_atom_layers: int = 3,
        num_sensitivities: int = 20,
        soft_min: float = 0.75,
        soft_max: float = 5.5,
        cutoff: float = 6.5,
        elements: Sequence[int] = (1, 6, 7, 8),
        max_order: int = 0,
        cusp_reg: float = 1e-6,
        residual: bool = True,
        activation: Union[str, torch.nn.Module] = 'softplus',
        max_num_neighbors: Optional[int] = None,
    ):
        elements = [int(e) for e in elements]
        super().__init__(cutoff=cutoff, max_z=max(128, max(elements, default=0) + 1),
                         self_loops=False, max_num_neighbors=max_num_neighbors,
                         supported_elements=elements)
        if num_interactions < 1 or num_atom_layers < 0 or hidden_channels < 1:
            raise ValueError('need num_interactions >= 1, num_atom_layers >= 0 and '
                             'hidden_channels >= 1')
        if not soft_max <= cutoff:
            raise ValueError(f'soft_max ({soft_max} A) must not exceed the cutoff ({cutoff} A)')
        self.hidden_channels = hidden_channels
        self.num_interactions = num_interactions
        self.num_atom_layers = num_atom_layers
        self.num_sensitivities = num_sensitivities
        self.soft_min = float(soft_min)
        self.soft_max = float(soft_max)
        self.max_order = max_order
        self.cusp_reg = float(cusp_reg)
        self.residual = residual
        self.activation = activation
        # Slots per block of the interactions' source grid: blocks of pair messages of
        # CHUNK_ELEMENTS numbers, which stay in cache.
        self.block_slots = max(1, CHUNK_ELEMENTS // hidden_channels)

        self.species = SpeciesOneHot(elements)
        num_species = self.species.num_species
        self.blocks = torch.nn.ModuleList()
        for n in range(num_interactions):
            in_channels = num_species if n == 0 else hidden_channels
            interaction = HIPNNInteraction(in_channels, hidden_channels, num_sensitivities,
                                           soft_min, soft_max, cutoff, max_order, cusp_reg)
            block = torch.nn.ModuleList([
                ResidualWrapper(interaction, in_channels, hidden_channels, hidden_channels,
                                activation, residual)
            ])
            for _ in range(num_atom_layers):
                block.append(OnSiteLayer(hidden_channels, hidden_channels, activation, residual))
            self.blocks.append(block)
        self.energy_head = HierarchicalEnergyHead([num_species] +
                                                  [hidden_channels] * num_interactions)

    __jit_unused_properties__ = ['dtype', 'elements', 'interactions']
    regularizers = ('hierarchicality', 'l2')

    @property
    def elements(self) -> List[int]:
        return self.species.elements

    @property
    def interactions(self) -> List[HIPNNInteraction]:
        return [block[0].layer for block in self.blocks]

    def reset_parameters(self):
        for block in self.blocks:
            for layer in block:
                layer.reset_parameters()
        self.energy_head.reset_parameters()

    def representation(self, z: Tensor, pos: Tensor, graph: AtomGraph) -> List[Tensor]:
        r"""The features :math:`[\mathbf{x}^0, \dots, \mathbf{x}^N]` of every atom of
        :obj:`graph` (:meth:`graph`)."""
        x = self.species(z, pos.dtype)
        # Built once for all interactions; the sensitivities are evaluated once per pair.
        layout = HIPNNInteraction.neighbor_layout(graph.edge_index, z.size(0), graph.pair_index,
                                                  graph.pair_weight.size(0),
                                                  self.block_slots)
        features = [x]
        for block in self.blocks:
            for layer in block:
                # A constant of each layer (TorchScript compiles one branch per layer): the
                # first layer of a block wraps the interaction, the others are on-site layers.
                if layer.needs_graph:
                    x = layer.combine(x, layer.layer(x, graph.edge_index, graph.edge_weight,
                                                     graph.edge_vec, layout, graph.pair_weight))
                else:
                    x = layer(x)
            features.append(x)
        return features

    def energy_terms(self, z: Tensor, pos: Tensor, graph: AtomGraph) -> Tensor:
        r"""The per-atom hierarchical terms :math:`\hat{E}^n_i` :obj:`[num_atoms, N + 1]`."""
        return self.energy_head(self.representation(z, pos, graph))

    def _atomic(self, terms: Tensor) -> Tensor:
        # The species term n = 0 holds the per-element energies (large): added in float64.
        return terms[:, 0].to(torch.float64) + (terms[:, 1:].sum(-1) * self.std).to(
            torch.float64)

    def atomic_terms(self, z: Tensor, pos: Tensor, graph: AtomGraph,
                     total_charge: Optional[Tensor] = None) -> Tensor:
        return self._atomic(self.energy_terms(z, pos, graph))

    def graph_outputs_and_regularization(
            self, z: Tensor, pos: Tensor, graph: AtomGraph,
            total_charge: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        r"""The energies of :obj:`graph` and hippynn's two regularisers from the same pass:

        * :obj:`"hierarchicality"`: the batch mean of every structure's hierarchicality
          (:func:`~pyg_tensorpot.nn.hierarchicality`), which keeps each interaction's energy
          correction smaller than the previous one's;
        * :obj:`"l2"`: :meth:`l2_penalty`, hippynn's ``l2reg``.
        """
        terms = self.energy_terms(z, pos, graph)
        energy = self.reduce_energy(self._atomic(terms), z, graph.batch, graph.num_graphs)
        penalties = {
            'hierarchicality': hierarchicality(terms, graph.batch, graph.num_graphs).mean(),
            'l2': self.l2_penalty(),
        }
        return energy, penalties

    @torch.no_grad()
    def fit_reference_energies(self, dataset: Iterable[Data], decay_factor: float = 1e-2,
                               trainable: bool = False,
                               energy_key: str = 'energy') -> Dict[int, float]:
        r"""hippynn's ``hierarchical_energy_initialization``: sets the species head
        :math:`\mathbf{w}_0` to the least-squares per-element energies of :obj:`dataset`
        (:func:`~pyg_tensorpot.datasets.fit_reference_energies`; fit on the training split
        only), freezes it unless :obj:`trainable`, and multiplies the weights and bias of head
        :math:`n \ge 1` by :math:`d^{2^{n-1}}`.

        Energies already explained by :obj:`atomref` are subtracted before the fit.

        Args:
            dataset (Iterable[Data]): Structures with :obj:`z` and an energy.
            decay_factor (float, optional): :math:`d`. (default: :obj:`1e-2`)
            trainable (bool, optional): Keep :math:`\mathbf{w}_0` trainable.
                (default: :obj:`False`)
            energy_key (str, optional): Name of the energy attribute.
                (default: :obj:`"energy"`)

        Returns:
            dict: :obj:`{Z: energy}` now in :math:`\mathbf{w}_0`.
        """
        if float(self.mean) != 0.0:
            raise ValueError('fit the reference energies before set_standardization(mean, ...):'
                             ' the species head takes the role of the mean')
        # Imported here: the datasets package pulls in optional dependencies.
        from pyg_tensorpot.datasets.reference_energies import fit_reference_energies
        refs = fit_reference_energies(dataset, self.elements, energy_key)
        atomref = self.atomref.detach().cpu()
        weight = torch.tensor([refs[e] - float(atomref[e]) for e in self.elements],
                              dtype=torch.float64)
        head = self.energy_head.layers[0]
        head.weight.copy_(weight.to(head.weight.dtype).unsqueeze(0))
        head.weight.requires_grad_(trainable)
        for n, layer in enumerate(self.energy_head.layers[1:], start=1):
            factor = decay_factor**(2**(n - 1))
            layer.weight.mul_(factor)
            layer.bias.mul_(factor)
        return {e: float(w) for e, w in zip(self.elements, weight.tolist())}

    def l2_penalty(self) -> Tensor:
        r"""hippynn's ``l2reg``: :math:`\sum \|\mathbf{W}\|^2` over the interaction weights
        :math:`\mathbf{V}`, the self-interaction, on-site, residual and adjusting weights (no
        biases, sensitivities, scales or energy heads)."""
        weights = []
        for block in self.blocks:
            for wrapper in block:
                layer = wrapper.layer
                if isinstance(layer, HIPNNInteraction):
                    weights += [layer.weight, layer.lin_self.weight]
                else:
                    weights.append(layer.weight)
                for linear in (wrapper.lin_residual, wrapper.lin_adjust):
                    if linear is not None:
                        weights.append(linear.weight)
        return sum(w.square().sum() for w in weights)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(hidden_channels={self.hidden_channels}, '
                f'num_interactions={self.num_interactions}, '
                f'num_atom_layers={self.num_atom_layers}, '
                f'num_sensitivities={self.num_sensitivities}, cutoff={self.cutoff}, '
                f'elements={self.elements}, max_order={self.max_order}, '
                f'residual={self.residual})')
