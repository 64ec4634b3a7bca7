r"""The dataset catalogue: one machine-readable card per dataset class.

Length: over 500 lines because the card schema (documented field by field) and its checks,
the prose-card check and sync, and the ``datasets`` command line read and write one format.

The cards ship as JSON files in ``pyg_tensorpot/datasets/cards/`` (read without any YAML
library). The prose cards in the repository's ``datasets/*.md`` carry the same card as front
matter, a JSON object between two ``---`` lines (JSON is YAML, so Markdown renderers show it as
front matter); :func:`check_prose_cards` reports where the two disagree and
:func:`sync_prose_cards` rewrites the front matter from the shipped JSON.

::

    pyg-tensorpot datasets                    # table of the catalogue
    pyg-tensorpot datasets list [--json]
    pyg-tensorpot datasets info NAME [--json] # everything on one card
    pyg-tensorpot datasets cards DIR [--write]  # check (or regenerate) datasets/*.md
"""
import argparse
import difflib
import json
import os
import os.path as osp
import sys
import textwrap
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

#: Folder of the shipped JSON cards.
CARDS_DIR = osp.join(osp.dirname(osp.abspath(__file__)), 'cards')

#: The line that opens and closes the front matter of a prose card.
FRONT_MATTER_DELIMITER = '---'

#: Values a split size may take besides a count (int) or a fraction (float in [0, 1]).
SPLIT_SIZE_WORDS = ('rest', 'not stated', 'user-defined')

_MISSING = object()


class UnknownDatasetError(KeyError):
    """Raised by :func:`card` for a name the catalogue does not know; the message lists the
    known names."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ''


class CardError(ValueError):
    """Raised when a shipped card (or a prose card's front matter) is malformed."""


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class DatasetCard:
    r"""The card of one dataset: where it comes from, under which licence, what it holds and
    in which units, and its standard splits. Lists are tuples and mappings read-only, so a
    card cannot be changed by accident; :meth:`to_dict` gives the JSON-ready form.

    Args:
        name (str): Catalogue name, e.g. ``'qm9'`` (the stem of the prose card).
        title (str): Human-readable name, e.g. ``'Revised MD17 (rMD17)'``.
        classes (Tuple[str, ...]): Import paths of the dataset classes serving it.
        description (str): What the structures are.
        source (str): Where the raw files come from and how they are checked.
        urls (Tuple[str, ...]): Every URL the classes download from (empty when bundled).
        licence (str): SPDX identifier where one applies, else ``'not stated'`` or
            ``'user-defined'``.
        licence_note (str): Where the licence is stated and whether it was verified.
        redistributable (bool): Whether processed data may be redistributed (e.g. pushed to
            the Hub); :obj:`False` where the licence is unknown.
        redistributable_reason (str): Why.
        citation (str): The references to cite, one per line.
        paper_urls (Tuple[str, ...]): DOI or arXiv links of the papers.
        level_of_theory (str): Level of theory of the served energies (default options).
        elements (Tuple[str, ...]): Element symbols present (empty for user data).
        structures (int, optional): Number of structures of the full release, :obj:`None`
            where not stated.
        structures_exact (bool): :obj:`False` where :obj:`structures` is approximate.
        structures_note (str): What :obj:`structures` counts.
        units_stored (Mapping[str, str]): Units of the raw file, per key.
        units_served (Mapping[str, str]): Units of the served samples, per attribute.
        splits (Tuple[Mapping, ...]): Standard splits: ``name``, ``call``, ``train``,
            ``val``, ``test`` (count, fraction or ``'rest'``), ``seed``, ``over``, ``note``.
        variant_argument (str, optional): Constructor argument choosing a part of the data
            (``'molecule'``, ``'subset'``, ``'level'``, ``'version'``), or :obj:`None`.
        variants (Tuple[Mapping, ...]): The values of :obj:`variant_argument`, each with its
            ``name`` and what is known about it.
        prose_card (str): Path of the prose card in the repository.
    """
    name: str
    title: str
    classes: Tuple[str, ...]
    description: str
    source: str
    urls: Tuple[str, ...]
    licence: str
    licence_note: str
    redistributable: bool
    redistributable_reason: str
    citation: str
    paper_urls: Tuple[str, ...]
    level_of_theory: str
    elements: Tuple[str, ...]
    structures: Optional[int]
    structures_exact: bool
    structures_note: str
    units_stored: Mapping[str, str]
    units_served: Mapping[str, str]
    splits: Tuple[Mapping[str, Any], ...]
    variant_argument: Optional[str]
    variants: Tuple[Mapping[str, Any], ...]
    prose_card: str

    def to_dict(self) -> Dict[str, Any]:
        """The card as plain JSON-ready Python objects (dicts, lists, str, int, float,
        bool, None), in field order."""
        return {f.name: _thaw(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Any, source: str = 'card') -> 'DatasetCard':
        """Builds a card from :meth:`to_dict`'s form, checking every field.

        Args:
            data (dict): The card.
            source (str, optional): Where it was read, for error messages.
                (default: ``'card'``)
        """
        if not isinstance(data, dict):
            raise CardError(f'{source}: a dataset card is a JSON object, got '
                            f'{type(data).__name__}')
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data]
        unknown = sorted(set(data) - set(names))
        if missing or unknown:
            raise CardError(f'{source}: missing fields {missing}, unknown fields {unknown}')
        for key, (test, expected) in _FIELD_CHECKS.items():
            if not test(data[key]):
                raise CardError(f"{source}: field '{key}' {expected}, got {data[key]!r}")
        for i, split in enumerate(data['splits']):
            problem = _check_split(split)
            if problem:
                raise CardError(f'{source}: split {i} {problem}')
        return cls(**{n: _freeze(data[n]) for n in names})

    def structures_text(self) -> str:
        """:obj:`structures` for people: ``'130,831'``, ``'~4,960,000'`` or ``'not stated'``."""
        if self.structures is None:
            return 'not stated'
        return ('' if self.structures_exact else '~') + f'{self.structures:,}'


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _named(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, dict) and isinstance(v.get('name'), str) for v in value)


_TEXT = (lambda v: isinstance(v, str), 'must be a string')
_LIST = (_strings, 'must be a list of strings')
_UNITS = (lambda v: isinstance(v, dict) and all(isinstance(u, str) for u in v.values()),
          'must map names to unit strings')
_FLAG = (lambda v: isinstance(v, bool), 'must be true or false')
_NAMED = (_named, "must be a list of objects, each with a string 'name'")
#: ``field: (test, what the field must be)``.
_FIELD_CHECKS = {
    'name': _TEXT, 'title': _TEXT, 'classes': _LIST, 'description': _TEXT, 'source': _TEXT,
    'urls': _LIST, 'licence': _TEXT, 'licence_note': _TEXT, 'redistributable': _FLAG,
    'redistributable_reason': _TEXT, 'citation': _TEXT, 'paper_urls': _LIST,
    'level_of_theory': _TEXT, 'elements': _LIST,
    'structures': (lambda v: v is None or (type(v) is int and v >= 0),
                   'must be a non-negative integer or null'),
    'structures_exact': _FLAG, 'structures_note': _TEXT, 'units_stored': _UNITS,
    'units_served': _UNITS, 'splits': _NAMED,
    'variant_argument': (lambda v: v is None or isinstance(v, str), 'must be a string or null'),
    'variants': _NAMED, 'prose_card': _TEXT,
}


def _check_split(split: Dict) -> str:
    keys = {'name', 'call', 'train', 'val', 'test', 'seed', 'over', 'note'}
    if set(split) != keys:
        return f'must have exactly the keys {sorted(keys)}, got {sorted(split)}'
    for part in ('train', 'val', 'test'):
        size = split[part]
        if not ((type(size) is int and size >= 0) or (type(size) is float and 0 <= size <= 1)
                or size in SPLIT_SIZE_WORDS):
            return (f"'{part}' must be a count, a fraction in [0, 1] or one of "
                    f"{list(SPLIT_SIZE_WORDS)}, got {size!r}")
    if split['seed'] is not None and type(split['seed']) is not int:
        return f"'seed' must be an integer or null, got {split['seed']!r}"
    return ''


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CardError(f"cannot read the dataset card '{path}': {error}") from None


def load_card(path: str) -> DatasetCard:
    """Reads and checks one JSON card; its ``name`` must be the file's stem.

    Args:
        path (str): The ``.json`` file.
    """
    result = DatasetCard.from_dict(_read_json(path), source=f"'{path}'")
    stem = osp.splitext(osp.basename(path))[0]
    if result.name != stem:
        raise CardError(f"'{path}': the card is named '{result.name}' but its file '{stem}'")
    return result


def catalog(cards_dir: Optional[str] = None) -> Dict[str, DatasetCard]:
    """Every dataset card, ``{name: DatasetCard}`` in name order.

    Args:
        cards_dir (str, optional): Folder of JSON cards. (default: the shipped
            :obj:`CARDS_DIR`)
    """
    folder = CARDS_DIR if cards_dir is None else cards_dir
    try:
        files = sorted(f for f in os.listdir(folder) if f.endswith('.json'))
    except OSError as error:
        raise CardError(f"cannot list the dataset cards in '{folder}': {error} (the package "
                        f"installation is incomplete)") from None
    return {c.name: c for c in (load_card(osp.join(folder, f)) for f in files)}


def _key(name: str) -> str:
    # 'own-data', 'own_data' and 'Own Data' are one name
    return str(name).strip().lower().replace('-', '_').replace(' ', '_')


def card(name: str) -> DatasetCard:
    """The card of one dataset, by catalogue name (``'qm9'``, ``'rmd17'``, ...) or class name
    (``'RMD17'``, ``'pyg_tensorpot.datasets.ExtXYZDataset'``), case-insensitively.

    Args:
        name (str): The name.

    Raises:
        UnknownDatasetError: (a :class:`KeyError`) for an unknown name; the message lists
            the known names.
    """
    cards = catalog()
    wanted = _key(name)
    for item in cards.values():
        if wanted == _key(item.name) or any(
                wanted in (_key(path), _key(path.rsplit('.', 1)[-1])) for path in item.classes):
            return item
    known = sorted(cards)
    close = difflib.get_close_matches(wanted, [_key(n) for n in known], n=1)
    hint = f" (did you mean '{known[[_key(n) for n in known].index(close[0])]}'?)" if close else ''
    raise UnknownDatasetError(f"unknown dataset '{name}'{hint}; the catalogue knows "
                              f"{', '.join(known)}")


def card_for(dataset: Union[type, object]) -> DatasetCard:
    """The card of a dataset class or instance (a subclass gets its base class's card).

    Args:
        dataset (type or Dataset): The class or an instance.
    """
    cls = dataset if isinstance(dataset, type) else type(dataset)
    cards = catalog()
    for klass in cls.__mro__:
        path = f'pyg_tensorpot.datasets.{klass.__name__}'
        for item in cards.values():
            if path in item.classes:
                return item
    raise UnknownDatasetError(f"no catalogue card for the class '{cls.__name__}'; the "
                              f"catalogue knows {', '.join(sorted(cards))}")


def split_front_matter(text: str) -> Tuple[Optional[Dict], str]:
    """Splits a prose card into its front matter (parsed JSON, or :obj:`None` when there is
    none) and its body.

    Raises:
        CardError: When the front matter is not closed or not a JSON object.
    """
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].rstrip('\r\n') != FRONT_MATTER_DELIMITER:
        return None, text
    for i in range(1, len(lines)):
        if lines[i].rstrip('\r\n') == FRONT_MATTER_DELIMITER:
            try:
                data = json.loads(''.join(lines[1:i]))
            except json.JSONDecodeError as error:
                raise CardError(f'the front matter is not valid JSON: {error}') from None
            if not isinstance(data, dict):
                raise CardError('the front matter is not a JSON object')
            return data, ''.join(lines[i + 1:]).lstrip('\r\n')
    raise CardError(f"the front matter opened by '{FRONT_MATTER_DELIMITER}' is never closed")


def dumps_card(data: Any, indent: int = 0) -> str:
    """JSON text of a card (:meth:`DatasetCard.to_dict`), two-space indented, with lists and
    objects of plain values that fit on one line kept on one line (how the shipped files are
    written)."""
    flat = json.dumps(data, ensure_ascii=False)
    if not isinstance(data, (dict, list)) or not data:
        return flat
    values = list(data.values()) if isinstance(data, dict) else data
    if not any(isinstance(v, (dict, list)) for v in values) and len(flat) + indent <= 96:
        return flat
    if isinstance(data, dict):
        items = [f'{json.dumps(k, ensure_ascii=False)}: {dumps_card(v, indent + 2)}'
                 for k, v in data.items()]
    else:
        items = [dumps_card(v, indent + 2) for v in data]
    inner, ends = ',\n' + ' ' * (indent + 2), '{}' if isinstance(data, dict) else '[]'
    return f"{ends[0]}{inner[1:]}{inner.join(items)}\n{' ' * indent}{ends[1]}"


def render_prose_card(item: DatasetCard, body: str) -> str:
    """A prose card: :obj:`item` as JSON front matter, a blank line, then :obj:`body`."""
    matter = dumps_card(item.to_dict())
    return f'{FRONT_MATTER_DELIMITER}\n{matter}\n{FRONT_MATTER_DELIMITER}\n\n{body.lstrip()}'


def _read_prose(path: str) -> Tuple[Optional[Dict], str, str]:
    """``(front matter or None, body, text)`` of a prose card."""
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as error:
        raise CardError(f"cannot read the prose card '{path}': {error}") from None
    try:
        return split_front_matter(text) + (text,)
    except CardError as error:
        raise CardError(f"'{path}': {error}") from None


def check_prose_cards(folder: str, cards_dir: Optional[str] = None) -> Dict[str, str]:
    """Where the prose cards in :obj:`folder` disagree with the shipped cards:
    ``{file: problem}``, empty when all agree. A card's prose file must exist and carry the
    card as front matter, equal field for field; a Markdown file with front matter must have
    a shipped card.

    Args:
        folder (str): The folder of the prose cards (the repository's ``datasets/``).
        cards_dir (str, optional): Folder of the JSON cards. (default: the shipped ones)
    """
    problems, cards = {}, catalog(cards_dir)
    for item in cards.values():
        file, shipped = osp.basename(item.prose_card), item.to_dict()
        try:
            matter = _read_prose(osp.join(folder, file))[0]
        except CardError as error:
            problems[file] = str(error)
            continue
        if matter is None:
            problems[file] = 'has no front matter'
        elif matter != shipped:
            differ = sorted(k for k in set(matter) | set(shipped)
                            if matter.get(k, _MISSING) != shipped.get(k, _MISSING))
            problems[file] = f'front matter differs from the shipped card in {differ}'
    known = {osp.basename(item.prose_card) for item in cards.values()}
    for file in sorted(os.listdir(folder)) if osp.isdir(folder) else []:
        if file.endswith('.md') and file not in known:
            try:
                has_matter = _read_prose(osp.join(folder, file))[0] is not None
            except CardError:
                has_matter = True  # a broken front matter is front matter
            if has_matter:
                problems[file] = 'has front matter but no shipped card'
    return problems


def sync_prose_cards(folder: str, cards_dir: Optional[str] = None) -> List[str]:
    """Rewrites (atomically) every prose card in :obj:`folder` whose front matter is not
    the rendering of its shipped card (:func:`render_prose_card`), keeping the prose; returns
    the files rewritten. A missing prose card is created with a one-line title as its prose.
    A broken front matter is left for a person to fix: the prose cannot be told apart from it.

    Args:
        folder (str): The folder of the prose cards.
        cards_dir (str, optional): Folder of the JSON cards. (default: the shipped ones)
    """
    from pyg_tensorpot.utils.files import atomic_write_text
    written = []
    for item in catalog(cards_dir).values():
        path = osp.join(folder, osp.basename(item.prose_card))
        text, body = None, f'# {item.title}\n'
        if osp.exists(path):
            _, body, text = _read_prose(path)
        rendered = render_prose_card(item, body)
        if rendered != text:
            atomic_write_text(rendered, path)
            written.append(osp.basename(path))
    return written


# ---------------------------------------------------------------------------------------------
# Command line: pyg-tensorpot datasets ...


def add_arguments(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """Adds the ``datasets`` subcommands (``list``, ``info``, ``cards`` and ``push``) to the
    parser of ``pyg-tensorpot datasets``; returns the subparsers so that more can be added.
    The chosen subcommand is in ``args.datasets_command`` (:obj:`None`: list)."""
    sub = parser.add_subparsers(dest='datasets_command', metavar='SUBCOMMAND')
    listing = sub.add_parser('list', help='table of the dataset catalogue (the default)')
    listing.add_argument('--json', action='store_true', help='print every card as JSON')
    info = sub.add_parser('info', help='everything on one dataset card')
    info.add_argument('name', help='catalogue or class name, e.g. qm9, rmd17, ANI1x')
    info.add_argument('--json', action='store_true', help='print the card as JSON')
    cards = sub.add_parser('cards', help='check that the prose cards (datasets/*.md) carry the '
                           'shipped cards as front matter')
    cards.add_argument('folder', help='folder of the prose cards, e.g. datasets')
    cards.add_argument('--write', action='store_true',
                       help='rewrite the front matter that disagrees (the prose is kept)')
    from pyg_tensorpot.datasets.remote import add_push_arguments
    add_push_arguments(sub)
    return sub


def _wrap(label: str, text: str, width: int = 100) -> List[str]:
    indent, lines = ' ' * 24, []
    for i, part in enumerate(str(text).split('\n')):
        head = f'{label + ":":<24}' if i == 0 else indent
        lines.extend(textwrap.wrap(part, width, initial_indent=head, subsequent_indent=indent,
                                   break_on_hyphens=False, break_long_words=False) or [head])
    return lines


def _size(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f'{value:,}' if isinstance(value, int) else f'{value:.0%}'


_SIZES = ('train', 'val', 'test', 'structures')


def _entry(entry: Mapping) -> str:
    # one split or variant on one line: "name: key value; key value"
    parts = [f'{key} {", ".join(map(str, value)) if isinstance(value, tuple) else _size(value)}'
             if key in _SIZES or isinstance(value, tuple) else f'{key} {value}'
             for key, value in entry.items() if key != 'name' and value not in (None, '')]
    return str(entry['name']) + (f": {'; '.join(parts)}" if parts else '')


def format_card(item: DatasetCard) -> str:
    """Everything on a card, as aligned text for people (one field a line, wrapped)."""
    out = [f'{item.title} ({item.name})']
    for f in fields(item):
        value = getattr(item, f.name)
        if f.name in ('name', 'title') or (f.name == 'variants' and not value):
            continue
        if f.name == 'structures':
            text = item.structures_text()
        elif f.name == 'elements':
            text = ' '.join(value) or 'any'
        elif isinstance(value, bool):
            text = 'yes' if value else 'no'
        elif isinstance(value, Mapping):
            text = '\n'.join(f'{k}: {v}' for k, v in value.items())
        elif isinstance(value, tuple):
            text = '\n'.join(_entry(v) if isinstance(v, Mapping) else str(v) for v in value)
        else:
            text = 'not stated' if value is None else str(value)
        out.extend(_wrap(f.name.replace('_', ' '), text or 'none'))
    return '\n'.join(out)


def format_table(cards: Dict[str, DatasetCard]) -> str:
    """The catalogue as a table: name, structures, elements, level of theory, licence."""
    head = ('name', 'structures', 'elements', 'level of theory', 'licence')
    rows = [head]
    for item in cards.values():
        # the table shows the level itself, without the program or the other options
        level = item.level_of_theory.split(';')[0].split(' (')[0]
        rows.append((item.name, item.structures_text(), ' '.join(item.elements) or 'any',
                     level, item.licence))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ['  '.join(c.rjust(w) if i == 1 else c.ljust(w)
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(lines)


def run(args: argparse.Namespace) -> int:
    """Runs ``pyg-tensorpot datasets ...`` for the arguments parsed with
    :func:`add_arguments`; returns the exit status (0, or 2 for an unknown name, a broken
    card or a disagreeing prose card)."""
    command = getattr(args, 'datasets_command', None) or 'list'
    if command == 'push':
        from pyg_tensorpot.datasets.remote import run_push
        return run_push(args)
    try:
        if command == 'list':
            cards = catalog()
            if getattr(args, 'json', False):
                print(json.dumps({n: c.to_dict() for n, c in cards.items()}, indent=2,
                                 ensure_ascii=False))
            else:
                print(format_table(cards))
        elif command == 'info':
            item = card(args.name)
            print(json.dumps(item.to_dict(), indent=2, ensure_ascii=False) if args.json
                  else format_card(item))
        elif command == 'cards':
            if not osp.isdir(args.folder):
                raise CardError(f"'{args.folder}' is not a folder of prose cards")
            if args.write:
                for file in sync_prose_cards(args.folder):
                    print(f'rewrote the front matter of {osp.join(args.folder, file)}')
            problems = check_prose_cards(args.folder)
            for file, problem in problems.items():
                print(f'{osp.join(args.folder, file)}: {problem}', file=sys.stderr)
            if problems:
                return 2
            print(f'the prose cards in {args.folder} agree with the shipped cards')
        else:
            raise CardError(f"unknown datasets subcommand '{command}'")
    except (UnknownDatasetError, CardError, OSError) as error:
        print(f'pyg-tensorpot datasets {command}: error: {error}', file=sys.stderr)
        return 2
    return 0
