"""What the engine wrappers (the ASE calculator, TorchSim, LAMMPS, the exporters) share: the
model given as a module, a pretrained name or a committee, the requested device, and the frozen
copy of the model they compute with."""
from typing import Any, Optional, Tuple, Union

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


def load_model(model: Any, map_location: Union[str, torch.device, None] = None
               ) -> Tuple[torch.nn.Module, bool]:
    """The module :obj:`model` stands for: itself, the pretrained model of a name, Hub id or
    folder (:func:`~pyg_tensorpot.from_pretrained`), or an
    :class:`~pyg_tensorpot.models.Ensemble` of a list or tuple of those (a committee). Also
    returns whether the module is the wrapper's own (loaded here), so that
    :func:`inference_copy` copies a module the caller still holds instead of changing it.

    Raises:
        TypeError: :obj:`model` is none of these.
    """
    if isinstance(model, (str, bytes)) or hasattr(model, '__fspath__'):
        from pyg_tensorpot.hub import from_pretrained
        name = model.decode() if isinstance(model, bytes) else str(model)
        return from_pretrained(name, map_location=map_location or 'cpu'), True
    if isinstance(model, (list, tuple)):
        from pyg_tensorpot.models.ensemble import Ensemble
        members = [load_model(member, map_location) for member in model]
        return Ensemble([member for member, _ in members]), all(own for _, own in members)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f'model must be a torch.nn.Module (TensorNet, HIPNN, Ensemble, ...), '
                        f'the name / Hub id / folder of a pretrained model, or a list of those '
                        f'(a committee), got {type(model).__name__}')
    return model, False
