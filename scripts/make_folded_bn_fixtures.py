#!/usr/bin/env python3
"""Generate tests/fixtures/folded_bn/: small models for oxtrain's handling of exporters' rewrites
for inference (graph/exporter_rewrites.h).

  dynamo_folded.onnx  conv-BN-ReLU-conv-BN-ReLU-pool-fc, freshly initialised, exported by
                      torch.onnx.export(dynamo=True) with its default optimize=True, which folds
                      BN into the convolutions even for a model in training mode. Node metadata
                      is kept except the stack traces: the rewrite rule (rule_name), the FX node
                      and the module scopes that say what was folded.
  dynamo_bn_kept.onnx the same model exported with optimize=False: what restoring must give.
  dynamo_folded_stripped.onnx  dynamo_folded.onnx with only the rule names and namespaces kept
                      (no FX nodes): the folding is evident but cannot be undone.
  dynamo_pretrained.onnx  the network with trained-looking batch norms (statistics and scales
                      not at their initial values): folded biases are nonzero, nothing can be
                      put back.
  dynamo_rewritten.onnx  a network that shows the optimizer's other rewrites: two LayerNorms
                      whose equal weights and biases it merges, a Linear with a zero bias it
                      drops, a literal it lifts into an initializer, and a scalar parameter
                      that must stay one. dynamo_rewritten_noopt.onnx is its optimize=False twin.
  dynamo_no_bn.onnx   the same network without BN (convolutions with their own biases, as
                      AlexNet or VGG have): nothing was folded, no warning is due.
  dynamo_zero_bias.onnx  the network without BN whose convolution biases are zero at export (as
                      SqueezeNet's and ConvNeXt's initialisation leaves them): the optimizer
                      drops them (RemoveOptionalBiasFromConv), parameters the model loses.

  dynamo_conv_bias_folded.onnx  conv-with-bias-BN-ReLU twice (VGG's layers), the conv biases zero
                      as VGG initialises them: the optimizer drops each conv's bias before folding
                      the BN in, and only the exported program's signature (graph metadata) still
                      lists it. dynamo_conv_bias_noopt.onnx is its optimize=False twin.
  dynamo_class_token.onnx  a tiny ViT: a class token expanded to the batch and concatenated to the
                      patch tokens, which the optimizer folds into a constant of the export's
                      batch, and a Linear on the tokens, whose weight it transposes for MatMul
                      into an anonymous initializer. dynamo_class_token_noopt.onnx is its
                      optimize=False twin.
  dynamo_two_tokens.onnx  the tiny ViT with a class and a distillation token (DeiT's): two
                      parameters folded into two constants, which the file cannot tell apart.

Needs torch, onnx and onnxscript; the suite only reads the files.
"""
import os

import onnx
import torch
from torch import nn

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "folded_bn")
KEEP = {"pkg.onnxscript.rewriter.rule_name", "namespace", "pkg.torch.onnx.fx_node", "pkg.torch.onnx.name_scopes"}
STRIPPED = {"pkg.onnxscript.rewriter.rule_name", "namespace"}


def net(bn):
    layers = []
    for cin, cout in [(3, 4), (4, 8)]:
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=not bn)]
        if bn:
            layers += [nn.BatchNorm2d(cout)]
        layers += [nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


class Rewritten(nn.Module):
    """What the optimizer does besides folding batch norm, on one small network."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.ln1 = nn.LayerNorm(4)
        self.ln2 = nn.LayerNorm(4)
        self.temperature = nn.Parameter(torch.tensor(1.5))
        self.fc = nn.Linear(4, 5)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        y = torch.relu(self.conv(x)).mean(dim=(2, 3))
        y = self.ln2(torch.relu(self.ln1(y)) / 0.75)
        return self.fc(y) * self.temperature


def vgg_layers():
    layers = []
    for cin, cout in [(3, 4), (4, 8)]:
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.zero_()
    return model


class TinyViT(nn.Module):
    """4x4 patches of an 8x8 image as 4 tokens of width 6, with one or two learned tokens."""

    def __init__(self, tokens=1):
        super().__init__()
        self.patch = nn.Conv2d(3, 6, 4, stride=4)
        self.class_token = nn.Parameter(torch.randn(1, 1, 6))
        self.dist_token = nn.Parameter(torch.randn(1, 1, 6)) if tokens == 2 else None
        self.pos = nn.Parameter(torch.randn(1, 4 + tokens, 6) * 0.1)
        self.mlp = nn.Linear(6, 6)  # on [N, T, 6]: MatMul with its weight transposed and folded
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        n = x.shape[0]
        t = self.patch(x).flatten(2).transpose(1, 2)
        learned = [self.class_token.expand(n, -1, -1)]
        if self.dist_token is not None:
            learned.append(self.dist_token.expand(n, -1, -1))
        t = torch.cat(learned + [t], dim=1) + self.pos
        t = t + self.mlp(t)
        return self.head(self.norm(t)[:, 0])


def export(model, name, optimize=True, keys=KEEP):
    torch.manual_seed(0)
    model.train()
    path = os.path.join(OUT, name)
    torch.onnx.export(model, (torch.randn(2, 3, 8, 8),), path, dynamo=True, optimize=optimize,
                      external_data=False, input_names=["input"])
    m = onnx.load(path)
    m.doc_string = ""
    for n in m.graph.node:
        n.doc_string = ""
        keep = [p for p in n.metadata_props if p.key in keys]
        del n.metadata_props[:]
        n.metadata_props.extend(keep)
    onnx.save(m, path)
    ops = sorted({n.op_type for n in m.graph.node})
    print(name, os.path.getsize(path), "bytes:", ", ".join(ops))


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(1)
    export(net(True), "dynamo_folded.onnx")
    torch.manual_seed(1)
    export(net(True), "dynamo_bn_kept.onnx", optimize=False)
    torch.manual_seed(1)
    export(net(True), "dynamo_folded_stripped.onnx", keys=STRIPPED)
    torch.manual_seed(1)
    trained = net(True)
    with torch.no_grad():
        for m in trained.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    export(trained, "dynamo_pretrained.onnx")
    torch.manual_seed(1)
    export(Rewritten(), "dynamo_rewritten.onnx")
    torch.manual_seed(1)
    export(Rewritten(), "dynamo_rewritten_noopt.onnx", optimize=False)
    torch.manual_seed(1)
    export(net(False), "dynamo_no_bn.onnx")
    torch.manual_seed(1)
    zero = net(False)
    with torch.no_grad():
        for m in zero.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.zero_()
    export(zero, "dynamo_zero_bias.onnx")
    torch.manual_seed(1)
    export(vgg_layers(), "dynamo_conv_bias_folded.onnx")
    torch.manual_seed(1)
    export(vgg_layers(), "dynamo_conv_bias_noopt.onnx", optimize=False)
    torch.manual_seed(1)
    export(TinyViT(), "dynamo_class_token.onnx")
    torch.manual_seed(1)
    export(TinyViT(), "dynamo_class_token_noopt.onnx", optimize=False)
    torch.manual_seed(1)
    export(TinyViT(2), "dynamo_two_tokens.onnx")
