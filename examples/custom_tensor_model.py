"""Build your own equivariant model from pyg-tensorpot's layers.

A small TensorNet-style potential with one interaction layer, written out by hand from the
embedding, interaction and readout layers, plus a dipole head on the same features. It runs on
ethanol and checks that the energy is invariant and the forces and dipole equivariant under a
rotation, then computes the stress of the same molecule in a periodic box, and compiles it
with TorchScript for an MD engine.

    python examples/custom_tensor_model.py
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from pyg_tensorpot import AtomisticModel, compute_properties
from pyg_tensorpot.deploy.scripted import script_model
from pyg_tensorpot.nn.graph import AtomGraph
from pyg_tensorpot.nn import (
    DipoleHead,
    ExpNormalSmearing,
    ScalarHead,
    TensorEmbedding,
    TensorInteraction,
    TensorInvariantReadout,
)


class TinyTensorPotential(AtomisticModel):
    """One embedding, one interaction, an energy head and a dipole head.

    Subclassing :class:`~pyg_tensorpot.AtomisticModel` and writing :meth:`atomic_terms` is all
    a model needs: the base class builds the graph (``graph``), validates the input, sums the
    energies in float64 and gives every property of ``compute_properties`` (forces, stress,
    per-atom energies, Hessian) with the package's one calling convention.
    """
    def __init__(self, hidden: int = 32, num_rbf: int = 16, cutoff: float = 5.0):
        # TensorNet sums over neighbours and each atom itself: keep the self-loops.
        super().__init__(cutoff=cutoff, max_z=128, self_loops=True)
        self.rbf = ExpNormalSmearing(cutoff_upper=cutoff, num_rbf=num_rbf)
        self.embedding = TensorEmbedding(hidden, num_rbf, cutoff)
        self.interaction = TensorInteraction(hidden, num_rbf, cutoff, equivariance='O(3)')
        self.readout = TensorInvariantReadout(hidden)
        self.energy_head = ScalarHead(hidden)
        self.dipole_head = DipoleHead(hidden)

    def features(self, z: Tensor, graph: AtomGraph) -> Tuple[Tensor, Tensor]:
        # Radial functions once per pair: graph.pair_index maps every edge to its pair.
        rbf = self.rbf(graph.pair_weight)
        tensors = self.embedding(z, graph.edge_index, graph.pair_weight, graph.edge_unit, rbf,
                                 graph.pair_index)
        tensors = self.interaction(tensors, graph.edge_index, graph.pair_weight, rbf, None,
                                   graph.pair_index)
        return self.readout(tensors), tensors

    # Typed signatures make the model TorchScript-able (script_model, pyg-tensorpot export).
    def atomic_terms(self, z: Tensor, pos: Tensor, graph: AtomGraph,
                     total_charge: Optional[Tensor] = None) -> Tensor:
        scalars, _ = self.features(z, graph)
        return self.energy_head(scalars)

    @torch.jit.unused
    def dipole(self, z: Tensor, pos: Tensor, batch: Optional[Tensor] = None) -> Tensor:
        graph = self.graph(z, pos, batch)
        scalars, tensors = self.features(z, graph)
        return self.dipole_head(scalars, tensors, z, pos, graph.batch, graph.num_graphs)


def main():
    torch.manual_seed(0)
    z = torch.tensor([6, 6, 8, 1, 1, 1, 1, 1, 1])
    pos = torch.tensor([[-0.0009, 0.5567, 0.0], [1.2108, -0.3613, 0.0], [-1.1737, -0.2306, 0.0],
                        [-0.0281, 1.2020, 0.8817], [-0.0281, 1.2020, -0.8817],
                        [2.1450, 0.2016, 0.0], [1.1847, -1.0007, 0.8845],
                        [1.1847, -1.0007, -0.8845], [-1.9534, 0.3414, 0.0]])
    model = TinyTensorPotential().eval()  # eval: results without an autograd graph

    out = compute_properties(model, z, pos)
    dipole = model.dipole(z, pos)
    rotation, _ = torch.linalg.qr(torch.randn(3, 3))
    out_rot = compute_properties(model, z, pos @ rotation.T)
    dipole_rot = model.dipole(z, pos @ rotation.T)
    print(f'energy {out["energy"].item():+.6f}, rotated {out_rot["energy"].item():+.6f}')
    print(f'dipole {dipole.detach().numpy().round(5)}, rotated back '
          f'{(dipole_rot.detach() @ rotation).numpy().round(5)}')
    print(f'max |force| {out["forces"].norm(dim=-1).max():.4f}')
    assert torch.allclose(out['energy'], out_rot['energy'], atol=1e-5)
    assert torch.allclose(out_rot['forces'] @ rotation, out['forces'], atol=1e-5)
    assert torch.allclose(dipole_rot @ rotation, dipole, atol=1e-5)

    # The same model in a periodic box: stress from the strain derivative.
    cell = torch.eye(3) * 6.0
    stress = compute_properties(model, z, pos + 3.0, cell=cell,
                                properties=['energy', 'stress'])['stress']
    print(f'stress in a 6 A box (eV/A^3) diagonal {stress[0].diagonal().numpy().round(6)}')

    # TorchScript, as `pyg-tensorpot export` writes it for an MD engine.
    scripted = script_model(model, torch.float32)
    energy = scripted(z, pos, None, None, None, None, None)
    print(f'TorchScript energy {energy.item():+.6f} (eager {out["energy"].item():+.6f})')
    assert torch.allclose(energy, out['energy'], rtol=1e-6)


if __name__ == '__main__':
    main()
