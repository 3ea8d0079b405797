"""The run record: the run directory, checkpoints, and the one reader every report uses."""
