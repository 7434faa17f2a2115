"""Child processes the sidecar runs work in, off its GIL: ``child.py`` (the parent's side)
and ``main.py`` (the child's side, ``python -m sidecar.workers.main``)."""
