"""FeatherFace edge: camera -> detector -> tracker -> MQTT face events.

This package must never import torch or ``trainer`` (see tests/edge/test_no_torch.py):
it runs on devices where neither is installed.
"""

__version__ = "0.1.0"
