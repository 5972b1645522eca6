"""`python -m finetune_operator [--namespace NS ...]`: run the operator (cluster-wide by default)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from finetune_operator.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="finetune operator", description="Run the finetune-operator.")
    parser.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch only this namespace (repeatable)"
    )
    parser.add_argument(
        "--liveness", metavar="URL", help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on this port, all interfaces (default: $FINETUNE_METRICS_PORT; off)",
    )
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    namespaces = args.namespace or list(settings.namespaces)
    metrics_port = settings.metrics_port if args.metrics_port is None else args.metrics_port

    import kopf  # noqa: PLC0415 - only the running operator needs it
    import uvloop  # noqa: PLC0415
    from prometheus_client import start_http_server  # noqa: PLC0415

    from finetune_operator import handlers  # noqa: F401, PLC0415 - registers the handlers
    from finetune_operator.metrics import METRICS  # noqa: PLC0415

    if metrics_port:
        start_http_server(metrics_port, registry=METRICS.registry)

    kopf.configure(verbose=False)
    # Kopf logs every handler call at INFO; at hundreds of events a second that is the operator's work
    logging.getLogger("kopf").setLevel(logging.WARNING)
    # uvloop: the operator is one event loop serving every watch and reconcile; libuv's loop is faster
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        kopf.run(
            loop=runner.get_loop(),
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=args.liveness,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
