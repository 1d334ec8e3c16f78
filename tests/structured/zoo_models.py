"""Small models of the torchvision classification families (no torchvision needed).

Each mirrors how its torchvision family is written where that matters to the dependency rules:
grouped bottlenecks (ResNeXt), group-width blocks with SE (RegNetY), inverted residuals with SE and
stochastic depth (EfficientNet / MobileNetV3), ConvNeXt blocks (depthwise 7x7, a ``Permute``
module, LayerNorm over channels-last, Linear MLP, layer scale, stochastic depth, ``LayerNorm2d``
calling ``F.layer_norm`` with keyword affine parameters as fx records it), and a ViT encoder
with ``nn.MultiheadAttention``. ``unsafe=True`` adds one op whose channels cannot be proven
safe to prune, so each family also checks a refusal at plan time.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn


def stochastic_depth(x: torch.Tensor, p: float, mode: str, training: bool = True) -> torch.Tensor:
    """torchvision.ops.stochastic_depth: drop whole samples (``row``) or the batch."""
    if not training or p == 0.0:
        return x
    survival = 1.0 - p
    size = [x.shape[0]] + [1] * (x.ndim - 1) if mode == "row" else [1] * x.ndim
    noise = torch.empty(size, dtype=x.dtype, device=x.device).bernoulli_(survival)
    return x * noise.div_(survival)


torch.fx.wrap("stochastic_depth")  # as torchvision does: fx records one opaque call


class StochasticDepth(nn.Module):
    """Same attributes and forward as torchvision.ops.StochasticDepth."""

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stochastic_depth(x, self.p, self.mode, self.training)


def conv_bn_act(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1,
                act: type | None = nn.ReLU) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act(inplace=True)) if act else nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: avgpool, 1x1 reduce, act, 1x1 expand, gate."""

    def __init__(self, c: int, squeeze: int, act: type = nn.ReLU,
                 gate: type = nn.Sigmoid) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.activation = act()
        self.scale_activation = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return s * x


class Head(nn.Module):
    """Pool and classify; ``unsafe`` first adds a spatial-attention map averaged over channels
    (CBAM-style), a reduction over the channel dim that pins the last width."""

    def __init__(self, c: int, classes: int, unsafe: bool) -> None:
        super().__init__()
        self.unsafe = unsafe
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unsafe:
            x = x * torch.sigmoid(x.mean(1, keepdim=True))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---- ResNeXt: grouped 3x3 bottlenecks -----------------------------------------------------------


class GroupedBottleneck(nn.Module):
    def __init__(self, cin: int, width: int, cout: int, groups: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn_act(cin, width)
        self.conv2 = conv_bn_act(width, width, 3, stride, groups)
        self.conv3 = conv_bn_act(width, cout, act=None)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = conv_bn_act(cin, cout, 1, stride, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


class ResNeXt(nn.Module):
    """Two stages of 32x4d-style bottlenecks (128 wide, 32 groups of 4; then 256, 32 of 8)."""

    def __init__(self, classes: int = 10, unsafe: bool = False) -> None:
        super().__init__()
        self.stem = conv_bn_act(3, 64, 3, 2)
        self.layer1 = nn.Sequential(GroupedBottleneck(64, 128, 256, 32),
                                    GroupedBottleneck(256, 128, 256, 32))
        self.layer2 = GroupedBottleneck(256, 256, 512, 32, stride=2)
        self.head = Head(512, classes, unsafe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer2(self.layer1(self.stem(x))))


# ---- RegNetY: group width 8, SE on the bottleneck width -----------------------------------------


class RegNetBlock(nn.Module):
    """torchvision's ResBottleneckBlock with bottleneck ratio 1 and SE (RegNetY)."""

    def __init__(self, cin: int, cout: int, stride: int, group_width: int = 8) -> None:
        super().__init__()
        self.a = conv_bn_act(cin, cout)
        self.b = conv_bn_act(cout, cout, 3, stride, cout // group_width)
        self.se = SqueezeExcitation(cout, max(1, cin // 4))
        self.c = conv_bn_act(cout, cout, act=None)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = conv_bn_act(cin, cout, 1, stride, act=None)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = x if self.proj is None else self.proj(x)
        return self.activation(short + self.c(self.se(self.b(self.a(x)))))


class RegNet(nn.Module):
    def __init__(self, classes: int = 10, unsafe: bool = False) -> None:
        super().__init__()
        self.stem = conv_bn_act(3, 32, 3, 2)
        self.trunk = nn.Sequential(RegNetBlock(32, 48, 2), RegNetBlock(48, 48, 1),
                                   RegNetBlock(48, 96, 2), RegNetBlock(96, 96, 1))
        self.head = Head(96, classes, unsafe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(self.stem(x)))


# ---- EfficientNet / MobileNetV3: inverted residuals with SE and stochastic depth ----------------


class MBConv(nn.Module):
    """torchvision's MBConv: expand, depthwise, SE on the expanded width, project, stochastic
    depth on the residual branch."""

    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int, sd: float,
                 act: type = nn.SiLU, gate: type = nn.Sigmoid) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [] if expand == 1 else [conv_bn_act(cin, hidden, act=act)]
        layers += [conv_bn_act(hidden, hidden, k, stride, hidden, act=act),
                   SqueezeExcitation(hidden, max(1, cin // 4), act, gate),
                   conv_bn_act(hidden, cout, act=None)]
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(sd, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_res:
            out = self.stochastic_depth(out) + x
        return out


class EfficientNet(nn.Module):
    """``v3=True``: MobileNetV3 flavour (hardswish, hardsigmoid gates)."""

    def __init__(self, classes: int = 10, unsafe: bool = False, v3: bool = False) -> None:
        super().__init__()
        act, gate = (nn.Hardswish, nn.Hardsigmoid) if v3 else (nn.SiLU, nn.Sigmoid)
        self.stem = conv_bn_act(3, 32, 3, 2, act=act)
        cfg = [(32, 16, 1, 3, 1), (16, 24, 6, 3, 2), (24, 24, 6, 3, 1), (24, 40, 6, 5, 2),
               (40, 40, 6, 5, 1)]
        self.blocks = nn.Sequential(*[
            MBConv(cin, cout, e, k, s, 0.2 * i / len(cfg), act, gate)
            for i, (cin, cout, e, k, s) in enumerate(cfg)
        ])
        self.last = conv_bn_act(40, 160, act=act)
        self.head = Head(160, classes, unsafe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.last(self.blocks(self.stem(x))))


# ---- ConvNeXt -----------------------------------------------------------------------------------


class Permute(nn.Module):
    """torchvision.ops.misc.Permute."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.permute(x, self.dims)


class LayerNorm2d(nn.LayerNorm):
    """torchvision's LayerNorm2d: LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    def __init__(self, dim: int, sd: float) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim), Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, 4 * dim), nn.GELU(),
            nn.Linear(4 * dim, dim), Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.rand(dim, 1, 1) + 0.5)
        self.stochastic_depth = StochasticDepth(sd, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stochastic_depth(self.layer_scale * self.block(x))
        out += x
        return out


class ConvNeXt(nn.Module):
    """``unsafe``: a sigmoid gate before the classifier's LayerNorm, so removed channels reach
    it as sigmoid(0) = 0.5, not zero: its width (the last stage's) cannot shrink exactly."""

    def __init__(self, classes: int = 10, dims: tuple[int, int] = (32, 64),
                 unsafe: bool = False) -> None:
        super().__init__()
        self.unsafe = unsafe
        a, b = dims
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, a, 4, 4), LayerNorm2d(a, eps=1e-6)),
            CNBlock(a, 0.0), CNBlock(a, 0.05),
            nn.Sequential(LayerNorm2d(a, eps=1e-6), nn.Conv2d(a, b, 2, 2)),
            CNBlock(b, 0.1),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(LayerNorm2d(b, eps=1e-6), nn.Flatten(1),
                                        nn.Linear(b, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.sigmoid(x) if self.unsafe else x)


# ---- ViT with nn.MultiheadAttention -------------------------------------------------------------


class EncoderBlock(nn.Module):
    """torchvision's vision_transformer.EncoderBlock (``unsafe``: the averaged attention
    weights are used, so the heads cannot be pruned)."""

    def __init__(self, dim: int, heads: int, mlp: int, unsafe: bool = False) -> None:
        super().__init__()
        self.unsafe = unsafe
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Dropout(0.0),
                                 nn.Linear(mlp, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        y, w = self.self_attention(y, y, y, need_weights=self.unsafe)
        if self.unsafe:
            y = y * w.mean(-1, keepdim=True)
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x))


class VisionTransformer(nn.Module):
    """torchvision's VisionTransformer layout (conv_proj, class token, pos embedding, heads)."""

    def __init__(self, classes: int = 10, dim: int = 64, heads: int = 4, mlp: int = 128,
                 depth: int = 2, patch: int = 8, image: int = 32, unsafe: bool = False) -> None:
        super().__init__()
        self.hidden_dim = dim
        self.patch_size = patch
        self.conv_proj = nn.Conv2d(3, dim, patch, patch)
        n = (image // patch) ** 2 + 1
        self.class_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embedding = nn.Parameter(torch.randn(1, n, dim) * 0.02)
        self.layers = nn.Sequential(*[EncoderBlock(dim, heads, mlp, unsafe and i == 0)
                                      for i in range(depth)])
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.heads = nn.Sequential(nn.Linear(dim, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        p = self.patch_size
        x = self.conv_proj(x).reshape(n, self.hidden_dim, (h // p) * (w // p)).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1) + self.pos_embedding
        x = self.ln(self.layers(x))
        return self.heads(x[:, 0])


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm/LayerNorm statistics and affine params, so exactness means
    something; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                n = m.weight.shape[0]
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


# name -> (factory taking unsafe=, example input shape)
FAMILIES = {
    "resnext": (lambda unsafe=False: ResNeXt(unsafe=unsafe), (2, 3, 32, 32)),
    "regnet": (lambda unsafe=False: RegNet(unsafe=unsafe), (2, 3, 32, 32)),
    "efficientnet": (lambda unsafe=False: EfficientNet(unsafe=unsafe), (2, 3, 32, 32)),
    "mobilenetv3": (lambda unsafe=False: EfficientNet(unsafe=unsafe, v3=True), (2, 3, 32, 32)),
    "convnext": (lambda unsafe=False: ConvNeXt(unsafe=unsafe), (2, 3, 32, 32)),
    "vit": (lambda unsafe=False: VisionTransformer(unsafe=unsafe), (2, 3, 32, 32)),
}
