"""Keeping replies by request id: `<capture_uri><request-id>/<variant>.json` (`finetune_api.serving`),
create-only, so a mirrored duplicate of a request the server already answered never overwrites the first
reply. Writes happen on a background thread behind a bounded queue: a slow store never slows users, and a
full queue drops (counted in CAPTURE_DROPPED) rather than blocks. Each written candidate reply is handed on
to grading."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from finetune_api.serving import CapturedReply, capture_key
from finetune_trainer.storage import StorageError, Store

LOG = logging.getLogger("finetune_trainer.serve")
QUEUE_SIZE = 1024


class Capture:
    def __init__(
        self,
        store: Store,
        uri: str,
        dropped: Callable[[], None],
        then: Callable[[CapturedReply], None] | None,
    ) -> None:
        self.store = store
        self.uri = uri if uri.endswith("/") else uri + "/"
        self.dropped = dropped
        self.then = then
        self.waiting: queue.Queue[CapturedReply] = queue.Queue(maxsize=QUEUE_SIZE)
        self.thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self.thread.start()

    def keep(self, reply: CapturedReply) -> None:
        try:
            self.waiting.put_nowait(reply)
        except queue.Full:
            self.dropped()

    def uri_of(self, request_id: str, variant: str) -> str:
        return self.uri + capture_key(request_id, variant)  # type: ignore[arg-type]

    def read(self, request_id: str, variant: str) -> CapturedReply | None:
        try:
            return CapturedReply.model_validate_json(self.store.read_bytes(self.uri_of(request_id, variant)))
        except (StorageError, OSError, ValueError):
            return None

    def _run(self) -> None:
        while True:
            reply = self.waiting.get()
            try:
                created = self.store.create(
                    self.uri_of(reply.request_id, reply.variant), reply.model_dump_json().encode()
                )
            except (StorageError, OSError) as err:
                LOG.warning("capture of %s failed: %s", reply.request_id, err)
                self.dropped()
                continue
            if created and self.then is not None:
                self.then(reply)
