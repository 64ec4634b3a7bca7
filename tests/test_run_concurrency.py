"""Two processes at once: a second training run into an output folder in use refuses (and a
killed run's lock does not block); from_pretrained beside a process that rewrites the same
folder or Hub cache always gets one whole model, never a mixture or a half-written file."""
import os

os.environ['HF_HUB_OFFLINE'] = '1'  # before huggingface_hub is imported, as a user would

import os.path as osp  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from pyg_tensorpot.hub import from_pretrained  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ENV = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
       'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': '1'}
LOADS = 8  # loads made while the other process writes

# Rewrites TARGET (a folder, or the Hub cache of someone/busy) with the models saved in ref1
# and ref2 in turn until STOP appears; prints how many times it did. The Hub writer needs no
# torch (it starts at once); the folder writer uses save_pretrained.
WRITER = textwrap.dedent('''
    import hashlib, os, os.path as osp, sys, time
    mode, work = sys.argv[1], sys.argv[2]
    if mode == 'folder':
        import torch
        from pyg_tensorpot.hub import from_pretrained, save_pretrained
        torch.set_num_threads(1)
        models = [from_pretrained(osp.join(work, 'ref%d' % s)) for s in (1, 2)]
    files = [{n: open(osp.join(work, 'ref%d' % s, n), 'rb').read()
              for n in ('config.json', 'model.safetensors', 'README.md')} for s in (1, 2)]
    repo = osp.join(work, 'hub', 'models--someone--busy')

    def publish(i):
        """A new commit, written the way the Hub client does: blobs and snapshot first,
        then the branch moved with an atomic rename."""
        commit = hashlib.sha1(b'%d' % i).hexdigest()
        snapshot = osp.join(repo, 'snapshots', commit)
        os.makedirs(snapshot, exist_ok=True)
        os.makedirs(osp.join(repo, 'blobs'), exist_ok=True)
        os.makedirs(osp.join(repo, 'refs'), exist_ok=True)
        for name, content in files[i % 2].items():
            blob = osp.join(repo, 'blobs', hashlib.sha256(content).hexdigest())
            if not osp.exists(blob):
                with open(blob + '.incomplete', 'wb') as f:
                    f.write(content)
                os.replace(blob + '.incomplete', blob)
            os.symlink(osp.relpath(blob, snapshot), osp.join(snapshot, name))
        with open(osp.join(repo, 'refs', 'main.tmp'), 'w') as f:
            f.write(commit)
        os.replace(osp.join(repo, 'refs', 'main.tmp'), osp.join(repo, 'refs', 'main'))

    i = 0
    while True:
        if mode == 'folder':
            save_pretrained(models[i % 2], osp.join(work, 'target'))
        else:
            publish(i)
        i += 1
        if i == 1:
            open(osp.join(work, 'READY'), 'w').close()
        if osp.exists(osp.join(work, 'STOP')) or i > 100000:
            break
        time.sleep(0.002)  # leave the (shared) CPU to the reader between two writes
    print(i, flush=True)
''')


def wait_for(path: str, process: subprocess.Popen, timeout: float = 120) -> None:
    start = time.monotonic()
    while not osp.exists(path):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() - start < timeout, f'{path} did not appear'
        time.sleep(0.02)


def save_references(work) -> None:
    from pyg_tensorpot import TensorNet
    from pyg_tensorpot.hub import save_pretrained
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = TensorNet(hidden_channels=8, num_layers=1, num_rbf=4, cutoff=4.0, max_z=10)
        model.set_atomref({1: -13.6 * seed, 8: -2041.9})
        save_pretrained(model, osp.join(work, f'ref{seed}'))


@pytest.mark.parametrize('mode', ['folder', 'hub'])
def test_from_pretrained_beside_a_writer(tmp_path, mode):
    save_references(tmp_path)
    writer = subprocess.Popen([sys.executable, '-c', WRITER, mode, str(tmp_path)], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(str(tmp_path / 'READY'), writer)
        references = [from_pretrained(str(tmp_path / f'ref{seed}')).state_dict()
                      for seed in (1, 2)]
        seen = set()
        for _ in range(LOADS):
            if mode == 'folder':
                model = from_pretrained(str(tmp_path / 'target'))
            else:
                model = from_pretrained('someone/busy', cache_dir=str(tmp_path / 'hub'))
            state = model.state_dict()
            matches = [i for i, ref in enumerate(references)
                       if all(torch.equal(state[k], v) for k, v in ref.items())]
            assert len(matches) == 1, 'a model that is neither of the two saved ones'
            seen.add(matches[0])
        (tmp_path / 'STOP').touch()
        out, err = writer.communicate(timeout=120)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == 0, err
    assert int(out) > 1, 'the writer did not write while the models were loaded'
    # no temporary file is left behind in the folder
    if mode == 'folder':
        assert sorted(os.listdir(tmp_path / 'target')) == ['README.md', 'config.json',
                                                           'model.safetensors']


HOLDER = textwrap.dedent('''
    import sys
    from pyg_tensorpot.training.run import lock_output_folder
    with lock_output_folder(sys.argv[1]):
        print('locked', flush=True)
        sys.stdin.read()  # until the test closes stdin or kills this process
''')

CONFIG = textwrap.dedent('''
    seed: 7
    out_dir: {out}
    model: {{name: TensorNet, hidden_channels: 8, num_layers: 1, num_rbf: 4}}
    data: {{dataset: MD17EthanolSample, train_size: 32, val_size: 16, test_size: 16}}
    trainer: {{max_epochs: 1, accelerator: cpu, progress_bar: false}}
''')


def test_second_run_into_a_folder_in_use_refuses(tmp_path, capsys):
    pytest.importorskip('yaml')
    from pyg_tensorpot.cli import main
    from pyg_tensorpot.training import load_config
    from pyg_tensorpot.training.run import (
        LOCK_NAME,
        OutputFolderInUseError,
        lock_output_folder,
        train,
    )
    out = tmp_path / 'run'
    (out / 'checkpoints').mkdir(parents=True)
    (out / 'checkpoints' / 'last.ckpt').write_bytes(b'the other run\'s checkpoint')
    config_path = tmp_path / 'config.yaml'
    config_path.write_text(CONFIG.format(out=out))
    holder = subprocess.Popen([sys.executable, '-c', HOLDER, str(out)], env=ENV,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked', holder.stderr.read()
        with pytest.raises(OutputFolderInUseError, match=f"'{out}' is in use by another "):
            train(load_config(str(config_path)), verbose=False)
        assert main(['train', str(config_path)]) == 3
        err = capsys.readouterr().err
        assert 'in use by another training run' in err and LOCK_NAME in err
        # nothing of the other run was touched (no clean-up of "stale" checkpoints)
        assert (out / 'checkpoints' / 'last.ckpt').read_bytes() == b'the other run\'s checkpoint'
        assert sorted(os.listdir(out)) == [LOCK_NAME, 'checkpoints']
        # a run killed without clean-up leaves its lock file, but not its lock
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert osp.exists(out / LOCK_NAME)
    with lock_output_folder(str(out)):
        pass
    # a run that fails releases the lock (the failure stands in for any error of a run)
    import pyg_tensorpot.training.run as run

    def fail(config, *args):
        assert osp.exists(out / LOCK_NAME)
        raise RuntimeError('the run failed')

    patch = pytest.MonkeyPatch()
    patch.setattr(run, '_train', fail)
    try:
        with pytest.raises(RuntimeError, match='the run failed'):
            train(load_config(str(config_path)), verbose=False)
    finally:
        patch.undo()
    with lock_output_folder(str(out)):
        pass
