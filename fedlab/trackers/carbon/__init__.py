"""Carbon accounting for federated-learning simulations (docs/carbon.md).

A simulation runs every client on one host, so the only energy that can be *measured* is the
host's. The modules turn that one measurement into the numbers a federated-learning study
needs; import each name from its module:

* :mod:`~fedlab.trackers.carbon.intensity`: regions, their carbon intensity (CodeCarbon's
  data, hourly profiles), which client is where;
* :mod:`~fedlab.trackers.carbon.network`: the energy of moving the model over each link;
* :mod:`~fedlab.trackers.carbon.attribution`: CodeCarbon's power model and the split of the
  measured energy among clients and server, parts + residual == total;
* :mod:`~fedlab.trackers.carbon.host`: the CodeCarbon measurement itself (offline only), and
  whether it was measured by a hardware counter or estimated;
* :mod:`~fedlab.trackers.carbon.readings`: what CodeCarbon measured, per round and run;
* :mod:`~fedlab.trackers.carbon.ledger`: the per-round and per-client rows and totals;
* :mod:`~fedlab.trackers.carbon.accounting`: one run's accounting, round by round;
* :mod:`~fedlab.trackers.carbon.checks`: the start-up checks;
* :mod:`~fedlab.trackers.carbon.tracker`: all of it as a run's tracker.
"""
