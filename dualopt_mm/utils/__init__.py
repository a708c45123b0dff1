"""Helpers shared by the entry points of this repository (``tools/train.py``, ``tools/test.py``)."""
