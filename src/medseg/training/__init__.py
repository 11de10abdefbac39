"""Plan + arrays -> checkpoints: the loop, its callbacks, state and resume."""
