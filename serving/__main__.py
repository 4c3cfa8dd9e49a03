"""``python -m serving`` (== ``capserve serve``): parse flags, run the server until SIGTERM/SIGINT.

Flags override ``CAPSERVE_*`` environment variables, which override the defaults (a flag that is
not given is not passed to Settings, so the environment still applies). The first SIGTERM or
SIGINT drains gracefully and exits 0; a second one exits at once with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--model-store", {"help": "model repository directory (default model_store)"}),
    ("--workers", {"help": "serving processes: auto (one per core on CPU, one per GPU on "
                           "CUDA) or a count; 1 runs one process without a supervisor"}),
    ("--host", {"help": "address every listener binds (default 127.0.0.1)"}),
    ("--http-port", {"type": int, "help": "KServe v2 / TorchServe inference HTTP port (8000)"}),
    ("--grpc-port", {"type": int, "help": "gRPC port (8001)"}),
    ("--metrics-port", {"type": int, "help": "Prometheus /metrics port (8002)"}),
    ("--management-port", {"type": int, "help": "TorchServe management API port (8081)"}),
    ("--management-host", {"help": "address of the management API (127.0.0.1)"}),
    ("--device", {"help": "where models run: auto, cpu, cuda or cuda:N (auto)"}),
    ("--api-token-file", {"help": "file (mode 0600) holding the bearer token for model control"}),
    ("--max-request-bytes", {"type": int, "help": "HTTP body limit in bytes (64 MiB)"}),
    ("--grpc-max-message-bytes", {"type": int, "help": "gRPC message limit in bytes (64 MiB)"}),
    ("--max-image-pixels", {"type": int, "help": "largest decoded image, in pixels"}),
    ("--shutdown-grace-seconds", {"type": float, "help": "drain time on SIGTERM (30)"}),
    ("--log-format", {"choices": ["text", "json"], "help": "log line format (text)"}),
    ("--log-level", {"help": "log level (INFO)"}),
    ("--image-workers", {"type": int, "help": "threads decoding images"}),
    ("--ts-config", {"help": "TorchServe config.properties to serve as TorchServe would (found "
                             "by itself when --model-store is a KServe storage root)"}),
]
_SWITCHES = [
    ("--enable-model-control", "allow repository index/load/unload (token-checked when a token file is set)"),
    ("--pin-workers", "pin each worker process to its own share of the cores"),
    ("--allow-archive-code", "UNSAFE: accept .mar archives whose handler is custom Python (served with the built-in pipeline; that code is never run)"),
]


# TorchServe's own flags that a KServe InferenceService passes (its predictor ``args`` are
# appended to the runtime's): accepted so such a spec runs unchanged, each without effect.
_TORCHSERVE_FLAGS = {
    "--disable-token-auth": "inference needs no token; management needs --api-token-file",
    "--start": "capserve serve always starts in the foreground",
    "--foreground": "capserve serve always starts in the foreground",
    "--ncs": "capserve writes no config snapshots",
    "--no-config-snapshots": "capserve writes no config snapshots",
}


# Set by a supervisor for its workers, never by users.
_INTERNAL = {"worker_id", "worker_cores", "worker_cpus", "archive_cache_dir", "peer_dir"}


def _limit_flags(parser: argparse.ArgumentParser, listed: set[str]) -> None:
    """Every other setting (the limits and timeouts) as a flag named after it, with the
    setting's own description as help, so no setting is reachable by environment only."""
    from serving.settings import Settings

    group = parser.add_argument_group("limits and timeouts (also CAPSERVE_<NAME>)")
    for name, info in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = {int: int, float: float, str: str}.get(info.annotation)  # type: ignore[arg-type]
        if name in _INTERNAL or flag in listed or kind is None:
            continue
        text = (info.description or "").split(". ")[0].strip().rstrip(".")
        group.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS,
                           help=f"{text} (default {info.default})")


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="capserve serve", description="Serve the model store over gRPC and HTTP."
    )
    for flag, options in _FLAGS:
        parser.add_argument(flag, default=argparse.SUPPRESS, **options)
    for flag, help_text in _SWITCHES:
        parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=help_text)
    parser.add_argument("--no-peer-forwarding", action="store_false", dest="peer_forwarding",
                        default=argparse.SUPPRESS,
                        help="with several workers, run each gRPC connection's requests on the "
                             "worker that accepted it (no hand-over to a less busy worker)")
    _limit_flags(parser, {flag for flag, _ in _FLAGS} | {flag for flag, _ in _SWITCHES})
    group = parser.add_argument_group("TorchServe flags accepted without effect")
    for flag, why in _TORCHSERVE_FLAGS.items():
        group.add_argument(flag, action="store_true", default=argparse.SUPPRESS,
                           dest="torchserve_flag_" + flag.strip("-").replace("-", "_"),
                           help=f"ignored: {why}")
    args = vars(parser.parse_args(argv))
    for key in [k for k in args if k.startswith("torchserve_flag_")]:
        del args[key]
        print(f"capserve: TorchServe flag --{key[16:].replace('_', '-')} ignored",
              file=sys.stderr)
    return args


async def _serve(settings: Any) -> int:
    from serving.server import build_server
    from serving.signals import stop_on_signals

    server = build_server(settings)
    stop = stop_on_signals()
    code = 0
    try:
        await server.open_listeners()
        for listener in server.listeners:
            print(f"capserve: {listener.kind} listening on {listener.url}", flush=True)
        # A signal during a long model load must not wait for the load to finish.
        load = asyncio.create_task(server.load_models())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({load, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if load.done():
            load.result()  # surface a load error
            await stopping
        else:
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load
    except OSError as exc:  # a port in use, an unreadable store
        print(f"capserve: cannot start: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        await server.stop()
    return code


def main(argv: list[str] | None = None) -> int:
    overrides = parse_args(argv)
    import os

    from serving.logs import configure_logging
    from serving.settings import Settings
    from serving.tsconfig.startup import read_ts_config

    try:
        startup = read_ts_config(overrides, os.environ)
        settings = Settings(**overrides)
        settings.api_token()  # refuse a readable token file before anything starts
        if settings.enable_model_control and settings.api_token_file is None:
            raise ValueError("--enable-model-control needs --api-token-file (a 0600 file "
                             "holding the bearer token that load/unload/register must present)")
    except ValueError as exc:
        print(f"capserve: invalid settings: {exc}", file=sys.stderr)
        return 2
    if startup is None:
        return _run(settings)
    import shutil

    from serving.tsconfig.startup import prepare

    configure_logging(settings.log_format, settings.log_level)
    try:
        settings, work = prepare(settings, startup)
    except ValueError as exc:
        print(f"capserve: invalid settings: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(settings)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(settings: Any) -> int:
    from serving.allocator import keep_large_buffers
    from serving.logs import configure_logging

    keep_large_buffers(settings.heap_buffer_mib)

    if not settings.model_store.is_dir():
        print(f"capserve: model store {settings.model_store} is not a directory "
              "(build one with `make store`)", file=sys.stderr)
        return 2
    from serving.workers.supervisor import resolve_workers

    workers = resolve_workers(settings)
    if workers > 1:
        from serving.workers.supervisor import run_supervisor

        configure_logging(settings.log_format, settings.log_level, "supervisor")
        return run_supervisor(settings, workers)
    configure_logging(settings.log_format, settings.log_level)
    from serving.signals import run_and_exit

    run_and_exit(lambda: _serve(settings))


if __name__ == "__main__":
    sys.exit(main())
