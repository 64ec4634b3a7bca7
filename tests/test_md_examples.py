"""The molecular-dynamics and relaxation examples run end to end (tiny settings) and write
what they promise."""
import json
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip('ase')
pytest.importorskip('matplotlib')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One interpreter for the three scripts: the import of torch and the package dominates the
# cost of these short runs.
SCRIPT = r'''
import json, runpy, sys
out = sys.argv[1]
results = {}
for name, argv in [
        ('relax_molecule', ['--steps', '15', '--fmax', '0.05']),
        ('md_water_box', ['--molecules', '8', '--nvt-steps', '6', '--nve-steps', '6',
                          '--interval', '3']),
        ('relax_cell', ['--molecules', '8', '--steps', '4'])]:
    main = runpy.run_path(f'examples/{name}.py')['main']
    results[name] = main(argv + ['--threads', '1', '--output', f'{out}/{name}'])
print('RESULTS' + json.dumps(results))
'''


def test_md_and_relaxation_examples(tmp_path):
    result = subprocess.run([sys.executable, '-c', SCRIPT, str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    stdout = result.stdout
    results = json.loads(stdout.split('RESULTS', 1)[1])

    from ase.io import read

    relax = results['relax_molecule']
    assert relax['energy_after'] < relax['energy_before']
    assert relax['fmax_after'] < relax['fmax_before']
    assert 'before: energy' in stdout and 'after:  energy' in stdout
    frames = read(tmp_path / 'relax_molecule' / 'relax.traj', ':')
    assert len(frames) == relax['steps'] + 1
    final = read(tmp_path / 'relax_molecule' / 'relaxed.xyz')
    assert len(final) == 9

    md = results['md_water_box']
    assert 'total-energy drift' in stdout and 'meV/atom/ps' in stdout
    frames = read(tmp_path / 'md_water_box' / 'md.traj', ':')
    assert len(frames) >= 4 and len(frames[0]) == 24 and frames[0].pbc.all()
    with open(tmp_path / 'md_water_box' / 'energies.png', 'rb') as handle:
        assert handle.read(8) == b'\x89PNG\r\n\x1a\n'
    with open(tmp_path / 'md_water_box' / 'energies.csv') as handle:
        lines = handle.read().splitlines()
    assert lines[0].startswith('phase,time_fs,potential_eV') and len(lines) == 1 + 7 + 7
    assert math.isfinite(md['drift_mev_per_atom_per_ps'])
    assert md['temperature_K'] > 0

    cell = results['relax_cell']
    assert cell['steps'] == 4 or cell['converged']
    assert cell['after']['energy'] < cell['before']['energy']
    assert 'pressure' in stdout and 'volume' in stdout
    assert os.path.exists(tmp_path / 'relax_cell' / 'relaxed_cell.extxyz')
    assert not [p for p in tmp_path.rglob('*.tmp*')], 'temporary files left behind'
