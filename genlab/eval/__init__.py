"""Layer 4, metrics: tensors in, numbers out; nothing here runs a generative model.

`features` (evaluator networks trained locally, with their on-disk `cache`), `metrics` (image
metrics on features), `toy` (2-D metrics), `scores` (samples against the held-out split, each
number beside its real-vs-real floor). Running a model to score it lives in `genlab.engine.evaluate`.
"""
