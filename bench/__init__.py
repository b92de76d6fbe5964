"""The side-by-side benchmark: ``./bench/run`` (or ``python -m bench --help``)."""
