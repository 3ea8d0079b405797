"""The monitoring tracker (``monitoring=prometheus``): round metrics served for Prometheus while
a run lasts; see :mod:`.tracker`."""
