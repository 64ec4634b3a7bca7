"""The floating-point types a model, a saved file or a training run may use, by name
(``"float32"``, ``"float64"``, as written in ``config.json``) and by bit count (``32``, ``64``,
the ``precision`` of a training configuration): the one map between them and
:class:`torch.dtype`."""
from typing import Dict, Union

import torch

#: ``{name: dtype}`` of the floating-point types models are built and saved in.
DTYPES: Dict[str, torch.dtype] = {'float32': torch.float32, 'float64': torch.float64}
#: ``{bits: dtype}``: the ``precision`` of a training configuration.
PRECISIONS: Dict[int, torch.dtype] = {32: torch.float32, 64: torch.float64}


def to_dtype(value: Union[str, int, torch.dtype]) -> torch.dtype:
    r"""The :class:`torch.dtype` of a name (``"float32"``, ``"float64"``, also with a
    ``"torch."`` prefix), a bit count (``32``, ``64``) or a dtype.

    Args:
        value (str, int or torch.dtype): The type.

    Raises:
        ValueError: Not one of the supported floating-point types (the message lists them).
    """
    if isinstance(value, torch.dtype):
        dtype = value if value in DTYPES.values() else None
    elif isinstance(value, bool):
        dtype = None
    elif isinstance(value, int):
        dtype = PRECISIONS.get(value)
    elif isinstance(value, str):
        dtype = DTYPES.get(value[len('torch.'):] if value.startswith('torch.') else value)
    else:
        dtype = None
    if dtype is None:
        raise ValueError(f"unsupported floating-point type {value!r}; use one of "
                         f"{', '.join(DTYPES)} (or {', '.join(map(str, PRECISIONS))} bits)")
    return dtype


def dtype_name(dtype: Union[str, int, torch.dtype]) -> str:
    """``"float32"`` or ``"float64"``: the name :func:`to_dtype` reads back."""
    wanted = to_dtype(dtype)
    return next(name for name, value in DTYPES.items() if value == wanted)


def dtype_bits(dtype: Union[str, int, torch.dtype]) -> int:
    """``32`` or ``64``: the bit count :func:`to_dtype` reads back."""
    wanted = to_dtype(dtype)
    return next(bits for bits, value in PRECISIONS.items() if value == wanted)
