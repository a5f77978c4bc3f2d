"""Layer 1 for energy-based models: block Gibbs sampling, contrastive divergence, AIS and exact partition
functions of restricted Boltzmann machines, as pure functions of an RBM (any `machine.RBMLike`, such as genlab.nn.rbm.RBM) and a generator."""
