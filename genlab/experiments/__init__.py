"""Layer 7, experiments: studies that train and score many runs through the engine, and report on them.

`compare` (plan, execute, score, conclude, report) is the first; multi-stage pipelines (autoencoder
then latent diffusion; SFT, reward model, PPO/DPO) and the augmentation study land here too. Only
this layer runs training from inside the library.
"""
