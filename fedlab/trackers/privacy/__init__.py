"""Differential privacy for fedlab: accounting, noise calibration, DP-SGD, the central-DP wrapper.

Two kinds of privacy live in fedlab and both are accounted by the server:

* **Local (record-level) DP**: each client trains with DP-SGD (Opacus) and only reports what
  actually happened -- ``(noise_multiplier, sample_rate, steps)``; the server composes it
  into that client's persistent accountant, part of the run state, so the epsilon survives
  rounds, restarts and resumes. The run's epsilon is the largest over clients: the guarantee
  of the run is that of its least protected client.
* **Central (user-level) DP**: DP-FedAvg with Flower's DP wrappers over a strategy whose
  declared aggregate is a (post-processed) mean of the clipped updates. Clients are sampled
  at a fixed size without replacement, so no amplification by subsampling is claimed.

The modules, each imported by its exact name:

* :mod:`~fedlab.trackers.privacy.accounting`: epsilon of a history, the noise for a target
  epsilon, one Opacus accountant per client;
* :mod:`~fedlab.trackers.privacy.dpsgd`: DP-SGD around one local-training session (clients);
* :mod:`~fedlab.trackers.privacy.central`: which strategies central DP may wrap (read from
  ``strategy.aggregate``), and Flower's DP wrapper around them;
* :mod:`~fedlab.trackers.privacy.ledger`: planning the noise before a run, and the round-by-round
  ledger the record's ``privacy`` section is written from;
* :mod:`~fedlab.trackers.privacy.tracker`: all of it as a :class:`fedlab.trackers.base.Tracker`;
* :mod:`~fedlab.trackers.privacy.report`: the model card's privacy section.

The range rules of the values (noise, clipping norm, delta, ...) are
:mod:`fedlab.config.privacy_rules`, shared with the config schema.
"""
