"""`make compose-check`: docker-compose.yml run for real on rootful podman, with no registry but Debian's and
PyPI's: the images built here (`images`), the engine set up (`engine`), then the stack brought up with
`make up`, used, scaled, broken and brought down (`stack`); `run` says each step and its time."""
