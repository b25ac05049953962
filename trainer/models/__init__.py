"""Model variants behind one registry (see :mod:`trainer.models.registry`).

Importing this package registers every variant: ``v1`` (the FeatherFace V1 teacher) and, when its
module exists, ``nano_b`` (the student).
"""

from __future__ import annotations

import importlib

from trainer.models.registry import (
    available_models,
    build_model,
    count_parameters,
    parameter_table,
    register,
)

# Explicit list of the modules that register variants; add a new variant's module here.
_VARIANT_MODULES = ("trainer.models.v1", "trainer.models.nano_b")

for _mod in _VARIANT_MODULES:
    try:
        importlib.import_module(_mod)
    except ModuleNotFoundError as _exc:
        # Only a variant module that does not exist yet is optional; a missing dependency inside
        # an existing one is a real error and propagates.
        if _exc.name != _mod:
            raise

__all__ = ["available_models", "build_model", "count_parameters", "parameter_table", "register"]
