"""Federated learning proper: model, local training, client app, schedule, grid, strategies and
the server app."""
