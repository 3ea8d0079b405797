"""The audit tracker (``trackers.audit``): per-round drift, and the final model's fairness audit
(Fairlearn) and explanations (Captum Integrated Gradients); see :mod:`.tracker`."""
