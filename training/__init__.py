"""Training side of capserve: the model zoo, offline data sets, the training CLI, checkpoints."""
