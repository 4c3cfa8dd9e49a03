"""Requests of deploy/e2e-compose.sh against a running stack (standard library only).

Waits for readiness, sends one KServe v2 request to a classification, a segmentation and a
style-transfer model (inputs shaped from each model's metadata), checks the outputs, then polls
Prometheus until its capserve counter shows the requests. Exits non-zero with the reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

# Default store model -> (task, output that must come back).
MODELS = {"lenet": ("classification", "logits"), "unet": ("segmentation", "logits"),
          "style_mosaic": ("style_transfer", "image")}
FREE_SIDE = 64  # size given to dimensions a fully convolutional model leaves open (-1)

logger = logging.getLogger("e2e-compose")


def _call(url: str, body: dict[str, Any] | None = None, timeout: float = 60) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def wait_ready(base: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{base}/v2/health/ready", timeout=3).close()
            return
        except (urllib.error.URLError, OSError):
            time.sleep(2)
    sys.exit(f"capserve not ready at {base} after {timeout:.0f} s")


def infer(base: str, model: str, output: str) -> None:
    meta = _call(f"{base}/v2/models/{model}")
    tensor = meta["inputs"][0]
    shape = [1 if i == 0 else FREE_SIDE if d == -1 else int(d)
             for i, d in enumerate(tensor["shape"])]
    count = 1
    for d in shape:
        count *= d
    body = {"inputs": [{"name": tensor["name"], "shape": shape, "datatype": tensor["datatype"],
                        "data": [0.5] * count}]}
    out = {o["name"]: o for o in _call(f"{base}/v2/models/{model}/infer", body)["outputs"]}
    if output not in out or not out[output]["data"]:
        sys.exit(f"{model}: no {output} in the response ({sorted(out)})")
    logger.info("%s -> %s %s", model, output, out[output]["shape"])


def wait_counted(prometheus: str, expected: int, timeout: float) -> None:
    query = urllib.parse.urlencode({"query": "sum(capserve_request_success_total)"})
    deadline = time.monotonic() + timeout
    seen = 0.0
    while time.monotonic() < deadline:
        try:
            result = _call(f"{prometheus}/api/v1/query?{query}")["data"]["result"]
            seen = float(result[0]["value"][1]) if result else 0.0
        except (urllib.error.URLError, OSError, KeyError):
            seen = 0.0
        if seen >= expected:
            logger.info("Prometheus counts %.0f successful requests", seen)
            return
        time.sleep(2)
    sys.exit(f"Prometheus counted {seen:.0f} of {expected} requests after {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http", required=True)
    parser.add_argument("--prometheus")
    parser.add_argument("--ready-timeout", type=float, default=300)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="e2e-compose: %(message)s")
    wait_ready(args.http, args.ready_timeout)
    for model, (_, output) in MODELS.items():
        infer(args.http, model, output)
    if args.prometheus:
        wait_counted(args.prometheus, len(MODELS), 90)


if __name__ == "__main__":
    main()
