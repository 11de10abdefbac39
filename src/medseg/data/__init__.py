"""Plan + items -> cached arrays, samples, batches, volumes and patches."""
