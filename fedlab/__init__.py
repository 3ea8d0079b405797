"""fedlab: federated learning experiments where privacy and carbon are first-class results.

The stages, one module each, in the order data flows through a run:

    config / experiment   the Hydra config, checked against dataclasses at start-up
    datasets / partition  the examples, and which client holds which (flwr-datasets)
    model / training      the PyTorch networks and their local train/evaluate loops
    client_app            what a client does when asked to train or evaluate
    schedule / grid       the seeded round schedule, applied to Flower's Grid
    strategy / server_app Flower strategies and the ServerApp that runs them
    privacy / carbon      DP-SGD and DP-FedAvg with their accountants; energy and emissions
    simulation            Flower's simulation engine (Ray)
    record / checkpoint   the run directory every report reads; per-round checkpoints
    compare / plots / model_card   reports built from run directories only
    run / cli             one run end to end; the `fedlab-run` entry point
"""

__version__ = "0.1.0"
