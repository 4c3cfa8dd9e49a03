"""The malformed-request corpus: seeded, deterministic, one generator per request family.

Case ``i`` of seed ``s`` is drawn from its own ``random.Random`` so a run can be replayed, cut
short or split without changing the cases it keeps. Every case carries a ``kind`` (family and
variant): the report groups answers by kind, so a 5xx names the family that produced it.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from bench.reliability import images
from serving.generated import grpc_service_pb2 as v2pb
from serving.generated import health_pb2
from serving.generated import torchserve_inference_pb2 as tspb
from serving.generated import torchserve_management_pb2 as tsmpb

V2 = "/inference.GRPCInferenceService/"
TS = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/"
TSM = "/org.pytorch.serve.grpc.management.ManagementAPIsService/"
HEALTH = "/grpc.health.v1.Health/"


@dataclass(frozen=True)
class Case:
    kind: str
    surface: str
    transport: str  # "http", "grpc-unary", "grpc-server-stream", "grpc-stream"
    port: str  # "http", "management", "grpc", "metrics"
    method: str  # HTTP method, or the gRPC method path
    path: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    stream: tuple[bytes, ...] = ()
    content_length: int | None = None  # set when the header must lie about the body

    def describe(self, limit: int = 160) -> str:
        """A one-line example for the report: what was sent, with the body's first bytes."""
        head = " ".join(f"[{k}: {v[:60]}]" for k, v in self.headers)
        body = self.body if self.body else b"".join(self.stream)
        shown = repr(body[:limit])
        extra = f" (Content-Length {self.content_length})" if self.content_length is not None else ""
        target = self.path if self.transport == "http" else ""
        return f"{self.method} {target[:200]} {head} {len(body)} bytes{extra}: {shown}".strip()


@dataclass(frozen=True)
class ModelInfo:
    name: str
    input_name: str
    datatype: str
    dims: tuple[int, ...]  # without the batch dim; -1 = variable
    max_batch: int
    versions: tuple[str, ...] = ("1",)


@dataclass
class Context:
    models: list[ModelInfo]
    token: str
    images: list[tuple[str, bytes]] = field(default_factory=list)
    bombs: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def image_models(self) -> list[ModelInfo]:
        return [m for m in self.models if not m.name.endswith("_decoder")] or self.models

    @property
    def capsule_models(self) -> list[str]:
        return [m.name for m in self.models if m.name.startswith("capsnet")
                and not m.name.endswith("_decoder")] or [self.models[0].name]


Family = Callable[[random.Random, Context], Case]


def _fixed_shape(model: ModelInfo, batch: int = 1) -> list[int]:
    dims = [d if d > 0 else 8 for d in model.dims]
    return [batch, *dims] if model.max_batch > 0 else dims


def _count(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _json_post(model: str, doc: object, kind: str, surface: str = "v2-http-json",
               path_suffix: str = "/infer", headers: tuple[tuple[str, str], ...] = ()) -> Case:
    body = json.dumps(doc, allow_nan=True).encode() if not isinstance(doc, bytes) else doc
    return Case(kind, surface, "http", "http", "POST", f"/v2/models/{model}{path_suffix}",
                (("Content-Type", "application/json"), *headers), body)


def _valid_doc(rng: random.Random, model: ModelInfo) -> dict[str, object]:
    shape = _fixed_shape(model)
    return {"id": str(rng.randrange(10**6)), "inputs": [{
        "name": model.input_name, "datatype": model.datatype, "shape": shape,
        "data": [round(rng.random(), 3) for _ in range(_count(shape))]}]}


# ------------------------------------------------------------------ v2 HTTP, JSON

def json_syntax(rng: random.Random, ctx: Context) -> Case:
    model = rng.choice(ctx.models)
    valid = json.dumps(_valid_doc(rng, model)).encode()
    variants: dict[str, bytes] = {
        "truncated": valid[: rng.randrange(1, len(valid))],
        "not-utf8": b'{"inputs": [{"name": "\xff\xfe\xfd"}]}',
        "bom": b"\xef\xbb\xbf" + valid,
        "null": b"null", "list": b"[]", "number": b"5", "string": b'"inputs"',
        "nan-literal": valid.replace(b"0.", b"NaN, 0.", 1),
        "duplicate-keys": b'{"inputs": [], "inputs": 5}',
        "empty": b"",
        "nul-bytes": b"\x00" * rng.randrange(1, 4000),
        "random-bytes": rng.randbytes(rng.randrange(1, 4000)),
    }
    name = rng.choice(sorted(variants))
    return _json_post(model.name, variants[name], f"v2-json/syntax/{name}")


def json_deep(rng: random.Random, ctx: Context) -> Case:
    model = rng.choice(ctx.models)
    depth = rng.choice([200, 1000, 5000, 50_000, 500_000])
    where = rng.choice(["data", "root", "parameters", "shape"])
    nest = "[" * depth + "1" + "]" * depth
    if where == "data":
        text = (f'{{"inputs": [{{"name": "{model.input_name}", "datatype": "FP32", "shape": [1], "data": {nest}}}]}}')
    elif where == "root":
        text = '{"a":' * depth + "1" + "}" * depth
    elif where == "parameters":
        text = '{"parameters": ' + '{"a":' * depth + "1" + "}" * depth + ', "inputs": []}'
    else:
        text = f'{{"inputs": [{{"name": "x", "datatype": "FP32", "shape": {nest}, "data": [1]}}]}}'
    return _json_post(model.name, text.encode(), f"v2-json/deep-nesting/{where}")


def json_bigint(rng: random.Random, ctx: Context) -> Case:
    model = rng.choice(ctx.models)
    digits = rng.choice([4301, 5000, 20_000, 200_000])
    big = "9" * digits
    where = rng.choice(["data", "shape", "id", "priority", "timeout", "float-exponent"])
    shape = _fixed_shape(model)
    if where == "data":
        text = (f'{{"inputs": [{{"name": "{model.input_name}", "datatype": "{model.datatype}", "shape": [1], "data": [{big}]}}]}}')
    elif where == "shape":
        text = (f'{{"inputs": [{{"name": "{model.input_name}", "datatype": "{model.datatype}", "shape": [{big}], "data": [1]}}]}}')
    elif where == "id":
        text = f'{{"id": {big}, "inputs": []}}'
    elif where == "float-exponent":
        text = (f'{{"inputs": [{{"name": "{model.input_name}", "datatype": "{model.datatype}", "shape": {json.dumps(shape)}, "data": [1e{big}]}}]}}')
    else:
        text = f'{{"parameters": {{"{where}": {big}}}, "inputs": []}}'
    return _json_post(model.name, text.encode(), f"v2-json/big-integer/{where}")


SHAPES: dict[str, object] = {
    "65-dims": [1] * 65, "negative": [-1, 1, 28, 28], "2^40": [2**40], "2^31": [2**31],
    "2^63": [2**63 - 1], "2^64": [2**64], "zero": [0], "empty": [], "string": "abc",
    "float": [1.5], "bool": [True], "nested": [[1]], "null": None, "huge-product": [2**20] * 4,
    "batch-over-max": [100_000, 1, 28, 28], "inf": 1e309,
}


def json_shape(rng: random.Random, ctx: Context) -> Case:
    model = rng.choice(ctx.models)
    name = rng.choice(sorted(SHAPES))
    data: object = [1.0] * rng.choice([0, 1, 3, 784])
    doc = {"inputs": [{"name": model.input_name, "datatype": rng.choice([model.datatype, "BYTES"]),
                       "shape": SHAPES[name], "data": data}]}
    return _json_post(model.name, json.dumps(doc).encode(),
                      f"v2-json/shape/{name}/{doc['inputs'][0]['datatype']}")


DATATYPES = ["BYTES", "FP16", "BF16", "BOOL", "INT8", "UINT8", "UINT64", "INT64", "FP64", "XYZ",
             "", "fp32", None, 5]


def json_datatype(rng: random.Random, ctx: Context) -> Case:
    model = rng.choice(ctx.models)
    dtype = rng.choice(DATATYPES)
    shape = _fixed_shape(model)
    fill: object = rng.choice([300, -1, 1.5, "x", True, 2**63, None])
    doc = {"inputs": [{"name": model.input_name, "datatype": dtype, "shape": shape,
                       "data": [fill] * _count(shape)}]}
    return _json_post(model.name, doc, f"v2-json/datatype/{dtype}/{type(fill).__name__}")


def json_data(rng: random.Random, ctx: Context) -> Case:
    model = rng.choice(ctx.models)
    shape = _fixed_shape(model)
    n = _count(shape)
    variants: dict[str, object] = {
        "strings": ["a"] * n, "nulls": [None] * n, "ragged": [[1.0], [1.0, 2.0]],
        "objects": [{"a": 1}] * 3, "too-short": [1.0] * (n - 1), "too-long": [1.0] * (n + 1),
        "double-length": [1.0] * (2 * n), "infinity": [1e400] * n, "not-a-list": 5,
        "string-data": "1,2,3", "mixed": [1, "a", None, True] * (n // 4),
        "nan-strings": ["NaN"] * n, "missing": "<missing>",
    }
    name = rng.choice(sorted(variants))
    inp: dict[str, object] = {"name": model.input_name, "datatype": model.datatype, "shape": shape}
    if name != "missing":
        inp["data"] = variants[name]
    return _json_post(model.name, {"inputs": [inp]}, f"v2-json/data/{name}")


def json_names(rng: random.Random, ctx: Context) -> Case:
    model = rng.choice(ctx.models)
    good = _valid_doc(rng, model)
    inp = good["inputs"][0]  # type: ignore[index]
    variants: dict[str, object] = {
        "no-name": {"inputs": [{k: v for k, v in inp.items() if k != "name"}]},
        "unknown-input": {"inputs": [{**inp, "name": "nope"}]},
        "duplicate-input": {"inputs": [inp, inp]},
        "no-inputs": {"inputs": []}, "inputs-dict": {"inputs": inp}, "inputs-null": {"inputs": None},
        "missing-inputs": {"id": "x"},
        "many-inputs": {"inputs": [{**inp, "name": f"in{i}", "shape": [1], "data": [1]}
                                   for i in range(rng.choice([100, 3000]))]},
        "long-name": {"inputs": [{**inp, "name": "n" * 20_000}]},
        "unknown-output": {**good, "outputs": [{"name": "nope"}]},
        "outputs-not-list": {**good, "outputs": "logits"},
        "many-outputs": {**good, "outputs": [{"name": "logits"}] * 2000},
        "class-count-negative": {**good, "outputs": [{"name": "logits",
                                                      "parameters": {"classification": -3}}]},
        "class-count-huge": {**good, "outputs": [{"name": "logits",
                                                  "parameters": {"classification": 2**62}}]},
        "class-count-string": {**good, "outputs": [{"name": "logits",
                                                    "parameters": {"classification": "x"}}]},
        "id-object": {**good, "id": {"a": 1}},
    }
    name = rng.choice(sorted(variants))
    return _json_post(model.name, variants[name], f"v2-json/names/{name}")


PARAMS: dict[str, object] = {
    "number": 5, "list": [1], "string": "x", "binary-output-string": {"binary_data_output": "yes"},
    "priority-negative": {"priority": -1}, "priority-huge": {"priority": 2**64},
    "priority-string": {"priority": "high"}, "timeout-negative": {"timeout": -5},
    "timeout-huge": {"timeout": 10**30}, "timeout-float": {"timeout": 1.5},
    "sequence": {"sequence_id": 1, "sequence_start": True},
    "nested": {"a": {"b": {"c": [1, 2]}}},
}


def json_params(rng: random.Random, ctx: Context) -> Case:
    model = rng.choice(ctx.models)
    name = rng.choice(sorted(PARAMS))
    doc = _valid_doc(rng, model)
    if rng.random() < 0.5:
        doc["parameters"] = PARAMS[name]
        where = "request"
    else:
        doc["inputs"][0]["parameters"] = PARAMS[name]  # type: ignore[index]
        where = "input"
    return _json_post(model.name, doc, f"v2-json/parameters/{where}/{name}")


VERSIONS = ["²", "-1", "0", "99999999999999999999999", "abc", "1.0", "%00", "..", "1e3", "٣",
            "%2e%2e", " 1", "1%0a", "9" * 5000]


def v2_paths(rng: random.Random, ctx: Context) -> Case:
    model = rng.choice(ctx.models)
    doc = json.dumps(_valid_doc(rng, model)).encode()
    if rng.random() < 0.5:
        version = rng.choice(VERSIONS)
        action = rng.choice(["/infer", "", "/ready", "/config", "/stats"])
        method = "POST" if action == "/infer" else "GET"
        return Case(f"v2-http/version/{version[:12]}{action}", "v2-http-json", "http", "http",
                    method, f"/v2/models/{model.name}/versions/{version}{action}", (), doc)
    names = {"long": "m" * 8000, "traversal": "..%2f..%2fetc", "unicode": "lénet²",
             "encoded-slash": f"{model.name}%2F1", "nul": "lenet%00", "dots": "..",
             "empty": "", "spaces": "le%20net"}
    key = rng.choice(sorted(names))
    action = rng.choice(["/infer", "", "/ready", "/config"])
    return Case(f"v2-http/model-name/{key}{action}", "v2-http-json", "http", "http",
                "POST" if action == "/infer" else "GET", f"/v2/models/{names[key]}{action}", (), doc)


def v2_encoding(rng: random.Random, ctx: Context) -> Case:
    model = rng.choice(ctx.models)
    doc = json.dumps(_valid_doc(rng, model)).encode()
    variants: dict[str, tuple[str, bytes]] = {
        "gzip-garbage": ("gzip", rng.randbytes(200)),
        "gzip-truncated": ("gzip", gzip.compress(doc)[:-10]),
        "gzip-bomb-200MB": ("gzip", _gzip_zeros(200 << 20)),
        "gzip-bomb-60MB": ("gzip", _gzip_zeros(60 << 20)),
        "deflate-garbage": ("deflate", rng.randbytes(100)),
        "double-gzip": ("gzip, gzip", gzip.compress(gzip.compress(doc))),
        "unknown-encoding": ("br", doc),
        "gzip-not-compressed": ("gzip", doc),
    }
    name = rng.choice(sorted(variants))
    enc, body = variants[name]
    return Case(f"v2-http/content-encoding/{name}", "v2-http-json", "http", "http", "POST",
                f"/v2/models/{model.name}/infer",
                (("Content-Type", "application/json"), ("Content-Encoding", enc)), body)


_GZ_CACHE: dict[int, bytes] = {}


def _gzip_zeros(size: int) -> bytes:
    if size not in _GZ_CACHE:
        comp = zlib.compressobj(9, zlib.DEFLATED, 31)
        block = b"\x00" * (1 << 20)
        parts = [comp.compress(block) for _ in range(size >> 20)]
        _GZ_CACHE[size] = b"".join(parts) + comp.flush()
    return _GZ_CACHE[size]


# ------------------------------------------------------------------ v2 HTTP, binary extension

def _binary(model: str, header: Any, tail: bytes, kind: str,
            header_len: str | None = None) -> Case:
    head = json.dumps(header).encode()
    return Case(kind, "v2-http-binary", "http", "http", "POST", f"/v2/models/{model}/infer",
                (("Content-Type", "application/octet-stream"),
                 ("Inference-Header-Content-Length", header_len or str(len(head)))), head + tail)


def binary_header_length(rng: random.Random, ctx: Context) -> Case:
    model = rng.choice(ctx.models)
    shape = _fixed_shape(model)
    raw = struct.pack(f"<{_count(shape)}f", *([0.5] * _count(shape)))
    doc = {"inputs": [{"name": model.input_name, "datatype": model.datatype, "shape": shape,
                       "parameters": {"binary_data_size": len(raw)}}]}
    head = json.dumps(doc).encode()
    variants = {"negative": "-1", "text": "abc", "huge": "999999999999", "past-end":
                str(len(head) + len(raw) + 10), "inside-json": str(len(head) // 2),
                "spaces": f" {len(head)} ", "float": f"{len(head)}.0", "two": f"{len(head)}, 5",
                "hex": hex(len(head))}
    name = rng.choice(sorted(variants))
    return _binary(model.name, doc, raw, f"v2-binary/header-length/{name}", variants[name])


def binary_raw_body(rng: random.Random, ctx: Context) -> Case:
    """``Inference-Header-Content-Length: 0``: the body is the raw bytes of the only input."""
    model = rng.choice(ctx.models)
    expected = _count(_fixed_shape(model)) * 4
    variants = {"empty": b"", "one-byte": b"\x00", "short": b"\x00" * (expected - 1),
                "multiple-of-expected": b"\x00" * (expected * rng.choice([2, 3, 32])),
                "long": b"\x00" * (expected + 3), "nan": struct.pack("<f", float("nan")) *
                (expected // 4), "random": rng.randbytes(expected)}
    name = rng.choice(sorted(variants))
    return Case(f"v2-binary/raw-body/{name}", "v2-http-binary", "http", "http", "POST",
                f"/v2/models/{model.name}/infer",
                (("Content-Type", "application/octet-stream"),
                 ("Inference-Header-Content-Length", "0")), variants[name])


def binary_sizes(rng: random.Random, ctx: Context) -> Case:
    model = rng.choice(ctx.models)
    shape = _fixed_shape(model)
    raw = b"\x00" * (_count(shape) * 4)
    variants: dict[str, tuple[object, bytes]] = {
        "size-too-small": (len(raw) - 4, raw), "size-too-big": (len(raw) + 4, raw),
        "size-negative": (-4, raw), "size-huge": (2**62, raw), "size-string": ("12", raw),
        "size-float": (1.5, raw), "size-past-body": (len(raw) * 4, raw),
        "size-zero-with-data": (0, raw), "no-binary-no-data": ("<missing>", raw),
    }
    name = rng.choice(sorted(variants))
    size, tail = variants[name]
    inp: dict[str, object] = {"name": model.input_name, "datatype": model.datatype, "shape": shape}
    if size != "<missing>":
        inp["parameters"] = {"binary_data_size": size}
    return _binary(model.name, {"inputs": [inp]}, tail, f"v2-binary/sizes/{name}")


BYTES_SHAPES = {"2^31": [2**31], "2^24": [2**24], "2^40": [2**40], "1x2^30": [1, 2**30],
                "4x2^20": [4, 2**20]}


def binary_bytes(rng: random.Random, ctx: Context) -> Case:
    """BYTES tensors whose element count is out of proportion to the bytes sent."""
    model = rng.choice(ctx.models)
    name = rng.choice(sorted(BYTES_SHAPES))
    tail = rng.choice([b"", struct.pack("<I", 0), struct.pack("<I", 0xFFFFFFFF) + b"ab",
                       struct.pack("<I", 3) + b"abc"])
    doc = {"inputs": [{"name": model.input_name, "datatype": "BYTES", "shape": BYTES_SHAPES[name],
                       "parameters": {"binary_data_size": len(tail)}}]}
    return _binary(model.name, doc, tail, f"v2-binary/bytes-shape/{name}/{len(tail)}-bytes")


def binary_variable_dims(rng: random.Random, ctx: Context) -> Case:
    """A model with ``-1`` dims fed a large (but body-limit sized) tensor."""
    variable = [m for m in ctx.models if any(d < 0 for d in m.dims)]
    # Each of these costs the server seconds of compute when it accepts them: keep them rare.
    if not variable or rng.random() < 0.8:
        return binary_bytes(rng, ctx)
    model = rng.choice(variable)
    side = rng.choice([600, 1024])
    shape = [1, *[d if d > 0 else side for d in model.dims]]
    raw = b"\x00" * (_count(shape) * 4)
    doc: dict[str, object] = {"inputs": [{"name": model.input_name, "datatype": model.datatype,
                                          "shape": shape,
                                          "parameters": {"binary_data_size": len(raw)}}]}
    if rng.random() < 0.5:
        doc["parameters"] = {"binary_data_output": False}  # a large JSON answer
    return _binary(model.name, doc, raw, f"v2-binary/variable-dims/{side}")


# ------------------------------------------------------------------ v2 gRPC

def _infer_request(rng: random.Random, model: ModelInfo) -> v2pb.ModelInferRequest:
    shape = _fixed_shape(model)
    req = v2pb.ModelInferRequest(model_name=model.name, id=str(rng.randrange(10**6)))
    req.inputs.add(name=model.input_name, datatype=model.datatype, shape=shape)
    req.raw_input_contents.append(b"\x00" * (_count(shape) * 4))
    return req


def _grpc(kind: str, method: str, body: bytes, metadata: tuple[tuple[str, str], ...] = (),
          surface: str = "v2-grpc", transport: str = "grpc-unary") -> Case:
    return Case(kind, surface, transport, "grpc", method, "", metadata, body)


def grpc_infer(rng: random.Random, ctx: Context) -> Case:
    model = rng.choice(ctx.models)
    req = _infer_request(rng, model)
    inp = req.inputs[0]
    variant = rng.choice([
        "65-dims", "negative-dim", "2^40", "2^62", "raw-multiple", "raw-empty", "raw-short",
        "mixed-raw-typed", "typed-int8-300", "typed-wrong-kind", "typed-short", "bytes-2^31",
        "bytes-2^24", "unknown-datatype", "priority-string", "timeout-negative", "timeout-huge",
        "version-superscript", "version-huge", "name-long", "unknown-output", "class-string",
        "class-negative", "class-huge", "two-raw-one-input", "no-inputs", "duplicate-input",
        "bytes-length-lies"])
    del inp.shape[:]
    if variant == "65-dims":
        inp.shape.extend([1] * 65)
    elif variant == "negative-dim":
        inp.shape.extend([1, -1, 28, 28])
    elif variant in ("2^40", "2^62"):
        inp.shape.extend([2 ** int(variant[2:])])
    elif variant in ("bytes-2^31", "bytes-2^24", "bytes-length-lies"):
        inp.datatype = "BYTES"
        inp.shape.extend([2**31] if variant == "bytes-2^31" else
                         [2**24] if variant == "bytes-2^24" else [2])
        req.raw_input_contents[0] = (struct.pack("<I", 0xFFFFFFF0) + b"ab"
                                     if variant == "bytes-length-lies" else b"")
    else:
        inp.shape.extend(_fixed_shape(model))
    n = _count(_fixed_shape(model))
    if variant == "raw-multiple":
        req.raw_input_contents[0] = b"\x00" * (n * 4 * rng.choice([2, 32]))
    elif variant == "raw-empty":
        req.raw_input_contents[0] = b""
    elif variant == "raw-short":
        req.raw_input_contents[0] = b"\x00" * (n * 4 - 1)
    elif variant == "mixed-raw-typed":
        inp.contents.fp32_contents.extend([0.0] * n)
    elif variant.startswith("typed"):
        del req.raw_input_contents[:]
        if variant == "typed-int8-300":
            inp.datatype = "INT8"
            inp.contents.int_contents.extend([300] * n)
        elif variant == "typed-wrong-kind":
            inp.contents.bytes_contents.extend([b"x"] * n)
        else:
            inp.contents.fp32_contents.extend([0.0] * (n - 1))
    elif variant == "unknown-datatype":
        inp.datatype = rng.choice(["XYZ", "", "fp32", "BF16", "BOOL"])
    elif variant == "priority-string":
        req.parameters["priority"].string_param = "high"
    elif variant == "timeout-negative":
        req.parameters["timeout"].int64_param = -5
    elif variant == "timeout-huge":
        req.parameters["timeout"].uint64_param = 2**64 - 1
    elif variant == "version-superscript":
        req.model_version = rng.choice(VERSIONS)
    elif variant == "version-huge":
        req.model_version = "9" * 30
    elif variant == "name-long":
        req.model_name = "m" * 100_000
    elif variant.startswith("class") or variant == "unknown-output":
        out = req.outputs.add(name="nope" if variant == "unknown-output" else "logits")
        if variant == "class-string":
            out.parameters["classification"].string_param = "x"
        elif variant == "class-negative":
            out.parameters["classification"].int64_param = -3
        elif variant == "class-huge":
            out.parameters["classification"].int64_param = 2**62
    elif variant == "two-raw-one-input":
        req.raw_input_contents.append(b"\x00" * 16)
    elif variant == "no-inputs":
        del req.inputs[:]
        del req.raw_input_contents[:]
    elif variant == "duplicate-input":
        req.inputs.append(req.inputs[0])
        req.raw_input_contents.append(req.raw_input_contents[0])
    return _grpc(f"v2-grpc/ModelInfer/{variant}", V2 + "ModelInfer", req.SerializeToString())


def grpc_garbage(rng: random.Random, ctx: Context) -> Case:
    method = rng.choice(["ModelInfer", "ModelMetadata", "ModelConfig", "ServerMetadata",
                         "RepositoryModelLoad", "ModelStatistics"])
    good = _infer_request(rng, rng.choice(ctx.models)).SerializeToString()
    variant = rng.choice(["random", "truncated", "flipped", "empty", "wire-type-lies"])
    if variant == "random":
        body = rng.randbytes(rng.randrange(1, 3000))
    elif variant == "truncated":
        body = good[: rng.randrange(1, len(good))]
    elif variant == "flipped":
        out = bytearray(good)
        for _ in range(8):
            out[rng.randrange(len(out))] = rng.randrange(256)
        body = bytes(out)
    elif variant == "wire-type-lies":
        body = b"\x0a\xff\xff\xff\xff\x0f" + b"x" * 10  # field 1, length 4 GiB
    else:
        body = b""
    return _grpc(f"v2-grpc/garbage/{method}/{variant}", V2 + method, body)


def grpc_other(rng: random.Random, ctx: Context) -> Case:
    model = rng.choice(ctx.models).name
    bearer = (("authorization", f"Bearer {ctx.token}"),)
    name = rng.choice([model, "nope", "m" * 10_000, "../etc", ""])
    version = rng.choice(["", "1", "²", "-1", "9" * 40])
    choice = rng.randrange(9)
    if choice == 0:
        return _grpc("v2-grpc/ModelMetadata/odd-names", V2 + "ModelMetadata",
                     v2pb.ModelMetadataRequest(name=name, version=version).SerializeToString())
    if choice == 1:
        return _grpc("v2-grpc/ModelConfig/odd-names", V2 + "ModelConfig",
                     v2pb.ModelConfigRequest(name=name, version=version).SerializeToString())
    if choice == 2:
        return _grpc("v2-grpc/ModelStatistics/odd-names", V2 + "ModelStatistics",
                     v2pb.ModelStatisticsRequest(name=name, version=version).SerializeToString())
    if choice == 3:
        return _grpc("v2-grpc/ModelReady/odd-names", V2 + "ModelReady",
                     v2pb.ModelReadyRequest(name=name, version=version).SerializeToString())
    if choice == 4:
        req = v2pb.RepositoryModelLoadRequest(model_name=rng.choice(["nope", "../x", ""]))
        req.parameters["config"].string_param = rng.choice(["{", '{"max_batch_size": 5}', "x"])
        meta = rng.choice([(), bearer, (("authorization", "Bearer wrong"),)])
        return _grpc("v2-grpc/RepositoryModelLoad/parameters", V2 + "RepositoryModelLoad",
                     req.SerializeToString(), meta)
    if choice == 5:
        req2 = v2pb.RepositoryModelUnloadRequest(model_name=rng.choice(["nope", "../x", "²"]))
        meta = rng.choice([(), bearer, (("authorization", "Basic Zm9v"),)])
        return _grpc("v2-grpc/RepositoryModelUnload/unknown", V2 + "RepositoryModelUnload",
                     req2.SerializeToString(), meta)
    if choice == 6:
        service = rng.choice(["", "inference.GRPCInferenceService", "nope", "x" * 10_000, model])
        return _grpc("health/Check", HEALTH + "Check",
                     health_pb2.HealthCheckRequest(service=service).SerializeToString(),
                     surface="v2-grpc")
    if choice == 7:
        return _grpc("v2-grpc/unknown-method", V2 + rng.choice(["Nope", "modelinfer", ""]),
                     b"")
    # A stream of a few requests, some malformed: each must be answered and the stream go on.
    msgs = tuple(_infer_request(rng, rng.choice(ctx.models)).SerializeToString()[
        : rng.choice([None, 5])] for _ in range(rng.randrange(1, 5)))
    return Case("v2-grpc/ModelStreamInfer/mixed", "v2-grpc", "grpc-stream", "grpc",
                V2 + "ModelStreamInfer", "", (), b"", msgs)


# ------------------------------------------------------------------ images and TorchServe HTTP

def _image(rng: random.Random, ctx: Context) -> tuple[str, bytes]:
    roll = rng.random()
    if roll < 0.25 and ctx.bombs:
        return rng.choice(ctx.bombs)
    kind, data = rng.choice(ctx.images)
    if roll < 0.4:
        return kind, data
    how, mutated = images.mutate(rng, data)
    return f"{kind}/{how}", mutated


QUERIES = ["", "?topk=3", "?topk=-1", "?topk=99999999999999999999", "?topk=abc", "?format=json",
           "?format=xyz", "?poses=true", "?reconstruction=true", "?format=json&probabilities=true",
           "?format=jpeg", "?topk=0"]


def ts_predictions(rng: random.Random, ctx: Context) -> Case:
    model = rng.choice(ctx.image_models).name
    kind, data = _image(rng, ctx)
    version = rng.choice(["", "", "", "/1", "/1.0", "/²", "/99", "/-1"])
    query = rng.choice(QUERIES)
    ctype = rng.choice(["image/png", "application/octet-stream", "", "text/plain",
                        "application/json", "image/jpeg"])
    headers = (("Content-Type", ctype),) if ctype else ()
    route = rng.choice(["predictions", "predictions", "predictions", "explanations"])
    if route == "explanations":
        model = rng.choice(ctx.capsule_models)
    return Case(f"ts-http/{route}/image/{kind}", "images", "http", "http",
                rng.choice(["POST", "POST", "PUT"]), f"/{route}/{model}{version}{query}",
                headers, data)


def _multipart(parts: list[tuple[str, bytes]], boundary: str) -> bytes:
    out = b""
    for name, data in parts:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                f"filename=\"x\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
        out += data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def ts_multipart(rng: random.Random, ctx: Context) -> Case:
    model = rng.choice(ctx.image_models).name
    boundary = "b" + str(rng.randrange(10**9))
    variant = rng.choice(["no-parts", "no-data-field", "64-parts", "1000-parts", "bad-boundary",
                          "no-boundary", "unterminated", "mixed-bad-part", "bomb-parts",
                          "huge-part-header"])
    ctype = f"multipart/form-data; boundary={boundary}"
    valid = rng.choice(ctx.images)[1]
    if variant == "no-parts":
        body = f"--{boundary}--\r\n".encode()
    elif variant == "no-data-field":
        body = _multipart([("file", valid)], boundary)
    elif variant in ("64-parts", "1000-parts"):
        body = _multipart([("data", valid)] * int(variant.split("-")[0]), boundary)
    elif variant == "bad-boundary":
        body = _multipart([("data", valid)], boundary + "x")
    elif variant == "no-boundary":
        body, ctype = _multipart([("data", valid)], boundary), "multipart/form-data"
    elif variant == "unterminated":
        body = _multipart([("data", valid)], boundary)[:-8]
    elif variant == "mixed-bad-part":
        body = _multipart([("data", valid), ("data", b"not an image"), ("data", valid)], boundary)
    elif variant == "bomb-parts" and ctx.bombs:
        body = _multipart([("data", rng.choice(ctx.bombs)[1])] * 8, boundary)
    else:
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"data\"; "
                f"x=\"{'a' * 200_000}\"\r\n\r\n").encode() + valid + f"\r\n--{boundary}--\r\n".encode()
    return Case(f"ts-http/multipart/{variant}", "ts-http", "http", "http", "POST",
                f"/predictions/{model}", (("Content-Type", ctype),), body)


def ts_v1(rng: random.Random, ctx: Context) -> Case:
    model = rng.choice(ctx.image_models).name
    valid = base64.b64encode(rng.choice(ctx.images)[1]).decode()
    variants: dict[str, object] = {
        "instances-not-list": {"instances": valid}, "no-instances": {"x": 1},
        "bad-base64": {"instances": [{"data": "!!!notbase64"}]},
        "number-data": {"instances": [{"data": 5}]}, "nested": {"instances": [[[valid]]]},
        "many-instances": {"instances": [valid] * rng.choice([64, 500])},
        "empty-instances": {"instances": []}, "null": None,
        "bomb": {"instances": [base64.b64encode(rng.choice(ctx.bombs or ctx.images)[1]).decode()]},
        "b64-object": {"instances": [{"b64": valid}]},
    }
    name = rng.choice(sorted(variants))
    verb = rng.choice([":predict", ":explain", ":nope", "", ":predict:predict"])
    if verb == ":explain":
        model = rng.choice(ctx.capsule_models)
    return Case(f"ts-http/v1/{name}{verb}", "ts-http", "http", "http", "POST",
                f"/v1/models/{model}{verb}", (("Content-Type", "application/json"),),
                json.dumps(variants[name]).encode())


def http_framing(rng: random.Random, ctx: Context) -> Case:
    """Lying Content-Length, odd transfer encodings, odd request lines and headers."""
    model = rng.choice(ctx.image_models).name
    data = rng.choice(ctx.images)[1]
    path = f"/predictions/{model}"
    variant = rng.choice(["length-longer", "length-shorter", "length-negative", "length-text",
                          "two-lengths", "chunked-bad-size", "chunked-and-length",
                          "huge-header", "many-headers", "unknown-method", "http10",
                          "absolute-uri", "bad-request-line", "header-no-colon"])
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "image/png"),)
    cl: int | None = None
    method = "POST"
    if variant == "length-longer":
        cl = len(data) + rng.choice([1, 1000, 10**9])
    elif variant == "length-shorter":
        cl = max(0, len(data) - rng.randrange(1, len(data)))
    elif variant in ("length-negative", "length-text", "two-lengths"):
        value = {"length-negative": "-5", "length-text": "abc",
                 "two-lengths": f"{len(data)}\r\nContent-Length: {len(data) + 3}"}[variant]
        headers += (("Content-Length", value),)
    elif variant == "chunked-bad-size":
        headers += (("Transfer-Encoding", "chunked"),)
        data = b"zz\r\n" + data + b"\r\n0\r\n\r\n"
    elif variant == "chunked-and-length":
        headers += (("Transfer-Encoding", "chunked"), ("Content-Length", "3"))
        data = f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n"
    elif variant == "huge-header":
        headers += (("X-Big", "a" * rng.choice([8000, 100_000])),)
    elif variant == "many-headers":
        headers += tuple((f"X-H{i}", "v") for i in range(rng.choice([200, 5000])))
    elif variant == "unknown-method":
        method = rng.choice(["FOO", "PATCH", "TRACE", "CONNECT"])
    elif variant == "http10":
        method = "POST"
        path = path + " HTTP/1.0\r\nX-Dummy: x"  # the built request line ends in HTTP/1.1
    elif variant == "absolute-uri":
        path = f"http://evil.example{path}"
    elif variant == "bad-request-line":
        method = "POST /x"
    else:
        headers += (("NoColonHere", ""),)
    return Case(f"http/framing/{variant}", "ts-http", "http", "http", method, path, headers,
                data, content_length=cl)


# ------------------------------------------------------------------ TorchServe gRPC

def ts_grpc(rng: random.Random, ctx: Context) -> Case:
    model = rng.choice(ctx.image_models).name
    kind, data = _image(rng, ctx)
    req = tspb.PredictionsRequest(model_name=model)
    variant = rng.choice(["image", "image", "image", "no-data", "topk", "odd-model", "garbage",
                          "stream2", "server-stream"])
    if variant != "no-data":
        req.input["data"] = data
    else:
        req.input["file"] = data
    if variant == "topk":
        req.input["topk"] = rng.choice([b"-1", b"abc", b"99999999999999999999", b"\xff"])
    if variant == "odd-model":
        req.model_name = rng.choice(["nope", "", "m" * 10_000])
        req.model_version = rng.choice(["²", "-1", "1.0", "9" * 30])
    body = req.SerializeToString()
    if variant == "garbage":
        body = rng.randbytes(rng.randrange(1, 500))
    if variant == "stream2":
        return Case(f"ts-grpc/StreamPredictions2/{kind}", "ts-grpc", "grpc-stream", "grpc",
                    TS + "StreamPredictions2", "", (), b"", (body,) * rng.randrange(1, 4))
    if variant == "server-stream":
        return Case(f"ts-grpc/StreamPredictions/{kind}", "ts-grpc", "grpc-server-stream", "grpc",
                    TS + "StreamPredictions", "", (), b"", (body,))
    return _grpc(f"ts-grpc/Predictions/{variant}/{kind if variant == 'image' else ''}".rstrip("/"),
                 TS + "Predictions", body, surface="ts-grpc")


def ts_grpc_management(rng: random.Random, ctx: Context) -> Case:
    model = rng.choice(ctx.models).name
    meta = rng.choice([(), (("authorization", f"Bearer {ctx.token}"),),
                       (("authorization", "Bearer x"),)])
    choice = rng.randrange(5)
    body: Message
    if choice == 0:
        body = tsmpb.RegisterModelRequest(url=rng.choice(
            ["http://evil.example/m.mar", "../../etc/passwd", "/etc/passwd", "nope.mar", "",
             "s3://bucket/x.mar", "a" * 5000]), initial_workers=rng.choice([0, -1, 2**31 - 1]))
        name = "RegisterModel"
    elif choice == 1:
        # Only impossible counts: a valid one would really scale the model.
        body = tsmpb.ScaleWorkerRequest(model_name=rng.choice([model, "nope"]),
                                        min_worker=rng.choice([-1, 2**31 - 1, -2**31]),
                                        max_worker=rng.choice([-5, 2**31 - 1]))
        name = "ScaleWorker"
    elif choice == 2:
        body = tsmpb.SetDefaultRequest(model_name=rng.choice([model, "nope"]),
                                       model_version=rng.choice(["²", "99", "-1", "", "a" * 999]))
        name = "SetDefault"
    elif choice == 3:
        body = tsmpb.ListModelsRequest(limit=rng.choice([-1, 0, 2**31 - 1]),
                                       next_page_token=rng.choice([-5, 2**31 - 1, 7]))
        name = "ListModels"
    else:
        body = tsmpb.UnregisterModelRequest(model_name=rng.choice(["nope", "../x", "²"]),
                                            model_version=rng.choice(["", "7", "x"]))
        name = "UnregisterModel"
    auth = "token" if meta and ctx.token in meta[0][1] else "no-token" if not meta else "bad-token"
    return Case(f"ts-grpc-management/{name}/{auth}", "management-grpc", "grpc-unary", "grpc",
                TSM + name, "", meta, body.SerializeToString())


# ------------------------------------------------------------------ management HTTP (8081)

def management_http(rng: random.Random, ctx: Context) -> Case:
    model = rng.choice(ctx.models).name
    auth = rng.choice(["token", "no-token", "bad-token", "basic"])
    headers: tuple[tuple[str, str], ...] = {
        "token": (("Authorization", f"Bearer {ctx.token}"),), "no-token": (),
        "bad-token": (("Authorization", "Bearer nope"),),
        "basic": (("Authorization", "Basic " + "A" * 5000),)}[auth]
    choice = rng.randrange(8)
    if choice == 0:
        method, path = "GET", "/models?limit=" + rng.choice(
            ["-1", "abc", "99999999999999999999", "0", ""]) + "&next_page_token=" + rng.choice(
            ["x", "-1", "9" * 30, ""])
    elif choice == 1:
        method, path = "GET", "/models/" + rng.choice(["nope", "m" * 8000, "%00", "..", "²"]) + \
            rng.choice(["", "/all", "/²", "/-1"])
    elif choice == 2:
        # Impossible counts only: a valid count would really scale the model.
        method, path = "PUT", f"/models/{model}?min_worker=" + rng.choice(
            ["-1", "abc", str(2**63), "", "1e3", "1.5"]) + "&max_worker=" + rng.choice(
            ["-1", "x", str(10**30)])
    elif choice == 3:
        method, path = "PUT", f"/models/{model}/" + rng.choice(["²", "99", "-1", "x" * 500]) + \
            "/set-default"
    elif choice == 4:
        method, path = "POST", "/models?url=" + rng.choice(
            ["http://evil.example/x.mar", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "nope.mar",
             "", "s3://b/x", "%00", "a" * 5000]) + rng.choice(
            ["", "&initial_workers=-1", "&initial_workers=99999999999", "&batch_size=abc"])
    elif choice == 5:
        method, path = "DELETE", "/models/" + rng.choice(["nope", "..", "²"]) + \
            rng.choice(["", "/99", "/x"])
    elif choice == 6:
        method, path = rng.choice(["OPTIONS", "GET"]), rng.choice(["/", "/api-description"])
        headers += (("Host", rng.choice(["evil.example", "127.0.0.1.evil.example:8081",
                                         "localhost"])),)
    else:
        method, path = rng.choice(["PATCH", "POST", "GET"]), rng.choice(
            ["/models/" + model + "/1/set-default", "/metrics", "/x" * 3000])
    body = rng.choice([b"", b"{", rng.randbytes(100)])
    return Case(f"management-http/{method}/{path.split('?')[0].split('/')[1][:20]}/{auth}",
                "management-http", "http", "management", method, path, headers, body)


FAMILIES: tuple[tuple[Family, int], ...] = (
    (json_syntax, 5), (json_deep, 3), (json_bigint, 3), (json_shape, 6), (json_datatype, 5),
    (json_data, 5), (json_names, 5), (json_params, 4), (v2_paths, 5), (v2_encoding, 2),
    (binary_header_length, 4), (binary_raw_body, 4), (binary_sizes, 4), (binary_bytes, 3),
    (binary_variable_dims, 1),
    (grpc_infer, 10), (grpc_garbage, 4), (grpc_other, 5),
    (ts_predictions, 14), (ts_multipart, 3), (ts_v1, 3), (http_framing, 4),
    (ts_grpc, 6), (ts_grpc_management, 2), (management_http, 5),
)


def generate(seed: int, count: int, ctx: Context) -> Iterator[Case]:
    """``count`` cases; case ``i`` depends only on ``seed``, ``i`` and the context."""
    funcs = [f for f, _ in FAMILIES]
    weights = [w for _, w in FAMILIES]
    for i in range(count):
        rng = random.Random(seed * 1_000_003 + i)
        family = rng.choices(funcs, weights)[0]
        yield family(rng, ctx)
