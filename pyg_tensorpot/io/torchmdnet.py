"""Import TensorNet weights from torchmd-net state dicts and Lightning checkpoints.

torchmd-net itself is not needed. Checkpoints are read with ``torch.load(weights_only=True)``:
nothing in them is executed. The conversion follows what torchmd-net's ``load_model`` does
(see the key map below): strip the ``model.`` prefix, rename the old head keys, and reorder the
3H outputs of checkpoints written before the March 2026 layout change from interleaved
(row ``3h + c``) to block order (row ``c H + h``).
"""
import math
import os
import re
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import Tensor

from pyg_tensorpot.models.tensornet import TensorNet

_SUPPORTED_ACTIVATIONS = ('silu', 'ssp', 'tanh', 'sigmoid', 'mish')

# torchmd-net key (after 'representation_model.') -> ours, for the one-to-one parameters.
_RENAMES = [
    (r'^distance_expansion\.(means|betas)$', r'rbf.\1'),
    (r'^tensor_embedding\.emb\.weight$', 'embedding.atom_embedding.weight'),
    (r'^tensor_embedding\.emb2\.(weight|bias)$', r'embedding.pair_embedding.\1'),
    (r'^tensor_embedding\.linears_tensor\.(\d)\.weight$', r'embedding.mixing.\1.weight'),
    (r'^tensor_embedding\.linears_scalar\.0\.(weight|bias)$', r'embedding.gate_mlp.0.\1'),
    (r'^tensor_embedding\.linears_scalar\.1\.(weight|bias)$', r'embedding.gate_mlp.2.\1'),
    (r'^tensor_embedding\.init_norm\.(weight|bias)$', r'embedding.norm.\1'),
    (r'^layers\.(\d+)\.linears_scalar\.0\.(weight|bias)$', r'interactions.\1.filter_mlp.0.\2'),
    (r'^layers\.(\d+)\.linears_scalar\.1\.(weight|bias)$', r'interactions.\1.filter_mlp.2.\2'),
    (r'^layers\.(\d+)\.linears_scalar\.2\.(weight|bias)$', r'interactions.\1.filter_mlp.4.\2'),
    (r'^linear\.(weight|bias)$', r'readout.linear.\1'),
    (r'^out_norm\.(weight|bias)$', r'readout.norm.\1'),
]

# 3H-output layers whose rows were interleaved (3h + c) before the layout change.
_GATE_KEYS = re.compile(r'^(embedding\.gate_mlp\.2|interactions\.\d+\.filter_mlp\.4)\.')


class TorchMDNetImportError(ValueError):
    """A torchmd-net checkpoint or state dict that this importer cannot represent."""


def _load_file(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'no torchmd-net checkpoint at {path}')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # corrupt file or a pickle that is more than weights
        raise TorchMDNetImportError(
            f'{path} could not be read as a torchmd-net checkpoint with weights_only=True '
            f'({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}). '
            'It may be corrupt, or hold Python objects beyond tensors and plain containers; '
            'load it with torchmd-net and save model.state_dict() instead.') from None


def _tensor_net_state(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    state = {}
    for key, value in state_dict.items():
        if key.startswith('model.'):
            key = key[len('model.'):]
        # Head keys before torchmd-net PR #314.
        key = re.sub(r'^output_model\.output_network\.(\d)\.', r'output_model.output_network.'
                     r'layers.\1.', key)
        state[key] = value
    return state


def _hparam(hparams: Mapping[str, Any], name: str, default: Any) -> Any:
    value = hparams.get(name, default)
    return default if value is None else value


def _infer_hparams(state: Mapping[str, Tensor], hparams: Mapping[str, Any]) -> Dict[str, Any]:
    prefix = 'representation_model.'
    if prefix + 'tensor_embedding.emb.weight' not in state:
        raise TorchMDNetImportError(
            'not a torchmd-net TensorNet state dict: '
            f'{prefix}tensor_embedding.emb.weight is missing')
    max_z, hidden = state[prefix + 'tensor_embedding.emb.weight'].shape
    num_rbf = state[prefix + 'tensor_embedding.distance_proj1.weight'].shape[1]
    layer_ids = {int(m.group(1)) for k in state for m in [re.match(prefix + r'layers\.(\d+)\.', k)]
                 if m}
    num_layers = max(layer_ids) + 1 if layer_ids else 0
    rbf_type = _hparam(hparams, 'rbf_type', 'expnorm')
    cutoff_lower = float(_hparam(hparams, 'cutoff_lower', 0.0))
    cutoff = hparams.get('cutoff_upper')
    if cutoff is None and rbf_type == 'expnorm':
        # The first expnorm centre is exp(-(r_c - r_l)).
        means = state.get(prefix + 'distance_expansion.means')
        if means is not None:
            # Rounded: torchmd-net computes the centres in float32 before storing them.
            cutoff = round(cutoff_lower - math.log(float(means[0])), 5)
    if cutoff is None:
        raise TorchMDNetImportError('the cutoff is not in the checkpoint; pass '
                                    "hparams={'cutoff_upper': ...}")
    return dict(
        hidden_channels=int(hidden), num_layers=num_layers, num_rbf=int(num_rbf),
        cutoff=float(cutoff), max_z=int(max_z), cutoff_lower=cutoff_lower, rbf_type=rbf_type,
        equivariance=_hparam(hparams, 'equivariance_invariance_group', 'O(3)'),
        trainable_rbf=bool(_hparam(hparams, 'trainable_rbf', False)),
        activation=_hparam(hparams, 'activation', 'silu'),
    )


def _check_supported(hparams: Mapping[str, Any], state: Mapping[str, Tensor]) -> None:
    model = hparams.get('model', 'tensornet')
    if model != 'tensornet':
        raise TorchMDNetImportError(f"only TensorNet can be imported, this is model '{model}'")
    head = hparams.get('output_model', 'Scalar')
    if head != 'Scalar':
        raise TorchMDNetImportError(f"output_model '{head}' is not supported (only 'Scalar')")
    reduce_op = hparams.get('reduce_op', 'add')
    if reduce_op not in ('add', 'sum'):
        raise TorchMDNetImportError(f"reduce_op '{reduce_op}' is not supported (only 'add')")
    activation = _hparam(hparams, 'activation', 'silu')
    if activation not in _SUPPORTED_ACTIVATIONS:
        raise TorchMDNetImportError(f"activation '{activation}' is not supported")
    priors = hparams.get('prior_model')
    prior_names = ([] if priors is None else [priors] if isinstance(priors, str) else
                   list(priors.keys()) if isinstance(priors, dict) else list(priors))
    for prior in prior_names:
        if prior != 'Atomref':
            raise TorchMDNetImportError(f"prior '{prior}' is not supported (only 'Atomref')")
    unknown_priors = [k for k in state if k.startswith('prior_model.')
                      and not re.match(r'^prior_model\.(0\.)?(initial_)?atomref', k)]
    if unknown_priors:
        raise TorchMDNetImportError(f'unsupported prior parameters: {unknown_priors[:3]}')
    box = state.get('representation_model.distance.box')
    if box is not None and bool((box != 0).any()):
        raise TorchMDNetImportError('the checkpoint has a fixed periodic box; TensorNet here '
                                    'takes the cell at call time (cell=...)')


def convert_torchmdnet_state_dict(state_dict: Mapping[str, Tensor], hidden_channels: int,
                                  interleaved: bool = False) -> Dict[str, Tensor]:
    """Maps a torchmd-net TensorNet state dict (``model.`` prefix already stripped or not) to
    :class:`TensorNet`'s keys. With :obj:`interleaved=True` the 3H output rows are reordered
    from the pre-March-2026 interleaved layout to block order."""
    state = _tensor_net_state(state_dict)
    out: Dict[str, Tensor] = {}
    prefix = 'representation_model.'
    projections = [state.get(f'{prefix}tensor_embedding.distance_proj{c}.{p}')
                   for p in ('weight', 'bias') for c in (1, 2, 3)]
    if any(p is None for p in projections):
        raise TorchMDNetImportError('tensor_embedding.distance_proj{1,2,3} are incomplete')
    out['embedding.radial_projection.weight'] = torch.cat(projections[:3], dim=0)
    out['embedding.radial_projection.bias'] = torch.cat(projections[3:], dim=0)
    used = {f'{prefix}tensor_embedding.distance_proj{c}.{p}' for p in ('weight', 'bias')
            for c in (1, 2, 3)}
    for key, value in state.items():
        if key.startswith(prefix):
            inner = key[len(prefix):]
            if inner == 'distance.box':
                used.add(key)
                continue
            for pattern, replacement in _RENAMES:
                if re.match(pattern, inner):
                    out[re.sub(pattern, replacement, inner)] = value
                    used.add(key)
                    break
            else:
                m = re.match(r'^layers\.(\d+)\.linears_tensor\.(\d)\.weight$', inner)
                if m:
                    layer, k = m.group(1), int(m.group(2))
                    side = 'mixing_in' if k < 3 else 'mixing_out'
                    out[f'interactions.{layer}.{side}.{k % 3}.weight'] = value
                    used.add(key)
        elif key.startswith('output_model.output_network.layers.'):
            m = re.match(r'^output_model\.output_network\.layers\.(\d)\.(weight|bias)$', key)
            if m:
                out[f'head.mlp.{m.group(1)}.{m.group(2)}'] = value
                used.add(key)
        elif key in ('mean', 'std'):
            out[key] = value.reshape(())
            used.add(key)
        elif re.match(r'^prior_model\.(0\.)?atomref\.weight$', key):
            out['atomref'] = value.reshape(-1)
            used.add(key)
        elif re.match(r'^prior_model\.(0\.)?initial_atomref$', key):
            used.add(key)
    leftover = sorted(set(state) - used)
    if leftover:
        raise TorchMDNetImportError(f'unexpected keys in the torchmd-net state dict: '
                                    f'{leftover[:5]}')
    if interleaved:
        H = hidden_channels
        for key in list(out):
            if _GATE_KEYS.match(key):
                value = out[key]
                out[key] = value.reshape(H, 3, *value.shape[1:]).transpose(0, 1).reshape(
                    value.shape)
    return out


def load_torchmdnet(
    source: Union[str, os.PathLike, Mapping[str, Any]],
    hparams: Optional[Mapping[str, Any]] = None,
    interleaved: Optional[bool] = None,
    dtype: Optional[torch.dtype] = None,
) -> TensorNet:
    """Builds a :class:`TensorNet` from torchmd-net weights.

    Args:
        source: A Lightning ``.ckpt`` path, a saved state dict path, or a state dict /
            checkpoint dict already in memory.
        hparams (Mapping, optional): torchmd-net hyperparameters (``embedding_dimension``,
            ``cutoff_upper``, ``equivariance_invariance_group``, ...). Read from the checkpoint
            when it has them; shapes give the rest. (default: :obj:`None`)
        interleaved (bool, optional): Force the old (pre-March-2026) interleaved layout of the
            3H outputs. Detected as torchmd-net does (``check_errors`` in the checkpoint's
            hyperparameters) when :obj:`None`. (default: :obj:`None`)
        dtype (torch.dtype, optional): Cast the model, e.g. :obj:`torch.float64`. Defaults
            to the dtype of the stored weights. (default: :obj:`None`)

    Returns:
        TensorNet: the model, in evaluation mode.
    """
    if isinstance(source, Mapping):
        checkpoint = dict(source)
    else:
        checkpoint = _load_file(source)
        if not isinstance(checkpoint, Mapping):
            raise TorchMDNetImportError(f'{source} holds a {type(checkpoint).__name__}, not a '
                                        'checkpoint or state dict')
    if 'state_dict' in checkpoint:
        state_dict = checkpoint['state_dict']
        stored_hparams = dict(checkpoint.get('hyper_parameters') or {})
    else:
        state_dict, stored_hparams = checkpoint, {}
    stored_hparams.update(hparams or {})
    if interleaved is None:
        interleaved = 'check_errors' in stored_hparams
    state = _tensor_net_state(state_dict)
    _check_supported(stored_hparams, state)
    kwargs = _infer_hparams(state, stored_hparams)
    if 'embedding_dimension' in stored_hparams and int(
            stored_hparams['embedding_dimension']) != kwargs['hidden_channels']:
        raise TorchMDNetImportError('embedding_dimension disagrees with the stored weights')
    converted = convert_torchmdnet_state_dict(state, kwargs['hidden_channels'], interleaved)
    weight_dtype = converted['embedding.atom_embedding.weight'].dtype
    model = TensorNet(**kwargs).to(dtype or weight_dtype)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    allowed_missing = {'mean', 'std', 'atomref'}
    missing = [k for k in missing if k not in allowed_missing]
    if missing or unexpected:
        raise TorchMDNetImportError(f'weights do not fit TensorNet({kwargs}): missing '
                                    f'{missing[:5]}, unexpected {unexpected[:5]}')
    return model.eval()
