"""Training: the loop, evaluation modes, checkpoints, run directories, optimizer/schedule/loss builders."""
