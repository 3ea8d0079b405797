"""Data: datasets and how their examples are partitioned among the clients."""
