"""torch.compile (inductor) against eager for energy and forces (issue 12).

Periodic boxes of water (``--molecules``, 64 and 500 waters = 192 and 1,500 atoms by default,
:func:`pyg_tensorpot.structures.water_box`) with the pretrained models of ``--models`` in
``--dtype``. The graph is built by a :class:`~pyg_tensorpot.nn.verlet.VerletList` (eager, as
in MD), and the model's :meth:`graph_outputs` runs either eagerly or compiled with
``torch.compile(..., dynamic=False)`` (inductor); forces by autograd through both. Reported:
the compile time (first call, forward and backward), the median time of ``--repeats`` energy
and force evaluations taken in turns (compiled, eager, compiled, ...) so that load from other
jobs hits both alike, the speed-up, whether the compiled energy matches, and dynamo's graph
break count (with its first reason).

Prints a table and writes a JSON record (``--json``). Every row carries the date and load
average of its own run; rows of models not in ``--models`` are kept from the existing record,
so that one model can be rerun alone::

    python benchmarks/compile_speed.py
    python benchmarks/compile_speed.py --models hipnn-ts-ani1x --repeats 5
"""
import os

# Spinning OpenMP threads slow everything down several times on a shared machine.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from common import finish_record, kept_rows, read_record, record_header, utc_now  # noqa: E402
from pyg_tensorpot.hub import from_pretrained  # noqa: E402
from pyg_tensorpot.nn.verlet import VerletList  # noqa: E402
from pyg_tensorpot.structures import water_box  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def energy_and_forces(function, verlet, z, pos, cell):
    positions = pos.detach().requires_grad_(True)
    graph = verlet.graph(z, positions, cell=cell, num_graphs=1)
    energy = function(z, positions, graph)
    (gradient, ) = torch.autograd.grad(energy.sum(), positions)
    return energy.detach(), -gradient


def measure(name: str, molecules: int, args) -> dict:
    dtype = getattr(torch, args.dtype)
    model = from_pretrained(name).to(dtype).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    z, pos, cell = water_box(molecules, seed=args.seed)
    pos, cell = pos.to(dtype), cell.to(dtype)
    verlet = VerletList(model.cutoff, skin=0.5, self_loops=model.self_loops)
    graph = verlet.graph(z, pos, cell=cell)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model.graph_outputs)(z, pos, graph)
    reasons = [str(b.reason).split('\n')[0] + ' at ' + ', '.join(
        f"{f.filename.split('pyg_tensorpot/')[-1]}:{f.lineno}" for f in b.user_stack[-2:])
        for b in explanation.break_reasons]
    torch._dynamo.reset()
    compiled = torch.compile(model.graph_outputs, dynamic=False)
    started = time.perf_counter()
    e_compiled, f_compiled = energy_and_forces(compiled, verlet, z, pos, cell)
    compile_s = time.perf_counter() - started
    e_eager, f_eager = energy_and_forces(model.graph_outputs, verlet, z, pos, cell)
    times = {'compiled': [], 'eager': []}
    for _ in range(args.repeats):
        for label, function in (('compiled', compiled), ('eager', model.graph_outputs)):
            started = time.perf_counter()
            energy_and_forces(function, verlet, z, pos, cell)
            times[label].append(time.perf_counter() - started)
    compiled_s = statistics.median(times['compiled'])
    eager_s = statistics.median(times['eager'])
    return {'model': name, 'date': utc_now(), 'load_average': list(os.getloadavg()),
            'atoms': int(z.numel()), 'edges': int(graph.edge_index.size(1)),
            'dtype': args.dtype, 'compile_s': compile_s, 'eager_s': eager_s,
            'compiled_s': compiled_s, 'speedup': eager_s / compiled_s,
            'energy_difference_eV': float((e_compiled - e_eager).abs().max()),
            'force_difference_eV_per_A': float((f_compiled - f_eager).abs().max()),
            'graph_breaks': explanation.graph_break_count, 'break_reasons': reasons[:3],
            'repeats': args.repeats}


def table(rows) -> str:
    lines = ['| model | atoms | compile (s) | eager E+F (ms) | compiled E+F (ms) | speed-up | '
             'graph breaks | max dE (eV) |', '|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['model']} | {r['atoms']:,} | {r['compile_s']:.0f} | "
                     f"{1000 * r['eager_s']:.0f} | {1000 * r['compiled_s']:.0f} | "
                     f"{r['speedup']:.2f}x | {r['graph_breaks']} | "
                     f"{r['energy_difference_eV']:.1e} |")
    return '\n'.join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', default='tensornet-ani1x,hipnn-ts-ani1x')
    parser.add_argument('--molecules', default='64,500')
    parser.add_argument('--dtype', default='float32')
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--json', default=os.path.join(HERE, 'results', 'compile_speed.json'))
    parser.add_argument('--render', metavar='JSON', help='print the tables of a record and exit')
    args = parser.parse_args(argv)
    if args.render:
        record = read_record(args.render)
        print(table(record['runs']))
        return record
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(',') if m.strip()]
    record = record_header(runs=kept_rows(args.json, models))
    started = time.perf_counter()
    for name in models:
        for molecules in [int(m) for m in args.molecules.split(',')]:
            row = measure(name, molecules, args)
            print(json.dumps(row), flush=True)
            record['runs'].append(row)
    finish_record(record, args.json, started)
    print(table(record['runs']))
    return record


if __name__ == '__main__':
    main()
