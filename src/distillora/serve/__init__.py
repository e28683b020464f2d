"""The web app: `create_app(run_dir)` (Flask app factory) over a `Predictor` that loads a finished
run's models once."""

from .app import create_app, newest_run  # noqa: F401
