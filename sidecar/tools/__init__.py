"""Command-line tools that work on the recorded topics: ``detect``, ``replay``."""
