"""Per-client state that survives across rounds: control variates, personal layers, local models.

Stateful algorithms (SCAFFOLD, FedDyn, MOON, FedBN, FedPer, FedRep, Ditto; see
:mod:`fedlab.fl.algorithms`) keep something per client between the rounds it takes part in.
Flower's ``Context.state`` keeps it in the memory of the node (gone with the process, and 10,000
simulated clients would all sit in RAM), so fedlab keeps it on disk instead, one small
safetensors file per client and version, loaded only when that client is sampled:

``<root>/<client id>/<round>.safetensors``

A client reads the newest version written *before* the current round and writes one for the
current round; it keeps its two newest versions. That is exactly what a resumed run needs: the
run's checkpoint is written at the end of every round, so when a run is killed during round r
the checkpoint is round r-1, every client's newest version before r is intact, and a version r
left by the killed round is simply written again when round r is redone (the training is
seeded by round and client, so it is the same). No server coordination is needed, so the rule
holds on every engine: in simulation the store is the run directory's ``client_state/``
(in-process and Ray actors share the file system), on Flower's Deployment Engine each
SuperNode keeps its own clients' files (:mod:`fedlab.engines.deployment`).

safetensors holds only tensors, so reading a state file can never execute code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fedlab.record.run_dir import atomic_path

#: The store's folder in a run directory.
STATE_DIR = "client_state"
SUFFIX = ".safetensors"
#: Versions kept per client: the one the next round reads, and the one being written.
KEEP = 2


class ClientStateStore:
    """Each client's state as versioned safetensors files under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _versions(self, client: int) -> list[int]:
        """The rounds this client has saved state for, oldest first."""
        try:
            names = os.listdir(self.root / str(client))
        except FileNotFoundError:
            return []
        # ROUND.safetensors only: a write killed half-way leaves a hidden temporary file
        return sorted(int(n[: -len(SUFFIX)]) for n in names if n.endswith(SUFFIX)
                      and n[: -len(SUFFIX)].isdigit())

    def _path(self, client: int, server_round: int) -> Path:
        return self.root / str(client) / f"{server_round}.safetensors"

    def load(self, client: int, before_round: int) -> dict[str, torch.Tensor]:
        """The client's newest state saved in a round before ``before_round`` ({} if none)."""
        from safetensors.torch import load_file

        older = [r for r in self._versions(client) if r < before_round]
        return load_file(str(self._path(client, older[-1]))) if older else {}

    def save(self, client: int, server_round: int, state: dict[str, torch.Tensor]) -> None:
        """Write the client's state after ``server_round`` (atomically) and drop the versions
        no resume can need."""
        from safetensors.torch import save_file

        path = self._path(client, server_round)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp))
        for old in self._versions(client)[:-KEEP]:
            self._path(client, old).unlink(missing_ok=True)

    def clients(self) -> list[int]:
        """The clients that have saved any state."""
        if not self.root.is_dir():
            return []
        return sorted(int(p.name) for p in self.root.iterdir() if p.name.isdigit())
