"""Layer 5, generative families: one LightningModule per family with the common face of models/base.py.

Importing this package loads no torch: the family classes are in `genlab.models.registry`
(imported where a model is built), their config sections and sampling options in
`genlab.models.specs`, which the command line reads without Lightning.
"""
