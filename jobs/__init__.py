"""Thin Ray job entrypoints (``python -m jobs.<stage>``) and the ``raybalance`` command."""
