"""Small models of every kind the package offers, shared by the model-contract and deployment
tests: TensorNet (O(3) and SO(3)), HIP-NN, HIP-NN-TS (l = 1 and 2) and a potential composed by
a user from the package's layers (as in examples/custom_tensor_model.py)."""
from typing import Callable, Dict, Optional

import torch
from torch import Tensor

from pyg_tensorpot.models import HIPNN, AtomisticModel, TensorNet
from pyg_tensorpot.nn import (
    ExpNormalSmearing,
    ScalarHead,
    TensorEmbedding,
    TensorInteraction,
    TensorInvariantReadout,
)
from pyg_tensorpot.nn.graph import AtomGraph


# Ethanol (C2H5OH) and water, Angstrom: the molecules the model tests share.
ETHANOL_Z = torch.tensor([6, 6, 8, 1, 1, 1, 1, 1, 1])
ETHANOL_POS = torch.tensor([
    [-0.0009, 0.5567, 0.0000], [1.2108, -0.3613, 0.0000], [-1.1737, -0.2306, 0.0000],
    [-0.0281, 1.2020, 0.8817], [-0.0281, 1.2020, -0.8817], [2.1450, 0.2016, 0.0000],
    [1.1847, -1.0007, 0.8845], [1.1847, -1.0007, -0.8845], [-1.9534, 0.3414, 0.0000],
], dtype=torch.float64)
WATER_Z = torch.tensor([8, 1, 1])
WATER_POS = torch.tensor([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692],
                          [0.0, -0.7572, -0.4692]], dtype=torch.float64)

class ComposedPotential(AtomisticModel):
    """A model built from the package's layers (as examples/custom_tensor_model.py), with the
    typed atomic_terms() that TorchScript needs. It stores its constructor arguments under
    their own names, so that it can be saved once registered with
    :func:`pyg_tensorpot.hub.register_model_class`.

    Args:
        hidden (int, optional): Tensor channels. (default: :obj:`8`)
        num_rbf (int, optional): Radial basis functions. (default: :obj:`6`)
        cutoff (float, optional): Cutoff radius in Angstrom. (default: :obj:`3.5`)
    """
    def __init__(self, hidden: int = 8, num_rbf: int = 6, cutoff: float = 3.5):
        super().__init__(cutoff=cutoff, max_z=10, self_loops=True)
        self.hidden = hidden
        self.num_rbf = num_rbf
        self.rbf = ExpNormalSmearing(cutoff_upper=cutoff, num_rbf=num_rbf)
        self.embedding = TensorEmbedding(hidden, num_rbf, cutoff, max_z=10)
        self.interaction = TensorInteraction(hidden, num_rbf, cutoff, equivariance='O(3)')
        self.readout = TensorInvariantReadout(hidden)
        self.energy_head = ScalarHead(hidden)

    def atomic_terms(self, z: Tensor, pos: Tensor, graph: AtomGraph,
                     total_charge: Optional[Tensor] = None) -> Tensor:
        rbf = self.rbf(graph.pair_weight)
        x = self.embedding(z, graph.edge_index, graph.pair_weight, graph.edge_unit, rbf,
                           graph.pair_index)
        x = self.interaction(x, graph.edge_index, graph.pair_weight, rbf, None,
                             graph.pair_index)
        return self.energy_head(self.readout(x))


def _hipnn(max_order: int) -> AtomisticModel:
    return HIPNN(hidden_channels=8, num_interactions=2, num_atom_layers=1, num_sensitivities=5,
                 soft_min=0.75, soft_max=3.5, cutoff=4.0, elements=(1, 6, 8),
                 max_order=max_order)


#: Every model kind of the contract, by name; each builds a fresh float64 model.
FACTORIES: Dict[str, Callable[[], AtomisticModel]] = {
    'tensornet-o3': lambda: TensorNet(hidden_channels=8, num_layers=2, num_rbf=8, cutoff=4.0,
                                      max_z=10, equivariance='O(3)'),
    'tensornet-so3': lambda: TensorNet(hidden_channels=8, num_layers=2, num_rbf=8, cutoff=4.0,
                                       max_z=10, equivariance='SO(3)'),
    'hipnn': lambda: _hipnn(0),
    'hipnn-ts-l1': lambda: _hipnn(1),
    'hipnn-ts-l2': lambda: _hipnn(2),
    'composed': lambda: ComposedPotential(hidden=8, num_rbf=8, cutoff=4.0),
}


def build_model(kind: str, dtype: torch.dtype = torch.float64) -> AtomisticModel:
    """The model :obj:`kind` of :obj:`FACTORIES` in eval mode, seeded, with a standardisation
    as a trained model has, in :obj:`dtype`.

    Args:
        kind (str): A key of :obj:`FACTORIES`.
        dtype (torch.dtype, optional): The model's floating-point type.
            (default: :obj:`torch.float64`)
    """
    torch.manual_seed(0)
    model = FACTORIES[kind]().double()
    if not isinstance(model, HIPNN):
        # Move the tensor models away from their initialisation so that every parameter
        # (LayerNorm affine ones too) changes the energy; HIP-NN's sensitivity widths must
        # stay positive, so it keeps its own initialisation.
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))
    model.set_standardization(0.7, 1.3)
    return model.to(dtype).eval()
