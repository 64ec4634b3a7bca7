"""Importers for weights trained with the reference implementations."""
from pyg_tensorpot.io.torchmdnet import (
    TorchMDNetImportError,
    convert_torchmdnet_state_dict,
    load_torchmdnet,
)
from pyg_tensorpot.io.hippynn import (
    HippynnImportError,
    convert_hippynn_state_dict,
    load_hippynn,
)

__all__ = ['TorchMDNetImportError', 'convert_torchmdnet_state_dict', 'load_torchmdnet',
           'HippynnImportError', 'convert_hippynn_state_dict', 'load_hippynn']
