"""FeatherFace trainer: V1 teacher, Nano-B student, distillation, B-FPGM pruning, evaluation, export."""

import sys

# The package installs on Python 3.10 for the edge (JetPack 6); the trainer itself uses 3.11's stdlib.
if sys.version_info < (3, 11):  # noqa: UP036 - ruff assumes 3.11 for trainer/
    raise ImportError(
        f"the FeatherFace trainer needs Python >= 3.11 (this is {sys.version.split()[0]}); "
        "the edge daemon (featherface-edge) runs on 3.10"
    )
