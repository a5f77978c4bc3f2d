"""`genlab augment`: does synthetic data from each generative family help a classifier?

design.py (settings, the labelled subsets, the validation carve), leakage.py (what a generator saw,
checked against the test split), classifier.py (the fixed small CNN, classic augmentation, mixing),
generators.py (class-conditional sampling from each family, trained on the labelled subset only),
diagnostics.py (memorisation, per-class precision/recall/coverage), study.py (the arms of one cell,
the loop, reuse of finished cells), report.py (table, paired tests, figures, conclusions).
"""
