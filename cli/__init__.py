"""The `hyperclone` command line: a thin Typer layer over the Python API (installed as hyperclone_cli)."""
