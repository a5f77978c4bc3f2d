"""Layer 6, the engine: typed run configs, the trainer and its callbacks, run folders, safe checkpoints,
the NaN guard, memory checks, and scoring or interpolating a trained run.

Everything that trains or loads one run lives here; experiments that train many runs are in
`genlab.experiments`, and the command line that calls both in `genlab.cli`.
"""
