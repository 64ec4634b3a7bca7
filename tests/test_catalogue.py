"""The dataset catalogue: shipped JSON cards, their agreement with the dataset classes and with
the prose cards' front matter, lookups and the ``pyg-tensorpot datasets`` subcommands."""
import argparse
import dataclasses
import inspect
import json
import os
import os.path as osp
import shutil
import sys
import types

import pytest

import pyg_tensorpot.datasets as datasets
from pyg_tensorpot.datasets import catalogue
from pyg_tensorpot.datasets.ani1x import ANI1X_LEVELS
from pyg_tensorpot.datasets.catalogue import (
    CardError,
    DatasetCard,
    UnknownDatasetError,
    card,
    card_for,
    catalog,
    check_prose_cards,
    split_front_matter,
    sync_prose_cards,
)
from pyg_tensorpot.datasets.comp6 import COMP6_SUBSETS
from pyg_tensorpot.datasets.md17 import MD17_FILES, RMD17_MOLECULES
from pyg_tensorpot.datasets.spice import SPICE_VERSIONS
from pyg_tensorpot.datasets.splits import PROTOCOLS
from pyg_tensorpot.utils.elements import atomic_number, symbol

PROSE_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'datasets')


def public_dataset_classes():
    return {name: getattr(datasets, name) for name in datasets.__all__
            if isinstance(getattr(datasets, name), type)
            and issubclass(getattr(datasets, name), datasets.AtomisticInMemoryDataset)
            and getattr(datasets, name) is not datasets.AtomisticInMemoryDataset}


def expected_urls():
    """Every URL each dataset class downloads from, read from the classes themselves."""
    return {
        'qm9': [datasets.QM9.raw_url, datasets.QM9.raw_url2],
        'rmd17': [datasets.RMD17.url, datasets.RMD17.mirror_url],
        'md17': [f'{datasets.MD17.url}/{file}' for file in MD17_FILES.values()],
        'md17_ethanol_sample': [],  # bundled with the package
        'ani1x': [datasets.ANI1x.url],
        'comp6': [f'{datasets.COMP6.url}/{folder}/{file}'
                  for files in COMP6_SUBSETS.values() for folder, file in files],
        'spice': [url for url, _ in SPICE_VERSIONS.values()],
        'own-data': [],  # the user's files
        'organic-dft': [],  # computed here, shipped with the package
    }


def run_cli(argv, capsys):
    parser = argparse.ArgumentParser(prog='pyg-tensorpot datasets')
    catalogue.add_arguments(parser)
    status = catalogue.run(parser.parse_args(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_catalog_covers_every_public_dataset_class():
    cards = catalog()
    classes = public_dataset_classes()
    assert set(classes) == {'QM9', 'ANI1x', 'COMP6', 'SPICE', 'MD17', 'RMD17',
                            'MD17EthanolSample', 'ExtXYZDataset', 'ASEDatabaseDataset',
                            'OrganicDFT'}
    for name, cls in classes.items():
        assert f'pyg_tensorpot.datasets.{name}' in card_for(cls).classes
    # and every class a card names is exported
    named = {path for c in cards.values() for path in c.classes}
    assert named == {f'pyg_tensorpot.datasets.{name}' for name in classes}
    assert card_for(datasets.RMD17).name == 'rmd17'
    assert card_for(datasets.ASEDatabaseDataset).name == 'own-data'


def test_urls_are_the_class_attributes():
    cards = catalog()
    expected = expected_urls()
    assert set(expected) == set(cards)
    for name, urls in expected.items():
        assert list(cards[name].urls) == urls, name


def test_variants_are_the_class_options():
    cards = catalog()
    rmd17 = cards['rmd17']
    assert rmd17.variant_argument == 'molecule'
    assert [v['name'] for v in rmd17.variants] == list(datasets.RMD17.molecules)
    assert [v['file'] for v in rmd17.variants] == [
        f'rmd17/npz_data/rmd17_{stem}.npz' for stem in RMD17_MOLECULES.values()]
    assert sum(v['structures'] for v in rmd17.variants) == rmd17.structures

    md17 = cards['md17']
    assert [(v['name'], v['file']) for v in md17.variants] == list(MD17_FILES.items())
    assert sum(v['structures'] or 0 for v in md17.variants) == md17.structures

    comp6 = cards['comp6']
    assert [v['name'] for v in comp6.variants] == list(datasets.COMP6.subsets)
    assert [list(v['files']) for v in comp6.variants] == [
        [f'{folder}/{file}' for folder, file in files] for files in COMP6_SUBSETS.values()]

    ani1x = cards['ani1x']
    assert [v['name'] for v in ani1x.variants] == list(datasets.ANI1x.levels)
    assert [v['forces'] for v in ani1x.variants] == [
        forces is not None for _, forces in ANI1X_LEVELS.values()]

    spice = cards['spice']
    assert [(v['name'], v['url'], v['md5']) for v in spice.variants] == [
        (version, url, md5) for version, (url, md5) in SPICE_VERSIONS.items()]
    default = inspect.signature(datasets.SPICE).parameters['version'].default
    assert spice.structures == next(v['structures'] for v in spice.variants
                                    if v['name'] == default)
    assert set(spice.elements) == {e for v in spice.variants for e in v['elements']}


def test_checksums_named_on_the_cards_are_the_class_ones():
    cards = catalog()
    assert datasets.ANI1x.checksums['ani1x-release.h5'][1] in cards['ani1x'].source
    sha = datasets.MD17EthanolSample.checksums[datasets.MD17EthanolSample.file_name][1]
    assert sha[:8] in cards['md17_ethanol_sample'].source


def test_standard_splits_are_the_protocols():
    protocols = {'qm9': 'qm9', 'rmd17': 'rmd17', 'md17': 'rmd17', 'md17_ethanol_sample': 'rmd17',
                 'ani1x': 'ani1x', 'spice': 'spice', 'comp6': 'comp6'}
    cards = catalog()
    for name, protocol in protocols.items():
        split = next(s for s in cards[name].splits if s['name'] == 'standard')
        train, val, test, seed = PROTOCOLS[protocol]
        assert (split['train'], split['val'], split['seed']) == (train, val, seed), name
        assert split['call'] == 'standard_split(ds)'
        if test is None and split['test'] != 'rest':
            # a count given for "the rest" must be what is left of the whole release
            assert cards[name].structures_exact
            assert split['test'] == cards[name].structures - train - val, name
    official = next(s for s in cards['rmd17'].splits if s['name'] == 'official')
    params = inspect.signature(datasets.rmd17_split).parameters
    assert official['val'] == params['num_val'].default
    assert official['seed'] == params['seed'].default
    assert official['train'] + official['val'] == 1000


def test_elements_are_valid_symbols_in_periodic_order():
    for c in catalog().values():
        numbers = [atomic_number(symbol) for symbol in c.elements]
        assert numbers == sorted(set(numbers)), c.name


def test_bundled_sample_matches_its_card():
    sample_card = card('md17_ethanol_sample')
    dataset = datasets.MD17EthanolSample(log=False)
    assert len(dataset) == sample_card.structures
    symbols = {symbol(z) for z in dataset.storage().z.unique().tolist()}
    assert symbols == set(sample_card.elements)
    split = datasets.standard_split(dataset)
    standard = sample_card.splits[0]
    assert [len(split[k]) for k in ('idx_train', 'idx_val', 'idx_test')] == [
        standard['train'], standard['val'], standard['test']]


def test_prose_front_matter_is_the_shipped_card():
    assert check_prose_cards(PROSE_DIR) == {}
    with open(osp.join(PROSE_DIR, 'README.md'), encoding='utf-8') as f:
        index = f.read()
    for c in catalog().values():
        with open(osp.join(PROSE_DIR, osp.basename(c.prose_card)), encoding='utf-8') as f:
            matter, body = split_front_matter(f.read())
        assert DatasetCard.from_dict(matter) == c
        title = body.splitlines()[0]  # '# QM9 — `pyg_tensorpot.datasets.QM9`'
        assert title.startswith('# ') and all(path.rsplit('.', 1)[1] in title
                                              for path in c.classes), title
        assert f'({osp.basename(c.prose_card)})' in index  # linked from the index


def test_front_matter_reads_as_yaml():
    yaml = pytest.importorskip('yaml')  # how front-matter tools (and the train extra) read it
    for c in catalog().values():
        with open(osp.join(PROSE_DIR, osp.basename(c.prose_card)), encoding='utf-8') as f:
            text = f.read()
        assert yaml.safe_load(text.split('\n---\n', 1)[0][len('---\n'):]) == c.to_dict()


@pytest.fixture
def prose_copy(tmp_path):
    folder = tmp_path / 'datasets'
    shutil.copytree(PROSE_DIR, folder)
    return str(folder)


def test_disagreeing_prose_cards_are_reported_and_synced(prose_copy):
    def edit(file, old, new):
        path = osp.join(prose_copy, file)
        with open(path, encoding='utf-8') as f:
            text = f.read()
        assert old in text
        with open(path, 'w', encoding='utf-8') as f:
            f.write(text.replace(old, new, 1))

    with open(osp.join(PROSE_DIR, 'qm9.md'), encoding='utf-8') as f:
        qm9_body = split_front_matter(f.read())[1]
    edit('qm9.md', '"licence": "CC-BY-4.0"', '"licence": "CC0-1.0"')
    edit('qm9.md', '"structures": 130831', '"structures": 133885')
    with open(osp.join(prose_copy, 'rmd17.md'), encoding='utf-8') as f:
        rmd17_body = split_front_matter(f.read())[1]
    with open(osp.join(prose_copy, 'rmd17.md'), 'w', encoding='utf-8') as f:
        f.write(rmd17_body)
    os.remove(osp.join(prose_copy, 'spice.md'))
    with open(osp.join(prose_copy, 'extra.md'), 'w', encoding='utf-8') as f:
        f.write('---\n{"name": "extra"}\n---\n\n# Extra\n')
    with open(osp.join(prose_copy, 'comp6.md'), encoding='utf-8') as f:
        comp6 = f.read()
    with open(osp.join(prose_copy, 'comp6.md'), 'w', encoding='utf-8') as f:
        f.write(comp6.replace('"name": "comp6",', '"name": "comp6"', 1))  # broken JSON

    problems = check_prose_cards(prose_copy)
    assert set(problems) == {'qm9.md', 'rmd17.md', 'spice.md', 'extra.md', 'comp6.md'}
    assert "['licence', 'structures']" in problems['qm9.md']
    assert problems['rmd17.md'] == 'has no front matter'
    assert 'spice.md' in problems['spice.md']  # the missing file is named
    assert problems['extra.md'] == 'has front matter but no shipped card'
    assert 'not valid JSON' in problems['comp6.md']
    # the CLI check fails on the same folder
    parser = argparse.ArgumentParser()
    catalogue.add_arguments(parser)
    assert catalogue.run(parser.parse_args(['cards', prose_copy])) == 2

    # a broken front matter is not overwritten: the prose could be lost
    with pytest.raises(CardError, match='comp6.md'):
        sync_prose_cards(prose_copy)
    with open(osp.join(prose_copy, 'comp6.md'), 'w', encoding='utf-8') as f:
        f.write(comp6)
    assert sorted(sync_prose_cards(prose_copy)) == ['qm9.md', 'rmd17.md', 'spice.md']
    assert set(check_prose_cards(prose_copy)) == {'extra.md'}
    for file, body in (('qm9.md', qm9_body), ('rmd17.md', rmd17_body)):
        with open(osp.join(prose_copy, file), encoding='utf-8') as f:
            assert split_front_matter(f.read())[1] == body  # the prose is kept
    assert sync_prose_cards(prose_copy) == []


def test_card_lookup_by_name_and_class():
    assert card('qm9') == card('QM9') == catalog()['qm9']
    assert card('pyg_tensorpot.datasets.RMD17').name == 'rmd17'
    assert card('ExtXYZDataset').name == card('own_data').name == 'own-data'
    assert card('MD17EthanolSample').name == 'md17_ethanol_sample'
    with pytest.raises(KeyError) as info:
        card('qm8')
    assert isinstance(info.value, UnknownDatasetError)
    message = str(info.value)
    assert "unknown dataset 'qm8'" in message and "did you mean 'qm9'" in message
    assert all(name in message for name in catalog())
    with pytest.raises(UnknownDatasetError, match='no catalogue card'):
        card_for(argparse.ArgumentParser)


def test_cards_are_immutable_and_round_trip():
    c = card('spice')
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.licence = 'MIT'
    with pytest.raises(TypeError):
        c.units_served['pos'] = 'nm'
    data = c.to_dict()
    data['variants'][0]['name'] = 'changed'
    assert c.variants[0]['name'] == '1.1.1'
    assert DatasetCard.from_dict(c.to_dict()) == c
    assert json.loads(json.dumps(c.to_dict())) == c.to_dict()
    # what the Hub push reads
    assert (c.licence, c.redistributable) == ('CC0-1.0', True)
    assert 'Eastman' in c.citation
    assert card('md17').redistributable is False  # no licence stated
    assert card('own-data').redistributable is False  # the user must state one


def test_malformed_cards_are_refused_with_the_file_named(tmp_path):
    folder = tmp_path / 'cards'
    folder.mkdir()
    good = card('qm9').to_dict()

    def write(data, name='qm9'):
        for old in folder.iterdir():
            old.unlink()
        (folder / f'{name}.json').write_text(
            data if isinstance(data, str) else json.dumps(data), encoding='utf-8')

    write(good)
    assert catalog(str(folder))['qm9'] == card('qm9')
    cases = [
        ({k: v for k, v in good.items() if k != 'licence'}, r"missing fields \['licence'\]"),
        (dict(good, structures=-3), "field 'structures'"),
        (dict(good, redistributable='yes'), "field 'redistributable'"),
        (dict(good, splits=[dict(good['splits'][0], train='most')]), "split 0 'train'"),
        (dict(good, colour='blue'), r"unknown fields \['colour'\]"),
        ('{"name": "qm9",', 'cannot read the dataset card'),
        ([1, 2], 'a dataset card is a JSON object'),
    ]
    for data, message in cases:
        write(data)
        with pytest.raises(CardError, match=message) as info:
            catalog(str(folder))
        assert 'qm9.json' in str(info.value)
    write(good, name='qm10')
    with pytest.raises(CardError, match="named 'qm9' but its file 'qm10'"):
        catalog(str(folder))
    with pytest.raises(CardError, match='package installation is incomplete'):
        catalog(str(tmp_path / 'absent'))


def test_cli_list(capsys):
    status, out, _ = run_cli([], capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ['name', 'structures', 'elements', 'level', 'of', 'theory',
                                'licence']
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == set(catalog())
    assert '130,831' in rows['qm9'] and 'B3LYP/6-31G(2df,p)' in rows['qm9']
    assert 'H C N O F' in rows['qm9'] and 'CC-BY-4.0' in rows['qm9']
    assert '~4,960,000' in rows['ani1x'] and 'not stated' in rows['comp6']
    assert run_cli(['list'], capsys)[1] == out
    status, out, _ = run_cli(['list', '--json'], capsys)
    assert status == 0
    assert json.loads(out) == {name: c.to_dict() for name, c in catalog().items()}


def test_cli_info(capsys):
    status, out, _ = run_cli(['info', 'RMD17'], capsys)
    assert status == 0
    assert out.startswith('Revised MD17 (rMD17) (rmd17)\n')
    for text in ('pyg_tensorpot.datasets.RMD17', 'CC0-1.0', 'PBE/def2-SVP',
                 'rmd17_split(ds, index=1..5)', 'salicylic acid', datasets.RMD17.mirror_url,
                 'Christensen', 'CC0 puts no condition', 'redistributable:        yes',
                 'structures:             999,988'):
        assert text in out, text
    status, out, _ = run_cli(['info', 'md17', '--json'], capsys)
    assert status == 0 and json.loads(out) == card('md17').to_dict()
    status, out, err = run_cli(['info', 'nonesuch'], capsys)
    assert status == 2 and out == ''
    assert "error: unknown dataset 'nonesuch'" in err and 'qm9' in err


def test_cli_cards_check(capsys):
    status, out, _ = run_cli(['cards', PROSE_DIR], capsys)
    assert status == 0 and 'agree' in out
    status, _, err = run_cli(['cards', osp.join(PROSE_DIR, 'no-such-folder')], capsys)
    assert status == 2 and 'not a folder' in err


def test_cli_push_hook(monkeypatch, capsys):
    # the Hub module (H6's remote.py) adds `datasets push`; a stand-in records the dispatch
    calls = []
    remote = types.ModuleType('pyg_tensorpot.datasets.remote')

    def add_push_arguments(subparsers):
        push = subparsers.add_parser('push')
        push.add_argument('name')
        push.add_argument('repo_id')

    def run_push(args):
        calls.append((args.name, args.repo_id))
        return 7
    remote.add_push_arguments, remote.run_push = add_push_arguments, run_push
    monkeypatch.setitem(sys.modules, 'pyg_tensorpot.datasets.remote', remote)
    status, _, _ = run_cli(['push', 'qm9', 'me/qm9'], capsys)
    assert (status, calls) == (7, [('qm9', 'me/qm9')])
