#!/usr/bin/env python3
"""Copies ONNX's own operator tests (node tests) for the ops oxtrain supports into
tests/fixtures/onnx_node/, where tests/test_onnx_node.cc runs them through `oxtrain run`'s code.

The cases come from the installed onnx package: onnx/backend/test/data/node/test_*/ (model.onnx
and test_data_set_*/input_*.pb, output_*.pb) where the package ships them, else (the PyPI
wheels leave that folder out) they are generated with the package's own generator, the code
that writes that folder (onnx.backend.test.case.node, serialized as onnx/backend/test/cmd_tools.py
does), with numpy's random generator seeded so that a re-run writes the same files.

The oxtrain binary says which ops it supports and which opsets it reads (`oxtrain run
--supported-ops --json`). Every case whose nodes are all supported ops is copied (cases over
--max-bytes are skipped and recorded). A case is copied as published when oxtrain reads its opset
and implements each op's version there (most are: each case uses its op's newest version, often new
only in the types it allows); otherwise its model is converted by onnx.version_converter, where it
can be, to the newest opset at which oxtrain implements every op, its data as published (the
manifest says so);
manifest.json lists, for every supported op, every published case that uses it and whether it
was committed or why not. Re-running after more ops become supported refreshes the fixtures:
case folders no longer selected are removed.

Needs the onnx pip package (and numpy); not part of the test suite.

    python3 scripts/onnx_node_tests.py [--oxtrain build/oxtrain]
    build/tests/oxtrain_tests --gtest_filter='OnnxNode*'

The test then lists every committed case that fails, with oxtrain's error: fix it, or add it to
the exclusion list in tests/test_onnx_node.cc with the reason.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "onnx_node")
DEFAULT_BINARY = os.path.join(REPO, "build", "oxtrain")


def op_key(domain: str, op_type: str) -> str:
    domain = "" if domain in ("", "ai.onnx") else domain
    return op_type if not domain else domain + "." + op_type


def supported_ops(binary: str) -> tuple[dict[str, dict], list[int], list[int]]:
    """The ops the binary imports (with the versions of each ai.onnx op it implements), the range
    of ai.onnx opsets it reads, and the range at which it implements every op."""
    out = subprocess.run([binary, "run", "--supported-ops", "--json"], check=True, capture_output=True, text=True)
    j = json.loads(out.stdout)
    return ({op_key(o["domain"], o["op_type"]): o for o in j["ops"]}, j["opsets"]["ai.onnx"],
            j["opsets"]["ai.onnx_every_op"])


def unimplemented_versions(model, supported: dict[str, dict]) -> list[str]:
    """"Op-version" for each ai.onnx op of the model whose version at the model's opset oxtrain
    does not implement (onnx.defs resolves the version)."""
    import onnx.defs

    opset = default_opset(model)
    out = set()
    for op in graph_ops(model.graph):
        info = supported.get(op)
        if info is None or "versions" not in info:
            continue
        try:
            version = onnx.defs.get_schema(op, opset).since_version
        except onnx.defs.SchemaError:
            out.add(f"{op} (none at opset {opset})")
            continue
        if version not in info["versions"]:
            out.add(f"{op}-{version}")
    return sorted(out)


def default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def convert_model(model, version: int):
    """`model` at ai.onnx opset `version` (onnx.version_converter, then the checker), or the reason it cannot be."""
    import onnx
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, version)
        onnx.checker.check_model(converted)
        return converted, ""
    except Exception as e:  # noqa: BLE001 - the converter raises bare RuntimeErrors
        return None, " ".join(str(e).split())[:160]


def graph_ops(graph) -> set[str]:
    """Op types of a graph's nodes, subgraphs (If, Loop, Scan bodies) included."""
    from onnx import AttributeProto

    ops = set()
    for node in graph.node:
        ops.add(op_key(node.domain, node.op_type))
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                ops |= graph_ops(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for g in attr.graphs:
                    ops |= graph_ops(g)
    return ops


def write_value(value, type_proto, name: str, path: str) -> None:
    """One input or output as onnx/backend/test/cmd_tools.py writes it."""
    from onnx import TensorProto, numpy_helper

    if type_proto.HasField("map_type"):
        proto = numpy_helper.from_dict(value, name)
    elif type_proto.HasField("sequence_type"):
        proto = numpy_helper.from_list(value, name)
    elif type_proto.HasField("optional_type"):
        proto = numpy_helper.from_optional(value, name)
    elif isinstance(value, TensorProto):
        proto = value
    else:
        proto = numpy_helper.from_array(value, name)
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())


def generate_cases(into: str) -> None:
    """The published node tests, written by the installed package's generator."""
    import numpy as np

    np.random.seed(0)
    import warnings

    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = node.collect_testcases()
    for case in cases:
        d = os.path.join(into, case.name)
        os.makedirs(d)
        with open(os.path.join(d, "model.onnx"), "wb") as f:
            f.write(case.model.SerializeToString())
        g = case.model.graph
        for i, (inputs, outputs) in enumerate(case.data_sets):
            ds = os.path.join(d, f"test_data_set_{i}")
            os.makedirs(ds)
            for j, value in enumerate(inputs):
                write_value(value, g.input[j].type, g.input[j].name, os.path.join(ds, f"input_{j}.pb"))
            for j, value in enumerate(outputs):
                write_value(value, g.output[j].type, g.output[j].name, os.path.join(ds, f"output_{j}.pb"))


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(path) for f in files)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--oxtrain", default=DEFAULT_BINARY, help="the oxtrain binary (default: %(default)s)")
    p.add_argument("--out", default=DEFAULT_OUT, help="fixture folder (default: %(default)s)")
    p.add_argument("--node-data", help="a folder of node tests (onnx/backend/test/data/node of an onnx checkout)")
    p.add_argument("--max-bytes", type=int, default=1 << 20, help="largest case to commit (default: 1 MiB)")
    args = p.parse_args()

    import onnx

    supported, (min_opset, max_opset), every_op_range = supported_ops(args.oxtrain)
    every_op_opset = every_op_range[1]
    tmp = None
    source = args.node_data or os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "node")
    if os.path.isdir(source):
        source_text = f"onnx {onnx.__version__}: {source}"
    else:
        tmp = tempfile.mkdtemp(prefix="onnx_node_")
        print(f"{source} is not in this onnx package; generating the node tests with onnx {onnx.__version__}'s "
              "generator (this takes a minute)", file=sys.stderr)
        generate_cases(tmp)
        source = tmp
        source_text = f"onnx {onnx.__version__}: onnx.backend.test.case.node, numpy seed 0"

    try:
        cases = {}
        converted_models = {}
        for name in sorted(os.listdir(source)):
            case_dir = os.path.join(source, name)
            model_path = os.path.join(case_dir, "model.onnx")
            if not name.startswith("test_") or not os.path.isfile(model_path):
                continue
            model = onnx.load(model_path, load_external_data=False)
            ops = graph_ops(model.graph)
            if not ops & supported.keys():
                continue
            missing = sorted(ops - supported.keys())
            size = folder_bytes(case_dir)
            if missing:
                status = "not committed: uses unsupported ops " + ", ".join(missing)
            elif size > args.max_bytes:
                status = f"not committed: {size} bytes, over the {args.max_bytes}-byte limit"
            else:
                status = "committed"
            cases[name] = {"ops": sorted(ops), "all_ops_supported": not missing, "bytes": size, "status": status}
            # A case whose opset oxtrain does not read, or at which an op means a version oxtrain does not
            # implement, is committed converted to the newest opset at which oxtrain implements every op,
            # where onnx's version converter can; its data stay as published. Others are committed as
            # published.
            opset = default_opset(model)
            unimplemented = unimplemented_versions(model, supported)
            if status == "committed" and (opset > max_opset or opset < min_opset or unimplemented):
                cases[name]["opset"] = opset
                why_convert = ", ".join(unimplemented) if unimplemented else f"opset {opset} not read"
                converted, why = convert_model(model, every_op_opset)
                if converted is None:
                    cases[name]["conversion"] = (f"opset {opset} kept ({why_convert}): onnx.version_converter cannot "
                                                 f"make it {every_op_opset}: {why}")
                else:
                    cases[name]["conversion"] = (f"opset {opset} ({why_convert}) converted to {every_op_opset} by "
                                                 "onnx.version_converter")
                    converted_models[name] = converted

        os.makedirs(args.out, exist_ok=True)
        committed = {n for n, c in cases.items() if c["status"] == "committed"}
        for name in os.listdir(args.out):
            if name.startswith("test_") and name not in committed:
                shutil.rmtree(os.path.join(args.out, name))
        for name in sorted(committed):
            dst = os.path.join(args.out, name)
            if os.path.exists(dst):
                shutil.rmtree(dst)
            shutil.copytree(os.path.join(source, name), dst)
            if name in converted_models:
                onnx.save(converted_models[name], os.path.join(dst, "model.onnx"))

        by_op = {op: {} for op in sorted(supported)}
        for name, c in cases.items():
            for op in c["ops"]:
                if op in by_op:
                    by_op[op][name] = c["status"]
        manifest = {
            "about": "ONNX node tests of the ops oxtrain supports, written by scripts/onnx_node_tests.py",
            "source": source_text,
            "max_case_bytes": args.max_bytes,
            "oxtrain_opsets": [min_opset, max_opset],
            "oxtrain_every_op_opsets": every_op_range,
            "supported_ops": {op: {k: supported[op][k] for k in ("cpu", "cuda", "fold_only")} for op in sorted(supported)},
            "ops": by_op,
            "cases": cases,
        }
        with open(os.path.join(args.out, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.write("\n")

        runnable = [n for n, c in cases.items() if c["all_ops_supported"]]
        print(f"{len(supported)} supported ops; {len(cases)} published cases use them; {len(runnable)} use only "
              f"supported ops; {len(committed)} committed to {os.path.relpath(args.out, REPO)}")
        for n in sorted(set(runnable) - committed):
            print(f"  {n}: {cases[n]['status']}")

    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
