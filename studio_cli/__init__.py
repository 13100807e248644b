"""The `studio` command: Studio's API from a terminal."""
