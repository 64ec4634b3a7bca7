"""Lightning DDP: two CPU processes (gloo) train to the same result as one process on the same
global batch."""
import json
import os
import os.path as osp
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip('lightning')
pytest.importorskip('yaml')

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

# float64, so that the different summation order of the all-reduce (average of two local
# means instead of one global mean) cannot be amplified by Adam's normalisation.
CONFIG = textwrap.dedent('''
    seed: 11
    precision: 64
    model: {name: TensorNet, hidden_channels: 8, num_layers: 1, num_rbf: 4}
    data:
      dataset: MD17EthanolSample
      train_size: 32
      val_size: 16
      test_size: 16
      batch_size: 8          # the global batch: 4 per process with 2 processes
      inference_batch_size: 6
    loss: {energy_weight: 1.0, force_weight: 10.0, energy_loss_ema: 0.5}
    optim: {lr: 2.0e-3, warmup_steps: 3, lr_patience: 0, lr_factor: 0.5, ema_decay: 0.9}
    trainer:
      max_epochs: 2
      early_stopping_patience: 0
      accelerator: cpu
      progress_bar: false
      num_threads: 1
''')


def test_ddp_two_processes_match_one_process(tmp_path):
    from pyg_tensorpot.training import load_config, train
    path = tmp_path / 'config.yaml'
    path.write_text(CONFIG)
    env = {**os.environ, 'PYTHONPATH': REPO + os.pathsep + os.environ.get('PYTHONPATH', '')}
    env.pop('LOCAL_RANK', None)
    ddp_dir = tmp_path / 'ddp'
    command = [sys.executable, '-m', 'pyg_tensorpot.cli', 'train', str(path),
               f'out_dir={ddp_dir}', 'trainer.devices=2', 'trainer.strategy=ddp', '--quiet']
    done = subprocess.run(command, cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    single = train(load_config(str(path), [f'out_dir={tmp_path / "single"}']), verbose=False)

    from safetensors.torch import load_file
    ddp_model = load_file(str(ddp_dir / 'model' / 'model.safetensors'))
    one_model = load_file(osp.join(single.model_path, 'model.safetensors'))
    assert ddp_model.keys() == one_model.keys()
    for key in one_model:
        assert torch.allclose(ddp_model[key], one_model[key], rtol=1e-9, atol=1e-12), key
    # the weights moved: the comparison is not between two initialisations
    import lightning.pytorch as pl

    from pyg_tensorpot.training.builders import build_model
    pl.seed_everything(11, verbose=False)
    initial = build_model(dict(name='TensorNet', hidden_channels=8, num_layers=1,
                               num_rbf=4), torch.float64).state_dict()
    moved = [k for k in initial if initial[k].is_floating_point()
             and not torch.allclose(initial[k], one_model[k])]
    assert len(moved) > 10
    ddp_ckpt = torch.load(ddp_dir / 'checkpoints' / 'last.ckpt', weights_only=True)
    one_ckpt = torch.load(tmp_path / 'single' / 'checkpoints' / 'last.ckpt', weights_only=True)
    assert ddp_ckpt['global_step'] == one_ckpt['global_step'] == 8
    assert one_ckpt['optimizer_states'][0]['param_groups'][0]['lr'] == pytest.approx(
        ddp_ckpt['optimizer_states'][0]['param_groups'][0]['lr'])
    # validation and test errors are exact sums over both processes' shares
    with open(ddp_dir / 'test_metrics.json') as f:
        ddp_test = json.load(f)['test']
    for key, value in single.test_metrics['test'].items():
        assert ddp_test[key] == pytest.approx(value, rel=1e-9), key
    assert ddp_test['num_structures'] == 16
