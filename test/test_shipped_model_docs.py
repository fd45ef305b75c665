"""The shipped model's figures in its card and in the README are the ones its committed
evaluation holds (`models/camvid-dovit-tiny/eval/camvid_val.json`, written by
`scripts/measure_default_model.sh`), and `model.yaml` describes these weights. A model replaced
without its documents fails here."""
from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

import pytest
import yaml

from dovit_ros.runtime.artifacts import META, WEIGHTS, file_sha256

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / 'models' / 'camvid-dovit-tiny'


def evaluation() -> dict[float, dict]:
    """The fixed-ξ rows of the committed val evaluation, by ξ (the budget row left out)."""
    results = json.loads((MODEL / 'eval' / 'camvid_val.json').read_text())['results']
    return {r['threshold']: r for r in results if 'budget' not in r}


def tables(text: str) -> list[list[list[str]]]:
    """Every markdown table of `text` as rows of stripped cells (the separator rows dropped)."""
    out, cur = [], []
    for line in text.splitlines() + ['']:
        if line.startswith('|'):
            cells = [c.strip() for c in line.strip().strip('|').split('|')]
            if not all(set(c) <= set('-: ') for c in cells):
                cur.append(cells)
        elif cur:
            out.append(cur)
            cur = []
    return out


def number(cell: str) -> float | None:
    """The first number in a cell ('**0.8 (default)**' -> 0.8, '51.9 %' -> 51.9, '—' -> None);
    the minus sign may be U+2212."""
    m = re.search(r'[-−]?\d+(\.\d+)?', cell.replace('*', ''))
    return float(m.group().replace('−', '-')) if m else None


def sweep_table(text: str, columns: tuple[str, ...]) -> list[list[str]]:
    """The first table whose header starts with ξ and has all of `columns`."""
    for t in tables(text):
        if t[0][0] == 'ξ' and all(c in t[0] for c in columns):
            return t
    raise AssertionError(f'no ξ table with columns {columns}')


def check_rows(table: list[list[str]], columns: dict[str, callable]) -> int:
    """Each row with a numeric ξ that the evaluation has: every named column equals the
    evaluation's figure at the printed precision. Returns how many rows were checked."""
    rows, head, checked = evaluation(), table[0], 0
    for row in table[1:]:
        xi = number(row[0])
        if xi is None or xi not in rows or not re.match(r'^\**[\d.]+', row[0]):
            continue
        for name, figure in columns.items():
            cell = row[head.index(name)].replace('*', '')
            shown = number(cell)
            if shown is None:
                continue
            decimals = len(cell.split('.')[1].split()[0]) if '.' in cell.split()[0] else 0
            assert shown == pytest.approx(round(figure(rows[xi]), decimals), abs=1e-9), \
                f'ξ {xi}, {name}: the document says {cell}, the evaluation {figure(rows[xi])}'
        checked += 1
    return checked


FIGURES = {'mIoU': lambda r: 100 * r['miou'], 'GFLOPs / frame': lambda r: r['gflops_mean'],
           'saved': lambda r: r['gflops_saved_pct'], 'pixel acc': lambda r: 100 * r['pixel_acc']}


def figures(*names: str) -> dict[str, callable]:
    return {n: FIGURES[n] for n in names}


def class_iou(i: int, r: dict) -> float:
    return 100 * r['iou_per_class'][i]


def test_model_yaml_describes_these_weights_and_this_evaluation():
    meta = yaml.safe_load((MODEL / META).read_text())
    assert meta['weights_sha256'] == file_sha256(MODEL / WEIGHTS)
    merged = meta['metrics']['eval']['camvid/val']['results']
    rows = evaluation()
    for r in merged:   # to 0.01 points: folded BatchNorms move fp32 figures by ~1e-7
        if r['threshold'] in rows:
            assert r['miou'] == pytest.approx(rows[r['threshold']]['miou'], abs=1e-4)
    assert meta['exits']['threshold'] in rows


def test_the_readme_table_is_the_evaluation():
    text = (ROOT / 'README.md').read_text()
    section = text.split('### The default model')[1].split('\n## ')[0]
    table = sweep_table(section, ('mIoU', 'GFLOPs / frame', 'saved'))
    assert check_rows(table, figures('mIoU', 'GFLOPs / frame', 'saved')) >= 3


def test_the_card_tables_are_the_evaluation():
    text = (MODEL / 'README.md').read_text()
    section = text.split('## Results on CamVid val')[1]
    sweep = sweep_table(section, tuple(FIGURES))
    assert check_rows(sweep, FIGURES) >= 8
    names = json.loads((MODEL / 'eval' / 'camvid_val.json').read_text())['meta']['class_names']
    per_class = sweep_table(section, ('mIoU', 'Pole', 'Bicyclist'))
    head = per_class[0]
    assert len(head) == 2 + len(names)          # ξ, mIoU, then the classes in the JSON's order
    columns = {h: partial(class_iou, i) for i, h in enumerate(head[2:])}
    assert check_rows(per_class, {**figures('mIoU'), **columns}) >= 3


def test_number_and_tables_parse_what_the_documents_write():
    assert number('**0.8 (default)**') == 0.8 and number('−0.1 %') == -0.1
    assert number('—') is None and number('1 (no exits)') == 1
    t = tables('x\n| ξ | mIoU |\n|---|---|\n| 1 | 2.5 |\n\n| a |\n')
    assert t == [[['ξ', 'mIoU'], ['1', '2.5']], [['a']]]
