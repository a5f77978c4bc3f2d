"""`genlab serve`: a local web playground for run folders (needs the `serve` extra: FastAPI and uvicorn).

roots.py finds the runs and compare reports inside the served folders; sampling.py checks a request and
draws it (the form is built from each family's SampleOption declarations); jobs.py keeps models in a
bounded cache and runs jobs in worker threads; app.py is the HTTP face; static/ the page (no CDN).
"""
