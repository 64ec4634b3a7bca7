"""Building blocks: neighbour lists, radial bases, cutoffs, tensor algebra, layers, heads."""
from pyg_tensorpot.nn import tensor_algebra
from pyg_tensorpot.nn.activations import ShiftedSoftplus, activation_resolver
from pyg_tensorpot.nn.conv import TensorEmbedding, TensorInteraction
from pyg_tensorpot.nn.cutoff import CosineCutoff, CosineSquaredCutoff
from pyg_tensorpot.nn.heads import DipoleHead, PolarizabilityHead, ScalarHead
from pyg_tensorpot.nn.neighbors import NeighborPairs, edge_vectors, neighbor_pairs
from pyg_tensorpot.nn.radial import ExpNormalSmearing, GaussianSmearing
from pyg_tensorpot.nn.readout import TensorInvariantReadout
from pyg_tensorpot.nn.verlet import VerletList
from pyg_tensorpot.nn.conv import HIPNNInteraction
from pyg_tensorpot.nn.hierarchical import HierarchicalEnergyHead, hierarchicality
from pyg_tensorpot.nn.onsite import OnSiteLayer, ResidualWrapper
from pyg_tensorpot.nn.sensitivity import InverseGaussianSensitivity
from pyg_tensorpot.nn.species import SpeciesOneHot

__all__ = [
    'tensor_algebra', 'ShiftedSoftplus', 'activation_resolver', 'TensorEmbedding',
    'TensorInteraction', 'CosineCutoff', 'CosineSquaredCutoff', 'DipoleHead',
    'PolarizabilityHead', 'ScalarHead', 'edge_vectors', 'NeighborPairs', 'neighbor_pairs', 'VerletList',
    'ExpNormalSmearing', 'GaussianSmearing', 'TensorInvariantReadout',
    'HIPNNInteraction', 'HierarchicalEnergyHead', 'hierarchicality', 'OnSiteLayer',
    'ResidualWrapper', 'InverseGaussianSensitivity', 'SpeciesOneHot'
]
