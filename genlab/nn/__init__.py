"""Layer 2: network architectures, plain nn.Modules with no training or diffusion logic.

Every denoising network has ``forward(x, c_noise, cond=None) -> Tensor`` of the shape of
``x``; ``c_noise`` is a (B,) float tensor chosen by the preconditioner and ``cond`` optional
(B,) int64 class labels, where label ``num_classes`` (and ``cond=None``) means "no label".
:data:`ARCHITECTURES` maps config names to these classes.
"""

from __future__ import annotations

from torch import nn

from genlab.nn.dit import DiT
from genlab.nn.embeddings import (
    NOISE_EMBEDDINGS,
    ConditionEmbedding,
    FourierEmbedding,
    PositionalEmbedding,
)
from genlab.nn.gan import (
    DCGANDiscriminator,
    DCGANGenerator,
    MLPDiscriminator,
    MLPGenerator,
)
from genlab.nn.mlp import MLPDenoiser
from genlab.nn.pixelcnn import MADE, GatedPixelCNN
from genlab.nn.rbm import RBM, BernoulliRBM, DeepBeliefNet, GaussianBernoulliRBM
from genlab.nn.unet import ResolutionError, UNet
from genlab.nn.vae import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, VAENet

__all__ = [
    "ARCHITECTURES",
    "BernoulliRBM",
    "ConditionEmbedding",
    "ConvDecoder",
    "ConvEncoder",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "DeepBeliefNet",
    "DiT",
    "FourierEmbedding",
    "GatedPixelCNN",
    "GaussianBernoulliRBM",
    "MADE",
    "MLPDecoder",
    "MLPDenoiser",
    "MLPDiscriminator",
    "MLPEncoder",
    "MLPGenerator",
    "NOISE_EMBEDDINGS",
    "PositionalEmbedding",
    "RBM",
    "ResolutionError",
    "UNet",
    "VAENet",
    "num_parameters",
]

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "unet": UNet,
    "dit": DiT,
    "mlp": MLPDenoiser,
}


def num_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Return the number of scalar parameters of ``module`` (shared tensors counted once)."""
    # module.parameters() already de-duplicates tied parameters.
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
