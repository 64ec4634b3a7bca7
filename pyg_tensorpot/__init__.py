"""pyg-tensorpot: TensorNet and HIP-NN(-TS) interatomic potentials as PyTorch Geometric layers.

Units: positions in Angstrom, energies in eV, forces in eV/Angstrom.
"""
from pyg_tensorpot.models import AtomisticModel, TensorNet, compute_properties, energy_and_forces
from pyg_tensorpot.models import HIPNN, Ensemble
from pyg_tensorpot.hub import from_pretrained, push_to_hub, save_pretrained

__version__ = '0.1.0'

__all__ = ['AtomisticModel', 'TensorNet', 'HIPNN', 'Ensemble', 'compute_properties',
           'energy_and_forces', '__version__', 'from_pretrained', 'save_pretrained',
           'push_to_hub']
