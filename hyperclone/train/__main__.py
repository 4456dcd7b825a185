"""`python -m hyperclone.train ...` and `accelerate launch -m hyperclone.train ...`: the `hyperclone train` command."""
import sys

from hyperclone_cli.app import app

if __name__ == "__main__":
    app(["train", *sys.argv[1:]], prog_name="hyperclone train")
