"""Front ends: the CLI, the HTTP service and viewer, the demo."""
