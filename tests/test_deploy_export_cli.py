"""torch.export with a dynamic number of atoms, exported files and their checks, and the
``pyg-tensorpot export`` command (called through add_arguments / run)."""
import argparse
import json
import zipfile

import pytest
import torch

from pyg_tensorpot.deploy.export import (
    add_arguments,
    export_model,
    export_program,
    exported_properties,
    load_exported,
    load_scripted,
    run,
)
from pyg_tensorpot.models import HIPNN, compute_properties
from pyg_tensorpot.structures import water_box

vesin_torch = pytest.importorskip('vesin_torch')


def _model() -> HIPNN:
    torch.manual_seed(0)
    model = HIPNN(hidden_channels=8, num_interactions=1, num_atom_layers=1,
                  num_sensitivities=4, soft_min=0.8, soft_max=3.0, cutoff=3.5,
                  elements=(1, 8), max_order=2)
    model.set_atomref({1: -13.6, 8: -2041.5})
    return model.eval()


def _inputs(num_molecules: int, cutoff: float, dtype: torch.dtype):
    z, pos, cell = water_box(num_molecules, dtype=dtype)
    i, j, shifts = vesin_torch.NeighborList(cutoff=cutoff, full_list=True).compute(
        pos, cell, True, 'ijS')
    return z, pos, torch.stack([j, i]), shifts.long(), cell


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    model = _model().double()
    path = str(tmp_path_factory.mktemp('exported') / 'model.pt2')
    export_model(model, 'exported', path, torch.float64)
    return model, path


def _check_program(program, model, molecule_counts) -> None:
    # One program, water boxes of other sizes than the traced one: energy, forces and stress
    # equal the eager model's (float64, the same operations up to summation order).
    for n in molecule_counts:
        z, pos, edge_index, shifts, cell = _inputs(n, model.cutoff, torch.float64)
        out = exported_properties(program, z, pos, edge_index, shifts, cell)
        expected = compute_properties(model, z, pos, cell=cell,
                                      properties=('energy', 'forces', 'stress'))
        for key in ('energy', 'forces', 'stress'):
            torch.testing.assert_close(out[key], expected[key].detach(), rtol=1e-10,
                                       atol=1e-12)


def test_one_exported_program_serves_several_atom_counts(exported):
    model, path = exported
    program, info = load_exported(path)
    assert info['format'] == 'exported' and info['elements'] == [1, 8]
    _check_program(program, model, (4, 12))  # 12 and 36 atoms, neither the traced size (24)


@pytest.mark.parametrize('kind', ['tensornet-o3', 'tensornet-so3', 'hipnn-ts-l1', 'composed'])
def test_every_model_kind_exports(kind):
    # One exported program per kind (HIP-NN-TS l=2 is the fixture above).
    from model_factories import build_model  # tests/ is on sys.path
    model = build_model(kind, torch.float64)
    _check_program(export_program(model, torch.float64), model, (4, 9))


def test_export_float32_energy():
    model = _model()
    program = export_program(model, torch.float32)
    z, pos, edge_index, shifts, cell = _inputs(5, model.cutoff, torch.float32)
    energy = program.module()(z, pos, edge_index, shifts, cell)
    # float32 network, float64 sum: the 1e-6 relative bound.
    torch.testing.assert_close(energy, model(z, pos, cell=cell).detach(), rtol=1e-6, atol=0.0)


def _rewrite(source: str, target: str, name_part: str, edit) -> None:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, 'w') as new:
        for item in old.infolist():
            content = old.read(item.filename)
            if name_part in item.filename:
                content = edit(content)
            new.writestr(item, content)


def test_damaged_exported_files_raise_clearly(exported, tmp_path):
    _, path = exported
    data = open(path, 'rb').read()
    truncated = tmp_path / 'truncated.pt2'
    truncated.write_bytes(data[:len(data) // 3])
    with pytest.raises(ValueError, match='truncated'):
        load_exported(str(truncated))

    future = str(tmp_path / 'future.pt2')
    _rewrite(path, future, 'pyg_tensorpot.json',
             lambda b: b.replace(b'"format_version": 1', b'"format_version": 2'))
    with pytest.raises(ValueError, match='format version 2'):
        load_exported(future)

    def mark_pickled(content: bytes) -> bytes:
        config = json.loads(content)
        for payload in config['config'].values():
            payload['use_pickle'] = True
        return json.dumps(config).encode()

    pickled = str(tmp_path / 'pickled.pt2')
    _rewrite(path, pickled, 'weights_config.json', mark_pickled)
    with pytest.raises(ValueError, match='Python pickle'):
        load_exported(pickled)

    # An exported program is not a TorchScript file, and the other way round.
    with pytest.raises(ValueError, match='not a TorchScript archive'):
        load_scripted(path)


def test_cli_export_torchscript(tmp_path, capsys):
    model = _model()
    folder = str(tmp_path / 'folder')
    model.save_pretrained(folder)
    parser = add_arguments(argparse.ArgumentParser())
    out = str(tmp_path / 'model.pt')
    assert run(parser.parse_args([folder, '--format', 'torchscript', '-o', out,
                                  '--dtype', 'float64'])) == 0
    assert 'wrote torchscript' in capsys.readouterr().out
    module, info = load_scripted(out)
    assert info['dtype'] == 'float64' and info['cutoff'] == 3.5
    z, pos, cell = water_box(3)
    torch.testing.assert_close(module(z, pos, cell),
                               model.double()(z, pos, cell=cell).detach(), rtol=1e-12, atol=0.0)

    assert run(parser.parse_args([str(tmp_path / 'nothing-here'), '--format', 'torchscript',
                                  '-o', out])) == 1
    assert 'pyg-tensorpot export' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args([folder, '--format', 'onnx', '-o', out])
