#!/usr/bin/env python3
"""Generate the small ONNX fixtures used by oxtrain's C++ import tests.

What it makes
-------------
A set of tiny ResNet ONNX models, each exported in one of the "styles" users
actually hold (old TorchScript training exports, BN-folded inference exports,
the new dynamo/onnxscript exporter, old model-zoo opset-7/8 graphs, symbolic
batch dimensions, external-data files), plus ``manifest.json`` describing them
and two TensorProto ``.pb`` files (a fixed input batch and the expected
eval-mode output) for numeric checks.

The networks mirror ``torchvision.models.resnet`` exactly in structure and in
module naming (conv1 7x7/s2/p3 no bias, bn1, relu, maxpool 3x3/s2/p1,
layer1..layer4 of BasicBlock or Bottleneck (v1.5: stride on the 3x3 conv),
downsample = conv1x1 + BN, avgpool = AdaptiveAvgPool2d(1), fc = Linear) and
use torchvision's weight init, but are tiny:

* "basic":      BasicBlock, blocks [1,1,1,1], stem width 3 -> 3/6/12/24 channels
* "bottleneck": Bottleneck (expansion 4), blocks [2,1,1,1], stem width 2 ->
                inner widths 2/4/8/16, block outputs 8/16/32/64 channels

(The odd width 3 is deliberate: non-power-of-two channel counts catch
layout/vectorisation-tail bugs; widths are kept small so each file stays a few
tens of KB.)  num_classes = 10, input 3x32x32, batch 2 for fixed-size exports.

After torchvision's init (kaiming_normal_ fan_out for convs, BN weight=1,
bias=0) the BN layers are made non-trivial so numeric tests can catch
scale/shift/mean/var mix-ups: BN affine params get a small deterministic
perturbation (weight = 1 + 0.1*N(0,1), bias = 0.1*N(0,1)) and the running
statistics are "warmed up" by a few train-mode forward passes on random data.
The weights stored in every file are therefore torchvision-init convs/fc with
these BN values.  Everything is seeded; re-running produces the same bytes
(checked with torch 2.15 / onnx 1.23 on CPU).

How to run (developers only; CI never runs this, the outputs are committed)
---------------------------------------------------------------------------
    pip install torch torchvision onnx onnxscript onnxruntime
    python3 scripts/make_fixtures.py tests/fixtures

torchvision is optional (used only to cross-check module names);
onnxruntime is optional (used only to run the fixtures as a sanity check);
onnxscript is needed for the dynamo exporter fixtures.

The script removes and rewrites only the files it owns inside the output
folder.  Every fixture is checked with onnx.checker (full_check) and run with
onnxruntime (output compared with the torch eval- and train-mode outputs);
results go into the manifest ("checks") instead of aborting.

Files (all models: input "input", output "output"; fixed shapes [2,3,32,32] ->
[2,10] unless noted):
  ts_train_op9_basic.onnx         TorchScript exporter (dynamo=False),
  ts_train_op12_bottleneck.onnx     TrainingMode.TRAINING, no constant folding;
  ts_train_op17_bottleneck.onnx     BN has 5 outputs (op9/12) or
                                    training_mode=1 and 3 outputs (op17)
  ts_train_op17_input.pb          TensorProto float32 [2,3,32,32]
  ts_train_op17_eval_output.pb    TensorProto float32 [2,10], eval-mode output
  ts_eval_op13_folded.onnx        TorchScript, EVAL, constant folding: BN
                                    folded into Conv (+bias); no Identity nodes
                                    with torch 2.15
  dynamo_op18_eval.onnx           dynamo=True, optimize=True (default): BN
                                    folded, ReduceMean(axes input)+Reshape(
                                    constant [2,64] initializer), IR 10
  dynamo_op18_eval_noopt.onnx     dynamo=True, optimize=False: BN kept,
                                    Shape/Expand/CastLike zero conv biases
  zoo_op8_view.onnx, zoo_op7_view.onnx
                                  x.view(x.size(0),-1) model, opset 9 export
                                    down-converted, IR 3 (see zoo_fixups)
  symbolic_batch_N.onnx, symbolic_batch_batch_size.onnx
                                  dynamic_axes batch dim 'N' / 'batch_size',
                                    opset 13, training mode
  external_one/external_one_file.onnx (+ external_one_file.onnx.data)
  external_many/external_many_files.onnx (+ one file per initializer)
                                  onnx.save_model(save_as_external_data=True,
                                    size_threshold=0), opset 13, training mode
  manifest.json                   per-file facts (see the "notes" in it)

Not produced: dynamo_op18_train.onnx -- torch.onnx.export(dynamo=True) of a
model in train() mode (torch 2.15, onnxscript 0.7.2) silently emits inference
BatchNormalization (no training_mode, 1 output, running-stat updates dropped,
and folded into Conv by the optimizer), i.e. the eval model; the script
re-checks this on every run and records the outcome in manifest
"not_produced".

Notes on styles that needed help (see also the comments at each fixture):
* TorchScript eval export WITHOUT constant folding keeps BatchNormalization as
  a node (the Conv+BN "eval peephole" fusion only runs when constant folding is
  on), which is what the zoo_* fixtures rely on.
* TorchScript training-mode export saves BN running stats as updated by its
  tracing forward; the script resets them to the module's values so all files
  of one model hold identical weights (manifest: initializers_restored).
* zoo_op8/op7: with a static input the exporter folds x.size(0) to a
  Constant, so the batch dim is exported dynamic and pinned back to 2; then
  onnx.version_converter.convert_version (there is no convert_model) goes
  9 -> 8 / 7, and zoo_fixups() repairs the converter's int64 Constant payloads,
  adds explicit spatial=1 (op7 only) and stamps IR version 3 with every
  initializer also listed as a graph input, as ONNX 1.2/1.3-era zoo files are.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import io
import json
import os
import warnings
from collections import Counter, OrderedDict

import numpy as np
import torch
import torch.nn as nn

import onnx
from onnx import helper, numpy_helper, version_converter

try:
    import onnxruntime as ort  # optional
except Exception:  # pragma: no cover
    ort = None

SEED = 20240611
NUM_CLASSES = 10
BATCH = 2
IN_SHAPE = (3, 32, 32)
INPUT_NAME = "input"
OUTPUT_NAME = "output"

BASIC_CFG = dict(block="basic", layers=[1, 1, 1, 1], width=3)
BOTTLENECK_CFG = dict(block="bottleneck", layers=[2, 1, 1, 1], width=2)


# --------------------------------------------------------------------------
# Tiny ResNet, mirroring torchvision/models/resnet.py (structure + names)
# --------------------------------------------------------------------------
def conv3x3(in_planes, out_planes, stride=1, groups=1, dilation=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride,
                     padding=dilation, groups=groups, bias=False,
                     dilation=dilation)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride,
                     bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1,
                 base_width=64, dilation=1, norm_layer=None):
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class Bottleneck(nn.Module):
    # ResNet v1.5: the stride sits on the 3x3 conv (conv2).
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1,
                 base_width=64, dilation=1, norm_layer=None):
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv3(out)
        out = self.bn3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    """torchvision.models.resnet.ResNet with the stem width as a parameter
    (torchvision hard-codes 64 -> layer widths 64/128/256/512)."""

    def __init__(self, block, layers, num_classes=NUM_CLASSES, width=4,
                 zero_init_residual=False, groups=1, width_per_group=64):
        super().__init__()
        norm_layer = nn.BatchNorm2d
        self._norm_layer = norm_layer
        self.inplanes = width
        self.dilation = 1
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2,
                               padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

        # torchvision's init
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out",
                                        nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck) and m.bn3.weight is not None:
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock) and m.bn2.weight is not None:
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        norm_layer = self._norm_layer
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                norm_layer(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.groups,
                        self.base_width, previous_dilation, norm_layer)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups,
                                base_width=self.base_width,
                                dilation=self.dilation, norm_layer=norm_layer))
        return nn.Sequential(*layers)

    def _forward_impl(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x

    def forward(self, x):
        return self._forward_impl(x)


class ZooResNet(ResNet):
    """Old model-zoo style forward: ``x.view(x.size(0), -1)`` instead of
    torch.flatten (exports as Shape->Gather->Unsqueeze->Concat->Reshape)."""

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        x = self.fc(x)
        return x


def build_model(cfg, cls=ResNet):
    """Build a model with torchvision init, then make BN non-trivial."""
    torch.manual_seed(SEED)
    block = BasicBlock if cfg["block"] == "basic" else Bottleneck
    model = cls(block, cfg["layers"], num_classes=NUM_CLASSES,
                width=cfg["width"])
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1.0 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        model.train()
        for _ in range(3):  # warm up running_mean / running_var
            model(torch.randn(4, *IN_SHAPE, generator=g) * 1.5 + 0.25)
    model.eval()
    return model


def fixed_input():
    g = torch.Generator().manual_seed(SEED + 2)
    return torch.randn(BATCH, *IN_SHAPE, generator=g)


def check_names_against_torchvision(cfg, model):
    """Cross-check state_dict names (and tensor ranks) with torchvision."""
    try:
        from torchvision.models import resnet as tvr
    except Exception as e:  # pragma: no cover
        return f"torchvision not available ({e}); name check skipped"
    block = tvr.BasicBlock if cfg["block"] == "basic" else tvr.Bottleneck
    tv = tvr.ResNet(block, cfg["layers"], num_classes=NUM_CLASSES)
    a = [(k, v.dim()) for k, v in model.state_dict().items()]
    b = [(k, v.dim()) for k, v in tv.state_dict().items()]
    if a != b:
        raise SystemExit(f"module naming differs from torchvision for {cfg}")
    ma = [(n, type(m).__name__) for n, m in model.named_modules()]
    mb = [(n, type(m).__name__) for n, m in tv.named_modules()]
    if ma != mb:
        raise SystemExit(f"module structure differs from torchvision for {cfg}")
    return "state_dict names/ranks and module tree match torchvision"


# --------------------------------------------------------------------------
# Parameter counts
# --------------------------------------------------------------------------
def param_count(model):
    return sum(p.numel() for p in model.parameters())


def folded_param_count(model):
    """Trainable parameters of the BN-folded model: every non-BN parameter,
    plus one bias (out_channels) per conv that has a BN folded into it."""
    mods = dict(model.named_modules())
    n = 0
    for name, m in mods.items():
        if isinstance(m, nn.BatchNorm2d):
            continue
        for p in m.parameters(recurse=False):
            n += p.numel()
    for name, m in mods.items():
        if not isinstance(m, nn.Conv2d):
            continue
        # torchvision pairing: convK <-> bnK, downsample.0 <-> downsample.1
        parent, _, leaf = name.rpartition(".")
        if leaf.startswith("conv"):
            bn = (parent + "." if parent else "") + "bn" + leaf[4:]
        else:
            bn = parent + "." + str(int(leaf) + 1)
        if isinstance(mods.get(bn), nn.BatchNorm2d):
            n += m.out_channels if m.bias is None else 0
    return n


# --------------------------------------------------------------------------
# Exporters
# --------------------------------------------------------------------------
_EXPORT_SIG = inspect.signature(torch.onnx.export).parameters


def ts_export(model, x, opset, training, fold, dynamic_axes=None,
              keep_initializers_as_inputs=None):
    """TorchScript (legacy) exporter into an in-memory ModelProto."""
    kw = dict(export_params=True, opset_version=opset,
              do_constant_folding=fold, training=training,
              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
              dynamic_axes=dynamic_axes, verbose=False)
    if keep_initializers_as_inputs is not None:
        kw["keep_initializers_as_inputs"] = keep_initializers_as_inputs
    if "dynamo" in _EXPORT_SIG:
        kw["dynamo"] = False
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, **kw)
    return onnx.load_from_string(buf.getvalue())


def dynamo_export(model, x, opset=18, optimize=True):
    """New (torch.export + onnxscript) exporter into a ModelProto."""
    kw = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
              opset_version=opset, dynamo=True, external_data=False,
              optimize=optimize, verbose=False)
    with warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, (x,), **kw)
    return prog.model_proto


def strip_debug_info(m: onnx.ModelProto):
    """Drop doc strings / per-node metadata (stack traces with absolute paths)
    so files are small and reproducible."""
    m.doc_string = ""
    m.graph.doc_string = ""

    def strip_graph(g):
        for n in g.node:
            n.doc_string = ""
            del n.metadata_props[:]
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    strip_graph(a.g)
                for sg in a.graphs:
                    strip_graph(sg)
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            vi.doc_string = ""
            del vi.metadata_props[:]
        for t in g.initializer:
            del t.metadata_props[:]
    strip_graph(m.graph)
    for f in m.functions:
        for n in f.node:
            n.doc_string = ""
            del n.metadata_props[:]
    # keep only deterministic model-level metadata
    del m.metadata_props[:]


def restore_initializers(m, model):
    """Overwrite initializers named like a state_dict entry with the values the
    module had BEFORE export.  The TorchScript exporter traces one forward pass;
    in training mode that forward updates BN running_mean/running_var (momentum
    0.1) and the exporter saves the updated buffers.  Restoring keeps every
    fixture holding exactly the same weights as the torch model.
    Returns the names whose values had changed."""
    sd = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    changed = []
    for i, t in enumerate(m.graph.initializer):
        if t.name not in sd:
            continue
        old = numpy_helper.to_array(t)
        new = sd[t.name].astype(old.dtype).reshape(old.shape)
        if not np.array_equal(old, new):
            changed.append(t.name)
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(new, t.name))
    return changed


def restored_note(changed):
    if not changed:
        return None
    return {"initializers_restored": (
        f"{len(changed)} initializers (BN running_mean/running_var) were reset "
        "to the module's pre-export values; the exporter's train-mode tracing "
        "forward had updated them")}


def trainable_initializer_numel(m):
    """Number of values in float initializers other than BN running stats
    (inputs 3/4 of BatchNormalization); computed from dims only."""
    stats = {n.input[i] for n in m.graph.node
             if n.op_type == "BatchNormalization" for i in (3, 4)}
    return sum(int(np.prod(t.dims)) for t in m.graph.initializer
               if t.data_type == onnx.TensorProto.FLOAT and t.name not in stats)


def default_opset(m):
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return None


def op_histogram(m):
    c = Counter(n.op_type for n in m.graph.node)
    return OrderedDict(sorted(c.items()))


def dim_list(vi):
    out = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(d.dim_value)
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append("?")
    return out


def features(m):
    """Notable, machine-readable features of a graph for the manifest."""
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    consts = {}
    for n in g.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = n
    f = OrderedDict()
    f["num_nodes"] = len(g.node)
    f["num_initializers"] = len(g.initializer)
    f["graph_inputs"] = [i.name for i in g.input]
    f["initializers_listed_as_inputs"] = sum(1 for i in g.input if i.name in inits)
    f["graph_outputs"] = [o.name for o in g.output]
    bns = [n for n in g.node if n.op_type == "BatchNormalization"]
    if bns:
        f["batchnorm_num_outputs"] = sorted({sum(1 for o in n.output if o) for n in bns})
        attrs = Counter()
        for n in bns:
            for a in n.attribute:
                attrs[f"{a.name}={helper.get_attribute_value(a)}"] += 1
        f["batchnorm_attributes"] = OrderedDict(sorted(attrs.items()))
    ids = [n for n in g.node if n.op_type == "Identity"]
    if ids:
        f["identity_on_initializer"] = sum(1 for n in ids if n.input[0] in inits)
    casts = [n for n in g.node if n.op_type == "Cast"]
    if casts:
        f["cast_to"] = sorted({onnx.TensorProto.DataType.Name(
            helper.get_attribute_value(a)) for n in casts for a in n.attribute if a.name == "to"})
    rms = [n for n in g.node if n.op_type == "ReduceMean"]
    if rms:
        f["reducemean"] = [
            {"axes_from": ("input" if len(n.input) > 1 and n.input[1] else
                           "attribute" if any(a.name == "axes" for a in n.attribute) else "none"),
             "attributes": {a.name: helper.get_attribute_value(a) for a in n.attribute}}
            for n in rms]
    rs = [n for n in g.node if n.op_type == "Reshape"]
    if rs:
        def src(name):
            if name in inits:
                return "initializer " + str(numpy_helper.to_array(inits[name]).tolist())
            if name in consts:
                a = consts[name].attribute[0]
                v = helper.get_attribute_value(a)
                if isinstance(v, onnx.TensorProto):
                    v = numpy_helper.to_array(v).tolist()
                return f"Constant({a.name}) {v}"
            prod = [n for n in g.node if name in n.output]
            return "computed by " + (prod[0].op_type if prod else "?")
        f["reshape_shape_source"] = [src(n.input[1]) for n in rs]
    gemms = [n for n in g.node if n.op_type == "Gemm"]
    if gemms:
        f["gemm_attributes"] = [{a.name: helper.get_attribute_value(a) for a in n.attribute}
                                for n in gemms]
    ext = [t for t in g.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if ext:
        f["external_initializers"] = len(ext)
        f["external_data_keys"] = sorted({e.key for t in ext for e in t.external_data})
        files = sorted({e.value for t in ext for e in t.external_data if e.key == "location"})
        f["external_file_count"] = len(files)
    dtypes = Counter(onnx.TensorProto.DataType.Name(t.data_type) for t in g.initializer)
    f["initializer_dtypes"] = OrderedDict(sorted(dtypes.items()))
    f["initializer_name_examples"] = [t.name for t in g.initializer[:3]] + \
        [t.name for t in g.initializer[-2:]]
    if m.functions:
        f["functions"] = [fn.name for fn in m.functions]
    other_domains = [(o.domain, o.version) for o in m.opset_import if o.domain not in ("", "ai.onnx")]
    if other_domains:
        f["other_opset_imports"] = other_domains
    return f


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------
def run_checks(path):
    res = OrderedDict()
    try:
        onnx.checker.check_model(path, full_check=True)
        res["checker"] = "ok (full_check)"
    except Exception as e:
        try:
            onnx.checker.check_model(path, full_check=False)
            res["checker"] = f"ok (full_check failed: {str(e).splitlines()[0][:200]})"
        except Exception as e2:
            res["checker"] = f"FAILED: {str(e2).splitlines()[0][:300]}"
    return res


def run_ort_model(m, x):
    return run_ort(m.SerializeToString(), x)


def run_ort(path, x):
    """path: file path or serialized model bytes."""
    if ort is None:
        return None, "onnxruntime not installed"
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        return out[0], "ran"
    except Exception as e:
        return None, "refused: " + str(e).strip().splitlines()[0][:300]


def state_from_onnx(model, m):
    """Copy initializers whose names match the torch state_dict back into a
    copy of ``model`` (used to compute expected outputs from exactly the
    values stored in the file)."""
    m2 = copy.deepcopy(model)
    sd = m2.state_dict()
    found = set()
    for t in m.graph.initializer:
        if t.name in sd:
            sd[t.name].copy_(torch.from_numpy(numpy_helper.to_array(t).copy()))
            found.add(t.name)
    missing = [k for k in sd if k not in found and not k.endswith("num_batches_tracked")]
    return m2, missing


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------
OWNED = [
    "ts_train_op9_basic.onnx", "ts_train_op12_bottleneck.onnx",
    "ts_train_op17_bottleneck.onnx", "ts_eval_op13_folded.onnx",
    "dynamo_op18_eval.onnx", "dynamo_op18_eval_noopt.onnx",
    "dynamo_op18_train.onnx",
    "zoo_op8_view.onnx", "zoo_op7_view.onnx",
    "symbolic_batch_N.onnx", "symbolic_batch_batch_size.onnx",
    "ts_train_op17_input.pb", "ts_train_op17_eval_output.pb",
    "manifest.json", "external_one", "external_many",
]


def save(m, path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    onnx.save_model(m, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir", help="output folder, normally tests/fixtures")
    args = ap.parse_args()
    out = args.outdir
    os.makedirs(out, exist_ok=True)
    for name in OWNED:
        p = os.path.join(out, name)
        if os.path.isdir(p):
            for f in sorted(os.listdir(p)):
                os.remove(os.path.join(p, f))
            os.rmdir(p)
        elif os.path.exists(p):
            os.remove(p)

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    basic = build_model(BASIC_CFG)
    bott = build_model(BOTTLENECK_CFG)
    zoo = build_model(BASIC_CFG, cls=ZooResNet)
    print("basic:", check_names_against_torchvision(BASIC_CFG, basic))
    print("bottleneck:", check_names_against_torchvision(BOTTLENECK_CFG, bott))
    x = fixed_input()

    TRAIN = torch.onnx.TrainingMode.TRAINING
    EVAL = torch.onnx.TrainingMode.EVAL

    entries = []
    unproduced = []

    def add(file, m, style, model, input_shape, output_shape, params,
            params_note=None, extra=None):
        path = os.path.join(out, file)
        e = OrderedDict()
        e["file"] = file
        e["style"] = style
        e["opset"] = default_opset(m)
        e["ir_version"] = m.ir_version
        e["producer"] = f"{m.producer_name} {m.producer_version}".strip()
        e["parameters"] = params
        if params_note:
            e["parameters_note"] = params_note
        e["input_name"] = m.graph.input[0].name
        e["input_shape"] = input_shape
        e["output_shape"] = output_shape
        e["num_classes"] = NUM_CLASSES
        e["model"] = model
        mm = onnx.load(path, load_external_data=False)
        e["op_histogram"] = op_histogram(mm)
        e["features"] = features(mm)
        if extra:
            e.update(extra)
        e["checks"] = run_checks(path)
        real_in = dim_list(mm.graph.input[0])
        real_out = dim_list(mm.graph.output[0])
        if real_in != input_shape or real_out != output_shape:
            raise SystemExit(f"{file}: graph I/O shapes {real_in} -> {real_out} "
                             f"differ from {input_shape} -> {output_shape}")
        n_init = trainable_initializer_numel(mm)
        e["checks"]["parameters_vs_initializers"] = (
            f"{'match' if n_init == params else 'MISMATCH'}: float initializers "
            f"that are not BN running stats hold {n_init} values")
        entries.append(e)
        return e

    # Each exporter call gets a deep copy, so tracing a train-mode forward
    # cannot change the running stats of the model the next fixture uses.
    def fresh(model):
        return copy.deepcopy(model)

    basic_desc = "ResNet(BasicBlock,[1,1,1,1]) widths 3/6/12/24"
    bott_desc = "ResNet(Bottleneck v1.5,[2,1,1,1]) widths 2/4/8/16 (x4 expansion)"
    fixed_in = [BATCH, *IN_SHAPE]
    fixed_out = [BATCH, NUM_CLASSES]

    # 1-3: TorchScript exporter, training mode, no constant folding --------
    for file, model, desc, opset in [
        ("ts_train_op9_basic.onnx", basic, basic_desc, 9),
        ("ts_train_op12_bottleneck.onnx", bott, bott_desc, 12),
        ("ts_train_op17_bottleneck.onnx", bott, bott_desc, 17),
    ]:
        m = ts_export(fresh(model), x, opset, TRAIN, fold=False)
        restored = restore_initializers(m, model)
        strip_debug_info(m)
        save(m, os.path.join(out, file))
        add(file, m,
            f"TorchScript exporter (dynamo=False), TrainingMode.TRAINING, "
            f"do_constant_folding=False, opset {opset}",
            desc, fixed_in, fixed_out, param_count(model),
            extra=restored_note(restored))

    # numeric side files for the op17 fixture: computed from the exact
    # values stored in the file, in eval mode (running statistics).
    m17 = onnx.load(os.path.join(out, "ts_train_op17_bottleneck.onnx"))
    ref_model, missing = state_from_onnx(bott, m17)
    if missing:
        raise SystemExit(f"op17 fixture lacks initializers for {missing}")
    # The file must hold the same values as `bott` (tracing must not have
    # updated running stats in what was saved); otherwise the other fixtures
    # built from `bott` would disagree with the .pb output.
    for k, v in bott.state_dict().items():
        if not torch.equal(v, ref_model.state_dict()[k]):
            raise SystemExit(f"op17 fixture value {k} differs from the model")
    ref_model.eval()
    with torch.no_grad():
        y_ref = ref_model(x)
    in_pb = numpy_helper.from_array(x.numpy().astype(np.float32), INPUT_NAME)
    out_pb = numpy_helper.from_array(y_ref.numpy().astype(np.float32), OUTPUT_NAME)
    with open(os.path.join(out, "ts_train_op17_input.pb"), "wb") as fh:
        fh.write(in_pb.SerializeToString())
    with open(os.path.join(out, "ts_train_op17_eval_output.pb"), "wb") as fh:
        fh.write(out_pb.SerializeToString())
    expected = OrderedDict(
        input_file="ts_train_op17_input.pb",
        output_file="ts_train_op17_eval_output.pb",
        mode="eval (BatchNormalization uses running_mean/running_var)",
        values=[[float(f"{v:.8g}") for v in row] for row in y_ref.tolist()],
        rtol=1e-4, atol=1e-5,
    )
    # ts_train_op12 holds the very same values (restored initializers), so
    # the same expected eval output applies to it.
    m12 = onnx.load(os.path.join(out, "ts_train_op12_bottleneck.onnx"))
    ref12, missing = state_from_onnx(bott, m12)
    assert not missing and all(torch.equal(v, ref12.state_dict()[k])
                               for k, v in bott.state_dict().items())
    for e in entries:
        if e["file"] in ("ts_train_op12_bottleneck.onnx",
                         "ts_train_op17_bottleneck.onnx"):
            e["expected_output"] = expected
    with torch.no_grad():
        y_train_ref = fresh(bott).train()(x)

    # 4: TorchScript eval export with constant folding (BN folded) ---------
    file = "ts_eval_op13_folded.onnx"
    m = ts_export(fresh(bott), x, 13, EVAL, fold=True)
    assert not restore_initializers(m, bott)  # eval: nothing to restore
    strip_debug_info(m)
    save(m, os.path.join(out, file))
    add(file, m,
        "TorchScript exporter, TrainingMode.EVAL, do_constant_folding=True "
        "(BN folded into Conv weights + bias), opset 13",
        bott_desc, fixed_in, fixed_out, folded_param_count(bott),
        params_note="BN folded: all non-BN parameters of the torch model plus "
                    "one bias (out_channels) per conv with a folded BN "
                    f"(unfolded torch count is {param_count(bott)})",
        extra={"expected_output": expected})

    # 5: dynamo exporter ---------------------------------------------------
    # dynamo_op18_eval.onnx: the default (optimize=True): the onnxscript
    # optimizer folds BN into Conv (+bias), avgpool+flatten become
    # ReduceMean(axes as an input, opset 18) + Reshape(constant shape).
    # dynamo_op18_eval_noopt.onnx: optimize=False (what you get from torch
    # versions/scripts that skip the optimizer): BN stays (1 output, no
    # training_mode), conv biases are built as zeros via Shape/Expand/CastLike.
    #
    # Training mode with dynamo=True was tried (model.train() before export,
    # torch 2.15 / onnxscript 0.7.2): export "succeeds" but the aten
    # _native_batch_norm_legit_functional(training=True) node is emitted as an
    # inference BatchNormalization (no training_mode attribute, 1 output) and
    # the running-stat updates (buffer mutations) are dropped; with
    # optimize=True BN is then folded into Conv using the running stats.
    # The result is semantically the eval model (onnxruntime output equals the
    # torch eval output, not the train output), so no dynamo_op18_train.onnx is
    # written; the script re-checks this and records it in the manifest.
    for file, opt in [("dynamo_op18_eval.onnx", True),
                      ("dynamo_op18_eval_noopt.onnx", False)]:
        mdl = fresh(bott).eval()
        try:
            m = dynamo_export(mdl, x, 18, optimize=opt)
        except Exception as e:
            msg = f"{file}: dynamo export failed: " + \
                  str(e).strip().splitlines()[0][:300]
            print("WARNING:", msg)
            unproduced.append(msg)
            continue
        strip_debug_info(m)
        save(m, os.path.join(out, file))
        folded = "BatchNormalization" not in op_histogram(m)
        if folded:
            params = folded_param_count(bott)
            note = ("BN folded by the onnxscript optimizer: count of the folded "
                    "model (non-BN params + one bias per conv with a folded BN); "
                    f"unfolded torch count is {param_count(bott)}")
        else:
            params = param_count(bott)
            note = None
        add(file, m,
            f"new exporter torch.onnx.export(dynamo=True) (torch.export + "
            f"onnxscript), model.eval(), opset 18, optimize={opt}",
            bott_desc, fixed_in, fixed_out, params, params_note=note,
            extra={"expected_output": expected})

    try:
        mt = dynamo_export(fresh(bott).train(), x, 18, optimize=False)
        bn_t = [n for n in mt.graph.node if n.op_type == "BatchNormalization"]
        tm = sorted({helper.get_attribute_value(a) for n in bn_t
                     for a in n.attribute if a.name == "training_mode"})
        y_t, st = run_ort_model(mt, x)
        sem = ("eval" if y_t is not None and np.allclose(y_t, y_ref.numpy(), 1e-3, 1e-4)
               else "train" if y_t is not None and np.allclose(y_t, y_train_ref.numpy(), 1e-3, 1e-4)
               else f"unknown ({st})")
        msg = ("dynamo_op18_train.onnx: not written. dynamo=True export of "
               "model.train() gives BatchNormalization with training_mode="
               f"{tm or 'absent'}, outputs per BN {sorted({len(n.output) for n in bn_t})}, "
               f"graph outputs {[o.name for o in mt.graph.output]}; onnxruntime "
               f"output has {sem}-mode semantics, i.e. the same model as the eval export")
        if sem == "train":
            msg = ("dynamo_op18_train: dynamo export of model.train() now has "
                   "train semantics; consider adding it as a fixture")
    except Exception as e:
        msg = ("dynamo_op18_train.onnx: dynamo export of model.train() failed: "
               + str(e).strip().splitlines()[0][:300])
    print("NOTE:", msg)
    unproduced.append(msg)

    # 6: old model-zoo style: view(size(0), -1), opset 9 -> 8 -> 7 ---------
    # Eval semantics WITHOUT the Conv+BN fusion: TorchScript only fuses when
    # do_constant_folding=True, so EVAL + fold=False keeps BatchNormalization.
    # With a fully static input the exporter's shape inference replaces
    # x.size(0) by a Constant (no Shape/Gather), so the batch dim is exported
    # as dynamic and then pinned back to 2 on the graph input/output (old zoo
    # files had fixed input shapes AND the Shape->Gather->Unsqueeze->Concat->
    # Reshape chain); intermediate value_info is dropped as in old zoo files.
    m9 = ts_export(fresh(zoo), x, 9, EVAL, fold=False,
                   keep_initializers_as_inputs=True,
                   dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}})
    assert not restore_initializers(m9, zoo)
    strip_debug_info(m9)
    for vi in (m9.graph.input[0], m9.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].Clear()
        vi.type.tensor_type.shape.dim[0].dim_value = BATCH
    del m9.graph.value_info[:]
    zoo_desc = basic_desc + ", forward uses x.view(x.size(0), -1)"
    for file, target in [("zoo_op8_view.onnx", 8), ("zoo_op7_view.onnx", 7)]:
        try:
            # (onnx >= 1.x calls it convert_version; there is no convert_model)
            mz = version_converter.convert_version(m9, target)
        except Exception as e:
            msg = f"{file}: version_converter 9->{target} failed: " + \
                  str(e).strip().splitlines()[0][:300]
            print("WARNING:", msg)
            unproduced.append(msg)
            continue
        fix_notes = zoo_fixups(mz, target)
        save(mz, os.path.join(out, file))
        add(file, mz,
            f"old model-zoo style: TorchScript export at opset 9 (EVAL, no "
            f"constant folding, initializers also listed as graph inputs), "
            f"onnx.version_converter.convert_version -> opset {target}, "
            f"then stamped IR version 3",
            zoo_desc, fixed_in, fixed_out, param_count(zoo),
            extra={"fixups": fix_notes} if fix_notes else None)

    # 7: symbolic batch dims ------------------------------------------------
    for file, dim in [("symbolic_batch_N.onnx", "N"),
                      ("symbolic_batch_batch_size.onnx", "batch_size")]:
        m = ts_export(fresh(basic), x, 13, TRAIN, fold=False,
                      dynamic_axes={INPUT_NAME: {0: dim}, OUTPUT_NAME: {0: dim}})
        restored = restore_initializers(m, basic)
        strip_debug_info(m)
        save(m, os.path.join(out, file))
        add(file, m,
            f"TorchScript exporter, TrainingMode.TRAINING, no folding, opset 13, "
            f"dynamic_axes batch dim named '{dim}' on input and output",
            basic_desc, [dim, *IN_SHAPE], [dim, NUM_CLASSES], param_count(basic),
            extra=restored_note(restored))

    # 8: external data --------------------------------------------------------
    m_ext_src = ts_export(fresh(basic), x, 13, TRAIN, fold=False)
    restored = restore_initializers(m_ext_src, basic)
    strip_debug_info(m_ext_src)
    bad = [t.name for t in m_ext_src.graph.initializer
           if not t.name or any(c in t.name for c in '<>:;,?"*|/\\')]
    if bad:  # onnx would name such files with a random uuid -> not reproducible
        raise SystemExit(f"initializer names unusable as file names: {bad}")
    for sub, file, one in [("external_one", "external_one_file.onnx", True),
                           ("external_many", "external_many_files.onnx", False)]:
        d = os.path.join(out, sub)
        os.makedirs(d, exist_ok=True)
        m = copy.deepcopy(m_ext_src)
        loc = "external_one_file.onnx.data" if one else None
        kw = dict(save_as_external_data=True, all_tensors_to_one_file=one,
                  size_threshold=0)
        if one:
            kw["location"] = loc
        onnx.save_model(m, os.path.join(d, file), **kw)
        mm = onnx.load(os.path.join(d, file), load_external_data=False)
        offs = []
        for t in mm.graph.initializer:
            kv = {e.key: e.value for e in t.external_data}
            offs.append(kv)
        if one:
            if not all("offset" in kv and "length" in kv for kv in offs):
                raise SystemExit("one-file external data lacks offset/length")
        data_files = sorted(f for f in os.listdir(d) if f != file)
        for f in data_files:  # onnx creates them 0600; make them ordinary
            os.chmod(os.path.join(d, f), 0o644)
        add(f"{sub}/{file}", mm,
            "TorchScript exporter, TrainingMode.TRAINING, no folding, opset 13, "
            "saved with onnx.save_model(save_as_external_data=True, "
            f"all_tensors_to_one_file={one}, size_threshold=0"
            + (f", location='{loc}')" if one else ")"),
            basic_desc, fixed_in, fixed_out, param_count(basic),
            extra={"external_data_files": [f"{sub}/{f}" for f in data_files],
                   "external_data_example": offs[:3],
                   **(restored_note(restored) or {})})

    # ---------------------------------------------------------------------
    # Run everything with onnxruntime
    # ---------------------------------------------------------------------
    with torch.no_grad():
        y_basic_eval = basic(x)
        y_zoo_eval = zoo(x)
        y_basic_train = fresh(basic).train()(x)
    torch_ref = {
        # file -> (eval-mode torch output, train-mode torch output)
        "ts_train_op9_basic.onnx": (y_basic_eval, y_basic_train),
        "ts_train_op12_bottleneck.onnx": (y_ref, y_train_ref),
        "ts_train_op17_bottleneck.onnx": (y_ref, y_train_ref),
        "ts_eval_op13_folded.onnx": (y_ref, y_train_ref),
        "dynamo_op18_eval.onnx": (y_ref, y_train_ref),
        "dynamo_op18_eval_noopt.onnx": (y_ref, y_train_ref),
        "zoo_op8_view.onnx": (y_zoo_eval, None),
        "zoo_op7_view.onnx": (y_zoo_eval, None),
        "symbolic_batch_N.onnx": (y_basic_eval, y_basic_train),
        "symbolic_batch_batch_size.onnx": (y_basic_eval, y_basic_train),
        "external_one/external_one_file.onnx": (y_basic_eval, y_basic_train),
        "external_many/external_many_files.onnx": (y_basic_eval, y_basic_train),
    }
    for e in entries:
        y, status = run_ort(os.path.join(out, e["file"]), x)
        if y is None:
            e["checks"]["onnxruntime"] = status
            continue
        ev, tr = torch_ref[e["file"]]
        def close(a, b):
            return b is not None and np.allclose(a, b.numpy(), rtol=1e-3, atol=1e-4)
        if close(y, ev):
            e["checks"]["onnxruntime"] = "ran; output matches torch eval-mode output"
        elif close(y, tr):
            e["checks"]["onnxruntime"] = ("ran; output matches torch train-mode "
                                          "output (batch statistics)")
        else:
            e["checks"]["onnxruntime"] = (
                "ran; output matches NEITHER torch eval nor train output "
                f"(max |diff| vs eval {float(np.abs(y - ev.numpy()).max()):.3g})")
        if e["file"] == "symbolic_batch_N.onnx" or e["file"] == "symbolic_batch_batch_size.onnx":
            y3, st3 = run_ort(os.path.join(out, e["file"]), torch.cat([x, x[:1]]))
            e["checks"]["onnxruntime_batch3"] = (
                f"ran with batch 3 -> output shape {list(y3.shape)}" if y3 is not None else st3)

    manifest = OrderedDict(
        generator="scripts/make_fixtures.py",
        torch_version=torch.__version__.split("+")[0],
        onnx_version=onnx.__version__,
        onnxscript_version=_ver("onnxscript"),
        onnxruntime_version=(ort.__version__ if ort is not None else None),
        seed=SEED,
        notes=[
            "Weights: torchvision init for conv/fc; BN affine params perturbed "
            "(1+0.1N, 0.1N) and running stats warmed up with 3 train-mode "
            "forwards, so BN is not an identity.",
            "'parameters' = sum(p.numel() for p in model.parameters()) of the "
            "torch model, except BN-folded exports (see parameters_note).",
            "All fixed-shape fixtures were exported with input [2,3,32,32].",
            "expected_output is given only for the bottleneck-model files, which "
            "all hold the exact weights of ts_train_op17_bottleneck.onnx: for "
            "the TorchScript training exports (op12, op17) it is the EVAL-mode "
            "output (BN with running stats, i.e. what the runtime must compute "
            "in inference mode, not what the training graph computes); for the "
            "folded/dynamo eval exports it is simply the graph's output "
            "(checked with onnxruntime). Input: ts_train_op17_input.pb "
            "(TensorProto float32 [2,3,32,32], name 'input'); output: "
            "ts_train_op17_eval_output.pb (TensorProto float32 [2,10], name "
            "'output'); 'values' repeats the output inline.",
            "Training-mode TorchScript exports: the exporter's tracing forward "
            "updates BN running stats and saves the updated values; the script "
            "resets them to the module's values (initializers_restored), so all "
            "files from one model hold identical weights.",
        ],
        not_produced=unproduced,
        fixtures=entries,
    )
    with open(os.path.join(out, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.write("\n")

    # summary table
    print()
    print(f"{'file':48s} {'bytes':>8s} opset ir  ops")
    total = 0
    for root, _, files in sorted(os.walk(out)):
        for f in sorted(files):
            p = os.path.join(root, f)
            total += os.path.getsize(p)
    for e in entries:
        p = os.path.join(out, e["file"])
        size = os.path.getsize(p) + sum(os.path.getsize(os.path.join(out, f))
                                        for f in e.get("external_data_files", []))
        hist = ", ".join(f"{k}:{v}" for k, v in e["op_histogram"].items())
        print(f"{e['file']:48s} {size:8d} {e['opset']:5d} {e['ir_version']:3d}  {hist}")
        print(f"{'':48s} checker: {e['checks']['checker']}; ort: {e['checks'].get('onnxruntime')}")
    for f in ("ts_train_op17_input.pb", "ts_train_op17_eval_output.pb", "manifest.json"):
        print(f"{f:48s} {os.path.getsize(os.path.join(out, f)):8d}")
    print(f"{'TOTAL (all files under ' + out + ')':48s} {total:8d}")
    for u in unproduced:
        print("NOT PRODUCED:", u)


def _ver(mod):
    try:
        return __import__(mod).__version__
    except Exception:
        return None


def zoo_fixups(m, target):
    """Hand fixes after onnx.version_converter 9 -> 8/7, making the result a
    valid ONNX-1.2/1.3-era model-zoo style file.  Returns notes.

    * Constant-1 (the Constant in effect below opset 9) only allows float16/
      float/double.  The converter's Constant adapter inserts
      ``Constant -> Cast(to=INT64)`` but leaves the int64 payload in the
      Constant (checker: "output has unsupported type tensor(int64)"), so the
      payload is converted to float32 here (the values, 0 and -1, are exact).
      This is the same Constant(float)->Cast pattern torch's own opset<9
      export produces.
    * BatchNormalization below opset 9 is BN-7, which has ``spatial``
      (default 1).  zoo_op7 gets an explicit ``spatial=1`` on every BN (as many
      old zoo files carry); zoo_op8 keeps the attribute absent (default).
    * IR version 3 (what ONNX 1.2/1.3 wrote for opsets 7/8).  IR 3 requires
      every initializer to also be a graph input; the export already did that
      (keep_initializers_as_inputs=True), missing ones would be added here.
    """
    notes = []
    n_const = 0
    for n in m.graph.node:
        if n.op_type != "Constant":
            continue
        for a in n.attribute:
            if a.name == "value" and a.t.data_type not in (
                    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                    onnx.TensorProto.DOUBLE):
                arr = numpy_helper.to_array(a.t)
                f32 = arr.astype(np.float32)
                assert np.array_equal(f32.astype(arr.dtype), arr)
                a.t.CopyFrom(numpy_helper.from_array(f32, a.t.name))
                n_const += 1
    if n_const:
        notes.append(f"{n_const} int64 Constant payloads (converter output, "
                     "already followed by Cast(to=INT64)) turned into float32")
    if target == 7:
        k = 0
        for n in m.graph.node:
            if n.op_type == "BatchNormalization" and not any(
                    a.name == "spatial" for a in n.attribute):
                n.attribute.append(helper.make_attribute("spatial", 1))
                k += 1
        if k:
            notes.append(f"explicit spatial=1 added to {k} BatchNormalization nodes")
    names = {i.name for i in m.graph.input}
    added = 0
    for t in m.graph.initializer:
        if t.name not in names:
            m.graph.input.append(helper.make_tensor_value_info(
                t.name, t.data_type, list(t.dims)))
            added += 1
    if added:
        notes.append(f"{added} initializers added as graph inputs")
    notes.append(f"ir_version {m.ir_version} -> 3")
    m.ir_version = 3
    return notes


if __name__ == "__main__":
    main()
