#!/usr/bin/env python3
"""Generate the PyTorch parity fixtures of models beyond ResNet (tests/fixtures/parity_models/).

What and why
------------
The same design as the full-size ResNet fixtures (scripts/make_parity_full_fixtures.py: read
its docstring first), applied to torchvision's mobilenet_v2, efficientnet_b0 and densenet121
(full size, 1000 classes) and a small VisionTransformer: the TorchScript export in training
mode (opset 17), every float initializer drawn from the seeded counter-based generator that
the C++ test reimplements (tests/parity_helpers.cc) and kept as external data that the test
writes, the fixed batch and labels from the same generator, and per-tensor digests (norm,
sampled elements, +-1 projections) of every parameter, momentum buffer and BN running
statistic after SGD step 1 and 5.  The strict comparison runs in float64 on both sides.

Models, and what makes each run deterministic
---------------------------------------------
* mobilenet_v2(dropout=0.0): batch 4 at 64x64 (the last stage is 2x2, so every BN
  normalises over 16 values per channel).  ReLU6 exports as Clip(0, 6).
* efficientnet_b0(dropout=0.0, stochastic_depth_prob=0.0): batch 4 at 64x64.  With
  p = 0 torchvision's StochasticDepth returns its input (no random op in the graph).
* densenet121(): batch 4 at 64x64 (norm5 and the last dense block see 2x2 pixels).
* VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
  mlp_dim=64, num_classes=10, dropout=0, attention_dropout=0): batch 4 at 32x32.
The classifiers' Dropout(0.2) of mobilenet_v2 and efficientnet_b0 are built with p = 0
(the constructors' `dropout` argument), so the graph keeps its Dropout node, as the ViT's
seven Dropout(p=0) modules do: the exported Dropout has ratio 0 and training_mode true,
which PyTorch computes as the identity (mask all ones, scale 1) and a runtime must too.

The float32 constants of the graph
----------------------------------
The float64 PyTorch reference must compute the expression that the float32 graph states,
converted to float64 (the test runs graph::convert_float_dtype after import):
* BatchNorm eps / momentum and LayerNorm eps are float32 attributes: the float64 modules
  get eps = float32(eps) and momentum = 1 - float32(1 - momentum).
* GELU (approximate="none") exports as 0.5 * x * (1 + Erf(x / 1.4142135381698608)), the
  float32 sqrt(2) being 1.7e-8 away from PyTorch's own float64 constant; the float64
  reference's GELU modules divide by that float32 constant (Gelu32 below), otherwise the
  step-1 float64 difference would be ~1e-8, not rounding.
* lr, momentum and weight decay are float32 numbers on both sides, as for the ResNets.
* The attention scale 1/sqrt(16) and its square root are exact in float32.

Weights: the ResNet fixtures' rules, generalised by module type: Conv2d weight 0 +- the
power of two nearest sqrt(6 / fan_out) (torchvision's kaiming_normal_ fan_out variance;
fan_out = out_channels * kh * kw, depthwise included), Conv2d / Linear bias and Linear
weight 0 +- the power of two nearest 1/sqrt(fan_in), BatchNorm2d / LayerNorm weight 1 +- 1/4
and bias 0 +- 1/8, running_mean 0 +- 1/8, running_var 1 +- 1/8, MultiheadAttention
in_proj_weight 0 +- the power of two nearest sqrt(6 / (fan_in + fan_out)) (its
xavier_uniform_) and in_proj_bias 0 +- 1/8, the ViT's class_token and pos_embedding
0 +- 1/32 (about torchvision's normal(std=0.02)).  Input 0 +- 2.

Digests: as the ResNets' (norm, K samples, P = 4 projections) with K = 16 instead of 64, to
keep the four models' fixtures under ~2 MB (densenet121 alone has 970 tracked tensors); the
float32 digest file holds only the tensors the float32 check compares (the BN running
statistics, or every tensor where float32 rounding moves none of them near the tolerance:
see below and the manifest's "float32_step1_check").

Tolerances and the measurements behind them (manifest "measured")
----------------------------------------------------------------
The same limits as the ResNet tests: float64 1e-9 after one step, 1e-3 after five,
float32 1e-4 after one step, relative to each tensor's norm.  The generator checks them
against PyTorch itself before it writes anything:
* A second, independent float64 PyTorch run (two threads instead of one, and channels_last
  memory format for the CNNs, i.e. other convolution / BN kernels and summation orders) is
  digested and compared with the reference exactly as the C++ test compares oxtrain
  ("float64_rerun": worst |d| / ||ref|| after step 1 and 5).  Step 1 must agree within 1e-11
  (100x below the tolerance) and step 5 within 1e-4 (10x below), or the generator stops.
  Measured, step 1 / step 5: mobilenet_v2 4.7e-13 / 1.4e-7, efficientnet_b0 1.8e-13 /
  1.5e-9, densenet121 5.9e-12 / 1.2e-11, ViT 1.3e-15 / 2.1e-15 (lr 0.1 for all four:
  unlike full-size ResNets at 224x224, five steps here do not amplify rounding to 1e-3).
* Biases whose gradient is mathematically zero: in mobilenet_v2 and efficientnet_b0 a
  block's projection BN (no activation after it) writes a stream that is read, directly or
  through residual additions, only by bias-free 1x1 convolutions each followed by BN, whose
  input gradient sums to zero over each channel's positions; so the projection BN bias's
  gradient is exactly 0 (the sum of its output gradient) and its momentum buffer is
  weight decay's wd * b alone (norm ~1e-5 of its sibling's).  Rounding noise in that zero
  gradient is set by the network's gradient scale, not by wd * b: the two float64 PyTorch
  runs differ there by up to 6.6e-10 of the buffer's norm after one step.  The manifest's
  "scale_by" lists these buffers (found as |gradient| <= 1e-10 |gradient of the sibling
  weight|; measured <= 2.1e-15, while every other bias's ratio is >= 0.056); the test
  compares them relative to the larger of their norm and their sibling weight's momentum
  buffer's norm, which still checks the weight-decay term to ~1e-6 of itself.
* PyTorch float32 vs the float64 reference after step 1 ("float32_vs_float64_step1",
  worst per kind of tensor and the loss): for the CNNs, ReLU/ReLU6 kinks and the zero
  gradients above make float32 parameters and momentum buffers differ by up to 8e-3 and
  0.15, while the forward-only running statistics agree within 6e-6; so the float32 check
  compares the loss and the running statistics.  For the ViT (no kink) every tensor
  agrees within 2.6e-6, 10x below 1e-4, and the float32 check compares every tensor.
* "step1_moved_l2rel": how far step 1 moves each tensor; the test asserts every one is far
  above the float64 step-1 tolerance, so the check sees each update.

Checks of the fixtures themselves
---------------------------------
* --verify reads the committed folder as the C++ test does (weights regenerated from the
  manifest and checked against its sums, written next to a copy of the model; the batch
  from the generator) and runs the training-mode forward in onnxruntime: the step-1 loss
  agrees with PyTorch float32's within 2.2e-7 for all four.
* --models resnet18 (DEV_MODELS, not committed) writes torchvision's resnet18 at 64x64
  through this generator; with OXTRAIN_FIXTURES pointing at a copy of tests/fixtures whose
  parity_models/<name> holds it, the C++ test's code path passes on it (float64 1e-13 after
  step 1 and 5) and fails when the manifest's lr is changed by 1e-5 (step 1: ~1e-5, step 5: 4e-3).

Run (developer tool; CI never runs it, the outputs are committed):
    python3 scripts/make_parity_models_fixtures.py tests/fixtures/parity_models
One CPU thread (the reference) with deterministic algorithms: the same bytes on the same
machine (torch 2.15, torchvision 0.29, onnx 1.23); about 3 minutes on 2 cores.
    python3 scripts/make_parity_models_fixtures.py tests/fixtures/parity_models --verify
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torchvision

import onnx
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (strip_debug_info, restore_initializers)
import make_parity_fixtures as pf  # noqa: E402  (export (opset 17), train, write_tensor, ...)
import make_parity_full_fixtures as pff  # noqa: E402  (generator, digests, tolerances)

F32 = pff.F32
tv = torchvision.models


def vit_small():
    return tv.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                hidden_dim=32, mlp_dim=64, num_classes=10, dropout=0.0,
                                attention_dropout=0.0)


# name -> (constructor, batch, image size, classes, lr).  lr: main.py's 0.1 where five steps
# on one batch stay far from rounding-driven divergence (float64_rerun), else lower.
MODELS = {
    "mobilenet_v2": (lambda: tv.mobilenet_v2(weights=None, dropout=0.0), 4, 64, 1000,
                     F32(0.1)),
    "efficientnet_b0": (lambda: tv.efficientnet_b0(weights=None, dropout=0.0,
                                                   stochastic_depth_prob=0.0),
                        4, 64, 1000, F32(0.1)),
    "densenet121": (lambda: tv.densenet121(weights=None), 4, 64, 1000, F32(0.1)),
    "vit": (vit_small, 4, 32, 10, F32(0.1)),
}
# Not committed: torchvision's resnet18 (ops oxtrain already trains) through this generator and
# the test's code path (OXTRAIN_FIXTURES pointing at a folder holding its fixture).
DEV_MODELS = {"resnet18": (lambda: tv.resnet18(weights=None), 4, 64, 1000, F32(0.1))}
K_SAMPLES = 16
STEPS, SAVE_STEPS = pff.STEPS, pff.SAVE_STEPS
MOMENTUM, WEIGHT_DECAY = pff.MOMENTUM, pff.WEIGHT_DECAY
TOLERANCE = pff.TOLERANCE
RERUN_LIMIT = {"float64_step1": 1e-11, "float64_step5": 1e-4}
SQRT2_F32 = F32(np.sqrt(2.0))


class Gelu32(nn.Module):
    """GELU as the exported graph states it: 0.5 x (1 + erf(x / float32(sqrt 2)))."""

    def forward(self, x):
        return x * 0.5 * (1.0 + torch.erf(x / SQRT2_F32))


def init_spec(model, name, shape):
    """(center, half) of one float initializer, by the type of the module holding it."""
    if name.endswith("running_mean"):
        return 0.0, 0.125
    if name.endswith("running_var"):
        return 1.0, 0.125
    modname, _, leaf = name.rpartition(".")
    mod = model.get_submodule(modname) if modname else model
    if isinstance(mod, (nn.BatchNorm2d, nn.LayerNorm)):
        return (1.0, 0.25) if leaf == "weight" else (0.0, 0.125)
    if isinstance(mod, nn.Conv2d):
        k = mod.kernel_size[0] * mod.kernel_size[1]
        if leaf == "weight":
            return 0.0, pff.pow2(np.sqrt(6.0 / (mod.out_channels * k)))
        return 0.0, pff.pow2(1.0 / np.sqrt(mod.in_channels // mod.groups * k))
    if isinstance(mod, nn.Linear):
        return 0.0, pff.pow2(1.0 / np.sqrt(mod.in_features))
    if isinstance(mod, nn.MultiheadAttention):
        if leaf == "in_proj_weight":
            return 0.0, pff.pow2(np.sqrt(6.0 / (shape[0] + shape[1])))
        if leaf == "in_proj_bias":
            return 0.0, 0.125
    if leaf in ("class_token", "pos_embedding"):
        return 0.0, 1.0 / 32
    raise SystemExit(f"no init rule for initializer {name} {shape} ({type(mod).__name__})")


def to_float64_reference(model):
    """model.double() computing what the float32 graph states (see the docstring)."""
    m = copy.deepcopy(model).double()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.eps = F32(mod.eps)
            mod.momentum = 1.0 - F32(1.0 - mod.momentum)
        elif isinstance(mod, nn.LayerNorm):
            mod.eps = F32(mod.eps)
    for parent in list(m.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.GELU):
                assert child.approximate == "none"
                setattr(parent, child_name, Gelu32())
    return m


def digests(snap, order, samples):
    """{name: digest} with K = samples (make_parity_full_fixtures.digest, K patched)."""
    old = pff.K_SAMPLES
    pff.K_SAMPLES = samples
    try:
        return {n: pff.digest(snap[n]) for n in order}
    finally:
        pff.K_SAMPLES = old


def write_digests(path, ds, names):
    parts, offsets, pos = [], {}, 0
    for n in names:
        offsets[n] = pos
        parts.append(ds[n])
        pos += ds[n].size
    pf.write_tensor(path, np.concatenate(parts), "digest")
    return offsets


def digest_distances(got, want, scale_by=None):
    """The C++ test's measure per tensor: worst |got - want| / scale over norm, samples and
    projections, scale = ||want||, or max(||want||, ||want of scale_by[name]||)."""
    scale_by = scale_by or {}
    out = {}
    for n, w in want.items():
        scale = max(w[0], want[scale_by[n]][0] if n in scale_by else 0.0, 1e-30)
        out[n] = float(np.max(np.abs(got[n] - w)) / scale)
    return out


def digest_distance(got, want):
    """(worst distance, its tensor)."""
    dist = digest_distances(got, want)
    where = max(dist, key=lambda n: (np.isnan(dist[n]), dist[n]))
    return dist[where], where


def kind_of(name):
    if name.startswith("momentum/"):
        return "momentum"
    if name.endswith("running_mean") or name.endswith("running_var"):
        return "running_stat"
    return "parameter"


def train(model, images, labels, lr):
    losses, _, snaps = pf.train(model, images, labels, STEPS, SAVE_STEPS, lr=lr,
                                momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    return losses, snaps


def generate(name, outdir, show=0):
    build, batch, image, classes, lr = {**MODELS, **DEV_MODELS}[name]
    t0 = time.time()
    d = os.path.join(outdir, name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    torch.manual_seed(0)
    model = build()
    model.train()

    images = torch.from_numpy(pff.uniform(pff.INPUT_STREAM, (batch, 3, image, image),
                                          0.0, 2.0))
    labels = torch.from_numpy(
        (pff.bits(pff.LABEL_STREAM, batch) % np.uint64(classes)).astype(np.int64))

    m = pf.export_training_onnx(model, images)  # the initializer order
    float_inits = [t.name for t in m.graph.initializer
                   if t.data_type == onnx.TensorProto.FLOAT]
    sd = model.state_dict()
    specs, values = {}, {}
    for k, n in enumerate(float_inits):
        if n not in sd:
            raise SystemExit(f"{name}: initializer {n} is not in the state_dict")
        shape = tuple(sd[n].shape)
        center, half = init_spec(model, n, shape)
        values[n] = pff.uniform(1 + k, shape, center, half)
        specs[n] = {"stream": 1 + k, "center": center, "half": half}
    with torch.no_grad():
        for n, v in values.items():
            sd[n].copy_(torch.from_numpy(v))

    m = pf.export_training_onnx(model, images)
    mf.restore_initializers(m, model)
    mf.strip_debug_info(m)
    weights_file = f"{name}.weights"
    inits, offset = [], 0
    for t in m.graph.initializer:
        if t.data_type != onnx.TensorProto.FLOAT:
            continue
        a = numpy_helper.to_array(t)
        if not np.array_equal(a, values[t.name]):
            raise SystemExit(f"{name}: exported {t.name} differs from the generated values")
        length = a.size * 4
        inits.append({"name": t.name, "shape": list(a.shape), **specs[t.name],
                      "offset": offset, "sum": float(np.sum(a, dtype=np.float64))})
        t.ClearField("raw_data")
        del t.float_data[:]
        t.data_location = onnx.TensorProto.EXTERNAL
        for key, val in (("location", weights_file), ("offset", str(offset)),
                         ("length", str(length))):
            e = t.external_data.add()
            e.key, e.value = key, val
        offset += length
    if len(inits) != len(float_inits):
        raise SystemExit(f"{name}: the second export has other initializers")
    onnx.save_model(m, os.path.join(d, f"{name}.onnx"))
    ops = sorted({n.op_type for n in m.graph.node})

    params, stats = pf.tracked_names(model)
    order = [*params] + ["momentum/" + p for p in params] + [*stats]

    # float64: the reference (one thread, as set in main)
    m64 = to_float64_reference(model)
    t = time.time()
    losses64, snaps64 = train(m64, images.double(), labels, lr)
    t64 = time.time() - t
    ref = {st: digests(snaps64[st], order, K_SAMPLES) for st in SAVE_STEPS}

    # float64 again, independently: two threads, channels_last for the CNNs
    r64 = to_float64_reference(model)
    x64 = images.double()
    if stats:
        r64 = r64.to(memory_format=torch.channels_last)
        x64 = x64.contiguous(memory_format=torch.channels_last)
    torch.set_num_threads(2)
    try:
        rlosses64, rsnaps64 = train(r64, x64, labels, lr)
    finally:
        torch.set_num_threads(1)
    # Momentum buffers of biases whose gradient is mathematically zero (see the docstring):
    # |gradient| <= 1e-10 |gradient of the sibling weight| after step 1 (the step-1 momentum
    # buffer is gradient + weight decay * initial value).
    grad = lambda t: snaps64[1]["momentum/" + t] - WEIGHT_DECAY * sd[t].double().numpy()
    scale_by, zero_grad, kept = {}, {}, []
    for p in params:
        q = p[:-len("bias")] + "weight"
        if p.endswith(".bias") and q in params:
            ratio = float(np.linalg.norm(grad(p)) / np.linalg.norm(grad(q)))
            if ratio <= 1e-10:
                scale_by["momentum/" + p] = "momentum/" + q
                zero_grad["momentum/" + p] = pf.sig(ratio)
            else:
                kept.append(ratio)
    rdig = {st: digests(rsnaps64[st], order, K_SAMPLES) for st in SAVE_STEPS}
    rerun = {}
    for st in SAVE_STEPS:
        key = f"float64_step{st}"
        dist = digest_distances(rdig[st], ref[st], scale_by)
        if show:
            for n in sorted(dist, key=dist.get)[-show:]:
                print(f"  rerun step {st} {dist[n]:.3g} {n}", flush=True)
        where = max(dist, key=dist.get)
        worst = dist[where]
        loss = abs(rlosses64[st - 1] - losses64[st - 1]) / abs(losses64[st - 1])
        rerun[key] = {"digest": pf.sig(worst), "tensor": where, "loss": pf.sig(loss)}
        if not (worst <= RERUN_LIMIT[key] and loss <= RERUN_LIMIT[key]):
            raise SystemExit(f"{name}: a second float64 PyTorch run differs by {worst:.3g} "
                             f"({where}) / loss {loss:.3g} after step {st}; the "
                             f"tolerance {TOLERANCE[key]} would not separate rounding from "
                             "error (lower lr or change the batch)")

    # float32: PyTorch's ordinary run, step 1
    m32 = copy.deepcopy(model)
    t = time.time()
    losses32, snaps32 = train(m32, images, labels, lr)
    t32 = time.time() - t
    d32 = digests(snaps32[1], order, K_SAMPLES)
    f32_vs_f64 = {"loss": pf.sig(abs(losses32[0] - losses64[0]) / abs(losses64[0]))}
    for kind in ("parameter", "momentum", "running_stat"):
        names = [n for n in order if kind_of(n) == kind]
        if names:
            worst, where = digest_distance(d32, {n: ref[1][n] for n in names})
            f32_vs_f64[kind] = {"digest": pf.sig(worst), "tensor": where}
    worst_all = max(v["digest"] for k, v in f32_vs_f64.items() if k != "loss")
    if stats:
        f32_names, f32_check = list(stats), "running_stat"
    elif worst_all <= TOLERANCE["float32_step1"] / 10:
        f32_names, f32_check = order, "all"
    else:
        f32_names, f32_check = [], "loss"

    runs = {}
    for st in SAVE_STEPS:
        f = f"digest_float64_step{st}.pb"
        runs[f"float64_step{st}"] = {"file": f, "offsets": write_digests(
            os.path.join(d, f), ref[st], order)}
    if f32_names:
        f = "digest_float32_step1.pb"
        runs["float32_step1"] = {"file": f, "offsets": write_digests(
            os.path.join(d, f), d32, f32_names)}

    moved = {}
    for n in params + stats:
        a = snaps64[1][n].reshape(-1)
        b = sd[n].numpy().reshape(-1).astype(np.float64)
        moved[n] = pf.sig(float(np.linalg.norm(a - b) / np.linalg.norm(a)))

    nparams = sum(p.numel() for p in model.parameters())
    manifest = {
        "generator": "scripts/make_parity_models_fixtures.py",
        "model": f"torchvision.models: {name}, {nparams} parameters, {classes} classes, "
                 "weights from the seeded generator",
        "torch_version": torch.__version__.split("+")[0],
        "torchvision_version": torchvision.__version__.split("+")[0],
        "onnx_version": onnx.__version__,
        "file": f"{name}.onnx", "weights_file": weights_file,
        "weights_bytes": offset,
        "op_types": ops,
        "training": {"lr": lr, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY,
                     "steps": STEPS},
        "tolerance": TOLERANCE,
        "input": {"name": "input", "shape": [batch, 3, image, image],
                  "stream": pff.INPUT_STREAM, "center": 0.0, "half": 2.0},
        "labels": {"stream": pff.LABEL_STREAM, "values": labels.tolist()},
        "digest": {"samples": K_SAMPLES, "projections": pff.P_PROJECTIONS,
                   "sample_stream": pff.SAMPLE_STREAM,
                   "projection_stream": pff.PROJ_STREAM},
        "losses": {"float64": losses64, "float32": losses32},
        "float32_step1_check": f32_check,
        "scale_by": scale_by,
        "measured": {
            "float64_rerun": rerun,
            "float64_rerun_how": "second float64 PyTorch run: 2 threads"
                                 + (", channels_last" if stats else ""),
            "float32_vs_float64_step1": f32_vs_f64,
            "zero_gradient_over_sibling": zero_grad,
            "smallest_other_bias_gradient_over_sibling": pf.sig(min(kept)) if kept else None,
            "metric": "worst |d| / ||ref|| over norm, samples and projections, "
                      "as the C++ test measures",
        },
        "tensors": order,
        "parameters": len(params),
        "runs": runs,
        "step1_moved_l2rel": moved,
        "seconds": {"float64_5_steps": round(t64, 1), "float32_5_steps": round(t32, 1),
                    "total": round(time.time() - t0, 1)},
        "initializers": inits,
    }
    with open(os.path.join(d, "manifest.json"), "w") as f:
        f.write(pf.compact_json(manifest))
    print(f"{name}: batch {batch} {image}x{image}, {len(order)} tensors, losses f64 "
          + " ".join(f"{v:.6f}" for v in losses64) + ", f32 "
          + " ".join(f"{v:.6f}" for v in losses32)
          + f"; rerun {rerun}; f32 vs f64 {f32_vs_f64}; float32 check {f32_check}; "
          + f"{t64:.1f}s f64, {time.time() - t0:.0f}s", flush=True)


def verify(d):
    """Reads one committed fixture folder as the C++ test does, but with numpy and
    onnxruntime: regenerates the weights from the manifest (checking their sums), writes them
    next to a copy of the model, runs the training-mode forward in onnxruntime and checks the
    step-1 loss against PyTorch float32's.  Returns the relative loss difference."""
    import json
    import shutil
    import tempfile
    import onnxruntime as ort
    with open(os.path.join(d, "manifest.json")) as f:
        m = json.load(f)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(os.path.join(d, m["file"]), tmp)
        with open(os.path.join(tmp, m["weights_file"]), "wb") as f:
            for init in m["initializers"]:
                assert f.tell() == init["offset"], init["name"]
                a = pff.uniform(init["stream"], tuple(init["shape"]), init["center"],
                                init["half"])
                s = float(np.sum(a, dtype=np.float64))
                assert abs(s - init["sum"]) <= 1e-9 * max(1.0, abs(s)), init["name"]
                f.write(a.tobytes())
            assert f.tell() == m["weights_bytes"]
        inp = m["input"]
        x = pff.uniform(inp["stream"], tuple(inp["shape"]), inp["center"], inp["half"])
        sess = ort.InferenceSession(os.path.join(tmp, m["file"]),
                                    providers=["CPUExecutionProvider"])
        logits = sess.run(["output"], {"input": x})[0].astype(np.float64)
    labels = np.asarray(m["labels"]["values"], dtype=np.int64)
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = float(-logp[np.arange(len(labels)), labels].mean())
    want = m["losses"]["float32"][0]
    return abs(loss - want) / abs(want)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir", help="normally tests/fixtures/parity_models")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--verify", action="store_true",
                    help="only check the committed fixtures in outdir (onnxruntime forward)")
    ap.add_argument("--show", type=int, default=0, metavar="N",
                    help="print the N tensors where the second float64 run differs most")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if args.verify:
        for name in args.models.split(","):
            rel = verify(os.path.join(args.outdir, name))
            print(f"{name}: onnxruntime step-1 loss within {rel:.2g} of PyTorch float32's")
            if not rel <= 1e-5:
                raise SystemExit(f"{name}: the fixture does not reproduce PyTorch's loss")
        return 0
    for name in args.models.split(","):
        if name not in MODELS and name not in DEV_MODELS:
            raise SystemExit(f"unknown model {name!r} (have {sorted(MODELS)}, and for "
                             f"checking the test's code path {sorted(DEV_MODELS)})")
        generate(name, args.outdir, args.show)
    return 0


if __name__ == "__main__":
    sys.exit(main())
