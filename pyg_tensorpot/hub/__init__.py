r"""Saving, loading and sharing pretrained potentials (Hugging Face Hub).

A saved model is a folder with three files:

* ``model.safetensors``: every parameter and buffer (reference energies, standardisation)
  as `safetensors <https://huggingface.co/docs/safetensors>`_ -- never pickle;
* ``config.json``: the model class and its constructor arguments (enough to rebuild it),
  units, cutoff, supported elements, reference energies, training data, training settings and
  metrics;
* ``README.md``: a model card generated from ``config.json`` (with a Hub YAML header).

:func:`from_pretrained` resolves, in this order, an explicit local folder, the copy shipped
inside the package for a registered short name (``"tensornet-ani1x"``, ``"hipnn-ts-ani1x"``;
skipped when a ``revision`` is asked for), and a Hugging Face Hub repository (the Hub cache and
``HF_HUB_OFFLINE`` are honoured). :func:`push_to_hub` uploads a saved folder with
:class:`huggingface_hub.HfApi`.

The package's modules: :mod:`~pyg_tensorpot.hub.registry` (model classes by name, pretrained
models by short name), :mod:`~pyg_tensorpot.hub.config` (``config.json``: building and
checking), :mod:`~pyg_tensorpot.hub.weights` (writing and reading a folder),
:mod:`~pyg_tensorpot.hub.card` (model card), :mod:`~pyg_tensorpot.hub.remote` (Hub),
:mod:`~pyg_tensorpot.hub.demo` and :mod:`~pyg_tensorpot.hub.mixin` (:class:`HubMixin`, the
methods of :class:`~pyg_tensorpot.models.AtomisticModel`). The names below are imported on
first access, so that :mod:`pyg_tensorpot.models` can import the mixin without a cycle.

.. code-block:: python

    from pyg_tensorpot.hub import from_pretrained

    model = from_pretrained('tensornet-ani1x')        # works offline: shipped with the package
    energy, forces = model.energy_and_forces(z, pos)  # eV and eV/Angstrom
"""
import importlib
from typing import Any, List

_LAZY = {
    'HubMixin': 'mixin',
    'MODEL_CLASSES': 'registry',
    'PACKAGE_PRETRAINED_DIR': 'registry',
    'PRETRAINED_MODELS': 'registry',
    'PretrainedEntry': 'registry',
    'PretrainedModelError': 'registry',
    'list_pretrained': 'registry',
    'register_model_class': 'registry',
    'is_registered': 'registry',
    'CONFIG_KEYS': 'config',
    'CONFIG_NAME': 'config',
    'FORMAT_NAME': 'config',
    'FORMAT_VERSION': 'config',
    'MODEL_CARD_NAME': 'config',
    'WEIGHTS_NAME': 'config',
    'architecture_name': 'config',
    'build_config': 'config',
    'model_kwargs': 'config',
    'render_model_card': 'card',
    'load_from_directory': 'weights',
    'load_state_bytes': 'weights',
    'state_dict_bytes': 'weights',
    'save_pretrained': 'weights',
    'from_pretrained': 'remote',
    'push_to_hub': 'remote',
    'resolve_pretrained': 'remote',
    'pretrained_demo': 'demo',
}
_MODULES = ('registry', 'config', 'card', 'weights', 'remote', 'demo', 'mixin')


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f'{__name__}.{_LAZY[name]}'), name)
        globals()[name] = value
        return value
    if name.startswith('_') and not name.startswith('__'):
        # helpers of the former single module (e.g. _folder_lock), wherever they live now
        for module in _MODULES:
            module = importlib.import_module(f'{__name__}.{module}')
            if hasattr(module, name):
                return getattr(module, name)
    raise AttributeError(f"module '{__name__}' has no attribute '{name}'")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(_LAZY)
