"""`kalora serve`: a real server process on a loopback port, driven by a real HTTP client."""

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

TEXTS = ["The child had a seizure and lens opacity.", "No seizure was seen; near-sightedness was reported.",
         "Colour blindness in the father.", "Nothing relevant here."]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_build, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--root", str(tiny_build.root), "--name",
                                 tiny_build.name, "--port", str(port), "--max-body-bytes", "20000", "--max-batch", "4",
                                 "--max-chars", "5000"], stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "server did not come up:\n" + log.read_text()
        time.sleep(0.3)
    with httpx.Client(base_url=base, timeout=60) as client:
        yield client, log
    proc.terminate()
    proc.wait(timeout=30)
    assert "Traceback" not in log.read_text(), log.read_text()


def _expected(tiny_build, texts, include_negated=False):
    from linking.build import doc_links, load_linker
    from linking.concepts import doc_concepts

    nlp = load_linker(tiny_build)
    return [{"spans": doc_links(d), "concepts": doc_concepts(d, include_negated=include_negated)}
            for d in nlp.pipe(texts)]


def test_serve_binds_loopback_and_reports_health(server, tiny_build):
    client, log = server
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["name"] == tiny_build.name and "kg_linker" in health["pipeline"]
    assert "on http://127.0.0.1:" in log.read_text()


def test_serve_link_answers_as_the_library_does(server, tiny_build):
    client, _ = server
    expected = _expected(tiny_build, TEXTS)
    one = client.post("/link", json={"text": TEXTS[0]})
    assert one.status_code == 200 and one.json() == {"text": TEXTS[0], **expected[0]}
    assert any(s["kb_id"] for s in one.json()["spans"]), "the tiny ontology's names must be linked"
    many = client.post("/link", json={"documents": [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS)]})
    assert many.status_code == 200
    assert many.json()["documents"] == [{"id": f"d{i}", **e} for i, e in enumerate(expected)]
    negated = client.post("/link", json={"text": TEXTS[1], "include_negated": True}).json()
    assert negated["concepts"] == _expected(tiny_build, TEXTS[1:2], include_negated=True)[0]["concepts"]


def test_serve_concurrent_clients_get_their_own_answers(server, tiny_build):
    """Requests waiting together are linked in one batch; each client still gets its own documents."""
    client, _ = server
    expected = _expected(tiny_build, TEXTS)

    def ask(i):
        r = client.post("/link", json={"documents": [{"id": i, "text": TEXTS[i % 4]}, {"text": TEXTS[(i + 1) % 4]}]})
        return i, r.status_code, r.json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(24)))
    for i, status, body in answers:
        assert status == 200
        assert body["documents"] == [{"id": i, **expected[i % 4]}, {"id": 1, **expected[(i + 1) % 4]}]


def test_serve_candidates(server, tiny_build):
    from linking.build import load_linker

    client, _ = server
    r = client.post("/candidates", json={"mentions": ["seizure", "lens opacity"], "k": 3})
    assert r.status_code == 200
    linker = load_linker(tiny_build).get_pipe("kg_linker")
    ranked = linker.candidates(["seizure", "lens opacity"], 3)
    got = r.json()["mentions"]
    assert [m["mention"] for m in got] == ["seizure", "lens opacity"]
    assert [[c["entity_id"] for c in m["candidates"]] for m in got] == \
        [[linker.entity_ids[c.entity_index - 1] for c in rs] for rs in ranked]


@pytest.mark.parametrize("body,status,needle", [
    (b"{not json", 400, "not JSON"),
    (b'{"text": "caf\xe9"}', 400, "not UTF-8"),
    (json.dumps({"text": "x" * 30000}).encode(), 413, "exceeds the limit of 20,000 bytes"),
    (json.dumps({"documents": [{"text": "a"}] * 5}).encode(), 413, "5 documents in one request; the limit is 4"),
    (json.dumps({"text": "y " * 3000}).encode(), 413, "exceeds the limit of 5,000"),
    (json.dumps({"text": 5}).encode(), 422, "expected fields"),
    (json.dumps({"documents": [{"text": "  "}]}).encode(), 422, "a document is empty"),
    (json.dumps({}).encode(), 422, "give either"),
    (json.dumps({"text": "a", "colour": 1}).encode(), 422, "expected fields"),
    (json.dumps([1, 2]).encode(), 422, "expected fields"),
])
def test_serve_bad_requests_get_one_json_error(server, body, status, needle):
    client, _ = server
    r = client.post("/link", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert needle in r.json()["error"] and "Traceback" not in r.text


def test_serve_bad_candidate_requests(server):
    client, _ = server
    assert client.post("/candidates", json={"mentions": []}).status_code == 422
    assert client.post("/candidates", json={"mentions": ["a"], "k": 0}).status_code == 422
    r = client.post("/candidates", json={"mentions": ["a"] * 5})
    assert r.status_code == 413 and "5 mentions" in r.json()["error"]
    r = client.post("/link", json={"text": 5})
    assert r.json()["detail"][0]["field"] == "text"


def test_serve_refuses_an_oversized_chunked_body_without_reading_it_whole(server):
    """No Content-Length: the limit is enforced on the bytes as they arrive."""
    client, _ = server

    def chunks():
        yield b'{"text": "'
        for _ in range(100):
            yield b"z" * 1000
        yield b'"}'

    r = client.post("/link", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "exceeds the limit of 20,000 bytes" in r.json()["error"]
    assert client.get("/health").status_code == 200, "the server keeps serving"


def test_worker_isolates_a_failing_request_from_the_ones_batched_with_it():
    """A document that makes the pipeline raise fails its own request only (the batch is retried
    request by request)."""
    import asyncio

    import spacy

    from linking.serve import LinkWorker

    class Boom(Exception):
        pass

    nlp = spacy.blank("en")

    @spacy.Language.component("kalora_test_boom")
    def fake_linker(doc):
        if "boom" in doc.text:
            raise Boom(doc.text)
        return doc

    nlp.add_pipe("kalora_test_boom")
    worker = LinkWorker(nlp, max_docs=16, pipe_batch=8)

    async def go():
        loop = asyncio.get_running_loop()
        jobs = [worker.submit("link", (["fine one"], [0], False)), worker.submit("link", (["boom"], [1], False)),
                worker.submit("link", (["fine two"], [2], False))]
        tasks = [loop.create_task(j) for j in jobs]
        await asyncio.sleep(0.05)  # all three queued before the worker starts: one merged batch
        worker.start()
        return await asyncio.gather(*tasks, return_exceptions=True)

    ok1, failed, ok2 = asyncio.run(go())
    worker.stop()
    assert isinstance(failed, Boom)
    assert ok1[0]["id"] == 0 and ok2[0]["id"] == 2 and ok1[0]["spans"] == []
