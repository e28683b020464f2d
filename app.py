"""`python app.py [RUN_DIR]`: serve a finished run (default: the newest under runs/) at
http://127.0.0.1:5000. Same as `distillora serve`."""

import sys

from distillora.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if args and not args[0].startswith("-"):
        args = ["--run", *args]
    raise SystemExit(main(["serve", *args]))
