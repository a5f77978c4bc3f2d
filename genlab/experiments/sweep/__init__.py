"""`genlab sweep`: hyperparameter search within a compute budget, on Optuna (an optional extra).

Modules, each importing only those before it: `settings` (sweep.json, metrics, budgets, the folder
layout), `space` (the search-space YAML, checked against the run config's schema), `trial` (train one
run folder for the budget, feed the pruner, score it), `study` (Optuna's TPE and pruner over a shared
journal file; workers, killed trials, the best config), `report` (Markdown, HTML, figures).
"""
