"""FeatherFace deploy tooling, run from a checkout as ``python -m deploy {build,install,rollback,push}``.

Not part of the wheel: it builds the bundle (``bundle``), installs it on a device (``install``, which is
also copied into the bundle and runs there with nothing but the system ``python3``), and pushes it to
many devices over ssh (``push``). See docs/deploy.md.
"""
