"""Small models written for the structured-pruning tests (no downloads)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class VGG(nn.Module):
    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            conv_bn(3, w), conv_bn(w, w), nn.MaxPool2d(2),
            conv_bn(w, 2 * w), conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * w * 4 * 4, 64), nn.ReLU(), nn.Dropout(),
            nn.Linear(64, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.down is None else self.down(x)
        return F.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 layout (2-2-2-2 basic blocks); ``width`` = 64 gives the real widths."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        layers, cin = [], w
        for i, cout in enumerate((w, 2 * w, 4 * w, 8 * w)):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [] if expand == 1 else [conv_bn(cin, hidden, 1)]
        layers += [
            conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 layout; ``width_mult=1`` and the full table give the real model."""

    FULL = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1)]
    SMALL = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2)]

    def __init__(self, classes: int = 10, table=None, last: int = 1280) -> None:
        super().__init__()
        table = table or self.SMALL
        cin = 32
        layers = [conv_bn(3, cin, 3, 2)]
        for t, c, n, s in table:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


class Inception(nn.Module):
    def __init__(self, cin: int = 32) -> None:
        super().__init__()
        self.stem = conv_bn(3, cin)
        self.b1 = conv_bn(cin, 16, 1)
        self.b2 = nn.Sequential(conv_bn(cin, 24, 1), conv_bn(24, 32, 3))
        self.b3 = nn.Sequential(conv_bn(cin, 16, 1), conv_bn(16, 16, 5))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, 16, 1))
        self.head = conv_bn(80, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)
        x = self.head(x).mean((2, 3))
        return self.fc(x)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, branch, 1, bias=False), nn.BatchNorm2d(branch),
                nn.ReLU(inplace=True),
            )
        bin_ = cin if stride > 1 else branch
        self.branch2 = nn.Sequential(
            nn.Conv2d(bin_, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(inplace=True),
            nn.Conv2d(branch, branch, 3, stride, 1, groups=branch, bias=False),
            nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, widths=(48, 96), classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(3, 24, 3, 2)
        blocks, cin = [], 24
        for w in widths:
            blocks += [ShuffleBlock(cin, w, 2), ShuffleBlock(w, w, 1), ShuffleBlock(w, w, 1)]
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.last = conv_bn(cin, 128, 1)
        self.fc = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.last(self.blocks(self.stem(x)))
        return self.fc(x.mean([2, 3]))


class Attention(nn.Module):
    """q/k/v Linear + reshape attention, heads from ``self.num_heads`` (no hand-written map)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, -1)
        return self.proj(x)


class SplitAttention(nn.Module):
    """Separate q/k/v Linears, ``view`` + ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q = self.q(x).view(B, N, self.heads, -1).transpose(1, 2)
        k = self.k(x).view(B, N, self.heads, -1).transpose(1, 2)
        v = self.v(x).view(B, N, self.heads, -1).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).flatten(2))


class TorchMHA(nn.Module):
    """``nn.MultiheadAttention`` self-attention (its heads are pruned, embed_dim is kept)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(x, x, x, need_weights=False)[0]


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int, split: bool | str = False,
                 norm: type = nn.LayerNorm) -> None:
        super().__init__()
        self.norm1 = norm(dim)
        if split == "mha":
            self.attn = TorchMHA(dim, heads)
        else:
            self.attn = SplitAttention(dim, heads) if split else Attention(dim, heads)
        self.norm2 = norm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4, mlp: int = 128,
                 patch: int = 8, image: int = 32, classes: int = 10,
                 split: bool | str = False, norm: type = nn.LayerNorm) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        n = (image // patch) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads, mlp, split, norm)
                                      for _ in range(depth)])
        self.norm = norm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class SEBlock(nn.Module):
    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c, c // r)
        self.fc2 = nn.Linear(c // r, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.size()
        s = F.adaptive_avg_pool2d(x, 1).view(b, c)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s)))).view(b, c, 1, 1)
        return x * s


class SENet(nn.Module):
    def __init__(self, w: int = 32) -> None:
        super().__init__()
        self.c1 = conv_bn(3, w)
        self.c2 = conv_bn(w, 2 * w)
        self.se = SEBlock(2 * w)
        self.c3 = nn.Conv2d(2 * w, 2 * w, 1)
        self.se2 = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(2 * w, w, 1), nn.ReLU(),
                                 nn.Conv2d(w, 2 * w, 1), nn.Hardsigmoid())
        self.fc = nn.Linear(2 * w, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(self.c2(self.c1(x)))
        x = self.c3(x)
        x = x * self.se2(x)
        return self.fc(x.mean((2, 3)))


class UNet(nn.Module):
    def __init__(self, w: int = 16) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(conv_bn(3, w), conv_bn(w, w))
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), conv_bn(w, 2 * w), conv_bn(2 * w, 2 * w))
        self.mid = nn.Sequential(nn.MaxPool2d(2), conv_bn(2 * w, 4 * w))
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2)
        self.dec2 = conv_bn(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, 2)
        self.dec1 = nn.Sequential(conv_bn(2 * w, w), nn.GroupNorm(4, w))
        self.out = nn.Conv2d(w, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        m = self.mid(e2)
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), F.interpolate(e1, scale_factor=1.0)], 1))
        return self.out(d1)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 96), nn.Tanh(),
                                 nn.Linear(96, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, 32, 5, padding=2), nn.BatchNorm1d(32), nn.ReLU(),
            nn.Conv1d(32, 64, 5, stride=2, padding=2), nn.BatchNorm1d(64), nn.ReLU(),
            nn.Conv1d(64, 64, 3, padding=1, groups=4), nn.ReLU(),
        )
        self.fc = nn.Linear(64 * 20, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net(x).flatten(1))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm/GroupNorm/LayerNorm/RMSNorm layers non-trivial statistics and affine
    params."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)):
            n = m.weight.shape[0]
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)) and m.weight is not None:
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


# name -> (factory, example input)
MODELS = {
    "vgg": (lambda: VGG(), lambda: torch.randn(2, 3, 16, 16)),
    "resnet18": (lambda: ResNet18(), lambda: torch.randn(2, 3, 64, 64)),
    "mobilenetv2": (lambda: MobileNetV2(), lambda: torch.randn(2, 3, 64, 64)),
    "inception": (lambda: Inception(), lambda: torch.randn(2, 3, 16, 16)),
    "shufflenetv2": (lambda: ShuffleNetV2(), lambda: torch.randn(2, 3, 32, 32)),
    "vit": (lambda: ViT(), lambda: torch.randn(2, 3, 32, 32)),
    "vit_sdpa": (lambda: ViT(split=True), lambda: torch.randn(2, 3, 32, 32)),
    "vit_mha": (lambda: ViT(split="mha"), lambda: torch.randn(2, 3, 32, 32)),
    "vit_rms": (lambda: ViT(norm=nn.RMSNorm), lambda: torch.randn(2, 3, 32, 32)),
    "se": (lambda: SENet(), lambda: torch.randn(2, 3, 16, 16)),
    "unet": (lambda: UNet(), lambda: torch.randn(2, 3, 32, 32)),
    "mlp": (lambda: MLP(), lambda: torch.randn(4, 20)),
    "conv1d": (lambda: Conv1dNet(), lambda: torch.randn(2, 1, 40)),
}


# name -> factory of the real-size models the structured benchmarks time at 224x224
FULL_SIZE = {
    "resnet18": lambda: ResNet18(width=64, classes=1000),
    "mobilenetv2": lambda: MobileNetV2(classes=1000, table=MobileNetV2.FULL),
    # ViT-B/16's shape with nn.MultiheadAttention, as torchvision builds it (no torchvision)
    "vit_b16": lambda: ViT(dim=768, depth=12, heads=12, mlp=3072, patch=16, image=224,
                           classes=1000, split="mha"),
}
