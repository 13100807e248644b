"""Local infrastructure launcher and the Skytells simulator: what `make run` and the tests start."""
