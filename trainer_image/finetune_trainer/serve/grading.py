"""Grading the candidate's live replies against the stable's, as an EvalGate suite grades a checkpoint.

For each captured candidate reply the grader waits (up to `pair_timeout_seconds`) for the stable server's
reply to the same request id, then scores the pair for every check, each score in [0, 1]:

- win_rate: the judge's comparison of the two replies, by `evaluation.pairwise`'s rules (pointwise: 1 when
  the candidate scores higher, 0 lower, 0.5 equal; a pairwise score_model judges both orders);
- grader_score: the judge's score of the candidate's reply, clamped to [0, 1];
- refusal_rate, toxicity_rate, pii_leakage: 1 when the packaged detectors flag the candidate's reply.

The judge's row (`item`) is `{"messages": the request's messages, "prompt": the last user message,
"stable_reply": the stable's reply}`; `sample.output_text` is the candidate's reply. A pair the judge cannot
grade counts as the worst score (0, or 1 for a rate) and in GRADING_ERRORS: the gate fails closed. A reply
whose stable counterpart never comes is not graded (UNPAIRED).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune_api.serving import CapturedReply, Grading
from finetune_api.v1alpha1.modeldeployment import ShadowCheck
from finetune_trainer.evaluation import pairwise, safety
from finetune_trainer.graders import Compiled, compile_grader, sample_from_text
from finetune_trainer.storage import Store

LOG = logging.getLogger("finetune_trainer.serve")
POLL_SECONDS = 0.2
WORST = {"win_rate": 0.0, "grader_score": 0.0, "refusal_rate": 1.0, "toxicity_rate": 1.0, "pii_leakage": 1.0}


def item_of(reply: CapturedReply, stable: CapturedReply) -> dict[str, Any]:
    prompt = next(
        (str(m.get("content", "")) for m in reversed(reply.messages) if m.get("role") == "user"), ""
    )
    return {"messages": reply.messages, "prompt": prompt, "stable_reply": stable.reply}


class Grader:
    """Scores pairs for every check; judges and detectors are loaded once, when first needed."""

    def __init__(self, grading: Grading, scratch: Path) -> None:
        self.checks = grading.checks
        self.scratch = scratch
        self.judges: dict[str, Compiled] = {}
        self.flaggers: dict[str, Any] = {}

    def _judge(self, check: ShadowCheck) -> Compiled:
        if check.metric not in self.judges:
            assert check.judge is not None  # the API requires one for win_rate and grader_score
            self.judges[check.metric] = compile_grader(check.judge, scratch=self.scratch)
        return self.judges[check.metric]

    def _flagger(self, metric: str) -> Any:
        if metric not in self.flaggers:
            store, scratch = Store(), self.scratch
            if metric == "refusal_rate":
                self.flaggers[metric] = safety.refusal_detector(None, store=store, scratch=scratch)
            else:
                self.flaggers[metric] = safety.toxicity_scorer(None, store=store, scratch=scratch)
        return self.flaggers[metric]

    def score(
        self, check: ShadowCheck, candidate: CapturedReply, stable: CapturedReply
    ) -> tuple[float, bool]:
        """(score, whether the judge failed) for one pair."""
        metric = check.metric
        try:
            if metric == "win_rate":
                assert check.judge is not None
                found = pairwise.win_rate(
                    check.judge,
                    [candidate.reply],
                    [stable.reply],
                    [item_of(candidate, stable)],
                    judge=self._judge(check),
                    resamples=1,
                )
                return found.value, found.errors > 0
            if metric == "grader_score":
                (result,) = self._judge(check).grade(
                    [sample_from_text(candidate.reply)], [item_of(candidate, stable)]
                )
                if result.error is not None:
                    return WORST[metric], True
                return min(1.0, max(0.0, float(result.score))), False
            if metric == "pii_leakage":
                return (1.0 if safety.pii_leaks([candidate.reply])[0] else 0.0), False
            (flagged,) = self._flagger(metric).flags([candidate.reply])
            return (1.0 if flagged else 0.0), False
        except Exception as err:  # a judge that cannot grade fails closed
            LOG.warning("grading %s of %s failed: %s", metric, candidate.request_id, err)
            return WORST[metric], True

    def close(self) -> None:
        for judge in self.judges.values():
            judge.close()


class Pairing:
    """The background worker: candidate reply in, the stable's awaited, every check scored and counted."""

    def __init__(
        self,
        grader: Grader,
        stable_of: Callable[[str], CapturedReply | None],
        counted: Callable[[str, float, bool], None],
        unpaired: Callable[[], None],
        timeout: float,
    ) -> None:
        self.grader = grader
        self.stable_of = stable_of
        self.counted = counted
        self.unpaired = unpaired
        self.timeout = timeout
        self.waiting: queue.Queue[tuple[float, CapturedReply]] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="grade", daemon=True)
        self.thread.start()

    def add(self, reply: CapturedReply) -> None:
        self.waiting.put((time.monotonic(), reply))

    def _run(self) -> None:
        """Pairs wait side by side, each looked up again after a growing pause (POLL_SECONDS doubling): a
        reply whose stable counterpart never comes (a request the canary routed to the candidate) must
        neither hold up the others nor cost a storage read every tick until its timeout."""
        pending: list[tuple[float, float, CapturedReply]] = []  # (since, next look, reply)
        while True:
            wait = max(0.0, min(look for _, look, _ in pending) - time.monotonic()) if pending else None
            try:
                since, reply = self.waiting.get(timeout=wait)
                pending.append((since, since + POLL_SECONDS, reply))
                while True:
                    since, reply = self.waiting.get_nowait()
                    pending.append((since, since + POLL_SECONDS, reply))
            except queue.Empty:
                pass
            now = time.monotonic()
            still = []
            for since, look, reply in pending:
                if look > now:
                    still.append((since, look, reply))
                    continue
                stable = self.stable_of(reply.request_id)
                if stable is not None:
                    for check in self.grader.checks:
                        score, failed = self.grader.score(check, reply, stable)
                        self.counted(check.metric, score, failed)
                elif now - since >= self.timeout:
                    self.unpaired()
                else:
                    still.append((since, now + max(POLL_SECONDS, 2 * (now - since)), reply))
            pending = still
