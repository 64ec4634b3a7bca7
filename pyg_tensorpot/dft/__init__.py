"""Our own DFT labels: wB97X/6-31G(d) (the ANI-1x level of theory) with PySCF."""
from pyg_tensorpot.dft.labeller import (
    LABEL_FORMAT,
    DFTSettings,
    PySCFLabeller,
    build_mean_field,
    compute_label,
    iter_labels,
    label_keys,
    read_label,
)

__all__ = [
    'LABEL_FORMAT',
    'DFTSettings',
    'PySCFLabeller',
    'build_mean_field',
    'compute_label',
    'iter_labels',
    'label_keys',
    'read_label',
]
