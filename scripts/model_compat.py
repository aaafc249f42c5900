#!/usr/bin/env python3
"""Which torchvision classifiers oxtrain trains, from each exporter's ONNX file.

For each of 18 torchvision classifiers (weights=None, num_classes=1000, model.train()) and each
way a user exports one:
  ts        torch.onnx.export(model, x, f, dynamo=False,
                              training=torch.onnx.TrainingMode.TRAINING, opset_version=17)
  dynamo    torch.onnx.export(model, x, f, dynamo=True)                 (optimize=True, default)
  noopt     torch.onnx.export(model, x, f, dynamo=True, optimize=False)
it checks that oxtrain
  1. imports the file (`oxtrain graph --json`),
  2. counts PyTorch's parameters (sum of p.numel()). A dynamo export with optimize=True folds batch
     norm into the convolutions, drops zero biases and merges equal parameters; oxtrain puts them
     back where the node metadata records them ("restored") and warns where it cannot,
  3. trains 2 steps on a synthetic batch (batch 2, 224x224, CPU) with finite losses.
and prints a Markdown table (the README's compatibility table), one cell per file:
  "ok" = all three; otherwise the first thing that failed with oxtrain's message.

Needs torch, torchvision, onnx and onnxscript (pip); not part of the test suite.

  scripts/model_compat.py [--oxtrain build/cli/oxtrain] [--work /tmp/oxtrain-compat]
                          [--models resnet18,vit_b_16] [--readme README.md] [--json out.json]

With --readme, the table replaces the lines between <!-- compat-table --> and
<!-- /compat-table --> in that file. Exports are cached in --work.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import time

MODELS = ["resnet18", "resnet50", "resnet101", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2",
          "mobilenet_v3_small", "efficientnet_b0", "densenet121", "vgg11_bn", "alexnet", "squeezenet1_0",
          "shufflenet_v2_x0_5", "googlenet", "mnasnet0_5", "regnet_y_400mf", "convnext_tiny", "vit_b_16"]
EXPORTERS = ["ts", "dynamo", "noopt"]
HEADERS = {"ts": "TorchScript, training mode", "dynamo": "dynamo (optimize=True)", "noopt": "dynamo, optimize=False"}
LOSS = re.compile(r"Loss ([0-9.eE+\-naninf]+) \(")


def make_model(name):
    import torchvision
    kwargs = {"weights": None, "num_classes": 1000}
    if name == "googlenet":
        # The auxiliary classifiers make the training-mode output a tuple (main.py cannot train
        # it either) and their 4x4 adaptive pooling of 14x14 does not export.
        kwargs.update(aux_logits=False, init_weights=True)
    m = getattr(torchvision.models, name)(**kwargs)
    m.train()
    return m


def export(name, exporter, path):
    import torch
    torch.manual_seed(0)
    model = make_model(name)
    x = torch.randn(2, 3, 224, 224)
    params = sum(p.numel() for p in model.parameters())
    if not os.path.exists(path):
        if exporter == "ts":
            torch.onnx.export(model, (x,), path, dynamo=False, training=torch.onnx.TrainingMode.TRAINING,
                              do_constant_folding=False, opset_version=17)
        else:
            torch.onnx.export(model, (x,), path, dynamo=True, optimize=(exporter == "dynamo"))
    return params


def first_error(text):
    for line in text.splitlines():
        if "error" in line:
            return line.replace("oxtrain: error: ", "").strip()
    lines = [l for l in text.splitlines() if l.strip()]
    return lines[-1].strip() if lines else "no output"


def short(msg, limit=110):
    msg = msg.replace("|", "\\|")
    return msg if len(msg) <= limit else msg[:limit - 1] + "…"


def check(oxtrain, path, torch_params, exporter, workdir):
    cell = {"imports": False, "parameters": None, "torch_parameters": torch_params, "params_match": False,
            "losses": [], "trains": False, "warning": "", "error": ""}
    g = subprocess.run([oxtrain, "graph", "--json", path], capture_output=True, text=True)
    if g.returncode != 0:
        cell["error"] = first_error(g.stderr)
        return cell
    cell["imports"] = True
    cell["warning"] = ("folded" if "folded batch norm" in g.stderr else
                       "rewritten" if "rewrote it for inference" in g.stderr else
                       "restored" if "oxtrain: note:" in g.stderr and "put back" in g.stderr else "")
    cell["parameters"] = json.loads(g.stdout).get("parameters")
    cell["params_match"] = cell["parameters"] == torch_params
    t0 = time.time()
    t = subprocess.run([oxtrain, "train", "--model", path, "--synthetic", "-b", "2", "--image-size", "224",
                        "--steps", "2", "-p", "1", "--device", "cpu", "--checkpoint-dir", workdir],
                       capture_output=True, text=True)
    cell["seconds"] = round(time.time() - t0, 1)
    losses = [float(v) for v in LOSS.findall(t.stdout)]
    cell["losses"] = losses
    cell["trains"] = t.returncode == 0 and len(losses) >= 2 and all(math.isfinite(v) for v in losses)
    if not cell["trains"]:
        cell["error"] = first_error(t.stderr) if t.returncode != 0 else "loss not finite: %s" % losses
    return cell


def render(cell):
    if not cell["imports"]:
        return "import: " + short(cell["error"])
    note = {"folded": " (BN folded, warned)", "rewritten": " (rewritten for inference, warned)",
            "restored": " (restored)"}.get(cell["warning"], "")
    if not cell["trains"]:
        return "train: " + short(cell["error"]) + note
    if cell["params_match"]:
        return "ok" + note
    return "ok, %s parameters of PyTorch's %s%s" % (format(cell["parameters"], ","),
                                                   format(cell["torch_parameters"], ","), note)


def table(results):
    rows = ["| model | " + " | ".join(HEADERS[e] for e in EXPORTERS) + " |",
            "|---|" + "---|" * len(EXPORTERS)]
    for name in [m for m in MODELS if m in results]:
        rows.append("| " + name + " | " + " | ".join(render(results[name][e]) if e in results[name] else "-"
                                                   for e in EXPORTERS) + " |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    ap.add_argument("--oxtrain", default=os.path.join(root, "build", "cli", "oxtrain"))
    ap.add_argument("--work", default="/tmp/oxtrain-compat")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--exporters", default=",".join(EXPORTERS))
    ap.add_argument("--readme")
    ap.add_argument("--json")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    import torch
    import torchvision
    results = {}
    for name in args.models.split(","):
        results[name] = {}
        for exporter in args.exporters.split(","):
            path = os.path.join(args.work, "%s_%s.onnx" % (name, exporter))
            try:
                params = export(name, exporter, path)
            except Exception as e:  # an exporter failure is a cell too
                results[name][exporter] = {"imports": False, "error": "export failed: " + str(e).splitlines()[0]}
                continue
            cell = check(args.oxtrain, path, params, exporter, args.work)
            results[name][exporter] = cell
            print("%-20s %-7s %s" % (name, exporter, render(cell)), file=sys.stderr, flush=True)
    text = ("Checked with torch %s, torchvision %s; batch 2, 224x224, 2 steps on the CPU "
            "(scripts/model_compat.py). \"ok\": imports, PyTorch's parameter count, 2 steps with finite losses. "
            "\"(restored)\": the dynamo exporter's default `optimize=True` rewrote the model for inference and "
            "oxtrain put the rewrites back (see above); \"warned\": it could not, and warned.\n\n"
            % (torch.__version__.split("+")[0], torchvision.__version__.split("+")[0]) + table(results))
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.readme:
        readme = open(args.readme).read()
        start, end = "<!-- compat-table -->", "<!-- /compat-table -->"
        if start not in readme or end not in readme:
            sys.exit("%s has no %s ... %s markers" % (args.readme, start, end))
        head, rest = readme.split(start, 1)
        _, tail = rest.split(end, 1)
        with open(args.readme, "w") as f:
            f.write(head + start + "\n" + text + "\n" + end + tail)


if __name__ == "__main__":
    main()
