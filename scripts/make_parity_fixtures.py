#!/usr/bin/env python3
"""Generate the PyTorch training-parity fixtures (tests/fixtures/parity/).

Purpose
-------
Let oxtrain's C++ test suite check, without torch, that one and five SGD
steps on a tiny ResNet give the same loss, updated weights, momentum buffers
and BatchNorm running statistics as PyTorch.  Suggested tolerances: 1e-4
relative after one step and 1e-3 after five, where "relative" for a tensor is

    max|oxtrain - torch| / max|torch|          (max over the whole tensor)

The manifest records, per tensor, how far PyTorch's own float32 result is
from a float64 run of the same training ("torch_f32_vs_f64_rel": what float32
rounding alone moves each tensor) and how far the step moved it from its
starting value ("update_rel": what a no-op or half-done update would miss),
so a test can see that the tolerance sits between the two.

Conditioning (read before loosening or tightening a tolerance)
--------------------------------------------------------------
Two float32 implementations that are both correct can still disagree here:
the tiny model memorises the batch (loss 2.23 -> 0.29 in 5 steps at lr 0.1),
each step amplifies small differences (~100x at step 1, more later), and a
ReLU input or max-pool choice that lies within rounding of its kink takes the
other branch, which moves a BN-channel gradient by O(1/16) in layer4 (2x2
pixels x batch 4).  Measured over 1400 seeds with injected float32-like noise
(see add_rounding_noise), most seeds fail the step-5 1e-3 check under noise
of ~1e-6 per op; SEED = 695 is one of the few that stays within 1e-4 (step
1) and 1e-3 (step 5) under 3e-7 noise in every draw and under 7e-7..1e-6 in
most.  The manifest records the measurements (noise_sensitivity_summary,
per-tensor noise_<eps>_rel, kink_margins_f64).  Hence: a step-1 mismatch is
a real discrepancy; a step-5 mismatch of 1e-2..1 in a few tensors with
step 1 matching most likely is a flipped kink.  (The same effect makes real
ResNets differ by 1e-2..1e-1 after one step even between PyTorch float32
and float64; see scripts/parity_full_resnets.py.)  Checked against oxtrain
(cli `train --input-tensors --steps N --save-model`, working tree of this
change): parameters and running statistics agree within 5.6e-6 after one
step and 1.6e-5 after five.

Model and training (mirrors examples/imagenet/main.py)
------------------------------------------------------
* ResNet with torchvision's structure, module names and init
  (kaiming_normal_ fan_out for convs, BN weight 1 / bias 0, running mean 0 /
  var 1, nn.Linear default init for fc), Bottleneck v1.5 blocks [1,1,1,1],
  stem width 2 (inner widths 2/4/8/16, block outputs 8/16/32/64 channels),
  10 classes.  The model classes are imported from scripts/make_fixtures.py
  (importable without side effects); the BN perturbation / warm-up that
  make_fixtures.build_model applies is NOT used here: this is plain
  torchvision init, as a real training run starts.
* Input float32 [4,3,64,64] (the last stage still has 2x2 pixels, so every
  BN normalises over >= 16 values), int64 labels [4] in [0,10).
* model.train(); nn.CrossEntropyLoss(); torch.optim.SGD(model.parameters(),
  lr=0.1, momentum=0.9, weight_decay=1e-4) (weight decay applies to every
  parameter, BN and fc bias included); each step: output = model(images);
  loss = criterion(output, labels); optimizer.zero_grad(); loss.backward();
  optimizer.step().  Same batch every step, 5 steps, float32, CPU.
* PyTorch conventions a runtime must match: SGD momentum buffer on step 1 is
  grad + wd*w (no dampening), afterwards buf = 0.9*buf + grad + wd*w, and
  w -= lr*buf; BN normalises with the biased batch variance but updates
  running_var with the UNBIASED one (n/(n-1), n = N*H*W; 16/15 in layer4),
  running = 0.9*running + 0.1*batch_stat (ONNX momentum 0.9).

Files written into OUTDIR (normally tests/fixtures/parity)
----------------------------------------------------------
  parity_bottleneck.onnx   torch.onnx.export(dynamo=False,
                           training=TrainingMode.TRAINING,
                           do_constant_folding=False, opset_version=17,
                           input "input", output "output"); debug strings
                           stripped.  Initializers are named like the
                           state_dict (conv1.weight, bn1.running_mean, ...)
                           and hold exactly the weights training starts
                           from (see "onnx_initializers" in the manifest).
  input.pb                 TensorProto float32 [4,3,64,64], name "input"
  labels.pb                TensorProto int64 [4], name "labels"
  losses.pb                TensorProto float32 [5], name "losses": the loss
                           of each step's forward (before that step's update)
  logits_step1.pb          TensorProto float32 [4,10], name "output": the
                           train-mode forward output of step 1 (debug aid)
  step1/<file>.pb          state after 1 step, step5/<file>.pb after 5:
                           every parameter (state_dict name), every momentum
                           buffer (name "momentum/<param name>"), every BN
                           running_mean / running_var.  <file> is the tensor
                           name with '/' replaced by '__'; the TensorProto's
                           name field is the tensor name itself.
  manifest.json            model, versions, hyper-parameters, batch, tensor
                           names -> files per step, losses, and the checks.

How to run (developers only; CI never runs this, the outputs are committed)
---------------------------------------------------------------------------
    pip install torch torchvision onnx
    python3 scripts/make_parity_fixtures.py tests/fixtures/parity

Everything is seeded and runs on one CPU thread with deterministic
algorithms, so re-running reproduces the same bytes on the same machine
(checked with torch 2.15 / onnx 1.23); it takes about 7 s (the float64 run
and 16 noise runs included).  The script only writes the files
listed above (it removes stale step1/ and step5/ .pb files first).
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn as nn

import onnx
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (model classes, strip_debug_info)

SEED = 695  # chosen for robustness: see "Conditioning" above
WIDTH = 2
LAYERS = [1, 1, 1, 1]
NUM_CLASSES = 10
BATCH = 4
IN_SHAPE = (3, 64, 64)
LR = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
STEPS = 5
SAVE_STEPS = (1, 5)
OPSET = 17
TOLERANCE = {"step1": 1e-4, "step5": 1e-3}
NOISE_EPS = (3e-7, 1e-6)
NOISE_DRAWS = 8
MODEL_FILE = "parity_bottleneck.onnx"


def rel_diff(a, ref):
    """max|a - ref| / max|ref| over the whole tensor (0 if both are 0)."""
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    num = float(np.max(np.abs(a - ref))) if a.size else 0.0
    den = float(np.max(np.abs(ref))) if ref.size else 0.0
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def l2_rel(a, ref):
    """||a - ref|| / ||ref|| (Frobenius norms; 0 if both are 0)."""
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    num, den = float(np.linalg.norm(a - ref)), float(np.linalg.norm(ref))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def sig(x, digits=4):
    """Round a diagnostic number to a few significant digits (manifest)."""
    return float(f"{x:.{digits}g}")


def file_name(tensor_name):
    return tensor_name.replace("/", "__") + ".pb"


def write_tensor(path, array, name):
    t = numpy_helper.from_array(np.ascontiguousarray(array), name)
    with open(path, "wb") as f:
        f.write(t.SerializeToString())


def compact_json(obj):
    """JSON with one space of indent per level, where lists and objects that
    hold only scalars (or lists of scalars) stay on one line (one line per
    tensor entry)."""
    def flat(o):
        if isinstance(o, dict):
            return all(flat(v) and not isinstance(v, dict) for v in o.values())
        if isinstance(o, list):
            return all(not isinstance(v, (dict, list)) for v in o)
        return True

    def emit(o, ind):
        if not isinstance(o, (dict, list)) or flat(o):
            return json.dumps(o)
        pad = " " * (ind + 1)
        if isinstance(o, dict):
            items = [f"{pad}{json.dumps(k)}: {emit(v, ind + 1)}"
                     for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + " " * ind + "}"
        items = [pad + emit(v, ind + 1) for v in o]
        return "[\n" + ",\n".join(items) + "\n" + " " * ind + "]"
    return emit(obj, 0) + "\n"


def build_model():
    torch.manual_seed(SEED)
    model = mf.ResNet(mf.Bottleneck, LAYERS, num_classes=NUM_CLASSES,
                      width=WIDTH)
    model.train()
    return model


def make_batch():
    g = torch.Generator().manual_seed(SEED + 1)
    images = torch.randn(BATCH, *IN_SHAPE, generator=g, dtype=torch.float32)
    labels = torch.randint(0, NUM_CLASSES, (BATCH,), generator=g,
                           dtype=torch.int64)
    return images, labels


def tracked_names(model):
    """Parameter names (optimizer order) and BN running-stat names."""
    params = [n for n, _ in model.named_parameters()]
    stats = [n for n, _ in model.named_buffers()
             if n.endswith("running_mean") or n.endswith("running_var")]
    return params, stats


def snapshot(model, optimizer):
    """name -> numpy copy of params, momentum buffers and BN running stats."""
    out = {}
    sd = model.state_dict()
    for n, p in model.named_parameters():
        out[n] = p.detach().cpu().numpy().copy()
        st = optimizer.state.get(p, {})
        buf = st.get("momentum_buffer")
        if buf is not None:
            out["momentum/" + n] = buf.detach().cpu().numpy().copy()
    for n, v in sd.items():
        if n.endswith("running_mean") or n.endswith("running_var"):
            out[n] = v.detach().cpu().numpy().copy()
    return out


def train(model, images, labels, steps, save_steps, on_step=None, lr=LR,
          momentum=MOMENTUM, weight_decay=WEIGHT_DECAY):
    """Train exactly like examples/imagenet/main.py; return losses, the
    step-1 logits and {step: snapshot}.  on_step(step) is called before
    each step's forward."""
    model.train()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                weight_decay=weight_decay)
    losses, snaps, logits1 = [], {}, None
    for step in range(1, steps + 1):
        if on_step is not None:
            on_step(step)
        output = model(images)
        loss = criterion(output, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.item()))
        if step == 1:
            logits1 = output.detach().cpu().numpy().copy()
        if step in save_steps:
            snaps[step] = snapshot(model, optimizer)
    return losses, logits1, snaps


def add_rounding_noise(model, eps, seed):
    """Imitate another float32 implementation: multiply every element of each
    Conv / BatchNorm / Linear output, and of the gradient arriving at it, by
    (1 + eps * N(0,1)).  eps = 3e-7 is about 5 float32 ulps."""
    g = torch.Generator().manual_seed(seed)

    def noisy(t):
        return t * (1 + eps * torch.randn(t.shape, generator=g, dtype=t.dtype))

    def hook(mod, inp, out):
        out = noisy(out)
        if out.requires_grad:
            out.register_hook(noisy)
        return out

    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
            mod.register_forward_hook(hook)
    return model


class KinkMargins:
    """Per training step: the smallest |x| / max|x| over all ReLU inputs and
    the smallest (largest - second largest) / max|x| over MaxPool windows
    with a positive maximum.  A result moved by more than this margin flips
    a ReLU or a max-pool choice, i.e. takes a different branch."""

    def __init__(self, model):
        self.per_step = {}
        self.step = None
        for mod in model.modules():
            if isinstance(mod, nn.ReLU):
                mod.register_forward_pre_hook(self._relu)
            elif isinstance(mod, nn.MaxPool2d):
                mod.register_forward_pre_hook(self._pool)

    def on_step(self, step):
        self.step = step
        self.per_step[step] = {"relu": float("inf"), "maxpool": float("inf")}

    def _relu(self, mod, inp):
        x = inp[0].detach()
        r = float(x.abs().min() / x.abs().max())
        d = self.per_step[self.step]
        d["relu"] = min(d["relu"], r)

    def _pool(self, mod, inp):
        x = inp[0].detach()
        k, s, pad = mod.kernel_size, mod.stride, mod.padding
        u = torch.nn.functional.unfold(
            torch.nn.functional.pad(x, (pad,) * 4, value=float("-inf"))
            .flatten(0, 1).unsqueeze(1), k, stride=s)
        top = u.topk(2, dim=1).values
        pos = top[:, 0] > 0
        gap = (top[:, 0] - top[:, 1])[pos]
        r = float(gap.min() / x.abs().max()) if gap.numel() else float("inf")
        d = self.per_step[self.step]
        d["maxpool"] = min(d["maxpool"], r)


def export_training_onnx(model, x):
    """TorchScript training-mode export of a deep copy (the exporter's
    tracing forward updates BN running stats; the copy absorbs that)."""
    m_copy = copy.deepcopy(model)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m_copy, x, buf,
                          training=torch.onnx.TrainingMode.TRAINING,
                          do_constant_folding=False, opset_version=OPSET,
                          dynamo=False, input_names=["input"],
                          output_names=["output"])
    return onnx.load_from_string(buf.getvalue())


def compare_initializers(m, state):
    """Compare initializers with the torch state by name.  Returns
    (missing state names, names whose values differ)."""
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    missing, differ = [], []
    for n, v in state.items():
        if n not in inits:
            missing.append(n)
        elif inits[n].shape != v.shape or inits[n].dtype != v.dtype \
                or not np.array_equal(inits[n], v):
            differ.append(n)
    return missing, differ


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir", help="output folder, normally "
                                   "tests/fixtures/parity")
    args = ap.parse_args()
    out = args.outdir

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    model = build_model()
    model64 = copy.deepcopy(model).double()
    images, labels = make_batch()
    params, stats = tracked_names(model)
    init_state = {n: v.detach().cpu().numpy().copy()
                  for n, v in model.state_dict().items()
                  if n in set(params) | set(stats)}

    # ---- ONNX export -------------------------------------------------------
    m = export_training_onnx(model, images)
    missing, differ_raw = compare_initializers(m, init_state)
    if missing:
        raise SystemExit(f"ONNX initializers missing for {missing}")
    restored = mf.restore_initializers(m, model)  # resets traced BN stats
    missing, differ = compare_initializers(m, init_state)
    if missing or differ:
        raise SystemExit(f"ONNX initializers still differ: {missing} {differ}")
    extra_inits = sorted(t.name for t in m.graph.initializer
                         if t.name not in init_state)
    # torch state must not have been touched by the export
    after_export = {n: v.detach().cpu().numpy()
                    for n, v in model.state_dict().items() if n in init_state}
    assert all(np.array_equal(after_export[n], init_state[n])
               for n in init_state), "export modified the torch model"
    mf.strip_debug_info(m)
    onnx.checker.check_model(m, full_check=True)
    bn_nodes = [n for n in m.graph.node if n.op_type == "BatchNormalization"]
    bn_training = all(any(a.name == "training_mode" and a.i == 1
                          for a in n.attribute) for n in bn_nodes)

    # ---- train -------------------------------------------------------------
    model0 = copy.deepcopy(model)
    losses, logits1, snaps = train(model, images, labels, STEPS, SAVE_STEPS)
    margins = KinkMargins(model64)
    losses64, _, snaps64 = train(model64, images.double(), labels, STEPS,
                                 SAVE_STEPS, on_step=margins.on_step)

    # ---- sensitivity to float32 rounding noise (see add_rounding_noise) ----
    noise = {}  # eps -> {"step1": {name: max rel}, ...}, plus failures
    for eps in NOISE_EPS:
        per = {f"step{s}": {} for s in SAVE_STEPS}
        fails = {f"step{s}": 0 for s in SAVE_STEPS}
        for k in range(NOISE_DRAWS):
            mn = add_rounding_noise(copy.deepcopy(model0), eps, 1000 + k)
            _, _, sn = train(mn, images, labels, STEPS, SAVE_STEPS)
            for s in SAVE_STEPS:
                key = f"step{s}"
                worst = 0.0
                for name, ref in snaps[s].items():
                    r = rel_diff(sn[s][name], ref)
                    per[key][name] = max(per[key].get(name, 0.0), r)
                    worst = max(worst, r)
                if worst > TOLERANCE[key]:
                    fails[key] += 1
        noise[eps] = {"per_tensor": per, "runs_over_tolerance": fails}

    # ---- write -------------------------------------------------------------
    os.makedirs(out, exist_ok=True)
    for sub in ("step1", "step5"):
        d = os.path.join(out, sub)
        if os.path.isdir(d):
            for f in os.listdir(d):
                if f.endswith(".pb"):
                    os.remove(os.path.join(d, f))
    onnx.save_model(m, os.path.join(out, MODEL_FILE))
    write_tensor(os.path.join(out, "input.pb"), images.numpy(), "input")
    write_tensor(os.path.join(out, "labels.pb"), labels.numpy(), "labels")
    write_tensor(os.path.join(out, "losses.pb"),
                 np.asarray(losses, dtype=np.float32), "losses")
    write_tensor(os.path.join(out, "logits_step1.pb"), logits1, "output")

    order = ([*params] + ["momentum/" + p for p in params] + [*stats])
    steps_info = {}
    f64_summary = {}
    noise_summary = {}
    for step in SAVE_STEPS:
        d = os.path.join(out, f"step{step}")
        os.makedirs(d, exist_ok=True)
        snap, snap64 = snaps[step], snaps64[step]
        assert sorted(snap) == sorted(order), "unexpected tensor set"
        tensors = []
        for name in order:
            a = snap[name]
            write_tensor(os.path.join(d, file_name(name)), a, name)
            if name.startswith("momentum/"):
                kind, start = "momentum", None
            elif name in stats:
                kind, start = "bn_running_stat", init_state[name]
            else:
                kind, start = "parameter", init_state[name]
            entry = {
                "name": name,
                "file": f"step{step}/{file_name(name)}",
                "kind": kind,
                "shape": list(a.shape),
                "max_abs": sig(float(np.max(np.abs(a)))),
                "torch_f32_vs_f64_rel": sig(rel_diff(a, snap64[name])),
                "torch_f32_vs_f64_l2rel": sig(l2_rel(a, snap64[name])),
            }
            if start is not None:
                entry["update_rel"] = sig(rel_diff(start, a))
            for eps in NOISE_EPS:
                entry[f"noise_{eps:g}_rel"] = \
                    sig(noise[eps]["per_tensor"][f"step{step}"][name])
            tensors.append(entry)
        rels = [t["torch_f32_vs_f64_rel"] for t in tensors]
        worst = max(tensors, key=lambda t: t["torch_f32_vs_f64_rel"])
        upd = [t for t in tensors if "update_rel" in t]
        least = min(upd, key=lambda t: t["update_rel"])
        f64_summary[f"step{step}"] = {
            "max": max(rels), "max_tensor": worst["name"],
            "median": sig(float(np.median(rels))),
            "l2rel_max": max(t["torch_f32_vs_f64_l2rel"] for t in tensors),
            "by_kind_max": {k: max(t["torch_f32_vs_f64_rel"] for t in tensors
                                   if t["kind"] == k)
                            for k in ("parameter", "momentum",
                                      "bn_running_stat")},
            "min_update_rel": least["update_rel"],
            "min_update_tensor": least["name"],
        }
        for eps in NOISE_EPS:
            key = f"noise_{eps:g}_rel"
            w = max(tensors, key=lambda t: t[key])
            noise_summary.setdefault(f"eps_{eps:g}", {})[f"step{step}"] = {
                "max": w[key], "max_tensor": w["name"],
                "median": sig(float(np.median([t[key] for t in tensors]))),
                "runs_over_tolerance": (
                    f"{noise[eps]['runs_over_tolerance'][f'step{step}']}"
                    f" of {NOISE_DRAWS}"),
            }
        steps_info[f"step{step}"] = {"steps_done": step, "tensors": tensors}

    loss_rel = [sig(abs(a - b) / abs(b)) for a, b in zip(losses, losses64)]
    manifest = {
        "generator": "scripts/make_parity_fixtures.py",
        "torch_version": torch.__version__.split("+")[0],
        "onnx_version": onnx.__version__,
        "seed": SEED,
        "model": {
            "description": (
                "torchvision-style ResNet v1.5, Bottleneck blocks "
                f"{LAYERS}, stem width {WIDTH} (inner widths "
                f"{[WIDTH * k for k in (1, 2, 4, 8)]}, block outputs "
                f"{[WIDTH * 4 * k for k in (1, 2, 4, 8)]}), "
                f"{NUM_CLASSES} classes, torchvision init (convs "
                "kaiming_normal_ fan_out, BN weight 1 bias 0, running mean 0 "
                "var 1, fc nn.Linear default)"),
            "file": MODEL_FILE,
            "export": (f"torch.onnx.export(dynamo=False, training=TRAINING, "
                       f"do_constant_folding=False, opset_version={OPSET}, "
                       "input_names=['input'], output_names=['output'])"),
            "parameters": int(sum(int(np.prod(init_state[p].shape))
                                  for p in params)),
            "bn_layers": len(bn_nodes),
            "bn_training_mode_attr": bn_training,
            "input_shape": [BATCH, *IN_SHAPE],
            "output_shape": [BATCH, NUM_CLASSES],
        },
        "onnx_initializers": {
            "matched_torch_state_as_exported": not differ_raw,
            "differed_as_exported": differ_raw,
            "restored": ("same list" if restored == differ_raw
                         else restored),
            "matched_torch_state_after_restore": True,
            "note": ("the TorchScript exporter's train-mode tracing forward "
                     "(run on a deep copy) updates BN running stats and saves "
                     "them; those initializers were reset to the module's "
                     "values, after which every parameter and running stat "
                     "initializer equals the torch state bit for bit"),
            "other_initializers": extra_inits,
        },
        "training": {
            "mirrors": "examples/imagenet/main.py (train())",
            "criterion": "nn.CrossEntropyLoss() (mean over the batch)",
            "optimizer": "torch.optim.SGD(model.parameters(), lr, momentum, "
                         "weight_decay) (dampening 0, nesterov False)",
            "lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY,
            "bn_momentum_torch": 0.1,
            "steps": STEPS,
            "dtype": "float32",
            "same_batch_every_step": True,
            "conventions": [
                "step 1: momentum_buffer = grad + wd*w; later: buf = 0.9*buf "
                "+ grad + wd*w; w -= lr*buf; weight decay on every parameter",
                "BN normalises with the biased batch variance; running_var "
                "is updated with the unbiased one (x n/(n-1), n = N*H*W)",
                "running = 0.9*running + 0.1*batch statistic",
            ],
        },
        "batch": {
            "input": {"file": "input.pb", "name": "input",
                      "dtype": "float32", "shape": [BATCH, *IN_SHAPE],
                      "source": "torch.randn(seeded)"},
            "labels": {"file": "labels.pb", "name": "labels",
                       "dtype": "int64", "shape": [BATCH],
                       "values": labels.tolist()},
        },
        "losses": {"file": "losses.pb", "name": "losses", "dtype": "float32",
                   "shape": [STEPS], "values": losses,
                   "values_f64": losses64,
                   "torch_f32_vs_f64_rel": loss_rel,
                   "note": "loss of each step's forward, before its update"},
        "logits_step1": {"file": "logits_step1.pb", "name": "output",
                         "shape": [BATCH, NUM_CLASSES],
                         "note": "train-mode forward output of step 1"},
        "relative_difference": ("max|a - ref| / max|ref| over the tensor"),
        "suggested_tolerance": TOLERANCE,
        "torch_f32_vs_f64_rel_summary": f64_summary,
        "noise_sensitivity_summary": noise_summary,
        "kink_margins_f64": {f"step{k}": {kk: sig(vv) for kk, vv in v.items()}
                             for k, v in margins.per_step.items()},
        "notes": [
            "torch_f32_vs_f64_rel: the same 5 steps repeated in float64 "
            "(model.double(), same init and batch); relative difference of "
            "the float32 result from it, i.e. what float32 rounding alone "
            "moves each tensor. torch_f32_vs_f64_l2rel: the same in "
            "||f32 - f64|| / ||f64||.",
            "update_rel: relative difference between the tensor after the "
            "step(s) and its initial value (parameters and BN running stats;"
            " momentum buffers start at zero), i.e. what a missing update "
            "would get wrong.",
            "noise_<eps>_rel (per tensor) and noise_sensitivity_summary: "
            f"{NOISE_DRAWS} more float32 runs in which every element of each "
            "Conv/BatchNorm/Linear output and of the gradient arriving at it "
            "is multiplied by (1 + eps*N(0,1)) (eps 3e-7 ~ 5 float32 ulps), "
            "imitating another float32 implementation; the value is the max "
            "over the runs of the relative difference from the fixture. "
            "runs_over_tolerance counts runs whose worst tensor exceeds "
            "suggested_tolerance.",
            "Why this matters: the tiny model memorises the batch (loss "
            "falls ~10x in 5 steps at lr 0.1) and each training step "
            "amplifies a small difference (~100x at step 1, more later); on "
            "top, once an implementation's values move past a ReLU or "
            "max-pool decision (kink_margins_f64: smallest relative distance "
            "to such a decision in each step's forward) the branch flips and "
            "the gradient jumps by O(1/(values per BN channel)) -- 1/16 in "
            "layer4 -- which makes step-5 results differ by 1e-2..1. Most "
            "seeds flip under 1e-6 noise by step 5; the seed was chosen from "
            "~1400 as one of the few whose step-5 results stay within 1e-3 "
            "under 7e-7 noise in most draws, and whose step-1 results stay "
            "within 1e-4 under 1e-6 noise. A step-5 mismatch of O(1e-2..1) "
            "with a step-1 match therefore most likely means a flipped kink "
            "(larger rounding differences than torch's), not a wrong "
            "formula; a step-1 mismatch is a real discrepancy.",
            "File names: tensor name with '/' replaced by '__', plus '.pb'; "
            "each is an onnx TensorProto whose name is the tensor name.",
        ],
        "steps": steps_info,
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        f.write(compact_json(manifest))

    total = 0
    for root, _, files in os.walk(out):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    print(f"wrote {out}: {total} bytes; losses {losses}")
    for k, v in f64_summary.items():
        print(f"{k}: f32 vs f64 max {v['max']:.3g} ({v['max_tensor']}), "
              f"median {v['median']:.3g}; min update_rel "
              f"{v['min_update_rel']:.3g} ({v['min_update_tensor']})")
    for k, v in noise_summary.items():
        print(k, {s: f"max {d['max']:.2g} ({d['max_tensor']}), over tol "
                     f"{d['runs_over_tolerance']}" for s, d in v.items()})
    print("kink margins (f64):", {k: f"relu {v['relu']:.1e} maxpool "
                                     f"{v['maxpool']:.1e}"
                                  for k, v in margins.per_step.items()})
    print("onnx initializers as exported differed for", len(differ_raw),
          "tensors; restored", len(restored))


if __name__ == "__main__":
    main()
