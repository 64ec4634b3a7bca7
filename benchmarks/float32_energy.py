"""Float32 energies against float64 at 1k to 100k atoms (issue 17).

The pretrained potentials (``tensornet-ani1x``, ``hipnn-ts-ani1x``) run in float32, and the
same weights converted to float64 (``copy.deepcopy(model).double()``) give the reference.
Systems: open-boundary water clusters, :func:`pyg_tensorpot.structures.water_box` with its cell
dropped (liquid density, seed 0), of about 1k, 3k, 10k, 30k and 100k atoms. Open clusters
rather than periodic boxes because the error studied is the sum over atoms, which does not
depend on the boundary, and the 5,001-atom measurement of the issue was an open cluster.

For every size and model, in float32, the per-atom terms of one network pass
(``model.graph`` then ``model.atomic_terms``, the two calls ``forward`` makes) are reduced

* as the package does now, ``model.reduce_energy`` (terms and reference energies summed in
  float64): the energy ``forward`` returns;
* as it did before the fix: the terms cast to float32 plus the float32 reference energies,
  summed by the same scatter in float32, plus the float32 mean. HIP-NN's species term (the
  large one) is already inside the terms, so this covers both models alike.

``|E32 - E64|`` is reported for both. Energies only, in inference mode (no gradient), so that
100k atoms fit in memory.

The cost of the float64 accumulation is measured on the float32 model at 5,001 atoms: the median
time of an energy+forces call (``compute_properties``) against the median time of the reduction
alone, forward and backward, in float64 (``reduce_energy``) and the same reduction in float32.

Every (model, size, dtype) runs in its own child process, so that its peak resident set size
(``ru_maxrss``) is its own; a child gets an allocation ceiling (``RLIMIT_DATA``,
``--memory-limit-gb``) and a size whose memory or time, extrapolated linearly from the previous
size, would exceed ``--memory-limit-gb`` or the remaining ``--time-budget`` is skipped, and the
table says so.

    python benchmarks/float32_energy.py [--sizes 333 1000 3334 10000 33334] [--repeats 3]

Writes ``benchmarks/results/float32_energy.json`` and prints a markdown table.
"""
import argparse
import copy
import datetime
import json
import os
import os.path as osp
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import torch

from common import cpu_model  # noqa: E402  (benchmarks/ is on sys.path)
from torch_geometric.utils import scatter

HERE = osp.dirname(osp.abspath(__file__))
RESULTS = osp.join(HERE, 'results', 'float32_energy.json')
MODELS = ('tensornet-ani1x', 'hipnn-ts-ani1x')
#: Water molecules per cluster: 999, 3,000, 10,002, 30,000 and 100,002 atoms.
SIZES = (333, 1000, 3334, 10000, 33334)
TIMING_MOLECULES = 1667


def cluster(num_molecules: int, dtype: torch.dtype):
    """The open-boundary water cluster: ``(z, pos)`` of ``water_box`` without its cell."""
    from pyg_tensorpot.structures import water_box
    z, pos, _ = water_box(num_molecules, seed=0, dtype=torch.float64)
    return z, pos.to(dtype)


def old_float32_energy(model: torch.nn.Module, terms: torch.Tensor, z: torch.Tensor,
                       batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    r"""The energy as the float32 accumulation before the fix computed it: per-atom terms and
    reference energies added and summed in float32.

    Args:
        model (torch.nn.Module): The potential (its :obj:`atomref` and :obj:`mean` are used).
        terms (torch.Tensor): Per-atom terms of :meth:`atomic_terms` :obj:`[num_atoms]`.
        z (torch.Tensor): Atomic numbers :obj:`[num_atoms]`.
        batch (torch.Tensor): Structure of every atom :obj:`[num_atoms]`.
        num_graphs (int): Number of structures.
    """
    atomic = terms.to(torch.float32) + model.atomref.to(torch.float32)[z]
    return (scatter(atomic, batch, 0, dim_size=num_graphs, reduce='sum') +
            model.mean.to(torch.float32))


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child_energy(name: str, num_molecules: int, dtype: torch.dtype) -> Dict[str, Any]:
    """One energy pass of one model at one size; returns energies, time and peak memory."""
    from pyg_tensorpot.hub import from_pretrained
    model = from_pretrained(name)
    if dtype == torch.float64:
        model = copy.deepcopy(model).double()
    z, pos = cluster(num_molecules, dtype)
    start = time.perf_counter()
    with torch.inference_mode():
        graph = model.graph(z, pos)
        terms = model.atomic_terms(z, pos, graph)
        energy = model.reduce_energy(terms, z, graph.batch, graph.num_graphs)
        record = {'energy': float(energy[0]), 'num_atoms': int(z.numel()),
                  'num_edges': int(graph.edge_index.size(1)),
                  'energy_dtype': str(energy.dtype).replace('torch.', '')}
        if dtype == torch.float32:
            record['old_energy'] = float(
                old_float32_energy(model, terms, z, graph.batch, graph.num_graphs)[0])
    record['seconds'] = time.perf_counter() - start
    record['peak_rss_gib'] = _peak_rss_gib()
    return record


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def child_timing(name: str, repeats: int) -> Dict[str, Any]:
    """Energy+forces of the float32 model at 5,001 atoms against its reduction alone."""
    from pyg_tensorpot.hub import from_pretrained
    from pyg_tensorpot.models.properties import compute_properties
    model = from_pretrained(name)
    z, pos = cluster(64, torch.float32)
    compute_properties(model, z, pos, properties=('energy', 'forces'))  # warm-up
    z, pos = cluster(TIMING_MOLECULES, torch.float32)
    full = _median_seconds(
        lambda: compute_properties(model, z, pos, properties=('energy', 'forces')), repeats)
    with torch.no_grad():
        graph = model.graph(z, pos)
        terms = model.atomic_terms(z, pos, graph).to(model.dtype)
    batch, num_graphs = graph.batch, graph.num_graphs

    def reduce(fn) -> None:
        leaf = terms.detach().requires_grad_()
        energy = fn(leaf)
        torch.autograd.grad(energy.sum(), leaf)

    reduce_repeats = 51
    t64 = _median_seconds(
        lambda: reduce(lambda t: model.reduce_energy(t, z, batch, num_graphs)), reduce_repeats)
    t32 = _median_seconds(
        lambda: reduce(lambda t: old_float32_energy(model, t, z, batch, num_graphs)),
        reduce_repeats)
    return {'num_atoms': int(z.numel()), 'energy_forces_s': full, 'repeats': repeats,
            'reduce_float64_s': t64, 'reduce_float32_s': t32,
            'reduce_repeats': reduce_repeats, 'peak_rss_gib': _peak_rss_gib()}


def run_child(args: List[str], memory_limit_gib: float, timeout: float) -> Dict[str, Any]:
    """Runs this script as a child with an allocation ceiling; its JSON or why it failed."""
    def limit() -> None:
        ceiling = int(memory_limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (ceiling, ceiling))

    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get('OMP_WAIT_POLICY', 'PASSIVE'))
    try:
        out = subprocess.run([sys.executable, osp.abspath(__file__), '--child'] + args,
                             capture_output=True, text=True, preexec_fn=limit, env=env,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return {'skipped': f'took longer than {timeout:.0f} s'}
    lines = [line for line in out.stdout.splitlines() if line.startswith('{')]
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or ['no output'])[-1]
        if 'alloc' in out.stderr.lower() or 'memory' in out.stderr.lower():
            return {'skipped': f'out of memory under the {memory_limit_gib:g} GiB ceiling'}
        return {'skipped': f'failed (exit {out.returncode}): {tail[:200]}'}
    return json.loads(lines[-1])


def machine() -> Dict[str, Any]:
    """CPU model, logical CPUs, torch version and threads, load average now."""
    return {'cpu': cpu_model(), 'logical_cpus': os.cpu_count(), 'torch': torch.__version__,
            'threads': torch.get_num_threads(), 'load_average': list(os.getloadavg())}


def write_json(record: Dict[str, Any], path: str) -> None:
    """Writes :obj:`record` to :obj:`path` atomically (temporary file, then rename)."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=osp.dirname(path), suffix='.tmp')
    try:
        with os.fdopen(handle, 'w') as f:
            json.dump(record, f, indent=1)
            f.write('\n')
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def _predict(previous: Optional[Dict[str, Any]], key: str, atoms: int) -> float:
    if not previous or key not in previous:
        return 0.0
    return previous[key] * atoms / previous['num_atoms']


def table(rows: List[Dict[str, Any]], timings: Dict[str, Dict[str, Any]]) -> str:
    """The markdown tables of a run."""
    lines = ['| model | atoms | edges | E64 (eV) | abs(E32 - E64) now (eV) | '
             'abs(E32 - E64) old float32 sum (eV) | time f32 / f64 (s) | peak RSS f32 / f64 '
             '(GiB) |', '|---|---|---|---|---|---|---|---|']
    for row in rows:
        if 'skipped' in row:
            lines.append(f"| {row['model']} | {row['num_atoms']:,} | | | skipped: "
                         f"{row['skipped']} | | | |")
            continue
        lines.append(
            f"| {row['model']} | {row['num_atoms']:,} | {row['num_edges']:,} | "
            f"{row['e64']:,.3f} | {row['error_now']:.2e} | {row['error_old']:.3f} | "
            f"{row['seconds_f32']:.1f} / {row['seconds_f64']:.1f} | "
            f"{row['peak_rss_f32_gib']:.2f} / {row['peak_rss_f64_gib']:.2f} |")
    lines += ['', '| model | atoms | E+F float32 (median) | reduction float64, fwd+bwd | '
              'reduction float32, fwd+bwd | extra cost of float64 / E+F |',
              '|---|---|---|---|---|---|']
    for name, t in timings.items():
        if 'skipped' in t:
            lines.append(f"| {name} | | skipped: {t['skipped']} | | | |")
            continue
        extra = (t['reduce_float64_s'] - t['reduce_float32_s']) / t['energy_forces_s']
        lines.append(f"| {name} | {t['num_atoms']:,} | {t['energy_forces_s']:.2f} s "
                     f"({t['repeats']} runs) | {t['reduce_float64_s'] * 1e6:.0f} us | "
                     f"{t['reduce_float32_s'] * 1e6:.0f} us | {extra:.1e} |")
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=list(SIZES),
                        help='water molecules per cluster (atoms: three times)')
    parser.add_argument('--models', nargs='+', default=list(MODELS))
    parser.add_argument('--repeats', type=int, default=3,
                        help='energy+forces calls timed at 5,001 atoms (median); 0 skips the '
                        'timing')
    parser.add_argument('--memory-limit-gb', type=float, default=8.0,
                        help='allocation ceiling of every child process, GiB')
    parser.add_argument('--time-budget', type=float, default=1800.0,
                        help='seconds for the whole error sweep; larger sizes are skipped '
                        'when their predicted time would not fit')
    parser.add_argument('--json', default=RESULTS, help='where the JSON record goes')
    parser.add_argument('--child', nargs='+', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        if args.child[0] == 'timing':
            print(json.dumps(child_timing(args.child[1], int(args.child[2]))))
        else:
            name, molecules, dtype = args.child
            print(json.dumps(child_energy(name, int(molecules), getattr(torch, dtype))))
        return

    record: Dict[str, Any] = {
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'machine': machine(), 'system': 'open-boundary water cluster, water_box(seed=0) '
        'without its cell, liquid density', 'memory_limit_gib': args.memory_limit_gb}
    print(f"{record['machine']}", flush=True)
    start = time.perf_counter()
    rows: List[Dict[str, Any]] = []
    previous = {(name, dtype): None for name in args.models for dtype in ('float32', 'float64')}
    stopped = set()
    # Sizes outer, models inner: both models reach the same sizes within the time budget.
    for molecules in args.sizes:
        for name in args.models:
            if name in stopped:
                continue
            atoms = 3 * molecules
            row: Dict[str, Any] = {'model': name, 'num_atoms': atoms}
            results: Dict[str, Dict[str, Any]] = {}
            # Both dtypes are checked before either runs: a size one of them cannot do is
            # skipped whole.
            left = args.time_budget - (time.perf_counter() - start)
            seconds = sum(_predict(previous[name, dtype], 'seconds', atoms)
                          for dtype in ('float32', 'float64'))
            for dtype in ('float32', 'float64'):
                memory = _predict(previous[name, dtype], 'peak_rss_gib', atoms)
                if memory > args.memory_limit_gb:
                    results[dtype] = {'skipped': f'{dtype} would need about {memory:.0f} GiB '
                                      f'(> {args.memory_limit_gb:g} GiB)'}
                    break
            else:
                if seconds > left:
                    results['float32'] = {'skipped': f'would take about {seconds:.0f} s, '
                                          f'{left:.0f} s of the time budget left'}
            for dtype in ('float32', 'float64'):
                if results:
                    break
                result = run_child([name, str(molecules), dtype], args.memory_limit_gb,
                                   max(args.time_budget - (time.perf_counter() - start), 60.0))
                if 'skipped' in result:
                    results[dtype] = result
                    break
                previous[name, dtype] = result
            if not results:
                results = {dtype: previous[name, dtype] for dtype in ('float32', 'float64')}
            skipped = [r['skipped'] for r in results.values() if 'skipped' in r]
            if skipped:
                row['skipped'] = skipped[0]
                stopped.add(name)
            else:
                f32, f64 = results['float32'], results['float64']
                row.update(num_edges=f32['num_edges'], e64=f64['energy'], e32=f32['energy'],
                           e32_old=f32['old_energy'], energy_dtype=f32['energy_dtype'],
                           error_now=abs(f32['energy'] - f64['energy']),
                           error_old=abs(f32['old_energy'] - f64['energy']),
                           seconds_f32=f32['seconds'], seconds_f64=f64['seconds'],
                           peak_rss_f32_gib=f32['peak_rss_gib'],
                           peak_rss_f64_gib=f64['peak_rss_gib'])
            rows.append(row)
            print(json.dumps(row), flush=True)
    record['errors'] = rows
    record['error_sweep_s'] = time.perf_counter() - start
    timings = {}
    for name in args.models if args.repeats > 0 else ():
        timings[name] = run_child(['timing', name, str(args.repeats)], args.memory_limit_gb,
                                  1800.0)
        print(json.dumps({name: timings[name]}), flush=True)
    record['timing'] = timings
    record['load_average_after'] = list(os.getloadavg())
    write_json(record, args.json)
    print()
    print(table(rows, timings))


if __name__ == '__main__':
    main()
