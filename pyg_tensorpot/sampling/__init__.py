"""Sampling of organic chemistry for training sets: molecules (RDKit), their conformations
(conformer search, normal modes, torsion scans), intermolecular clusters, and the
committee-disagreement selection of active learning."""
from pyg_tensorpot.sampling.clusters import make_cluster, make_clusters, random_rotation
from pyg_tensorpot.sampling.conformers import (
    embed_conformers,
    finite_difference_hessian,
    mmff_forces,
    normal_mode_samples,
    normal_modes,
    rotatable_torsions,
    torsion_scan,
)
from pyg_tensorpot.sampling.molecules import (
    S66_MONOMER_SMILES,
    MoleculeFilter,
    brics_fragments,
    brics_molecules,
    nci_molecules,
    skeleton_key,
)
from pyg_tensorpot.sampling.selection import (
    ANI1X_RHO_THRESHOLD_EV,
    committee_scores,
    ensemble_scores,
    select,
)

__all__ = [
    'S66_MONOMER_SMILES',
    'MoleculeFilter',
    'skeleton_key',
    'nci_molecules',
    'brics_fragments',
    'brics_molecules',
    'embed_conformers',
    'mmff_forces',
    'finite_difference_hessian',
    'normal_modes',
    'normal_mode_samples',
    'rotatable_torsions',
    'torsion_scan',
    'random_rotation',
    'make_cluster',
    'make_clusters',
    'ANI1X_RHO_THRESHOLD_EV',
    'committee_scores',
    'ensemble_scores',
    'select',
]
