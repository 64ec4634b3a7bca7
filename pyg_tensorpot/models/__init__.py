from pyg_tensorpot.models.base import AtomisticModel, energy_and_forces
from pyg_tensorpot.models.ensemble import Ensemble
from pyg_tensorpot.models.properties import PROPERTIES, compute_properties
from pyg_tensorpot.models.tensornet import TensorNet
from pyg_tensorpot.models.hipnn import HIPNN

__all__ = ['AtomisticModel', 'Ensemble', 'energy_and_forces', 'compute_properties', 'PROPERTIES',
           'TensorNet', 'HIPNN']
