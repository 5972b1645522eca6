"""`python -m finetune_trainer serve`: the model server a ModelDeployment runs (docs/serving.md).

    python -m finetune_trainer serve [--config PATH] [--host HOST] [--port PORT]

The contract (`finetune_api.serving.ServeContract`) comes from the environment variable
`FINETUNE_SERVE_CONTRACT` when set (the operator passes it from the variant's ConfigMap), else from
`--config`.
The server listens at once and answers /health with 503 while it fetches and verifies the pinned version
(`loading`); a version that is not exactly the pinned one ends the process with status 2 and the reason, so
it never turns ready. Then requests are generated in batches (`batching`), counted (`metrics`), kept by
request id when the contract says where (`capture`), and on the candidate graded against the stable's replies
to the same requests (`grading`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from pydantic import ValidationError

from finetune_api.serving import ENV_SERVE_CONTRACT, SERVE_CONFIG_PATH, CapturedReply, ServeContract
from finetune_trainer.storage import Store

LOG = logging.getLogger("finetune_trainer.serve")


def read_contract(config: Path) -> ServeContract:
    text = os.environ.get(ENV_SERVE_CONTRACT)
    source = ENV_SERVE_CONTRACT if text else str(config)
    try:
        return ServeContract.model_validate_json(text if text else config.read_text())
    except (OSError, ValidationError) as err:
        raise SystemExit(f"cannot read the serve contract from {source}: {err}") from err


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="finetune_trainer serve")
    parser.add_argument("--config", type=Path, default=Path(SERVE_CONFIG_PATH))
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--scratch", type=Path, default=None, help="where the version is copied (default TMPDIR)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    contract = read_contract(args.config)

    from finetune_trainer.serve.app import Server, listen  # noqa: PLC0415
    from finetune_trainer.serve.metrics import ServerMetrics  # noqa: PLC0415

    metrics = ServerMetrics(contract)
    server = Server(contract, metrics)
    httpd = listen(server, args.host, args.port)
    scratch = args.scratch or Path(os.environ.get("TMPDIR", "/tmp")) / "finetune-serve"
    scratch.mkdir(parents=True, exist_ok=True)
    failure: list[str] = []
    loader = threading.Thread(target=_load, args=(server, contract, scratch, failure, httpd), daemon=True)
    loader.start()
    # SIGTERM (a pod being stopped) ends serve_forever like Ctrl-C: the port closes, the exit code is 0
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=httpd.shutdown, daemon=True).start())
    LOG.info(
        "serving %s (%s) as %s on %s:%d",
        contract.model.uri,
        contract.model.digest,
        contract.variant,
        args.host,
        args.port,
    )
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    if failure:
        print(failure[0], file=sys.stderr)
        return 2
    return 0


def _load(server: object, contract: ServeContract, scratch: Path, failure: list[str], httpd: object) -> None:
    from finetune_trainer.serve.app import Server  # noqa: PLC0415
    from finetune_trainer.serve.batching import Generator  # noqa: PLC0415
    from finetune_trainer.serve.capture import Capture  # noqa: PLC0415
    from finetune_trainer.serve.grading import Grader, Pairing  # noqa: PLC0415
    from finetune_trainer.serve.loading import LoadError, load  # noqa: PLC0415

    assert isinstance(server, Server)
    storage = contract.storage
    store = Store(storage.endpoint, storage.region, storage.force_path_style)
    try:
        import torch  # noqa: PLC0415

        loaded = load(contract, store, scratch, device="cuda" if torch.cuda.is_available() else "cpu")
    except LoadError as err:
        failure.append(f"refusing to serve: {err}")
        LOG.error("%s", failure[0])
        httpd.shutdown()  # type: ignore[attr-defined]
        return
    metrics = server.metrics
    if contract.capture_uri:
        then = None
        if contract.grading is not None:
            capture_box: list[Capture] = []

            def stable_of(request_id: str) -> CapturedReply | None:
                return capture_box[0].read(request_id, "stable")

            pairing = Pairing(
                Grader(contract.grading, scratch / "grading"),
                stable_of,
                lambda metric, score, failed: metrics.graded_pair(metric, score, error=failed),
                lambda: metrics.unpaired.labels(**metrics.labels).inc(),
                contract.grading.pair_timeout_seconds,
            )
            then = pairing.add
        capture = Capture(
            store, contract.capture_uri, lambda: metrics.capture_dropped.labels(**metrics.labels).inc(), then
        )
        if contract.grading is not None:
            capture_box.append(capture)
        server.keep = capture.keep
    server.generator = Generator(
        loaded.model,
        loaded.tokenizer,
        contract.max_batch_size,
        lambda n: metrics.batch.labels(**metrics.labels).observe(n),
    )
    LOG.info("ready: %s loaded%s", contract.model.digest, " (adapter on its base)" if loaded.adapter else "")
