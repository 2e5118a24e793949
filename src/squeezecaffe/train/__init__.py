"""Training runs: a run directory from a TrainConfig, the epoch loop over either engine, the plateau LR-drop
controller, the guard, early stop, logs, plots and the report."""
