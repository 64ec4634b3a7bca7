"""TensorNet energy+forces on large water boxes: time, peak memory and their growth with size.

    python benchmarks/tensornet_scaling.py [--sizes 1000 3000 10000 30000 100000]
                                           [--warp-max-atoms 10000]

Configuration as in tensornet_speed.py (the ANI-1x TensorNet, H=128, L=2, 32 expnorm RBF,
cutoff 4.5 A, O(3), float32, torchmd-net's weights loaded into pyg-tensorpot), on open-boundary
water boxes at liquid density (tensornet_speed.water_box). Every size and implementation runs
in its own process: a warm-up call on 60 atoms, then the measured calls on the box, the kernel's
high-water mark reset just before the first (peak memory is the rise of the peak resident set
during that call). The time is the median of the calls (three up to 10,000 atoms, one above);
the time of pyg-tensorpot's neighbour search (model.graph) is measured apart, so that one can
see whether it dominates. torchmd-net (Warp path) runs up to --warp-max-atoms. A size whose
peak memory, extrapolated from the previous size's memory per atom, would not fit in the
machine's available memory is skipped (and recorded as such).

The exponents are least-squares slopes of log(time) and log(peak memory) against log(atoms).
The record goes to benchmarks/results/tensornet_scaling.json and the log-log plot to
benchmarks/results/tensornet_scaling.png.
"""
import os

# As in tensornet_speed.py: sleeping OpenMP threads on a shared machine.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from common import cpu_model  # noqa: E402  (benchmarks/ is on sys.path)
from pyg_tensorpot.utils.files import atomic_write_text  # noqa: E402
from tensornet_speed import IMPLEMENTATIONS, single_system, warnings_off  # noqa: E402

OURS, WARP = IMPLEMENTATIONS[0], IMPLEMENTATIONS[1]


def worker(name, num_atoms):
    """In a fresh process: peak memory and times of energy+forces on one water box."""
    warnings_off()
    row, model, (z, pos, batch) = single_system(name, num_atoms,
                                                repeats=2 if num_atoms <= 10000 else 0)
    if name == OURS:
        with torch.no_grad():
            start = time.perf_counter()
            graph = model.graph(z, pos, batch)
            row['neighbor_search_s'] = time.perf_counter() - start
            row['edges'] = graph.edge_index.size(1)
    print(json.dumps(row))


def run_worker(name, num_atoms, timeout):
    try:
        out = subprocess.run([sys.executable, __file__, '--worker', name, str(num_atoms)],
                             capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {'error': f'did not finish within {timeout} s'}
    if out.returncode < 0:
        return {'error': f'killed by signal {-out.returncode} (out of memory?)'}
    if out.returncode != 0:
        lines = [line for line in out.stderr.splitlines() if 'Error' in line]
        return {'error': lines[-1] if lines else f'exit code {out.returncode}'}
    return json.loads(out.stdout.strip().splitlines()[-1])


def available_mib():
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError('MemAvailable not in /proc/meminfo')


def predicted_mib(rows, name, size):
    """Peak memory of `size` atoms by the memory per atom of the largest size measured."""
    done = [r for r in rows if r['implementation'] == name and 'peak_mib' in r]
    if not done:
        return None
    largest = max(done, key=lambda r: r['atoms'])
    return largest['peak_mib'] / largest['atoms'] * size * 1.1


def exponent(rows, key):
    """Least-squares slope of log(rows[key]) against log(atoms), over the rows that ran."""
    good = [r for r in rows if key in r]
    if len(good) < 2:
        return None
    atoms = np.log([r['atoms'] for r in good])
    values = np.log([r[key] for r in good])
    return float(np.polyfit(atoms, values, 1)[0])


def summarize(record):
    for name in (OURS, WARP):
        rows = [r for r in record['rows'] if r['implementation'] == name and 'error' not in r
                and 'skipped' not in r]
        record.setdefault('exponents', {})[name] = {
            'time': exponent(rows, 'seconds'), 'peak_memory': exponent(rows, 'peak_mib')}


def render(record):
    lines = [f'# TensorNet scaling, energy+forces on water boxes ({record["date"]})',
             f'machine: {record["machine"]}, {record["logical_cpus"]} logical CPUs, torch '
             f'{record["torch"]}, {record["threads"]} threads, float32; load average '
             f'{record["load_average_before"][0]:.1f} before, '
             f'{record["load_average_after"][0]:.1f} after; Numba kernels: '
             f'{"yes" if record["numba_kernels"] else "no"}', '',
             '| atoms | implementation | time (s) | neighbour search (s) | peak memory (MiB) '
             '| MB per atom |', '|---|---|---|---|---|---|']
    for row in record['rows']:
        name = row['implementation']
        if 'error' in row or 'skipped' in row:
            reason = row.get('skipped') or 'failed: ' + row['error'][:60]
            lines.append(f'| {row["requested_atoms"]:,} | {name} | {reason} | | | |')
            continue
        search = f'{row["neighbor_search_s"]:.2f}' if 'neighbor_search_s' in row else ''
        lines.append(f'| {row["atoms"]:,} | {name} | {row["seconds"]:.2f} | {search} | '
                     f'{row["peak_mib"]:,.0f} | '
                     f'{row["peak_mib"] * 2**20 / 1e6 / row["atoms"]:.3f} |')
    lines += ['', '| implementation | time exponent | memory exponent |', '|---|---|---|']
    for name, fit in record['exponents'].items():
        if fit['time'] is None:
            continue
        lines.append(f'| {name} | {fit["time"]:.2f} | {fit["peak_memory"]:.2f} |')
    return '\n'.join(lines)


def plot(record, path):
    from pyg_tensorpot.training.plots import _pyplot, save_figure
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, marker in ((OURS, 'o'), (WARP, 's')):
        rows = [r for r in record['rows'] if r['implementation'] == name and 'seconds' in r]
        if not rows:
            continue
        atoms = [r['atoms'] for r in rows]
        fit = record['exponents'][name]
        axes[0].loglog(atoms, [r['seconds'] for r in rows], marker=marker,
                       label=f'{name} (slope {fit["time"]:.2f})' if fit['time'] else name)
        axes[1].loglog(atoms, [r['peak_mib'] / 1024 for r in rows], marker=marker,
                       label=f'{name} (slope {fit["peak_memory"]:.2f})'
                       if fit['peak_memory'] else name)
    axes[0].set_ylabel('energy+forces time (s)')
    axes[1].set_ylabel('peak memory rise (GiB)')
    for ax in axes:
        ax.set_xlabel('atoms (water box, 4.5 A cutoff)')
        ax.grid(True, which='both', alpha=0.3)
        ax.legend()
    fig.suptitle(f'TensorNet (H=128, L=2) on {record["machine"]}, {record["threads"]} threads, '
                 f'{record["date"]}', fontsize=9)
    save_figure(fig, path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', type=int, nargs='+',
                        default=[1000, 3000, 10000, 30000, 100000])
    parser.add_argument('--warp-max-atoms', type=int, default=10000)
    parser.add_argument('--timeout', type=int, default=3600,
                        help='seconds allowed to one size in one implementation')
    parser.add_argument('--json',
                        default=os.path.join(HERE, 'results', 'tensornet_scaling.json'))
    parser.add_argument('--png', default=os.path.join(HERE, 'results', 'tensornet_scaling.png'))
    parser.add_argument('--render', action='store_true',
                        help='print the tables of the existing --json record and exit')
    parser.add_argument('--worker', nargs=2, metavar=('IMPL', 'ATOMS'), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]))
        return
    if args.render:
        with open(args.json) as f:
            print(render(json.load(f)))
        return
    record = {'benchmark': 'tensornet_scaling',
              'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
              'machine': cpu_model(), 'logical_cpus': os.cpu_count(),
              'threads': torch.get_num_threads(), 'torch': torch.__version__,
              'numba_kernels': importlib.util.find_spec('numba') is not None,
              'load_average_before': list(os.getloadavg()), 'rows': []}
    for size in args.sizes:
        for name in (OURS, WARP):
            if name == WARP and size > args.warp_max_atoms:
                continue
            need, available = predicted_mib(record['rows'], name, size), available_mib()
            if need is not None and need > 0.9 * available:
                # Running out of memory on a shared machine would let the kernel kill
                # whichever process it picks; say what was skipped instead.
                row = {'skipped': f'needs about {need / 1024:.1f} GiB by the memory per atom of '
                       f'the previous size, {available / 1024:.1f} GiB available'}
            else:
                row = run_worker(name, size, args.timeout)
            record['rows'].append(dict(row, requested_atoms=size, implementation=name))
            print(json.dumps(record['rows'][-1]), flush=True)
    record['load_average_after'] = list(os.getloadavg())
    summarize(record)
    atomic_write_text(json.dumps(record, indent=2) + '\n', args.json)
    plot(record, args.png)
    print(render(record))
    print(f'\nrecord written to {args.json}, plot to {args.png}')


if __name__ == '__main__':
    main()
