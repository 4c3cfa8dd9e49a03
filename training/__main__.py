"""``python -m training ARCH ...``: see :mod:`training.cli`."""

from training.cli import run

raise SystemExit(run())
