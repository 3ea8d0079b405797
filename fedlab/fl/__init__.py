"""Federated learning proper: model, local training, client app, schedule, grid, strategies, server app."""
