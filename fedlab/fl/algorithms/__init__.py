"""Algorithms whose clients do more than train the global model: each module pairs a client
update (:class:`fedlab.fl.algorithms.base.ClientUpdate`) with its Flower server strategy, and
each has one ``conf/strategy/<name>.yaml`` citing its paper."""
