"""Build your own equivariant model from pyg-tensorpot's layers.

A small TensorNet-style potential with one interaction layer, written out by hand from the
embedding, interaction and readout layers, plus a dipole head on the same features. It runs on
ethanol and checks that the energy is invariant and the dipole equivariant under a rotation.

    python examples/custom_tensor_model.py
"""
import torch
from torch_geometric.utils import scatter

from pyg_tensorpot.nn import (
    DipoleHead,
    ExpNormalSmearing,
    ScalarHead,
    TensorEmbedding,
    TensorInteraction,
    TensorInvariantReadout,
    edge_vectors,
    radius_graph,
)


class TinyTensorPotential(torch.nn.Module):
    def __init__(self, hidden: int = 32, num_rbf: int = 16, cutoff: float = 5.0):
        super().__init__()
        self.cutoff = cutoff
        self.rbf = ExpNormalSmearing(cutoff_upper=cutoff, num_rbf=num_rbf)
        self.embedding = TensorEmbedding(hidden, num_rbf, cutoff)
        self.interaction = TensorInteraction(hidden, num_rbf, cutoff, equivariance='O(3)')
        self.readout = TensorInvariantReadout(hidden)
        self.energy_head = ScalarHead(hidden)
        self.dipole_head = DipoleHead(hidden)

    def forward(self, z, pos, batch):
        # TensorNet sums over neighbours and each atom itself: keep the self-loops.
        edge_index, _ = radius_graph(pos, self.cutoff, batch, loop=True)
        vec, dist = edge_vectors(pos, edge_index)
        unit = vec / dist.clamp(min=1e-9).unsqueeze(-1)  # zero on self-loops
        rbf = self.rbf(dist)
        tensors = self.embedding(z, edge_index, dist, unit, rbf)
        tensors = self.interaction(tensors, edge_index, dist, rbf)
        scalars = self.readout(tensors)
        num_graphs = int(batch.max()) + 1
        energy = scatter(self.energy_head(scalars), batch, 0, dim_size=num_graphs)
        dipole = self.dipole_head(scalars, tensors, z, pos, batch, num_graphs)
        return energy, dipole


def main():
    torch.manual_seed(0)
    z = torch.tensor([6, 6, 8, 1, 1, 1, 1, 1, 1])
    pos = torch.tensor([[-0.0009, 0.5567, 0.0], [1.2108, -0.3613, 0.0], [-1.1737, -0.2306, 0.0],
                        [-0.0281, 1.2020, 0.8817], [-0.0281, 1.2020, -0.8817],
                        [2.1450, 0.2016, 0.0], [1.1847, -1.0007, 0.8845],
                        [1.1847, -1.0007, -0.8845], [-1.9534, 0.3414, 0.0]])
    batch = torch.zeros_like(z)
    model = TinyTensorPotential()

    pos.requires_grad_(True)
    energy, dipole = model(z, pos, batch)
    forces = -torch.autograd.grad(energy.sum(), pos)[0]

    rotation, _ = torch.linalg.qr(torch.randn(3, 3))
    energy_rot, dipole_rot = model(z, pos.detach() @ rotation.T, batch)
    print(f'energy {energy.item():+.6f}, rotated {energy_rot.item():+.6f}')
    print(f'dipole {dipole.detach().numpy().round(5)}, rotated back '
          f'{(dipole_rot.detach() @ rotation).numpy().round(5)}')
    print(f'max |force| {forces.norm(dim=-1).max():.4f}')
    assert torch.allclose(energy, energy_rot, atol=1e-5)
    assert torch.allclose(dipole_rot @ rotation, dipole, atol=1e-5)


if __name__ == '__main__':
    main()
