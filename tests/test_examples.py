"""The examples run as shipped."""
import os
import runpy
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'examples')


@pytest.mark.parametrize('name', ['custom_tensor_model.py'])
def test_example_runs(name, monkeypatch, capsys):
    monkeypatch.setattr(sys, 'argv', [name])
    runpy.run_path(os.path.join(EXAMPLES, name), run_name='__main__')
    out = capsys.readouterr().out
    assert 'energy' in out and 'rotated' in out
