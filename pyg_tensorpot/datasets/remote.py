r"""Datasets on the Hugging Face Hub: pull processed shards, push them, no pickle travels.

A Hub dataset repository (``repo_type="dataset"``) holds one processed configuration of one
dataset (one set of :meth:`~pyg_tensorpot.datasets.AtomisticInMemoryDataset.options`; use
branches, :obj:`revision`, for others):

* ``dataset_card.json``: dataset class and name, options, format version, number of
  structures, the dtype and shape of every key, the byte size and SHA-256 of every shard and
  of the splits file, licence and citation (from :mod:`pyg_tensorpot.datasets.catalogue` for
  the public datasets, from the uploader for their own data), units;
* ``data-00000-of-0000N.safetensors``: the shards (see :mod:`pyg_tensorpot.datasets.shards`);
* ``splits.safetensors``: the saved train/val/test index lists, where the dataset has them;
* ``README.md``: the Hub's dataset card (front matter with the licence, then prose).

Pulling goes through :func:`huggingface_hub.snapshot_download`, so the Hub cache
(``HF_HUB_CACHE`` or :obj:`cache_dir`) and ``HF_HUB_OFFLINE`` are honoured; every file is
checked against the card's size and SHA-256 before it is opened, and a file that fails is
never loaded.
"""
import argparse
import contextlib
import contextvars
import json
import os
import os.path as osp
import re
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Tuple

from torch import Tensor

from pyg_tensorpot.datasets.shards import (  # noqa: F401 (CARD_NAME: part of this API)
    CARD_FORMAT,
    CARD_NAME,
    DEFAULT_MAX_SHARD_BYTES,
    SHARD_FORMAT_VERSION,
    SPLITS_NAME,
    Shard,
    ShardError,
    check_split_indices,
    key_specs,
    load_shards,
    load_splits,
    read_card,
    write_shards,
)
from pyg_tensorpot.utils.files import atomic_open, atomic_write_text

#: Organisation the public datasets are published under by default (``source="hub"`` without
#: :obj:`repo_id` pulls ``<org>/<dataset name>``).
DEFAULT_ORGANISATION = 'pyg-tensorpot'


class HubDatasetError(RuntimeError):
    """A dataset cannot be pulled from or pushed to the Hub (missing repository or file,
    offline without a cached copy, a card that disagrees with the files or the request)."""


class LicenceError(ValueError):
    """The dataset's licence does not allow redistributing it, or no licence was given for
    the user's own data."""


# Download options of from_hub for the source="hub" constructor it runs (which only takes
# repo_id and revision)
_HUB_OPTIONS: contextvars.ContextVar = contextvars.ContextVar('hub_options', default={})


@contextlib.contextmanager
def hub_options(**options: Any) -> Iterator[None]:
    """Download options (``cache_dir``, ``token``, ``local_files_only``, ``force_download``)
    for the ``source="hub"`` constructors run inside the block."""
    token = _HUB_OPTIONS.set(dict(options))
    try:
        yield
    finally:
        _HUB_OPTIONS.reset(token)


# ----------------------------------------------------------------------------------------------
# licence and citation
# ----------------------------------------------------------------------------------------------
def catalogue_card(dataset: Any) -> Optional[Any]:
    """The catalogue card (:func:`pyg_tensorpot.datasets.catalogue.card`) of a public dataset,
    looked up by class name, then by the dataset's name; :obj:`None` for the user's own data
    (or when the catalogue has no entry)."""
    from pyg_tensorpot.datasets.ase_files import ASEFileDataset
    if isinstance(dataset, ASEFileDataset):
        return None
    try:
        from pyg_tensorpot.datasets.catalogue import card, card_for
    except ImportError:
        return None
    try:
        return card_for(dataset)
    except KeyError:
        pass
    name = str(getattr(dataset, 'name', ''))
    for key in (type(dataset).__name__, name, name.split('_')[0]):
        try:
            return card(key)
        except KeyError:
            continue
    return None


def resolve_licence(dataset: Any, licence: Optional[str], citation: Optional[str]
                    ) -> Dict[str, Any]:
    """``{'licence', 'redistributable', 'citation', 'catalogue'}`` for a push: the catalogue's
    for a public dataset (refusing one it marks as not redistributable), the caller's for their
    own data (where :obj:`licence` is required).

    Raises:
        LicenceError: The licence forbids redistribution, contradicts the catalogue, or is
            missing for the user's own data.
    """
    entry = catalogue_card(dataset)
    what = type(dataset).__name__
    pulled = getattr(dataset, 'hub_card', None)
    if entry is None and licence is None and pulled is not None:
        # a dataset pulled from the Hub keeps the terms it was published under
        licence = pulled.get('licence')
        citation = pulled.get('citation') if citation is None else citation
    if entry is None:
        from pyg_tensorpot.datasets.ase_files import ASEFileDataset
        if not licence or not str(licence).strip():
            kind = ('your own data' if isinstance(dataset, ASEFileDataset) else
                    f'{what}, which the dataset catalogue does not list,')
            raise LicenceError(f"pushing {kind} needs its licence: pass licence='CC-BY-4.0' (an "
                               f"SPDX id, or the licence's name) and, ideally, citation='...'; "
                               f"only push data you may redistribute")
        return {'licence': str(licence).strip(), 'redistributable': True,
                'citation': citation, 'catalogue': None}
    card_licence = str(getattr(entry, 'licence', '') or 'unknown')
    if not getattr(entry, 'redistributable', False):
        raise LicenceError(f"{what} is distributed under '{card_licence}', which does not allow "
                           f"redistributing it (see `pyg-tensorpot datasets info`): it is not "
                           f"pushed. Users obtain it from its publishers with source='raw'.")
    if licence is not None and str(licence).strip().lower() != card_licence.lower():
        raise LicenceError(f"licence='{licence}' contradicts the dataset catalogue, which says "
                           f"{what} is under '{card_licence}'; leave licence unset")
    to_dict = getattr(entry, 'to_dict', None)
    return {'licence': card_licence, 'redistributable': True,
            'citation': citation if citation is not None else getattr(entry, 'citation', None),
            'catalogue': to_dict() if callable(to_dict) else None}


# ----------------------------------------------------------------------------------------------
# building the folder
# ----------------------------------------------------------------------------------------------
def _num_structures(dataset: Any) -> int:
    return int(next(iter(dataset.slices.values())).numel() - 1)


def _units(dataset: Any) -> Dict[str, str]:
    units = {'energy': 'eV', 'length': 'Angstrom', 'forces': 'eV/Angstrom'}
    resolved = getattr(dataset, 'resolved_units', None)
    if isinstance(resolved, dict):
        units['source_file'] = json.loads(json.dumps(resolved, default=str))
    return units


def build_card(dataset: Any, shards: List[Dict[str, Any]], storage: Dict[str, Tensor],
               splits: Optional[Dict[str, Any]], licence: Dict[str, Any]) -> Dict[str, Any]:
    """The ``dataset_card.json`` content of a dataset written as :obj:`shards`."""
    from pyg_tensorpot.datasets.base import _as_json, _repr
    atomref = dataset.atomref() if hasattr(dataset, 'atomref') else None
    return {
        'format': CARD_FORMAT,
        'format_version': SHARD_FORMAT_VERSION,
        'dataset': type(dataset).__name__,
        'module': type(dataset).__module__,
        'name': str(getattr(dataset, 'name', 'dataset')),
        'options': _as_json(dataset.options()),
        'num_structures': _num_structures(dataset),
        'keys': key_specs(storage),
        'shards': shards,
        'splits': splits,
        'licence': licence['licence'],
        'redistributable': licence['redistributable'],
        'citation': licence['citation'],
        'catalogue': _as_json(licence['catalogue']),
        'atomref': None if atomref is None else {str(int(z)): float(e)
                                                 for z, e in atomref.items()},
        'units': _units(dataset),
        'pre_transform': _repr(getattr(dataset, 'pre_transform', None)),
        'pre_filter': _repr(getattr(dataset, 'pre_filter', None)),
    }


def render_readme(card: Dict[str, Any]) -> str:
    """The Hub's ``README.md`` for a dataset card (YAML front matter, then prose)."""
    licence = str(card['licence'])
    spdx = licence.lower() if re.fullmatch(r'[A-Za-z0-9.+-]+', licence) else 'other'
    size = card['num_structures']
    size_category = ('n<1K' if size < 1e3 else '1K<n<10K' if size < 1e4 else
                     '10K<n<100K' if size < 1e5 else '100K<n<1M' if size < 1e6 else
                     '1M<n<10M' if size < 1e7 else 'n>10M')
    lines = ['---', f'license: {spdx}']
    if spdx == 'other':
        lines.append(f'license_name: {json.dumps(licence)}')
    # JSON strings are valid YAML scalars
    lines += [f"pretty_name: {json.dumps(card['dataset'] + ' (' + card['name'] + ')')}",
              'tags:', '- pyg-tensorpot', '- chemistry', '- interatomic-potentials',
              'size_categories:', f'- {size_category}', '---', '',
              f"# {card['dataset']}: {card['name']}", '',
              f"{size:,} structures processed by pyg-tensorpot's `{card['dataset']}` "
              f"(energies in eV, positions in Angstrom, forces in eV/Angstrom), stored as "
              f"{len(card['shards'])} memory-mappable safetensors shard(s) with their SHA-256 "
              f"in `{CARD_NAME}`.", '', '```python',
              'from pyg_tensorpot.datasets import AtomisticInMemoryDataset',
              "dataset = AtomisticInMemoryDataset.from_hub('<this repository>')", '```', '',
              f'Licence: {licence}.', '']
    if card.get('citation'):
        lines += ['## Citation', '', '```', str(card['citation']).strip(), '```', '']
    lines += ['## Options', '', '```json', json.dumps(card['options'], indent=1, sort_keys=True),
              '```', '']
    return '\n'.join(lines)


def save_to_folder(
    dataset: Any,
    folder: str,
    licence: Optional[str] = None,
    citation: Optional[str] = None,
    split: Optional[Dict[str, Tensor]] = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Dict[str, Any]:
    r"""Writes the Hub folder of :obj:`dataset`: shards, ``splits.safetensors``,
    ``dataset_card.json`` (written last, so a folder with a card is complete) and
    ``README.md``. Stale shards of an earlier save into the same folder are removed.

    Args:
        dataset (AtomisticInMemoryDataset): The dataset (its whole storage is written, whatever
            index selection the object has).
        folder (str): Destination folder.
        licence (str, optional): Licence of the user's own data (required for it; public
            datasets take the catalogue's). (default: :obj:`None`)
        citation (str, optional): How to cite the data. (default: :obj:`None`, the
            catalogue's)
        split (dict, optional): ``{name: index tensor}`` to save; the dataset's own
            :obj:`split` attribute where it has one. (default: :obj:`None`)
        max_shard_bytes (int, optional): Upper bound of one shard's size.
            (default: 512 MiB)

    Returns:
        dict: The card.

    Raises:
        LicenceError: See :func:`resolve_licence`.
    """
    from safetensors.torch import save

    from pyg_tensorpot.datasets.base import file_hash
    terms = resolve_licence(dataset, licence, citation)
    if int(max_shard_bytes) < 1:
        raise ValueError(f'max_shard_bytes must be positive, got {max_shard_bytes}')
    splits = check_split_indices(split if split is not None else getattr(dataset, 'split', None),
                                 _num_structures(dataset))
    store = dataset.storage()
    storage = {key: store[key] for key in store.keys()}
    slices = {key: dataset.slices[key] for key in storage}
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if re.fullmatch(r'data-\d{5}-of-\d{5}\.safetensors', name) or name == SPLITS_NAME:
            os.remove(osp.join(folder, name))
    card_path = osp.join(folder, CARD_NAME)
    if osp.exists(card_path):
        os.remove(card_path)
    entries = write_shards(storage, slices, folder, int(max_shard_bytes))
    splits_entry = None
    if splits is not None:
        path = osp.join(folder, SPLITS_NAME)
        with atomic_open(path) as f:
            f.write(save(splits))
        splits_entry = {'file': SPLITS_NAME, 'names': sorted(splits), 'size': osp.getsize(path),
                        'sha256': file_hash(path)}
    card = build_card(dataset, entries, storage, splits_entry, terms)
    atomic_write_text(render_readme(card), osp.join(folder, 'README.md'))
    atomic_write_text(json.dumps(card, indent=1, sort_keys=True), card_path)
    return card


def push_to_hub(
    dataset: Any,
    repo_id: str,
    token: Optional[str] = None,
    private: bool = False,
    revision: Optional[str] = None,
    licence: Optional[str] = None,
    citation: Optional[str] = None,
    split: Optional[Dict[str, Tensor]] = None,
    commit_message: Optional[str] = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    endpoint: Optional[str] = None,
    api: Optional[Any] = None,
):
    r"""Writes :func:`save_to_folder` into a temporary folder and uploads it to the dataset
    repository :obj:`repo_id` (created if needed), replacing the shards of an earlier upload
    to the same revision.

    Args:
        dataset (AtomisticInMemoryDataset): The dataset.
        repo_id (str): ``"org/name"``.
        token (str, optional): Hub token. (default: :obj:`None`, the logged-in user)
        private (bool, optional): Visibility of a newly created repository.
            (default: :obj:`False`)
        revision (str, optional): Branch to commit to. (default: :obj:`None`, ``main``)
        licence, citation, split, max_shard_bytes: See :func:`save_to_folder`.
        commit_message (str, optional): (default: :obj:`None`, ``"Upload <class> (<name>)"``)
        endpoint (str, optional): Hub endpoint URL. (default: :obj:`None`, ``HF_ENDPOINT``)
        api (huggingface_hub.HfApi, optional): A configured client. (default: :obj:`None`)

    Returns:
        huggingface_hub.CommitInfo: The commit.
    """
    if not isinstance(repo_id, str) or repo_id.count('/') != 1:
        raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}")
    from huggingface_hub import HfApi
    api = api if api is not None else HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix='pyg_tensorpot_dataset_push_') as folder:
        card = save_to_folder(dataset, folder, licence, citation, split, max_shard_bytes)
        api.create_repo(repo_id, repo_type='dataset', private=private, exist_ok=True,
                        token=token)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, repo_type='dataset', exist_ok=True,
                              token=token)
        message = commit_message or f"Upload {card['dataset']} ({card['name']})"
        return api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type='dataset',
                                 revision=revision, commit_message=message, token=token,
                                 delete_patterns=['data-*.safetensors', SPLITS_NAME])


# ----------------------------------------------------------------------------------------------
# pulling
# ----------------------------------------------------------------------------------------------
def _hub_error(repo_id: str, revision: Optional[str], error: Exception) -> HubDatasetError:
    from pyg_tensorpot.hub.remote import hub_failure
    where = f"Hub dataset repository '{repo_id}'" + (f' at revision {revision!r}'
                                                     if revision else '')
    reason = hub_failure(error, f"Hub dataset repository '{repo_id}'", revision)
    if reason is not None:
        return HubDatasetError(f'cannot pull {where}: {reason}')
    return HubDatasetError(f'cannot pull {where}: {type(error).__name__}: {error}')


def download(repo_id: str, revision: Optional[str] = None, cache_dir: Optional[str] = None,
             token: Optional[str] = None, local_files_only: bool = False,
             force_download: bool = False) -> str:
    """The local snapshot folder of a Hub dataset repository (downloaded if needed, through
    :func:`huggingface_hub.snapshot_download`)."""
    if not isinstance(repo_id, str) or repo_id.count('/') != 1:
        raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}")
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(repo_id, repo_type='dataset', revision=revision,
                                 cache_dir=cache_dir, token=token,
                                 local_files_only=local_files_only,
                                 force_download=force_download)
    except Exception as error:  # huggingface_hub's own errors, re-raised with context
        raise _hub_error(repo_id, revision, error) from error


def pull(repo_id: str, revision: Optional[str] = None, verify_checksums: bool = True,
         **download_options: Any) -> Tuple[str, Dict[str, Any], List[Shard],
                                           Optional[Dict[str, Tensor]]]:
    """``(folder, card, shards, splits)`` of a Hub dataset repository, verified."""
    options = dict(_HUB_OPTIONS.get(), **download_options)
    folder = download(repo_id, revision, **options)
    card = read_card(folder)
    shards = load_shards(folder, card, verify_checksums)
    splits = load_splits(folder, card, card['num_structures'], verify_checksums)
    return folder, card, shards, splits


# ----------------------------------------------------------------------------------------------
# command line: pyg-tensorpot datasets push NAME_OR_PATH REPO_ID
# ----------------------------------------------------------------------------------------------
def _public_classes() -> Dict[str, Any]:
    from pyg_tensorpot.datasets import ANI1x, COMP6, MD17, QM9, RMD17, SPICE
    return {'qm9': QM9, 'ani1x': ANI1x, 'comp6': COMP6, 'spice': SPICE, 'md17': MD17,
            'rmd17': RMD17}


def _parse_option(text: str) -> Tuple[str, Any]:
    if '=' not in text:
        raise argparse.ArgumentTypeError(f"--option takes KEY=VALUE, got '{text}'")
    key, value = text.split('=', 1)
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def add_push_arguments(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``push`` to the ``pyg-tensorpot datasets`` sub-commands (:obj:`subparsers` is the
    object :meth:`argparse.ArgumentParser.add_subparsers` returned); returns its parser."""
    parser = subparsers.add_parser(
        'push', help='upload a processed dataset to a Hugging Face Hub dataset repository',
        description='Processes (or loads) a dataset and uploads it as safetensors shards with a '
                    'dataset card. NAME_OR_PATH is a public dataset (' +
                    ', '.join(_public_classes()) + ') built in --root, or your own extxyz / '
                    'ASE database file (needs --licence).')
    parser.add_argument('name_or_path', metavar='NAME_OR_PATH')
    parser.add_argument('repo_id', metavar='REPO_ID', help="target repository 'org/name'")
    parser.add_argument('--root', default=None,
                        help='dataset root (raw files in ROOT/raw); default: a temporary folder '
                             'for your own files, required for the public datasets')
    parser.add_argument('--option', action='append', default=[], type=_parse_option,
                        metavar='KEY=VALUE',
                        help="constructor option, e.g. --option level=wb97x_dz --option "
                             "molecule=ethanol (VALUE read as JSON where it parses)")
    parser.add_argument('--licence', '--license', dest='licence', default=None,
                        help='licence of your own data (an SPDX id such as CC-BY-4.0)')
    parser.add_argument('--citation', default=None, help='how to cite your own data')
    parser.add_argument('--private', action='store_true', help='create a private repository')
    parser.add_argument('--revision', default=None, help='branch to commit to (default: main)')
    parser.add_argument('--token', default=None, help='Hub token (default: the logged-in user)')
    parser.add_argument('--max-shard-mb', type=float, default=DEFAULT_MAX_SHARD_BYTES / 2**20,
                        help='largest shard size in MiB (default: 512)')
    parser.add_argument('--folder', default=None,
                        help='only write the repository folder here, do not upload')
    return parser


def build_dataset(name_or_path: str, root: Optional[str], options: Dict[str, Any]) -> Any:
    """The dataset ``pyg-tensorpot datasets push`` uploads: a public dataset by name or the
    user's extxyz (``.xyz``, ``.extxyz``) / ASE database file, processed in :obj:`root`."""
    classes = _public_classes()
    key = name_or_path.strip().lower()
    if key in classes:
        if root is None:
            raise ValueError(f'--root is required for {classes[key].__name__} (its raw files go '
                             f'in ROOT/raw)')
        return classes[key](root, log=False, **options)
    if not osp.isfile(name_or_path):
        raise ValueError(f"'{name_or_path}' is neither a public dataset "
                         f"({', '.join(classes)}) nor an existing file")
    from pyg_tensorpot.datasets import ASEDatabaseDataset, ExtXYZDataset
    cls = ExtXYZDataset if name_or_path.lower().endswith(('.xyz', '.extxyz')) \
        else ASEDatabaseDataset
    if root is None:
        raise ValueError(f'a root folder is needed to process {name_or_path}')
    return cls(root, name_or_path, log=False, **options)


def run_push(args: argparse.Namespace) -> int:
    """Runs ``pyg-tensorpot datasets push``; returns the exit status (errors are printed,
    never raised)."""
    import sys
    with contextlib.ExitStack() as stack:
        root = args.root
        if root is None and osp.isfile(args.name_or_path):
            # the user's own file: processed in a temporary root, removed afterwards
            root = stack.enter_context(tempfile.TemporaryDirectory(prefix='pyg_tensorpot_push_'))
        return _run_push(args, root, sys.stderr)


def _run_push(args: argparse.Namespace, root: Optional[str], stderr: Any) -> int:
    try:
        dataset = build_dataset(args.name_or_path, root, dict(args.option))
        max_bytes = int(args.max_shard_mb * 2**20)
        if args.folder is not None:
            card = save_to_folder(dataset, args.folder, args.licence, args.citation,
                                  max_shard_bytes=max_bytes)
            print(f"wrote {len(card['shards'])} shard(s) of {card['num_structures']} structures "
                  f"to {args.folder}")
            return 0
        info = push_to_hub(dataset, args.repo_id, token=args.token, private=args.private,
                           revision=args.revision, licence=args.licence,
                           citation=args.citation, max_shard_bytes=max_bytes)
    except (LicenceError, HubDatasetError, ShardError, ValueError, TypeError, OSError,
            RuntimeError, KeyError, ImportError) as error:
        print(f'pyg-tensorpot datasets push: error: {error}', file=stderr)
        return 1
    print(f"pushed {type(dataset).__name__} to {args.repo_id}: {getattr(info, 'commit_url', info)}")
    return 0

