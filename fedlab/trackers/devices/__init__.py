"""Simulated edge devices: what the clients' work would cost on phones, boards and laptops.

A simulation runs every client on the researcher's machine, so the energy CodeCarbon measures
is that machine's. This package answers the question the study is about instead: how long
and how much energy would each client's round take on *its* device (Qiu et al., JMLR 2023,
measured FL on real edge hardware for this reason)? The model, every step of it checked by
``tests/test_devices.py`` against hand arithmetic (docs/devices.md):

* **work** is counted in a hardware-neutral unit: FLOPs per example, from PyTorch's own
  ``FlopCounterMode`` over one forward and backward pass of the run's model (forward only for
  evaluation), times the examples a client actually processed (from the local steps it
  reported, exactly as :func:`fedlab.fl.training.train` batches them):
  :mod:`~fedlab.trackers.devices.flops`;
* **time** = FLOPs / the device's sustained throughput; transfers = bytes x 8 / the link's
  bandwidth (down and up), the bytes being the model payload the Grid meters:
  :mod:`~fedlab.trackers.devices.fleet`, with the profiles and which client gets which in
  :mod:`~fedlab.trackers.devices.profiles`;
* **energy** = the device's active power x compute time + its transfer power x transfer
  time (+ its idle power while it waits for the round's slowest client, ``count_idle``);
  **emissions** = energy x the carbon intensity of the client's region at the simulated time:
  :mod:`~fedlab.trackers.devices.ledger`;
* the **simulated clock**: a round lasts its training phase (the slowest trained client,
  or the deadline if a client missed it) plus its evaluation phase (the slowest evaluated
  client); the run's clock is the sum of its rounds. The clock is computed from the seeded
  schedule (:class:`fedlab.fl.schedule.Scheduler`), so carbon-aware selection can read the
  intensity at the start of a round before it runs, and a resumed run needs no saved state.

Start-up checks are in :mod:`~fedlab.trackers.devices.checks`, the tracker in
:mod:`~fedlab.trackers.devices.tracker`. Nothing here replaces the host measurement: the
record keeps both, side by side.
"""
