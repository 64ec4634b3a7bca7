r""":class:`HubMixin`: ``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` as methods
of every :class:`~pyg_tensorpot.models.AtomisticModel`. The Hub modules are imported when a
method is called, so that ``models/base.py`` can inherit the mixin without importing
:mod:`huggingface_hub` or creating an import cycle."""
from typing import Any


class HubMixin:
    """Saving, loading and sharing for a model class (see :mod:`pyg_tensorpot.hub`)."""

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any):
        """Loads a pretrained model; see :func:`pyg_tensorpot.hub.from_pretrained` (same
        arguments). Called on a subclass, checks that the model is of that class.

        Raises:
            PretrainedModelError: The model cannot be loaded, or is of another class.
        """
        from pyg_tensorpot.hub.registry import PretrainedModelError
        from pyg_tensorpot.hub.remote import from_pretrained
        model = from_pretrained(name_or_path, **kwargs)
        if not isinstance(model, cls):
            raise PretrainedModelError(f"'{name_or_path}' holds a {type(model).__name__}, not "
                                       f"a {cls.__name__}; use AtomisticModel.from_pretrained "
                                       f"or pyg_tensorpot.hub.from_pretrained to get any class")
        return model

    def save_pretrained(self, directory: str, **kwargs: Any) -> str:
        """Saves the model to :obj:`directory`; see :func:`pyg_tensorpot.hub.save_pretrained`
        (same keyword arguments). Returns the folder."""
        from pyg_tensorpot.hub.weights import save_pretrained
        return save_pretrained(self, directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any):
        """Saves the model and uploads it to the Hub repository :obj:`repo_id`; see
        :func:`pyg_tensorpot.hub.push_to_hub` (same keyword arguments)."""
        from pyg_tensorpot.hub.remote import push_to_hub
        return push_to_hub(self, repo_id, **kwargs)
