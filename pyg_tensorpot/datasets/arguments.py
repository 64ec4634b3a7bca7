"""The constructor arguments every dataset shares, stated once.

A dataset class states only its own options and takes the shared ones as
``**kwargs: Unpack[DatasetArguments]`` (or :class:`LocalDatasetArguments` for datasets built
from the user's own or bundled files, which have no checksums to verify and no Hub copy).
:func:`with_shared_arguments` then gives its ``__init__`` the full signature (its own
parameters followed by the shared ones, keyword-only, with the defaults of
:class:`~pyg_tensorpot.datasets.base.AtomisticInMemoryDataset`), so that :func:`help`,
:func:`inspect.signature` (the training configuration checks the keys of ``data.args`` against
it) and a misspelt keyword behave as with a written-out signature.
"""
import functools
import inspect
import sys
from typing import Any, Callable, Optional, TypedDict

if sys.version_info >= (3, 11):
    from typing import Unpack, get_args, get_origin
else:  # pragma: no cover - Python 3.10
    from typing_extensions import Unpack, get_args, get_origin


class LocalDatasetArguments(TypedDict, total=False):
    """The arguments of every dataset (see
    :class:`~pyg_tensorpot.datasets.base.AtomisticInMemoryDataset`)."""
    transform: Optional[Callable]
    pre_transform: Optional[Callable]
    pre_filter: Optional[Callable]
    log: bool
    force_reload: bool


class DatasetArguments(LocalDatasetArguments, total=False):
    """The arguments of the published datasets: those of :class:`LocalDatasetArguments`
    plus checksum verification, memory mapping and the Hugging Face Hub source."""
    verify_checksums: bool
    mmap: bool
    source: str
    repo_id: Optional[str]
    revision: Optional[str]


def shared_argument_names(init: Callable) -> Optional[tuple]:
    """The names of the shared arguments :obj:`init` takes through
    ``**kwargs: Unpack[...]``, or :obj:`None` when it takes none that way."""
    for param in inspect.signature(init).parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            annotation = param.annotation
            if get_origin(annotation) is Unpack:
                (typed,) = get_args(annotation)
                return tuple(typed.__annotations__)
    return None


def with_shared_arguments(init: Callable, base_init: Callable) -> Callable:
    r"""Wraps a dataset's :obj:`init` (taking ``**kwargs: Unpack[...]``) so that its
    signature lists the shared arguments it takes (as keyword-only parameters with the
    annotations and defaults of :obj:`base_init`) and a keyword it does not take raises
    :class:`TypeError` naming the dataset, as a written-out signature would.

    Args:
        init (callable): The dataset class's ``__init__``.
        base_init (callable): ``AtomisticInMemoryDataset.__init__``, whose parameters give the
            annotations and defaults of the shared arguments.
    """
    names = shared_argument_names(init)
    if names is None:
        return init
    shared = inspect.signature(base_init).parameters
    own = [p for p in inspect.signature(init).parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
    extra = [shared[name].replace(kind=inspect.Parameter.KEYWORD_ONLY) for name in names]
    signature = inspect.Signature(own + extra, return_annotation=None)
    owner = init.__qualname__.rsplit('.', 1)[0]

    @functools.wraps(init)
    def checked_init(self, *args: Any, **kwargs: Any) -> None:
        try:
            signature.bind(self, *args, **kwargs)
        except TypeError as error:
            raise TypeError(f'{owner}(): {error}') from None
        init(self, *args, **kwargs)

    checked_init.__signature__ = signature  # type: ignore[attr-defined]
    return checked_init


__all__ = ['DatasetArguments', 'LocalDatasetArguments', 'shared_argument_names',
           'with_shared_arguments', 'Unpack']

