r"""The one model registry: the model classes a saved ``config.json`` may name (used by
:func:`~pyg_tensorpot.hub.from_pretrained`, the training builders and the command line),
and the pretrained models shipped with the package by short name."""
import os.path as osp
from dataclasses import dataclass
from typing import Dict, Type

from pyg_tensorpot.models import HIPNN, AtomisticModel, TensorNet

#: Folder of the weights shipped with the package (``pyg_tensorpot/pretrained/<name>/``).
PACKAGE_PRETRAINED_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                                  'pretrained')

#: Model classes by the name stored in ``config.json`` (and given as ``model.name`` of a
#: training configuration); :func:`register_model_class` adds to it.
MODEL_CLASSES: Dict[str, Type[AtomisticModel]] = {'TensorNet': TensorNet, 'HIPNN': HIPNN}


class PretrainedModelError(RuntimeError):
    """A saved model (folder, Hub repository or registered name) is missing, incomplete or
    corrupt; the message names the file."""


def register_model_class(cls: Type[AtomisticModel]) -> Type[AtomisticModel]:
    """Makes a custom :class:`~pyg_tensorpot.models.AtomisticModel` subclass loadable by
    :func:`~pyg_tensorpot.hub.from_pretrained` and buildable by name in a training
    configuration (usable as a class decorator). Its constructor arguments must be stored as
    attributes of the same names, with JSON-serialisable values.

    Raises:
        TypeError: :obj:`cls` is not an :class:`~pyg_tensorpot.models.AtomisticModel`
            subclass.
    """
    if not (isinstance(cls, type) and issubclass(cls, AtomisticModel)):
        raise TypeError(f'{cls!r} is not a subclass of AtomisticModel')
    MODEL_CLASSES[cls.__name__] = cls
    return cls


def is_registered(cls: type) -> bool:
    """Whether :obj:`cls` is the class registered under its name (so it can be saved)."""
    return MODEL_CLASSES.get(getattr(cls, '__name__', None)) is cls


@dataclass(frozen=True)
class PretrainedEntry:
    """A registered pretrained model.

    Args:
        name (str): The short name, e.g. ``"tensornet-ani1x"``.
        repo_id (str): Its Hugging Face Hub repository.
        description (str): One line for :func:`list_pretrained`.
    """
    name: str
    repo_id: str
    description: str

    @property
    def package_dir(self) -> str:
        """The copy shipped inside the package."""
        return osp.join(PACKAGE_PRETRAINED_DIR, self.name)


#: Short names of the pretrained models, mapped to Hub repositories.
PRETRAINED_MODELS: Dict[str, PretrainedEntry] = {
    'tensornet-ani1x': PretrainedEntry(
        'tensornet-ani1x', 'pyg-tensorpot/tensornet-ani1x',
        'TensorNet distilled from the ANI-1x 8-model ensemble; H, C, N, O; eV, Angstrom'),
    'hipnn-ts-ani1x': PretrainedEntry(
        'hipnn-ts-ani1x', 'pyg-tensorpot/hipnn-ts-ani1x',
        'HIP-NN-TS (l=2) distilled from the ANI-1x 8-model ensemble; H, C, N, O; eV, Angstrom'),
}


def list_pretrained() -> Dict[str, str]:
    """The registered pretrained models: ``{short name: description}``."""
    return {name: entry.description for name, entry in PRETRAINED_MODELS.items()}

