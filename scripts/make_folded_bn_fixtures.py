#!/usr/bin/env python3
"""Generate tests/fixtures/folded_bn/: small models for oxtrain's folded-batch-norm warning.

  dynamo_folded.onnx  conv-BN-ReLU-conv-BN-ReLU-pool-fc exported by torch.onnx.export(dynamo=True)
                      with its default optimize=True, which folds BN into the convolutions even
                      for a model in training mode. Node metadata is kept except the bulky
                      entries (stack traces, FX nodes), so the file still says which rewrite rule
                      folded each Conv (pkg.onnxscript.rewriter.rule_name).
  dynamo_no_bn.onnx   the same network without BN (convolutions with their own biases, as
                      AlexNet or VGG have): nothing was folded, no warning is due.
  dynamo_zero_bias.onnx  the network without BN whose convolution biases are zero at export (as
                      SqueezeNet's and ConvNeXt's initialisation leaves them): the optimizer
                      drops them (RemoveOptionalBiasFromConv), parameters the model loses.

Needs torch, onnx and onnxscript; the suite only reads the files.
"""
import os

import onnx
import torch
from torch import nn

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "folded_bn")
KEEP = {"pkg.onnxscript.rewriter.rule_name", "namespace"}


def net(bn):
    layers = []
    for cin, cout in [(3, 4), (4, 8)]:
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=not bn)]
        if bn:
            layers += [nn.BatchNorm2d(cout)]
        layers += [nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def export(model, name):
    torch.manual_seed(0)
    model.train()
    path = os.path.join(OUT, name)
    torch.onnx.export(model, (torch.randn(2, 3, 8, 8),), path, dynamo=True, external_data=False)
    m = onnx.load(path)
    m.doc_string = ""
    for n in m.graph.node:
        n.doc_string = ""
        keep = [p for p in n.metadata_props if p.key in KEEP]
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
    export(net(False), "dynamo_no_bn.onnx")
    torch.manual_seed(1)
    zero = net(False)
    with torch.no_grad():
        for m in zero.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.zero_()
    export(zero, "dynamo_zero_bias.onnx")
