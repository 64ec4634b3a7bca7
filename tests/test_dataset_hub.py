"""Datasets pulled from and pushed to the Hugging Face Hub, with the network blocked.

Pulls go through the real ``huggingface_hub.snapshot_download`` (``repo_type="dataset"``)
from a cache seeded in the Hub's own layout (test_hub's helper, moved from ``models--`` to
``datasets--``) with ``HF_HUB_OFFLINE=1``; pushes go through ``HfApi`` with its network
methods replaced by recorders, and what they were sent is checked.
"""
import os

os.environ['HF_HUB_OFFLINE'] = '1'  # before huggingface_hub is imported, as a user would

import json  # noqa: E402
import os.path as osp  # noqa: E402
import shutil  # noqa: E402
import types  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch_geometric.loader import DataLoader  # noqa: E402

import huggingface_hub  # noqa: E402
import huggingface_hub.constants  # noqa: E402
from pyg_tensorpot.datasets import (  # noqa: E402
    ANI1x,
    COMP6,
    QM9,
    RMD17,
    SPICE,
    AtomisticInMemoryDataset,
    remote,
    shards,
)
from pyg_tensorpot.datasets.remote import (  # noqa: E402
    CARD_NAME,
    HubDatasetError,
    LicenceError,
)
from pyg_tensorpot.datasets.shards import ShardError  # noqa: E402
from test_hub import no_network, seed_hub_cache  # noqa: E402,F401 (tests/ is on sys.path)

DATA = osp.join(osp.dirname(__file__), 'data')

#: A catalogue entry in the interface of pyg_tensorpot.datasets.catalogue.card(name).
OPEN_CARD = types.SimpleNamespace(licence='CC0-1.0', redistributable=True,
                                  citation='A. Author, Sci. Data 1 (2020)',
                                  to_dict=lambda: {'name': 'test', 'licence': 'CC0-1.0'})


@pytest.fixture
def open_licence(monkeypatch):
    """The public datasets under a redistributable licence (whatever the catalogue says), for
    the tests that are about the shards rather than the licences."""
    monkeypatch.setattr(remote, 'catalogue_card', lambda dataset: OPEN_CARD)


def seed_dataset_cache(cache: str, repo_id: str, folder: str) -> str:
    """Seeds the Hub cache with the files of :obj:`folder` as dataset repository
    :obj:`repo_id`; returns the commit."""
    files = {name: open(osp.join(folder, name), 'rb').read() for name in os.listdir(folder)}
    commit = seed_hub_cache(cache, repo_id, files)
    name = repo_id.replace('/', '--')
    os.rename(osp.join(cache, 'models--' + name), osp.join(cache, 'datasets--' + name))
    return commit


def assert_same_samples(expected, actual):
    assert len(actual) == len(expected)
    for i in range(len(expected)):
        a, b = expected[i], actual[i]
        assert sorted(a.keys()) == sorted(b.keys())
        for key in a.keys():
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
            assert torch.equal(a[key], b[key]), key  # bit for bit


# ----------------------------------------------------------------------- the five datasets
def build_qm9(root):
    from test_datasets_qm9 import write_pyg_raw
    write_pyg_raw(osp.join(root, 'raw'))
    return QM9, {}


def build_rmd17(root):
    from test_datasets_md17 import write_rmd17_raw
    write_rmd17_raw(root)
    return RMD17, {'molecule': 'ethanol'}


def place(src, root, name):
    pytest.importorskip('h5py')
    os.makedirs(osp.join(root, 'raw'), exist_ok=True)
    shutil.copy(src, osp.join(root, 'raw', name))


def build_ani1x(root):
    place(osp.join(DATA, 'ani1x', 'modelforge_ani1x_release_n5.hdf5'), root,
          'ani1x-release.h5')
    return ANI1x, {'verify_checksums': False, 'self_energies': 'ani1',
                   'extra_keys': ('wb97x_dz.dipole',)}


def build_comp6(root):
    place(osp.join(DATA, 'comp6', 's66x8_wb97x6-31gd.h5'), root, 's66x8_wb97x6-31gd.h5')
    return COMP6, {'subset': 's66x8'}


def build_spice(root):
    place(osp.join(DATA, 'spice', 'modelforge_SPICE-1.1.4_n2.hdf5'), root, 'SPICE-1.1.4.hdf5')
    return SPICE, {'version': '1.1.4', 'verify_checksums': False}


BUILDERS = [build_qm9, build_rmd17, build_ani1x, build_comp6, build_spice]


@pytest.mark.parametrize('build', BUILDERS, ids=lambda b: b.__name__[6:])
@pytest.mark.parametrize('max_shard_bytes', [512 * 2**20, 1000])
def test_pulled_dataset_equals_processed_one(tmp_path, build, max_shard_bytes, open_licence):
    cls, kwargs = build(str(tmp_path / 'root'))
    processed = cls(str(tmp_path / 'root'), log=False, **kwargs)
    card = processed.save_to_folder(str(tmp_path / 'repo'), max_shard_bytes=max_shard_bytes)
    assert card['dataset'] == cls.__name__ and card['num_structures'] == len(processed)
    if max_shard_bytes == 1000:
        assert len(card['shards']) > 1  # several shards: samples are served shard by shard
    cache = str(tmp_path / 'cache')
    seed_dataset_cache(cache, 'org/data', str(tmp_path / 'repo'))
    # both entry points; the constructor reads the cache from the environment as users do
    pulled = cls.from_hub('org/data', cache_dir=cache, log=False, **kwargs)
    assert_same_samples(processed, pulled)
    generic = AtomisticInMemoryDataset.from_hub('org/data', cache_dir=cache, log=False)
    assert_same_samples(processed, generic)
    assert generic.name == processed.name
    # no pickle travels: every file is JSON, markdown or safetensors
    for name in os.listdir(tmp_path / 'repo'):
        assert name.endswith(('.json', '.md', '.safetensors')), name
    # the whole storage (concatenated on demand for several shards) and batches agree too
    for key in processed.storage().keys():
        assert torch.equal(processed.storage()[key], pulled.storage()[key]), key
    for a, b in zip(DataLoader(processed, batch_size=7), DataLoader(pulled, batch_size=7)):
        assert torch.equal(a.pos, b.pos) and torch.equal(a.energy, b.energy)
        assert torch.equal(a.batch, b.batch)
    assert torch.equal(processed.num_atoms, pulled.num_atoms)


def test_source_hub_in_constructor_uses_hub_cache(tmp_path, monkeypatch, open_licence):
    cls, kwargs = build_rmd17(str(tmp_path / 'root'))
    processed = cls(str(tmp_path / 'root'), log=False, **kwargs)
    processed.save_to_folder(str(tmp_path / 'repo'))
    cache = str(tmp_path / 'cache')
    commit = seed_dataset_cache(cache, 'pyg-tensorpot/rmd17_ethanol', str(tmp_path / 'repo'))
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', cache)
    pulled = RMD17(None, molecule='ethanol', source='hub', log=False)  # the default repository
    assert_same_samples(processed, pulled)
    assert pulled.hub_folder.endswith(commit)
    at_commit = RMD17(None, molecule='ethanol', source='hub', revision=commit, log=False)
    assert len(at_commit) == len(processed)
    with pytest.raises(ShardError, match="holds RMD17 with options .*'ethanol'.*aspirin"):
        RMD17(None, molecule='aspirin', source='hub', repo_id='pyg-tensorpot/rmd17_ethanol')
    with pytest.raises(ValueError, match="source must be 'raw'"):
        RMD17(None, molecule='ethanol', source='zenodo')
    with pytest.raises(ValueError, match='already processed'):
        RMD17(None, molecule='ethanol', source='hub', pre_transform=lambda d: d)


def test_not_cached_while_offline_is_a_clear_error(tmp_path):
    with pytest.raises(HubDatasetError, match="'org/missing'.*not in the Hub cache.*"
                                              "HF_HUB_OFFLINE"):
        AtomisticInMemoryDataset.from_hub('org/missing', cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="'org/name'"):
        AtomisticInMemoryDataset.from_hub('no-slash', cache_dir=str(tmp_path))


# ----------------------------------------------------------------------- damaged files
@pytest.fixture
def seeded(tmp_path, open_licence):
    cls, kwargs = build_rmd17(str(tmp_path / 'root'))
    processed = cls(str(tmp_path / 'root'), log=False, **kwargs)
    card = processed.save_to_folder(str(tmp_path / 'repo'), max_shard_bytes=4096)
    assert len(card['shards']) >= 2
    return str(tmp_path / 'repo'), card


def pull_damaged(tmp_path, folder, monkeypatch, damaged):
    """Pulls :obj:`folder` from a seeded cache, checking that the shard :obj:`damaged` is
    never opened (shards before it may be)."""
    cache = str(tmp_path / 'cache')
    seed_dataset_cache(cache, 'org/damaged', folder)
    opened = []
    real_open = shards.open_shard
    monkeypatch.setattr(shards, 'open_shard',
                        lambda path, *args: opened.append(path) or real_open(path, *args))
    try:
        AtomisticInMemoryDataset.from_hub('org/damaged', cache_dir=cache, log=False)
    finally:
        assert opened and not any(osp.basename(p) == damaged for p in opened)


def damage(folder, card, how):
    """Flips one bit of, or truncates, the last shard; returns its name."""
    name = card['shards'][-1]['file']
    path = osp.join(folder, name)
    data = bytearray(open(path, 'rb').read())
    if how == 'flip':
        data[len(data) - 5] ^= 0x01
    else:
        data = data[:len(data) // 2]
    with open(path, 'wb') as f:
        f.write(bytes(data))
    return name


@pytest.mark.parametrize('how, message', [
    ('flip', 'has SHA-256 .* but the dataset card says .*It was not loaded'),
    ('truncate', 'bytes but the dataset card says .*truncated.*It was not loaded'),
])
def test_corrupt_or_truncated_shard_is_never_loaded(tmp_path, seeded, monkeypatch, how,
                                                    message):
    folder, card = seeded
    name = damage(folder, card, how)
    with pytest.raises(ShardError, match=message):
        pull_damaged(tmp_path, folder, monkeypatch, name)


def test_card_whose_checksum_disagrees_is_refused(tmp_path, seeded, monkeypatch):
    folder, card = seeded
    card['shards'][1]['sha256'] = '0' * 64
    with open(osp.join(folder, CARD_NAME), 'w') as f:
        json.dump(card, f)
    with pytest.raises(ShardError, match='SHA-256 .* but the dataset card says 0000'):
        pull_damaged(tmp_path, folder, monkeypatch, card['shards'][1]['file'])


@pytest.mark.parametrize('edit, message', [
    (lambda c: c.update(format_version=99), 'format version 99'),
    (lambda c: c.update(num_structures=21), 'the shards cover 20 structures, the card says 21'),
    (lambda c: c['shards'][1].update(structures=[0, 99]), 'expected to start at'),
    (lambda c: c['keys']['pos'].update(dtype='float64'), "'pos' is torch.float32"),
    (lambda c: c['keys']['pos'].update(shape=[-1], cat_dim=3), "'pos' is .* card says"),
    (lambda c: c['shards'].reverse(), 'expected to start at 0'),
])
def test_inconsistent_card_is_refused(tmp_path, seeded, edit, message):
    folder, card = seeded
    edit(card)
    with open(osp.join(folder, CARD_NAME), 'w') as f:
        json.dump(card, f)
    cache = str(tmp_path / 'cache')
    seed_dataset_cache(cache, 'org/bad', folder)
    with pytest.raises(ShardError, match=message):
        AtomisticInMemoryDataset.from_hub('org/bad', cache_dir=cache, log=False)


def test_a_shard_of_another_upload_is_refused(tmp_path, seeded):
    folder, card = seeded
    first, second = card['shards'][0], card['shards'][1]
    shutil.copy(osp.join(folder, second['file']), osp.join(folder, first['file']))
    first.update(size=second['size'], sha256=second['sha256'])  # a consistent but wrong card
    with open(osp.join(folder, CARD_NAME), 'w') as f:
        json.dump(card, f)
    cache = str(tmp_path / 'cache')
    seed_dataset_cache(cache, 'org/mixed', folder)
    with pytest.raises(ShardError, match='holds structures .* describes structures'):
        AtomisticInMemoryDataset.from_hub('org/mixed', cache_dir=cache, log=False)


@pytest.mark.parametrize('content', [b'', b'\x80\x04K\x01.', b'\xff' * 8 + b'{}' * 50])
def test_garbage_shard_with_a_matching_card_is_refused(tmp_path, seeded, content):
    """A card that describes a non-safetensors file exactly (a pickle, an absurd header
    length) still gets an error, never an unpickling or a crash."""
    import hashlib
    folder, card = seeded
    entry = card['shards'][0]
    with open(osp.join(folder, entry['file']), 'wb') as f:
        f.write(content)
    entry.update(size=len(content), sha256=hashlib.sha256(content).hexdigest())
    with open(osp.join(folder, CARD_NAME), 'w') as f:
        json.dump(card, f)
    cache = str(tmp_path / 'cache')
    seed_dataset_cache(cache, 'org/garbage', folder)
    with pytest.raises(ShardError, match='cannot read shard .*not a dataset shard'):
        AtomisticInMemoryDataset.from_hub('org/garbage', cache_dir=cache, log=False)


# ----------------------------------------------------------------------- own data, licences
def own_extxyz(tmp_path):
    pytest.importorskip('ase')
    from test_datasets_ase import reference_frames, write_xyz
    frames = reference_frames() * 4  # 12 structures, enough for a split
    return write_xyz(tmp_path / 'mine.xyz', frames)


def test_own_extxyz_with_split_and_atomref_round_trip(tmp_path):
    from pyg_tensorpot.datasets import ExtXYZDataset
    path = own_extxyz(tmp_path)
    ds = ExtXYZDataset(str(tmp_path / 'root'), path, extra_keys=['q', 'dipole'],
                       atomref='fit', split=(6, 3, 3), log=False)
    with pytest.raises(LicenceError, match="your own data needs its licence: pass licence="):
        ds.save_to_folder(str(tmp_path / 'repo'))
    card = ds.save_to_folder(str(tmp_path / 'repo'), licence='CC-BY-4.0',
                             citation='Me et al. (2026)')
    assert card['licence'] == 'CC-BY-4.0' and card['citation'] == 'Me et al. (2026)'
    readme = open(tmp_path / 'repo' / 'README.md').read()
    assert readme.startswith('---\nlicense: cc-by-4.0\n') and 'Me et al. (2026)' in readme
    cache = str(tmp_path / 'cache')
    seed_dataset_cache(cache, 'me/water', str(tmp_path / 'repo'))
    pulled = AtomisticInMemoryDataset.from_hub('me/water', cache_dir=cache, log=False)
    assert_same_samples(ds, pulled)
    # the puller has no raw file: the class of the user's files loads the generic dataset
    same = ExtXYZDataset.from_hub('me/water', cache_dir=cache, log=False)
    assert type(same) is AtomisticInMemoryDataset and len(same) == len(ds)
    assert sorted(pulled.split) == ['idx_test', 'idx_train', 'idx_val']
    for key, index in ds.split.items():
        assert torch.equal(pulled.split[key], index)
    assert pulled.atomref() == pytest.approx(ds.atomref(), abs=0.0)
    assert pulled.hub_card['units']['energy'] == 'eV'
    again = pulled.save_to_folder(str(tmp_path / 'again'))  # keeps the published terms
    assert again['licence'] == 'CC-BY-4.0' and again['citation'] == 'Me et al. (2026)'
    assert again['shards'] == card['shards']  # the same bytes


def test_own_ase_database_round_trip(tmp_path):
    pytest.importorskip('ase')
    import ase.db
    from test_datasets_ase import reference_frames, to_atoms

    from pyg_tensorpot.datasets import ASEDatabaseDataset
    path = str(tmp_path / 'mine.db')
    with ase.db.connect(path) as database:
        for frame in reference_frames():
            database.write(to_atoms(frame), data={'q': frame['q']})
    ds = ASEDatabaseDataset(str(tmp_path / 'root'), path, extra_keys=['q'], log=False)
    ds.save_to_folder(str(tmp_path / 'repo'), licence='MIT')
    cache = str(tmp_path / 'cache')
    seed_dataset_cache(cache, 'me/db', str(tmp_path / 'repo'))
    assert_same_samples(ds, AtomisticInMemoryDataset.from_hub('me/db', cache_dir=cache,
                                                              log=False))


def test_licence_and_citation_come_from_the_catalogue(tmp_path, monkeypatch):
    cls, kwargs = build_rmd17(str(tmp_path / 'root'))
    ds = cls(str(tmp_path / 'root'), log=False, **kwargs)
    monkeypatch.setattr(remote, 'catalogue_card', lambda dataset: OPEN_CARD)
    card = ds.save_to_folder(str(tmp_path / 'repo'))
    assert card['licence'] == 'CC0-1.0' and card['citation'] == OPEN_CARD.citation
    assert card['catalogue'] == OPEN_CARD.to_dict() and card['redistributable'] is True
    with pytest.raises(LicenceError, match="contradicts the dataset catalogue.*'CC0-1.0'"):
        ds.save_to_folder(str(tmp_path / 'repo'), licence='MIT')
    closed = types.SimpleNamespace(licence='CC-BY-NC-ND-4.0', redistributable=False,
                                   citation='', to_dict=dict)
    monkeypatch.setattr(remote, 'catalogue_card', lambda dataset: closed)
    with pytest.raises(LicenceError, match="RMD17 is distributed under 'CC-BY-NC-ND-4.0', which "
                                           "does not allow redistributing it"):
        ds.save_to_folder(str(tmp_path / 'closed'))
    assert not osp.exists(tmp_path / 'closed')  # refused before anything is written


def test_real_catalogue_decides_every_public_dataset(tmp_path):
    pytest.importorskip('pyg_tensorpot.datasets.catalogue')
    for build in (build_rmd17, build_qm9):
        root = str(tmp_path / build.__name__)
        cls, kwargs = build(root)
        ds = cls(root, log=False, **kwargs)
        entry = remote.catalogue_card(ds)
        assert entry is not None, f'the catalogue has no card for {cls.__name__}'
        if entry.redistributable:
            card = ds.save_to_folder(str(tmp_path / (build.__name__ + '_repo')))
            assert card['licence'] == entry.licence and card['citation'] == entry.citation
        else:
            with pytest.raises(LicenceError, match=entry.licence):
                ds.save_to_folder(str(tmp_path / (build.__name__ + '_repo')))
    # MD17's licence is not stated: it is refused, naming it (an sGDML-layout file written
    # from the bundled sample)
    import numpy as np

    from pyg_tensorpot.datasets import MD17, MD17EthanolSample
    from pyg_tensorpot.datasets.md17 import read_extxyz
    arrays = read_extxyz(MD17EthanolSample.bundled_path())
    raw = tmp_path / 'md17' / 'md17_ethanol' / 'raw'
    raw.mkdir(parents=True)
    np.savez(raw / 'md17_ethanol.npz', R=arrays['pos'][:90].reshape(10, 9, 3),
             z=arrays['z'][:9], E=arrays['energy'][:10, None],
             F=arrays['forces'][:90].reshape(10, 9, 3))
    md17 = MD17(str(tmp_path / 'md17'), molecule='ethanol', log=False)
    entry = remote.catalogue_card(md17)
    assert not entry.redistributable
    with pytest.raises(LicenceError, match=f"MD17 is distributed under '{entry.licence}', "
                                           f"which does not allow"):
        md17.save_to_folder(str(tmp_path / 'md17_repo'))
    assert not osp.exists(tmp_path / 'md17_repo')


# ----------------------------------------------------------------------- push
class RecordingApi:
    """HfApi's network methods replaced by recorders; the folder is copied while uploading
    (push_to_hub deletes its temporary folder afterwards)."""
    def __init__(self, tmp_path):
        self.calls, self.tmp_path = [], tmp_path

    def install(self, monkeypatch):
        api = self

        def create_repo(self, repo_id, **kwargs):
            api.calls.append(('create_repo', repo_id, kwargs))

        def create_branch(self, repo_id, **kwargs):
            api.calls.append(('create_branch', repo_id, kwargs))

        def upload_folder(self, **kwargs):
            shutil.copytree(kwargs['folder_path'], api.tmp_path / 'uploaded')
            api.calls.append(('upload_folder', kwargs['repo_id'], kwargs))

        monkeypatch.setattr(huggingface_hub.HfApi, 'create_repo', create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, 'create_branch', create_branch)
        monkeypatch.setattr(huggingface_hub.HfApi, 'upload_folder', upload_folder)
        return self


def test_push_to_hub_sends_the_folder_then_pulls_back(tmp_path, monkeypatch, open_licence):
    api = RecordingApi(tmp_path).install(monkeypatch)
    cls, kwargs = build_rmd17(str(tmp_path / 'root'))
    ds = cls(str(tmp_path / 'root'), log=False, **kwargs)
    ds.push_to_hub('org/rmd17', private=True, revision='ethanol', max_shard_bytes=4096)
    assert [c[0] for c in api.calls] == ['create_repo', 'create_branch', 'upload_folder']
    assert api.calls[0][2]['repo_type'] == 'dataset' and api.calls[0][2]['private'] is True
    assert api.calls[1][2]['branch'] == 'ethanol'
    upload = api.calls[2][2]
    assert upload['repo_type'] == 'dataset' and upload['revision'] == 'ethanol'
    assert upload['repo_id'] == 'org/rmd17' and 'data-*.safetensors' in upload['delete_patterns']
    # what was sent is byte for byte what save_to_folder writes
    ds.save_to_folder(str(tmp_path / 'local'), max_shard_bytes=4096)
    uploaded = sorted(os.listdir(tmp_path / 'uploaded'))
    assert uploaded == sorted(os.listdir(tmp_path / 'local'))
    for name in uploaded:
        assert (tmp_path / 'uploaded' / name).read_bytes() == \
            (tmp_path / 'local' / name).read_bytes(), name
    cache = str(tmp_path / 'cache')
    seed_dataset_cache(cache, 'org/rmd17', str(tmp_path / 'uploaded'))
    assert_same_samples(ds, RMD17.from_hub('org/rmd17', cache_dir=cache, molecule='ethanol',
                                           log=False))


def test_push_refused_before_any_network_call(tmp_path, monkeypatch):
    api = RecordingApi(tmp_path).install(monkeypatch)
    from pyg_tensorpot.datasets import ExtXYZDataset
    ds = ExtXYZDataset(str(tmp_path / 'root'), own_extxyz(tmp_path), log=False)
    with pytest.raises(LicenceError):
        ds.push_to_hub('me/water')
    with pytest.raises(ValueError, match="'org/name'"):
        ds.push_to_hub('water', licence='MIT')
    assert api.calls == []


def test_cli_push(tmp_path, monkeypatch, capsys):
    import argparse
    api = RecordingApi(tmp_path).install(monkeypatch)
    parser = argparse.ArgumentParser(prog='pyg-tensorpot datasets')
    remote.add_push_arguments(parser.add_subparsers(dest='command'))
    path = own_extxyz(tmp_path)
    root = str(tmp_path / 'root')
    args = parser.parse_args(['push', path, 'me/water', '--root', root])
    assert remote.run_push(args) == 1
    assert 'needs its licence' in capsys.readouterr().err and api.calls == []
    args = parser.parse_args(['push', path, 'me/water', '--root', root, '--licence',
                              'CC-BY-4.0', '--folder', str(tmp_path / 'out'),
                              '--option', 'extra_keys=["q"]'])
    assert remote.run_push(args) == 0 and api.calls == []
    card = json.load(open(tmp_path / 'out' / CARD_NAME))
    assert card['licence'] == 'CC-BY-4.0' and 'q' in card['keys']
    args = parser.parse_args(['push', path, 'me/water', '--root', root, '--licence', 'MIT'])
    assert remote.run_push(args) == 0
    assert [c[0] for c in api.calls] == ['create_repo', 'upload_folder']
    args = parser.parse_args(['push', 'qm9', 'org/qm9'])
    assert remote.run_push(args) == 1 and '--root is required' in capsys.readouterr().err


def test_cli_push_through_the_datasets_command(tmp_path, capsys):
    import argparse
    catalogue = pytest.importorskip('pyg_tensorpot.datasets.catalogue')
    parser = argparse.ArgumentParser(prog='pyg-tensorpot datasets')
    catalogue.add_arguments(parser)
    path = own_extxyz(tmp_path)  # no --root: processed in a temporary folder
    args = parser.parse_args(['push', path, 'me/water', '--licence', 'CC0-1.0', '--folder',
                              str(tmp_path / 'out'), '--max-shard-mb', '0.001'])
    assert catalogue.run(args) == 0
    card = json.load(open(tmp_path / 'out' / CARD_NAME))
    assert card['dataset'] == 'ExtXYZDataset' and len(card['shards']) > 1
    assert 'wrote' in capsys.readouterr().out


def test_bad_split_is_refused(tmp_path, open_licence):
    cls, kwargs = build_rmd17(str(tmp_path / 'root'))
    ds = cls(str(tmp_path / 'root'), log=False, **kwargs)
    with pytest.raises(ValueError, match="split 'idx_test' indexes outside the 20 structures"):
        ds.save_to_folder(str(tmp_path / 'repo'), split={'idx_test': torch.tensor([3, 20])})
    with pytest.raises(ValueError, match="must be a 1-D integer index tensor"):
        ds.save_to_folder(str(tmp_path / 'repo'), split={'idx_test': torch.tensor([0.5])})
    assert not osp.exists(tmp_path / 'repo')  # refused before anything is written
    card = ds.save_to_folder(str(tmp_path / 'repo'), split={'idx_test': torch.tensor([3, 19])})
    assert card['splits']['names'] == ['idx_test']


def test_shard_planning_bounds_sizes():
    num_atoms = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    from pyg_tensorpot.datasets.base import collate_storage
    n = int(num_atoms.sum())
    storage, slices = collate_storage(
        num_atoms, {'z': torch.ones(n, dtype=torch.long), 'pos': torch.zeros(n, 3)},
        {'energy': torch.zeros(8, dtype=torch.float64)})
    # bytes per structure: atoms * (8 + 12) + 8 (energy) + 3 * 8 (offsets)
    ranges = shards.plan_shards(storage, slices, max_shard_bytes=150)
    assert ranges[0][0] == 0 and ranges[-1][1] == 8
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    for s0, s1 in ranges:
        cost = int(num_atoms[s0:s1].sum()) * 20 + (s1 - s0) * 32
        assert cost <= 150 or s1 - s0 == 1  # a structure larger than the bound stands alone
