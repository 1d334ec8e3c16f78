"""ShuffleNetV2's blocks, written by hand as torchvision does (no torchvision): ``chunk`` of the
trunk, ``cat`` with a branch, and ``channel_shuffle`` (view into 2 groups, transpose, view back).

They prune exactly. Known limit (see the bench's zoo table): ``chunk`` couples the two halves
position by position and the shuffle pairs each half's channel with the branch's, so each stride-1
block halves the trunk's units (a trunk unit is 2^k channels after k blocks; ShuffleNetV2's
stage 2 and 3 trunks, with odd widths, end as one unit and are kept whole). Equal halves only
need equal kept counts, which the planner cannot express yet.
"""

import torch
from torch import nn

from sparseprune.structured import plan

from .macs import assert_macs_agree
from .models import channel_shuffle
from .zoo_models import conv_bn_act, randomize


class ShuffleBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        half = cout // 2
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn_act(cin, cin, 3, stride, groups=cin, act=None),
                                         conv_bn_act(cin, half))
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            conv_bn_act(cin if stride > 1 else half, half),
            conv_bn_act(half, half, 3, stride, groups=half, act=None),
            conv_bn_act(half, half),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn_act(3, 24, 3, 2)
        self.stage = nn.Sequential(ShuffleBlock(24, 64, 2), ShuffleBlock(64, 64, 1),
                                   ShuffleBlock(64, 64, 1))
        self.last = conv_bn_act(64, 128)
        self.fc = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.last(self.stage(self.stem(x))).mean([2, 3]))


def test_shufflenet_blocks_prune_exactly():
    torch.manual_seed(0)
    model = randomize(ShuffleNet()).eval()
    x = torch.randn(2, 3, 32, 32)
    p = plan(model, x, amount=0.5, round_to=1, min_channels=1)
    small = p.apply()
    with torch.no_grad():
        torch.testing.assert_close(small(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)
    assert [u.node for u in p.unprunable] == ["output"]
    assert_macs_agree(p, model, small, x)
    # the branches are pruned; the trunk (32 + 32 channels, two chunks) in units of 4 channels
    assert small.stage[1].branch2[0][0].out_channels < 32
    trunk = next(g for g in p.graph.groups if "stage.0.branch1.1.0" in g.producers)
    assert trunk.unit_channels == 4 and len(trunk) == 8
