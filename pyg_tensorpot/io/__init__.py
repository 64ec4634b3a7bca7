"""Importers for weights trained with the reference implementations."""
from pyg_tensorpot.io.torchmdnet import (
    TorchMDNetImportError,
    convert_torchmdnet_state_dict,
    load_torchmdnet,
)

__all__ = ['TorchMDNetImportError', 'convert_torchmdnet_state_dict', 'load_torchmdnet']
