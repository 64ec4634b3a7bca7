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


def inference_copy(model: torch.nn.Module, dtype: torch.dtype, device: torch.device,
                   owned: bool = False) -> torch.nn.Module:
    """:obj:`model` ready for an engine: in evaluation mode, in :obj:`dtype`, on
    :obj:`device`, its parameters without gradients (only derivatives with respect to
    positions and strain are taken). A model the caller still holds (:obj:`owned` is
    :obj:`False`) is copied first whenever it would have to change, never modified."""
    import copy

    from pyg_tensorpot.models.properties import model_dtype
    needs_change = (model.training or model_dtype(model) != dtype
                    or model_device(model) not in (None, device))
    if needs_change and not owned:
        model = copy.deepcopy(model)
        owned = True
    if owned:
        model = model.to(device=device, dtype=dtype).eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
    return model
