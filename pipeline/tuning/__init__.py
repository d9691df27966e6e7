"""`fcos-exp tune`: an Optuna study over a search space declared in data (space.py), where each trial trains
and validates (objective.py) as a nested MLflow run, in a study shared by workers through a storage
(storage.py), driven and summarised by study.py."""
