"""Reports built from run directories only: fedlab-compare, its plots, the model card."""
