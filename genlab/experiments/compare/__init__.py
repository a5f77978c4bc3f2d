"""`genlab compare`: every family on the same data, budget and seeds, scored alike, with a report.

Modules, each importing only those before it: `settings` (the plan: runs, budgets, results),
`conclusions` (a pure function of the results table), `figures`, `scoring` (one run's scores),
`report` (Markdown, HTML, CSV), `execute` (train, score, cache, report).
"""
