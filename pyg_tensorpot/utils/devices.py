"""Devices of the engine wrappers (the ASE calculator, TorchSim): one place that checks a
requested device and finds the one a model lives on."""
from typing import Optional, Union

import torch


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """:obj:`device` as a :class:`torch.device`; a CUDA device on a machine without CUDA is a
    :class:`ValueError` that says so, not a failure deep inside the first calculation."""
    device = torch.device(device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' was requested but CUDA is not available on this "
                         "machine (torch.cuda.is_available() is False); use device='cpu'")
    return device


def model_device(model: torch.nn.Module) -> Optional[torch.device]:
    """The device of the first parameter or buffer of :obj:`model` (:obj:`None` if it has
    neither)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return None
