"""Loads another benchmark of this folder as a module (their file names have dashes, so `import`
cannot), once per process, without leaving a __pycache__ behind."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

sys.dont_write_bytecode = True


def load(name: str, file: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as `import` would: its classes name their module
    spec.loader.exec_module(module)
    return module
