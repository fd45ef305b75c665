"""Optional dependencies (setup.py extras) with a clear message when one is missing.

The node needs none of them: matplotlib draws dovit-eval's plot (`plots` extra),
cityscapesscripts holds the Cityscapes class table (`cityscapes` extra).
"""
from __future__ import annotations

import importlib

EXTRAS = {'matplotlib': 'plots', 'cityscapesscripts': 'cityscapes'}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message says how to install it."""


def require(module: str, purpose: str) -> None:
    """Import `module` (a key of EXTRAS) or raise MissingExtra naming the pip extra."""
    try:
        importlib.import_module(module)
    except ImportError as e:
        extra = EXTRAS[module]
        raise MissingExtra(f'{purpose} needs {module}, which is not installed ({e}): '
                           f'pip install "dovit_ros[{extra}]" (or {module})') from None
