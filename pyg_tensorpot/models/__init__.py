from pyg_tensorpot.models.base import AtomisticModel, energy_and_forces
from pyg_tensorpot.models.tensornet import TensorNet

__all__ = ['AtomisticModel', 'energy_and_forces', 'TensorNet']
