"""Autoregressive networks: the gated PixelCNN for images and MADE for vectors. Each emits, for
every dimension, the parameters of its conditional given the dimensions before it (the
distributions themselves are in genlab.nn.distributions).

Gated PixelCNN without a blind spot (van den Oord et al. 2016, "Conditional Image Generation
with PixelCNN Decoders"): a vertical and a horizontal stack of gated masked convolutions.

``forward(x, cond) -> (B, out_channels, H, W)`` gives, at pixel i (raster order), parameters
that depend only on the pixels before i: every channel of the rows above and the pixels to
the left in the same row, never pixel i itself. The masks are written as shifts and
one-sided padding, as in the code of PixelCNN++ (Salimans et al. 2017):

- the vertical stack sees the image shifted down one row, through convolutions of kernel
  (k // 2 + 1, k) padded only above: its features at row r depend on rows < r only;
- the horizontal stack sees the image shifted right one column, through convolutions of kernel
  (1, k // 2 + 1) padded only on the left, plus (1x1) the vertical stack's features at the same
  position: it depends on row r left of the pixel, and on the rows above.

Because the vertical stack reaches the whole width above a pixel, there is no blind spot: with
L layers of radius r = k // 2, output i depends on every pixel before i once L r >= max(W - 1, H - 2).

Each layer is the gated activation unit (Eq. 2), with class conditioning as a learned per-class
bias (Eq. 4, V^T h with h the one-hot label):

    y = tanh(W_{k,f} * x + V_{k,f}^T h) . sigmoid(W_{k,g} * x + V_{k,g}^T h).

The split `vertical_stack` / `horizontal_stack` lets a sampler (`raster_scan`) compute the
vertical features of a row once and then run only the horizontal stack, on that one row, for
each pixel of it: at 16x16 about 30x fewer pixel evaluations than a full pass per pixel.

MADE, the masked autoencoder for distribution estimation (Germain et al. 2015), for vectors.

``forward(x, cond) -> (B, D, P)``: P distribution parameters for each coordinate d, computed
only from the coordinates before it, x_{<d}, so that p(x) = prod_d p(x_d | x_{<d}) is a
normalised autoregressive model. The connectivity is set by degrees (Germain et al. 2015,
Sec. 4): inputs have degrees m(d) = d in {1, ..., D}, hidden units degrees m(k) in
{1, ..., D - 1} (assigned cyclically, so every degree is present), and

    hidden masks  M^W_{k',k} = 1[m(k') >= m(k)]   (k' a unit, k a unit or input of the layer below),
    output mask   M^V_{d,k}  = 1[d > m(k)],

so output d sees exactly the inputs of degree < d. Class labels enter as a per-class bias of
every hidden layer and of the output (they are not coordinates, so any unit may see them).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MADE", "GatedLayer", "GatedPixelCNN", "MaskedLinear", "down_shift", "gate", "made_degrees", "right_shift"]


def down_shift(x: Tensor) -> Tensor:
    """Move rows down by one, a zero row entering at the top. (B, C, H, W) -> same shape."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def right_shift(x: Tensor) -> Tensor:
    """Move columns right by one, a zero column entering on the left. (B, C, H, W) -> same shape."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


def gate(x: Tensor) -> Tensor:
    """tanh(a) . sigmoid(b) of the two channel halves (a, b) of x: (B, 2C, H, W) -> (B, C, H, W) (Eq. 2)."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated layer of both stacks (van den Oord et al. 2016, Fig. 2), with optional class biases.

    Args:
        in_channels: channels of both stacks' input.
        channels: channels p of both stacks' output (2p before the gate).
        kernel_size: k (odd); the vertical kernel is (k // 2 + 1, k), the horizontal one (1, k // 2 + 1).
        num_classes: classes of the label bias, or None.
        residual: add the horizontal input to its output (every layer but the first).
    """

    def __init__(self, in_channels: int, channels: int, kernel_size: int, num_classes: int | None,
                 residual: bool) -> None:
        super().__init__()
        if kernel_size % 2 == 0 or kernel_size < 3:
            raise ValueError(f"kernel_size must be odd and >= 3, got {kernel_size}")
        self.radius = kernel_size // 2
        self.residual = residual
        self.v_conv = nn.Conv2d(in_channels, 2 * channels, (self.radius + 1, kernel_size))
        self.h_conv = nn.Conv2d(in_channels, 2 * channels, (1, self.radius + 1))
        self.link = nn.Conv2d(2 * channels, 2 * channels, 1)  # vertical -> horizontal
        self.h_out = nn.Conv2d(channels, channels, 1)
        self.v_label = nn.Embedding(num_classes, 2 * channels) if num_classes else None
        self.h_label = nn.Embedding(num_classes, 2 * channels) if num_classes else None

    @staticmethod
    def _label_bias(table: nn.Embedding | None, cond: Tensor | None) -> Tensor | float:
        """(B, 2p, 1, 1) class bias, or 0 without labels."""
        if table is None:
            return 0.0
        if cond is None:
            raise ValueError("this class-conditional network needs labels `cond`")
        return table(cond)[:, :, None, None]

    def vertical(self, v: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(pre-gate features (B, 2p, H, W) for the link, gated output (B, p, H, W)) of vertical input v."""
        pre = self.v_conv(F.pad(v, (self.radius, self.radius, self.radius, 0))) + self._label_bias(self.v_label, cond)
        return pre, gate(pre)

    def horizontal(self, h: Tensor, v_pre: Tensor, cond: Tensor | None = None) -> Tensor:
        """Horizontal output (B, p, H, W) from horizontal input h and the vertical pre-gate features v_pre."""
        pre = self.h_conv(F.pad(h, (self.radius, 0, 0, 0))) + self.link(v_pre) + self._label_bias(self.h_label, cond)
        out = self.h_out(gate(pre))
        return h + out if self.residual else out


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN ``forward(x, cond) -> (B, out_channels, H, W)``, causal in raster order.

    The input gets a channel of ones (PixelCNN++), so the zero padding at the top and left
    borders is told apart from mid-grey pixels. The output head is two 1x1 convolutions.

    Args:
        in_channels: image channels C.
        out_channels: parameters per pixel (C times the parameters of one channel's distribution).
        channels: feature maps p of each stack.
        layers: gated layers L (the receptive field grows by k // 2 per layer).
        kernel_size: k, odd.
        num_classes: classes for conditioning (labels in [0, num_classes)), or None.
        head_channels: width of the output head (None: 4 p).
        out_bias: initial bias of the last layer (out_channels,), or None (PyTorch's default).
    """

    def __init__(self, in_channels: int, out_channels: int, channels: int = 64, layers: int = 8, kernel_size: int = 5,
                 num_classes: int | None = None, head_channels: int | None = None,
                 out_bias: Tensor | None = None) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1 or channels < 1 or layers < 1:
            raise ValueError(f"GatedPixelCNN needs positive sizes, got in={in_channels}, out={out_channels}, "
                             f"channels={channels}, layers={layers}")
        self.in_channels, self.out_channels, self.num_classes = in_channels, out_channels, num_classes
        self.radius = kernel_size // 2
        self.layers = nn.ModuleList(
            GatedLayer(in_channels + 1 if i == 0 else channels, channels, kernel_size, num_classes, residual=i > 0)
            for i in range(layers)
        )
        head = head_channels or 4 * channels
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, head, 1), nn.ReLU(), nn.Conv2d(head, out_channels, 1))
        if out_bias is not None:
            with torch.no_grad():
                self.head[-1].bias.copy_(out_bias)

    def receptive_field_covers(self, height: int, width: int) -> bool:
        """Whether output i depends on every pixel before i on an image of this size (no blind spot, deep enough)."""
        return len(self.layers) * self.radius >= max(width - 1, height - 2)

    def _with_ones(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"GatedPixelCNN expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # (B, C + 1, H, W)

    def vertical_stack(self, x: Tensor, cond: Tensor | None = None) -> list[Tensor]:
        """Pre-gate vertical features of every layer, each (B, 2p, H, W); row r depends on rows < r of x."""
        v = down_shift(self._with_ones(x))
        links = []
        for layer in self.layers:
            pre, v = layer.vertical(v, cond)
            links.append(pre)
        return links

    def horizontal_stack(self, x: Tensor, links: list[Tensor], cond: Tensor | None = None) -> Tensor:
        """Output (B, out_channels, H, W) from x and the `vertical_stack` features of the same rows and columns.

        Every operation here acts within one row and looks only left, so x and links may be cut to
        any rows and to the columns [0, c]: the outputs there are unchanged.
        """
        h = right_shift(self._with_ones(x))
        for layer, v_pre in zip(self.layers, links, strict=True):
            h = layer.horizontal(h, v_pre, cond)
        return self.head(h)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Distribution parameters at every pixel, each a function of the pixels before it.

        Args:
            x: (B, C, H, W) images (pixels in [-1, 1]).
            cond: optional (B,) int64 class labels (required when num_classes is set).

        Returns:
            (B, out_channels, H, W).
        """
        return self.horizontal_stack(x, self.vertical_stack(x, cond), cond)

    def raster_scan(self, x: Tensor, cond: Tensor | None = None) -> Iterator[tuple[int, int, Tensor]]:
        """Yield (r, c, output (B, out_channels) at pixel (r, c)) in raster order, reading x as it is then.

        For ancestral sampling: the caller writes pixel (r, c) of x in place before asking for the
        next one. The vertical stack runs once per row on rows [0, r], the horizontal stack once per
        pixel on row r, columns [0, c]; on an unchanged x the outputs equal `forward(x)`'s.
        """
        _, _, height, width = x.shape
        for r in range(height):
            links = [v[:, :, r : r + 1] for v in self.vertical_stack(x[:, :, : r + 1], cond)]  # each (B, 2p, 1, W)
            for c in range(width):
                out = self.horizontal_stack(x[:, :, r : r + 1, : c + 1], [v[..., : c + 1] for v in links], cond)
                yield r, c, out[:, :, 0, c]


# ---------------------------------------------------------------- MADE (vectors)


class MaskedLinear(nn.Linear):
    """A linear layer y = (M . W) x + b with a fixed 0/1 mask M (out_features, in_features)."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_features) -> (B, out_features)."""
        return F.linear(x, self.weight * self.mask, self.bias)


def made_degrees(dim: int, hidden: int) -> Tensor:
    """Degrees of `hidden` units, cycling through 1, ..., max(1, dim - 1). (hidden,) int64."""
    return torch.arange(hidden) % max(1, dim - 1) + 1


class MADE(nn.Module):
    """Masked MLP ``forward(x, cond) -> (B, dim, params)``: output d is a function of x_{<d} (and the label).

    Args:
        dim: D, coordinates of a vector.
        params: P, parameters of each coordinate's conditional distribution.
        hidden: width of the hidden layers.
        depth: number of hidden layers.
        num_classes: classes for conditioning, or None.
        out_bias: initial bias of the output layer (D P,), or None (PyTorch's default).
    """

    def __init__(self, dim: int, params: int, hidden: int = 256, depth: int = 3, num_classes: int | None = None,
                 out_bias: Tensor | None = None) -> None:
        super().__init__()
        if dim < 1 or params < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"MADE needs positive sizes, got dim={dim}, params={params}, hidden={hidden}, "
                             f"depth={depth}")
        self.dim, self.params, self.num_classes = dim, params, num_classes
        m_in = torch.arange(1, dim + 1)  # (D,)
        m_hidden = made_degrees(dim, hidden)  # (hidden,)
        m_out = m_in.repeat_interleave(params)  # (D P,): unit d P + p belongs to coordinate d
        masks = [m_hidden[:, None] >= m_in[None, :]]  # (hidden, D)
        masks += [m_hidden[:, None] >= m_hidden[None, :]] * (depth - 1)  # (hidden, hidden)
        masks.append(m_out[:, None] > m_hidden[None, :])  # strict: output d never sees x_d, (D P, hidden)
        self.linears = nn.ModuleList(MaskedLinear(m.float()) for m in masks)
        self.labels = nn.ModuleList(nn.Embedding(num_classes, lin.out_features) for lin in self.linears) \
            if num_classes else None
        if out_bias is not None:
            with torch.no_grad():
                self.linears[-1].bias.copy_(out_bias)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Parameters of p(x_d | x_{<d}) for every d.

        Args:
            x: (B, D) vectors.
            cond: optional (B,) int64 class labels (required when num_classes is set).

        Returns:
            (B, D, P).
        """
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MADE expects input of shape (B, {self.dim}), got {tuple(x.shape)}")
        if self.labels is not None and cond is None:
            raise ValueError("this class-conditional MADE needs labels `cond`")
        h = x
        for i, lin in enumerate(self.linears):
            h = lin(h) if self.labels is None else lin(h) + self.labels[i](cond)
            if i < len(self.linears) - 1:
                h = F.relu(h)
        return h.view(x.shape[0], self.dim, self.params)  # (B, D, P)
