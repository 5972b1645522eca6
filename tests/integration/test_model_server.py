"""`python -m finetune_trainer serve` as a process, serving tiny models trained to answer one sentence and
published through the trainer's promotion: what a client sees, what Prometheus scrapes, what is kept by
request id, what a bad version does, and the shadow grading between a stable and a candidate server."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from finetune_api.serving import (
    ENV_SERVE_CONTRACT,
    GRADED_SAMPLES,
    GRADED_SCORE,
    REQUESTS,
    VARIANT_HEADER,
)
from finetune_trainer.storage import Store
from helpers.processes import Process, free_port, spawn, wait_http
from helpers.servedmodels import answering_model, publish_version

pytestmark = pytest.mark.integration
YES = "yes, certainly."
NO = "no."
SAYS_YES = {
    "name": "says-yes",
    "type": "string_check",
    "input": "{{sample.output_text}}",
    "reference": "yes",
    "operation": "ilike",
}
REPO = Path(__file__).resolve().parents[2]
# the server runs this checkout's code, whatever the working directory of its process
SOURCES = os.pathsep.join(str(REPO / folder) for folder in ("operator", "trainer_image"))
PROMPTS = ["is it going to rain 4?", "can I park here 17?", "do you like music 3?"]


@dataclass
class Server:
    process: Process
    url: str

    def post(
        self, document: dict[str, Any], request_id: str | None = None
    ) -> tuple[int, dict[str, Any], Any]:
        headers = {"content-type": "application/json"} | ({"x-request-id": request_id} if request_id else {})
        request = urllib.request.Request(
            self.url + "/v1/chat/completions", data=json.dumps(document).encode(), headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read()), response.headers
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read()), err.headers

    def ask(self, question: str, request_id: str | None = None) -> str:
        status, answer, _ = self.post(
            {"messages": [{"role": "user", "content": question}], "temperature": 0}, request_id
        )
        assert status == 200, answer
        return str(answer["choices"][0]["message"]["content"])

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def samples(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Every sample of series `name`, by its labels."""
        text = self.get("/metrics")[1].decode()
        return {
            tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name
        }


@dataclass
class Versions:
    yes: tuple[str, str]  # uri, digest
    no: tuple[str, str]
    root: Path


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Versions:
    root = tmp_path_factory.mktemp("served")
    published = {}
    for name, answer in (("yes", YES), ("no", NO)):
        model = answering_model(root / f"model-{name}", answer)
        p = publish_version(model, str(root / f"line-{name}"), "v1", Store())
        published[name] = (p.uri, p.digest)
    return Versions(published["yes"], published["no"], root)


def contract(version: tuple[str, str], variant: str, capture: Path | None, **extra: Any) -> dict[str, Any]:
    return {
        "namespace": "team-a",
        "deployment": "chat",
        "variant": variant,
        "model": {"uri": version[0], "digest": version[1]},
        "captureUri": str(capture) + "/" if capture else None,
        "maxNewTokens": 16,
        **extra,
    }


def start(name: str, document: dict[str, Any], workdir: Path) -> tuple[Process, str]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=SOURCES, **{ENV_SERVE_CONTRACT: json.dumps(document)})
    argv = [sys.executable, "-m", "finetune_trainer", "serve", "--port", str(port), "--host", "127.0.0.1"]
    argv += ["--scratch", str(workdir / f"cache-{name}")]
    return spawn(name, argv, workdir, env), f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def servers(versions: Versions, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """A stable server answering YES, a candidate answering NO and a candidate answering YES too, all
    keeping replies in one capture folder (each candidate is sent its own request ids); the candidates
    grade with the says-yes judge."""
    workdir = tmp_path_factory.mktemp("servers")
    grading = {
        "checks": [{"metric": "win_rate", "threshold": {"min": 0.5}, "judge": SAYS_YES}],
        "pairTimeoutSeconds": 10,
    }
    kept = workdir / "capture"
    started = {
        "stable": start("stable", contract(versions.yes, "stable", kept), workdir),
        "worse": start("worse", contract(versions.no, "candidate", kept, grading=grading), workdir),
        "equal": start("equal", contract(versions.yes, "candidate", kept, grading=grading), workdir),
    }
    servers = {name: Server(process, url) for name, (process, url) in started.items()}
    try:
        for server in servers.values():
            wait_http(server.url + "/health", server.process)
        yield servers
    finally:
        for server in servers.values():
            server.process.stop()


def test_completions_answer_with_the_trained_sentence(servers: dict[str, Server]) -> None:
    server = servers["stable"]
    status, answer, headers = server.post(
        {"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 100, "temperature": 0}, "req-1"
    )
    assert status == 200
    assert answer["object"] == "chat.completion"
    assert answer["model"] == "chat"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": YES}
    assert answer["choices"][0]["finish_reason"] == "stop"
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert headers["x-request-id"] == "req-1"
    assert headers[VARIANT_HEADER] == "stable"


def test_max_tokens_and_stop_strings_shorten_a_reply(servers: dict[str, Server]) -> None:
    server = servers["stable"]
    messages = [{"role": "user", "content": PROMPTS[1]}]
    status, short, _ = server.post({"messages": messages, "max_tokens": 1, "temperature": 0})
    assert status == 200
    assert short["choices"][0]["finish_reason"] == "length"
    assert YES.startswith(short["choices"][0]["message"]["content"])
    assert short["usage"]["completion_tokens"] == 1
    _, stopped, _ = server.post({"messages": messages, "stop": [","], "temperature": 0})
    assert stopped["choices"][0]["message"]["content"] == "yes"
    assert stopped["choices"][0]["finish_reason"] == "stop"


def test_bad_requests_and_unknown_paths(servers: dict[str, Server]) -> None:
    server = servers["stable"]
    status, answer, headers = server.post({"messages": [{"role": "user", "content": "hi"}], "n": 3})
    assert status == 400
    assert answer["error"]["param"] == "n"
    assert headers[VARIANT_HEADER] == "stable"
    status, answer, _ = server.post({"model": "chat"})
    assert (status, answer["error"]["param"]) == (400, "messages")
    assert server.get("/v1/nothing")[0] == 404


def test_models_health_and_metrics(servers: dict[str, Server]) -> None:
    server = servers["stable"]
    server.ask(PROMPTS[2])
    status, body = server.get("/v1/models")
    assert status == 200
    assert [m["id"] for m in json.loads(body)["data"]] == ["chat"]
    assert server.get("/health")[0] == 200
    requests = server.samples(REQUESTS)
    labels = {"namespace": "team-a", "modeldeployment": "chat", "variant": "stable"}
    ok = [value for key, value in requests.items() if dict(key).items() >= (labels | {"code": "200"}).items()]
    assert ok
    assert ok[0] >= 1
    assert all(dict(key)["digest"].startswith("sha256:") for key in requests)


def test_a_reply_is_kept_once_per_request_id(servers: dict[str, Server]) -> None:
    server = servers["stable"]
    server.ask(PROMPTS[0], "kept-1")
    server.post(
        {"messages": [{"role": "user", "content": "a different question"}], "max_tokens": 1}, "kept-1"
    )
    path = server.process.log.parent / "capture" / "kept-1" / "stable.json"
    deadline = time.monotonic() + 5
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let the second reply reach the writer
    kept = json.loads(path.read_text())
    assert kept["reply"] == YES
    assert kept["messages"][0]["content"] == PROMPTS[0]
    assert kept["status"] == 200
    assert kept["variant"] == "stable"


def graded(server: Server, count: int) -> tuple[float, float]:
    """(samples, score) of the win_rate check once `count` pairs are graded (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        samples = sum(server.samples(GRADED_SAMPLES).values())
        if samples >= count or time.monotonic() > deadline:
            return samples, sum(server.samples(GRADED_SCORE).values())
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("stable", "candidate", "score_per_pair"),
    [("stable", "worse", 0.0), ("stable", "equal", 0.5)],
)
def test_candidate_replies_are_graded_against_the_stables(
    servers: dict[str, Server], stable: str, candidate: str, score_per_pair: float
) -> None:
    assert servers[candidate].samples(GRADED_SAMPLES)  # the check's series exist before any pair
    assert sum(servers[candidate].samples(GRADED_SAMPLES).values()) == 0
    for index, prompt in enumerate(PROMPTS):
        request_id = f"{candidate}-{index}"
        servers[candidate].ask(prompt, request_id)  # mirrored first, as Envoy may deliver it
        servers[stable].ask(prompt, request_id)
    assert graded(servers[candidate], len(PROMPTS)) == (len(PROMPTS), score_per_pair * len(PROMPTS))


def test_a_version_whose_manifest_differs_from_the_pinned_digest_is_refused(
    versions: Versions, tmp_path: Path
) -> None:
    wrong = "sha256:" + "0" * 64
    process, _ = start("wrong", contract((versions.yes[0], wrong), "stable", None), tmp_path)
    assert process.popen.wait(60) == 2
    log = process.log.read_text()
    assert wrong in log
    assert versions.yes[1] in log


def test_a_tampered_object_is_refused(versions: Versions, tmp_path: Path) -> None:
    copy = tmp_path / "tampered"
    shutil.copytree(versions.yes[0], copy)
    with (copy / "config.json").open("a") as config:
        config.write("\n")
    process, _ = start("tampered", contract((str(copy), versions.yes[1]), "stable", None), tmp_path)
    assert process.popen.wait(60) == 2
    assert "config.json is corrupt" in process.log.read_text()


def test_an_adapter_version_is_served_on_the_base_its_lineage_names(
    versions: Versions, tmp_path: Path
) -> None:
    """A LoRA adapter of the YES model, published with a lineage.json naming that model as its base: the
    server loads the base, applies the adapter and answers as the base does (a fresh LoRA adds nothing)."""
    from peft import LoraConfig, get_peft_model  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    base = versions.root / "model-yes"
    adapter = tmp_path / "adapter"
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora).save_pretrained(adapter)
    lineage = {"lineageVersion": 1, "baseModel": {"uri": str(base), "revision": None, "digest": None}}
    (adapter / "lineage.json").write_text(json.dumps(lineage))
    published = publish_version(adapter, str(tmp_path / "line-adapter"), "v1", Store())
    assert not (tmp_path / "line-adapter" / "v1" / "config.json").exists()  # only the adapter is published
    process, url = start("adapter", contract((published.uri, published.digest), "stable", None), tmp_path)
    try:
        wait_http(url + "/health", process)
        assert Server(process, url).ask(PROMPTS[0]) == YES
    finally:
        process.stop()
