"""The public REST API: generate, read, list and cancel generations."""
