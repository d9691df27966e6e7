"""`fcos-exp report`: build.py reads the runs and writes the report; sections.py lays it out, figures.py
draws, html.py renders, tuning.py reads the Optuna study."""
from .build import run

__all__ = ["run"]
