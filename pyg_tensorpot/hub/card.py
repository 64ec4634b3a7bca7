r"""The model card (``README.md`` with the Hub's YAML header) of a saved model, generated
from its ``config.json``."""
import json
from typing import Any, Mapping


def _format_metrics(metrics: Mapping[str, Any]) -> str:
    lines = []
    for key, value in metrics.items():
        if isinstance(value, Mapping) and 'table' in value:
            lines += ['', f'**{key}**', '', str(value['table']), '']
            if value.get('note'):
                lines += [str(value['note']), '']
        elif isinstance(value, Mapping):
            items = ', '.join(f'{k} = {v:.4g}' if isinstance(v, float) else f'{k} = {v}'
                              for k, v in value.items())
            lines += [f'- **{key}**: {items}']
        else:
            lines += [f'- **{key}**: {value}']
    return '\n'.join(lines)


def render_model_card(config: Mapping[str, Any]) -> str:
    """A Markdown model card (with the Hub's YAML header) from a ``config.json`` dictionary."""
    from pyg_tensorpot.utils.elements import symbol
    elements = config.get('supported_elements')
    element_text = ('any' if elements is None else ', '.join(symbol(int(z)) for z in elements))
    data = config.get('training_data') or {}
    lines = [
        '---',
        'library_name: pyg-tensorpot',
        'license: mit',
        'tags:',
        '- interatomic-potential',
        '- machine-learned-potential',
        '- pytorch-geometric',
        f"- {config['architecture'].lower()}",
        '---',
        '',
        f"# {config.get('name') or config['architecture']}",
        '',
        config.get('description') or '',
        '',
        '## Usage',
        '',
        '```python',
        'from pyg_tensorpot.hub import from_pretrained',
        '',
        f"model = from_pretrained('{config.get('name')}')",
        'energy, forces = model.energy_and_forces(z, pos)  # z: atomic numbers, pos: Angstrom',
        '```',
        '',
        '## Model',
        '',
        f"- Architecture: {config['architecture']} "
        f"(`pyg_tensorpot.models.{config['model_class']}`),"
        f" {config.get('num_parameters', '?')} parameters, {config.get('dtype')}",
        f"- Hyperparameters: `{json.dumps(config['model_kwargs'])}`",
        f"- Cutoff: {config['cutoff']} Angstrom",
        f"- Elements: {element_text}",
        f"- Units: positions {config['units'].get('positions')}, energy "
        f"{config['units'].get('energy')}, forces {config['units'].get('forces')}",
        f"- Reference (atomic) energies added to the prediction: "
        f"`{json.dumps(config.get('reference_energies', {}))}` ({config['units'].get('energy')})",
        '',
        '## Training data',
        '',
    ]
    if data:
        lines += [f'- {key}: {json.dumps(value) if not isinstance(value, str) else value}'
                  for key, value in data.items()]
    else:
        lines += ['Not recorded.']
    training = dict(config.get('training') or {})
    if training:
        lines += ['', '## Training', '']
        stages = training.pop('stages', None) or []
        lines += [f'- {key}: {value}' for key, value in training.items()]
        for number, stage in enumerate(stages, 1):
            lines += ['', f'Stage {number} of {len(stages)}:', '']
            lines += [f'- {key}: {value}' for key, value in stage.items()]
    lines += ['', '## Evaluation', '']
    lines += [_format_metrics(config['metrics'])] if config.get('metrics') else ['Not recorded.']
    lines += ['', f"Saved with pyg-tensorpot {config.get('library', {}).get('version', '?')}.", '']
    return '\n'.join(lines)

