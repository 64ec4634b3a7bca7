"""Benchmark datasets as PyG InMemoryDatasets, in eV and Angstrom."""
from pyg_tensorpot.datasets.base import (
    AtomisticInMemoryDataset,
    ChecksumError,
    ProcessedFileError,
    RawFileError,
)
from pyg_tensorpot.datasets.ani1x import ANI1x
from pyg_tensorpot.datasets.comp6 import COMP6
from pyg_tensorpot.datasets.md17 import MD17, RMD17, MD17EthanolSample
from pyg_tensorpot.datasets.qm9 import QM9
from pyg_tensorpot.datasets.spice import SPICE
from pyg_tensorpot.datasets.organic_dft import OrganicDFT
from pyg_tensorpot.datasets.ase_files import ASEDatabaseDataset, ExtXYZDataset
from pyg_tensorpot.datasets.reference_energies import fit_reference_energies
from pyg_tensorpot.datasets.catalogue import DatasetCard, card, catalog
from pyg_tensorpot.datasets.remote import HubDatasetError, LicenceError
from pyg_tensorpot.datasets.shards import ShardError
from pyg_tensorpot.datasets.splits import (
    load_split,
    random_split,
    rmd17_split,
    save_split,
    split_datasets,
    standard_split,
)

__all__ = [
    'AtomisticInMemoryDataset',
    'ChecksumError',
    'ProcessedFileError',
    'RawFileError',
    'QM9',
    'ANI1x',
    'COMP6',
    'SPICE',
    'OrganicDFT',
    'MD17',
    'RMD17',
    'MD17EthanolSample',
    'fit_reference_energies',
    'random_split',
    'rmd17_split',
    'standard_split',
    'save_split',
    'load_split',
    'split_datasets',
    'ExtXYZDataset',
    'ASEDatabaseDataset',
    'catalog',
    'card',
    'DatasetCard',
    'HubDatasetError',
    'LicenceError',
    'ShardError',
]
