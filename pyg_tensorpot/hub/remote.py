r"""Resolving a model by folder, registered short name or Hugging Face Hub repository
(:func:`from_pretrained`), and uploading one (:func:`push_to_hub`)."""
import os
import os.path as osp
import re
import tempfile
from typing import Any, Optional, Union

import torch

from pyg_tensorpot.hub.config import CONFIG_NAME, MODEL_CARD_NAME, WEIGHTS_NAME
from pyg_tensorpot.hub.registry import PRETRAINED_MODELS, PretrainedModelError
from pyg_tensorpot.hub.weights import load_from_directory, save_pretrained
from pyg_tensorpot.models import AtomisticModel


def hub_failure(error: Exception, repo: str, revision: Optional[str]) -> Optional[str]:
    r"""Why :mod:`huggingface_hub` could not serve the repository :obj:`repo` (e.g.
    ``"Hub repository 'org/name'"``), in words, for the errors the model and dataset Hubs
    share; :obj:`None` for any other error."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    if isinstance(error, LocalEntryNotFoundError):
        return ('it is not in the Hub cache and downloads are disabled (HF_HUB_OFFLINE is set)'
                if constants.HF_HUB_OFFLINE else
                'it is not in the Hub cache and the Hub could not be reached')
    if isinstance(error, RepositoryNotFoundError):
        return f'{repo} does not exist (or is private: pass token=...)'
    if isinstance(error, RevisionNotFoundError):
        return f'{repo} has no revision {revision!r}'
    return None


def _hub_error(repo_id: str, filename: str, revision: Optional[str], error: Exception
               ) -> PretrainedModelError:
    from huggingface_hub.errors import EntryNotFoundError
    where = f"'{filename}' of Hub repository '{repo_id}'" + (
        f' at revision {revision!r}' if revision else '')
    reason = hub_failure(error, f"Hub repository '{repo_id}'", revision)
    if reason is not None:
        return PretrainedModelError(f'cannot load {where}: {reason}')
    if isinstance(error, EntryNotFoundError):
        return PretrainedModelError(f'{where} does not exist: not a pyg-tensorpot model')
    return PretrainedModelError(f'cannot download {where}: {error}')


#: The keyword arguments of :func:`from_pretrained` handed to
#: :func:`huggingface_hub.hf_hub_download` as they are.
DOWNLOAD_OPTIONS = ('cache_dir', 'local_files_only', 'token')


def resolve_pretrained(name_or_path: str, revision: Optional[str] = None, *,
                       force_download: bool = False, **download: Any) -> str:
    """The local folder holding the model :obj:`name_or_path`, downloading from the Hub if
    needed. Arguments as in :func:`from_pretrained` (:obj:`download`:
    :data:`DOWNLOAD_OPTIONS`)."""
    unknown = sorted(set(download) - set(DOWNLOAD_OPTIONS))
    if unknown:
        raise TypeError(f"unknown download option {unknown[0]!r}; the options are "
                        f"{', '.join(DOWNLOAD_OPTIONS)}")
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str):
        raise TypeError(f'name_or_path must be a folder, a registered name or a Hub repository '
                        f'id (a string), got {type(name_or_path).__name__}')
    if osp.isdir(name_or_path):
        return name_or_path
    entry = PRETRAINED_MODELS.get(name_or_path)
    if entry is not None and revision is None and not force_download \
            and osp.isfile(osp.join(entry.package_dir, CONFIG_NAME)):
        return entry.package_dir
    repo_id = entry.repo_id if entry is not None else name_or_path
    if repo_id.count('/') != 1 or osp.sep in repo_id and osp.exists(osp.dirname(repo_id)):
        raise PretrainedModelError(
            f"'{name_or_path}' is neither a folder, nor a registered pretrained model "
            f"({', '.join(PRETRAINED_MODELS)}), nor a Hub repository id like 'org/name'")
    from huggingface_hub import hf_hub_download
    folder = None
    for filename in (CONFIG_NAME, WEIGHTS_NAME, MODEL_CARD_NAME):
        try:
            path = hf_hub_download(repo_id, filename, revision=revision,
                                   force_download=force_download, **download)
        except Exception as error:  # huggingface_hub's own errors, re-raised with context
            if filename == MODEL_CARD_NAME:
                continue  # the card is documentation, not needed to load
            raise _hub_error(repo_id, filename, revision, error) from error
        if folder is None:
            folder = osp.dirname(path)
            # the other files from the same snapshot, even if the branch moves meanwhile
            # (another process updating the cache): config and weights of one commit
            if revision is None and re.fullmatch('[0-9a-f]{40}', osp.basename(folder)):
                revision = osp.basename(folder)
    return folder


def from_pretrained(
    name_or_path: str,
    revision: Optional[str] = None,
    cache_dir: Optional[str] = None,
    force_download: bool = False,
    local_files_only: bool = False,
    token: Optional[Union[str, bool]] = None,
    map_location: Union[str, torch.device] = 'cpu',
) -> AtomisticModel:
    r"""Loads a pretrained model: a local folder, a registered short name or a Hub repository.

    Resolution order: (1) an existing local folder written by :func:`save_pretrained`;
    (2) for a registered short name (see :func:`list_pretrained`) the copy shipped with the
    package, so that it works offline on a fresh install -- unless :obj:`revision` or
    :obj:`force_download` is given; (3) the Hugging Face Hub repository (the registered one for
    a short name), through :func:`huggingface_hub.hf_hub_download`, which uses the Hub cache
    (``HF_HUB_CACHE`` or :obj:`cache_dir`) and honours ``HF_HUB_OFFLINE``.

    The returned model is the class recorded in ``config.json``
    (:class:`~pyg_tensorpot.models.TensorNet` or :class:`~pyg_tensorpot.models.HIPNN` for
    HIP-NN and HIP-NN-TS), in evaluation mode, with the configuration in
    :obj:`model.pretrained_config`. It refuses elements it was not trained on.

    Args:
        name_or_path (str): Folder, short name (``"tensornet-ani1x"``, ``"hipnn-ts-ani1x"``) or
            Hub repository id (``"org/name"``).
        revision (str, optional): Hub branch, tag or commit. (default: :obj:`None`, ``main``)
        cache_dir (str, optional): Hub cache folder. (default: :obj:`None`, the Hub's default)
        force_download (bool, optional): Download again even if cached. (default: :obj:`False`)
        local_files_only (bool, optional): Only use the Hub cache. (default: :obj:`False`)
        token (str or bool, optional): Hub token for private repositories.
            (default: :obj:`None`)
        map_location (str or torch.device, optional): Device of the model.
            (default: ``"cpu"``)

    Raises:
        PretrainedModelError: The model cannot be found, or one of its files is missing,
            corrupt or contradicts the other (unknown or ill-typed ``config.json`` keys,
            truncated weights, wrong tensor shapes or dtypes); the message names the file and
            the key.
        TypeError: :obj:`name_or_path` is not a string or path.
    """
    directory = resolve_pretrained(name_or_path, revision, force_download=force_download,
                                   cache_dir=cache_dir, local_files_only=local_files_only,
                                   token=token)
    return load_from_directory(directory, map_location)


def push_to_hub(
    model: AtomisticModel,
    repo_id: str,
    commit_message: str = 'Upload pyg-tensorpot model',
    private: Optional[bool] = None,
    token: Optional[str] = None,
    revision: Optional[str] = None,
    create_pr: bool = False,
    endpoint: Optional[str] = None,
    api: Optional[Any] = None,
    **save_kwargs: Any,
):
    r"""Saves :obj:`model` with :func:`save_pretrained` and uploads the folder to the Hugging
    Face Hub (creating the repository if needed).

    Args:
        model (AtomisticModel): The model.
        repo_id (str): Target repository ``"org/name"``.
        commit_message (str, optional): Commit message.
            (default: ``"Upload pyg-tensorpot model"``)
        private (bool, optional): Visibility of a newly created repository.
            (default: :obj:`None`, the Hub's default)
        token (str, optional): Hub token. (default: :obj:`None`, the logged-in user)
        revision (str, optional): Branch to commit to. (default: :obj:`None`, ``main``)
        create_pr (bool, optional): Open a pull request instead of committing.
            (default: :obj:`False`)
        endpoint (str, optional): Hub endpoint URL. (default: :obj:`None`, ``HF_ENDPOINT``)
        api (huggingface_hub.HfApi, optional): A configured client to use instead.
            (default: :obj:`None`)
        **save_kwargs: Passed to :func:`save_pretrained` (``training_data``, ``metrics``, ...).

    Returns:
        huggingface_hub.CommitInfo: The commit (``.oid``, ``.commit_url``).
    """
    from huggingface_hub import HfApi
    if repo_id.count('/') != 1:
        raise ValueError(f"repo_id must look like 'org/name', got '{repo_id}'")
    api = api if api is not None else HfApi(endpoint=endpoint, token=token)
    save_kwargs.setdefault('name', repo_id.split('/')[1])
    with tempfile.TemporaryDirectory(prefix='pyg_tensorpot_push_') as folder:
        save_pretrained(model, folder, **save_kwargs)
        api.create_repo(repo_id, private=private, exist_ok=True, token=token)
        return api.upload_folder(folder_path=folder, repo_id=repo_id,
                                 commit_message=commit_message, revision=revision,
                                 create_pr=create_pr, token=token)

