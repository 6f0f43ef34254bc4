"""ctr.train: the Lightning task, optimizers, callbacks and the train/eval runner."""
