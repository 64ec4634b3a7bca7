"""Import HIP-NN / HIP-NN-TS weights from hippynn state dicts.

hippynn itself is not needed. Supported: a ``Hipnn``, ``HipnnVec`` or ``HipnnQuad`` network
(residual or plain) with an ``HEnergy`` head and a ``OneHotSpecies`` encoder, as found in the
state dict of a hippynn ``GraphModule`` or of the modules saved one by one; key prefixes such as
``moddict.HIPNN.`` are detected. Files are read with ``torch.load(weights_only=True)``.

Key map (block ``b``, layer ``m``; ``base_layer.`` only in the residual form):

==============================================  ============================================
hippynn                                         :class:`~pyg_tensorpot.models.HIPNN`
==============================================  ============================================
``blocks.b.0.base_layer.int_weights``           ``blocks.b.0.layer.weight``
``blocks.b.0.base_layer.selfint.*``             ``blocks.b.0.layer.lin_self.*``
``blocks.b.0.base_layer.sensitivity.mu/sigma``  ``blocks.b.0.layer.sensitivity.mu/sigma``
``blocks.b.0.base_layer.vecscales/quadscales``  ``blocks.b.0.layer.scale[0]/[1]``
``blocks.b.m.base_layer.*`` (m >= 1)            ``blocks.b.m.layer.*``
``blocks.b.m.res_layer.*``                      ``blocks.b.m.lin_residual.*``
``blocks.b.0.adjust_layer.weight``              ``blocks.b.0.lin_adjust.weight``
``layers.n.*`` (HEnergy)                        ``energy_head.layers.n.*``
``species_map`` (OneHotSpecies)                 the :obj:`elements` argument
==============================================  ============================================
"""
import os
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from pyg_tensorpot.models.hipnn import HIPNN

_BLOCK_KEY = re.compile(r'^(.*?)blocks\.(\d+)\.(\d+)\.(.+)$')
_HEAD_KEY = re.compile(r'^(.*?)layers\.(\d+)\.(weight|bias)$')
_EXTRA_STATE = '_extra_state'


class HippynnImportError(ValueError):
    """A hippynn state dict that this importer cannot represent."""


def _as_tensor(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    return value


def _elements_from_species_map(species_map: Tensor) -> list:
    species_map = torch.as_tensor(species_map).long().flatten()
    present = [(int(species_map[z]), z) for z in range(1, species_map.numel())
               if int(species_map[z]) > 0]
    if not present:
        raise HippynnImportError('species_map lists no element')
    return [z for _, z in sorted(present)]


def convert_hippynn_state_dict(
    state_dict: Mapping[str, Any],
    cusp_reg: Optional[float] = None,
) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """Maps a hippynn network + ``HEnergy`` state dict to :class:`HIPNN`'s keys.

    Args:
        state_dict (Mapping): hippynn parameters (tensors or numpy arrays).
        cusp_reg (float, optional): Overrides the cusp regulariser stored in the interaction
            layers' extra state (hippynn's default is used when neither is there).
            (default: :obj:`None`)

    Returns:
        (state, hparams): the converted state dict and the :class:`HIPNN` arguments read from
        the shapes (:obj:`hidden_channels`, :obj:`num_interactions`, :obj:`num_atom_layers`,
        :obj:`num_sensitivities`, :obj:`max_order`, :obj:`residual`, :obj:`cusp_reg` and,
        when a ``species_map`` is present, :obj:`elements`).
    """
    state = {key: _as_tensor(value) for key, value in state_dict.items()}
    out: Dict[str, Tensor] = {}
    used = set()
    scales: Dict[Tuple[int, int], Tensor] = {}
    stored_cusp = []
    residual_keys = False
    net_prefixes = set()
    block_layers: Dict[int, int] = {}

    for key, value in state.items():
        match = _BLOCK_KEY.match(key)
        if not match:
            continue
        prefix, b, m, rest = match.group(1), int(match.group(2)), int(match.group(3)), \
            match.group(4)
        net_prefixes.add(prefix)
        block_layers[b] = max(block_layers.get(b, 0), m)
        target = f'blocks.{b}.{m}.'
        if rest.startswith('base_layer.'):
            residual_keys = True
            rest = rest[len('base_layer.'):]
            inner = target + 'layer.'
        elif rest.startswith(('res_layer.', 'adjust_layer.')):
            residual_keys = True
            inner = None
        else:
            inner = target + 'layer.'
        if rest in ('res_layer.weight', 'res_layer.bias'):
            out[target + 'lin_residual.' + rest.split('.')[-1]] = value
        elif rest == 'adjust_layer.weight':
            out[target + 'lin_adjust.weight'] = value
        elif m == 0 and rest == 'int_weights':
            out[inner + 'weight'] = value
        elif m == 0 and rest in ('selfint.weight', 'selfint.bias'):
            out[inner + 'lin_self.' + rest.split('.')[-1]] = value
        elif m == 0 and rest in ('sensitivity.mu', 'sensitivity.sigma'):
            out[inner + rest] = value.reshape(-1)
        elif m == 0 and rest in ('vecscales', 'quadscales'):
            scales[(b, 0 if rest == 'vecscales' else 1)] = value
        elif m == 0 and rest == _EXTRA_STATE:
            if isinstance(value, Mapping) and 'cusp_reg' in value:
                stored_cusp.append(float(value['cusp_reg']))
        elif m > 0 and rest in ('weight', 'bias'):
            out[inner + rest] = value
        else:
            raise HippynnImportError(
                f'unsupported hippynn parameter {key}: only Hipnn, HipnnVec and HipnnQuad '
                'with inverse/linear sensitivities are supported (no SensitivityBottleneck, '
                'HIP-HOP-NN or custom layers)')
        used.add(key)

    if not net_prefixes:
        raise HippynnImportError('no hippynn network found: no key contains blocks.<b>.<m>.')
    if len(net_prefixes) > 1:
        raise HippynnImportError(f'several hippynn networks in one state dict: {net_prefixes}')
    num_interactions = max(block_layers) + 1
    if sorted(block_layers) != list(range(num_interactions)):
        raise HippynnImportError(f'interaction blocks are missing: found {sorted(block_layers)}')
    atom_layers = set(block_layers.values())
    if len(atom_layers) != 1:
        raise HippynnImportError('blocks have different numbers of on-site layers')

    orders = {order for _, order in scales}
    max_order = 0 if not orders else 2 if 1 in orders else 1
    for b in range(num_interactions):
        if max_order:
            missing = [o for o in range(max_order) if (b, o) not in scales]
            if missing:
                raise HippynnImportError(f'block {b} lacks the tensor-sensitivity scales '
                                         f'{["vecscales", "quadscales"][missing[0]]}')
            out[f'blocks.{b}.0.layer.scale'] = torch.stack(
                [scales[(b, o)].reshape(-1) for o in range(max_order)])

    heads = {}
    for key, value in state.items():
        if key in used:
            continue
        match = _HEAD_KEY.match(key)
        if match:
            heads.setdefault(match.group(1), {})[(int(match.group(2)), match.group(3))] = value
            used.add(key)
    if not heads:
        raise HippynnImportError('no HEnergy head found (keys <prefix>layers.<n>.weight)')
    if len(heads) > 1:
        raise HippynnImportError(f'several output heads in one state dict: {sorted(heads)}; '
                                 'pass only the network and its HEnergy')
    (head, ) = heads.values()
    for (n, kind), value in head.items():
        out[f'energy_head.layers.{n}.{kind}'] = value.reshape(1, -1) if kind == 'weight' \
            else value.reshape(1)

    hparams: Dict[str, Any] = {}
    for key, value in state.items():
        if key in used:
            continue
        if key.endswith('species_map'):
            hparams['elements'] = _elements_from_species_map(value)
            used.add(key)
    leftover = sorted(set(state) - used)
    if leftover:
        raise HippynnImportError(f'unexpected keys in the hippynn state dict: {leftover[:5]}')

    weight = out.get('blocks.0.0.layer.weight')
    if weight is None:
        raise HippynnImportError('the first interaction layer has no int_weights')
    num_sensitivities, hidden_channels, num_species = weight.shape
    if len(stored_cusp) > 0 and len(set(stored_cusp)) > 1:
        raise HippynnImportError(f'interaction layers disagree on cusp_reg: {stored_cusp}')
    hparams.update(
        hidden_channels=int(hidden_channels), num_interactions=num_interactions,
        num_atom_layers=atom_layers.pop(), num_sensitivities=int(num_sensitivities),
        max_order=max_order, residual=residual_keys,
        cusp_reg=(cusp_reg if cusp_reg is not None else stored_cusp[0] if stored_cusp else
                  1e-6),
    )
    if 'elements' in hparams and len(hparams['elements']) != num_species:
        raise HippynnImportError(f"species_map has {len(hparams['elements'])} elements but the "
                                 f'first layer takes {num_species} input features')
    return out, hparams


def load_hippynn(
    source: Union[str, os.PathLike, Mapping[str, Any]],
    cutoff: float,
    possible_species: Optional[Sequence[int]] = None,
    cusp_reg: Optional[float] = None,
    activation: Union[str, torch.nn.Module] = 'softplus',
    dtype: Optional[torch.dtype] = None,
) -> HIPNN:
    """Builds a :class:`HIPNN` from hippynn weights.

    Args:
        source: A state dict (tensors or numpy arrays) or the path of one saved with
            ``torch.save(module.state_dict())``.
        cutoff (float): hippynn's ``dist_hard_max`` in Angstrom (not part of the state dict).
        possible_species (Sequence[int], optional): hippynn's ``possible_species`` (with or
            without the leading 0); needed only when the state dict has no ``species_map``.
            (default: :obj:`None`)
        cusp_reg (float, optional): HIP-NN-TS cusp regulariser when the state dict does not
            store it; hippynn's default 1e-6 otherwise. (default: :obj:`None`)
        activation (str or torch.nn.Module, optional): The network's activation (hippynn's
            default is softplus). (default: :obj:`"softplus"`)
        dtype (torch.dtype, optional): Cast the model, e.g. :obj:`torch.float64`. Defaults to
            the dtype of the stored weights. (default: :obj:`None`)
    """
    if isinstance(source, Mapping):
        state_dict = source
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'no hippynn state dict at {path}')
        try:
            state_dict = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as error:
            raise HippynnImportError(
                f'{path} could not be read with weights_only=True ({type(error).__name__}). '
                'Whole pickled hippynn models are not loaded; in hippynn, save '
                'model.state_dict() instead.') from None
        if not isinstance(state_dict, Mapping):
            raise HippynnImportError(f'{path} holds a {type(state_dict).__name__}, not a '
                                     'state dict')
    state, hparams = convert_hippynn_state_dict(state_dict, cusp_reg)
    if possible_species is not None:
        elements = [int(z) for z in possible_species if int(z) != 0]
        if 'elements' in hparams and hparams['elements'] != elements:
            raise HippynnImportError(f"possible_species {elements} disagrees with the stored "
                                     f"species_map {hparams['elements']}")
        hparams['elements'] = elements
    if 'elements' not in hparams:
        raise HippynnImportError('the state dict has no species_map; pass possible_species')
    mu = state['blocks.0.0.layer.sensitivity.mu'].double()
    soft_max = min(float(mu.max()), float(cutoff))
    soft_min = min(float(mu.min()), soft_max / 2)
    weight_dtype = state['blocks.0.0.layer.weight'].dtype
    model = HIPNN(cutoff=cutoff, soft_min=soft_min, soft_max=soft_max, activation=activation,
                  **hparams).to(dtype or weight_dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in ('mean', 'std', 'atomref')]
    if missing or unexpected:
        raise HippynnImportError(f'weights do not fit HIPNN({hparams}): missing {missing[:5]}, '
                                 f'unexpected {unexpected[:5]}')
    return model
