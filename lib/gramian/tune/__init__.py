"""`gramian tune`: hyper-parameter search on a validation split of `train` (Optuna TPE, median pruning).

job (the stage), validation (the split and its scoring), space (tune.space -> suggestions -> model config),
study (the SQLite study and its copy in the artifact store), profile (the best setting as a conf file).
"""
