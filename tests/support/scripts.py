"""The repository's scripts (scripts/*.py) as modules, for the tests of their pure parts."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from support.paths import SCRIPTS


def script(name: str) -> ModuleType:
    """scripts/<name>.py, imported by name: the scripts import their neighbours that way, so
    scripts/ goes on sys.path first."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module(name)
