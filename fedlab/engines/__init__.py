"""Engines: where the ServerApp and ClientApps run (Ray simulation, in-process, Flower's
Deployment Engine)."""
