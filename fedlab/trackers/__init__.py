"""Trackers: everything a run measures (privacy, carbon, devices, and user-defined ones)
behind one interface (:mod:`fedlab.trackers.base`)."""
