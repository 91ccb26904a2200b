"""The linker as an HTTP API: ``kalora serve --name hpo``.

``POST /link`` takes ``{"text": "..."}`` or ``{"documents": [{"id": "...", "text": "..."}, ...]}``
(and ``"include_negated": true`` to keep negated concepts) and answers each document as ``kalora
link --format jsonl`` does: its spans (id, score, negation, candidates) and its concept list.
``POST /candidates`` takes ``{"mentions": ["..."], "k": 10}`` and answers the ranked candidates of
each mention, as ``kalora candidates`` does. ``GET /health`` says what is loaded.

The pipeline is loaded once, at start. One worker thread owns it (spaCy pipelines are not made for
concurrent calls): requests are queued, and the documents of every request waiting when the worker
is free are linked together in one ``nlp.pipe`` call — concurrent clients share batches instead of
taking turns one document at a time.

Limits: the request body (``max_body_bytes``, checked before it is read whole), documents or
mentions per request (``max_batch``) and characters per document (``max_chars``) answer 413;
a body that is not JSON or not UTF-8 answers 400; a JSON body of the wrong shape (missing or
non-string text, an empty document, unknown fields) answers 422 naming the field. Every error is
a JSON object ``{"error": ..., "detail": ...}``; an unexpected failure answers 500 without a
traceback (it is logged on the server).

The server binds to 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

log = logging.getLogger(__name__)


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: StrictStr | StrictInt | None = None
    text: StrictStr


class LinkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: StrictStr | None = None
    documents: list[Document] | None = None
    include_negated: StrictBool = False


class CandidatesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mentions: list[StrictStr] = Field(min_length=1)
    k: StrictInt = Field(default=10, ge=1)


class HTTPProblem(Exception):
    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        self.status, self.error, self.detail = status, error, detail


@dataclass(frozen=True)
class ServeLimits:
    max_body_bytes: int = 8 * 2**20
    max_batch: int = 256  # documents per /link request, mentions per /candidates request
    max_chars: int = 1_000_000  # characters per document (spaCy's default nlp.max_length)
    max_k: int = 100
    pipe_batch: int = 64  # documents per nlp.pipe batch inside the worker


class _Job:
    __slots__ = ("kind", "payload", "future", "loop")

    def __init__(self, kind: str, payload: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.kind, self.payload, self.loop = kind, payload, loop
        self.future: asyncio.Future = loop.create_future()

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        def done() -> None:
            if self.future.cancelled():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        self.loop.call_soon_threadsafe(done)


class LinkWorker:
    """The one thread that calls the pipeline. ``link`` jobs waiting together are merged into one
    ``nlp.pipe`` pass (up to ``max_docs`` documents); ``candidates`` jobs run one by one."""

    def __init__(self, nlp, max_docs: int, pipe_batch: int) -> None:
        self.nlp = nlp
        self.linker = nlp.get_pipe("kg_linker") if "kg_linker" in nlp.pipe_names else None  # for /candidates
        self.max_docs, self.pipe_batch = max_docs, pipe_batch
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="kalora-link-worker", daemon=True)
        self.batches = 0
        self.documents = 0

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=30)

    async def submit(self, kind: str, payload: Any) -> Any:
        job = _Job(kind, payload, asyncio.get_running_loop())
        self.jobs.put(job)
        return await job.future

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if job.kind == "candidates":
                self._candidates(job)
                continue
            batch, docs, stop = [job], len(job.payload[0]), False
            while docs < self.max_docs:  # take every link job already waiting
                try:
                    nxt = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                if nxt.kind != "link":
                    self._candidates(nxt)
                    continue
                batch.append(nxt)
                docs += len(nxt.payload[0])
            self._link(batch)
            if stop:
                return

    def _link(self, batch: list[_Job]) -> None:
        from linking.build import doc_links
        from linking.concepts import doc_concepts

        texts = [text for job in batch for text in job.payload[0]]
        try:
            docs = list(self.nlp.pipe(texts, batch_size=self.pipe_batch))
        except Exception as exc:  # noqa: BLE001 - the worker lives on
            if len(batch) > 1:  # one request's document must not fail the others merged with it
                for job in batch:
                    self._link([job])
                return
            log.exception("linking %d documents failed", len(texts))
            batch[0].resolve(error=exc)
            return
        self.batches += 1
        self.documents += len(texts)
        at = 0
        for job in batch:
            ids, include_negated = job.payload[1], job.payload[2]
            mine = docs[at:at + len(ids)]
            at += len(ids)
            job.resolve([{"id": doc_id, "spans": doc_links(doc),
                          "concepts": doc_concepts(doc, include_negated=include_negated)}
                         for doc_id, doc in zip(ids, mine)])

    def _candidates(self, job: _Job) -> None:
        mentions, k = job.payload
        try:
            ranked = self.linker.candidates(mentions, k)
            ids = self.linker.entity_ids
            job.resolve([{"mention": m, "candidates": [
                {"entity_id": ids[r.entity_index - 1], "score": round(float(r.score), 4), "alias": r.alias}
                for r in rs]} for m, rs in zip(mentions, ranked)])
        except Exception as exc:  # noqa: BLE001
            log.exception("candidates for %d mentions failed", len(mentions))
            job.resolve(error=exc)


class BodyGuard:
    """ASGI middleware: a POST body over ``max_body_bytes`` answers 413 as soon as the declared
    length or the bytes received pass the limit (it is never read whole); a body that is not UTF-8
    JSON answers 400. A body that passes is replayed unchanged to the application."""

    def __init__(self, app, limits: ServeLimits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        limit = self.limits.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await problem(413, f"request body of {int(declared):,} bytes exceeds the limit of {limit:,} bytes")(scope, receive, send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                await problem(413, f"request body exceeds the limit of {limit:,} bytes")(scope, receive, send)
                return
        try:
            json.loads(bytes(body).decode("utf-8"))
        except UnicodeDecodeError as exc:
            await problem(400, f"request body is not UTF-8 (byte {exc.start})")(scope, receive, send)
            return
        except json.JSONDecodeError as exc:
            await problem(400, f"request body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")(scope, receive, send)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def problem(status: int, error: str, detail: Any = None) -> JSONResponse:
    """Every error answer: ``{"error": ..., "detail": ...}`` with ``status``."""
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def create_app(nlp, limits: ServeLimits = ServeLimits(), *, name: str = "", source: str = ""):
    """The FastAPI application over a loaded linker pipeline ``nlp``."""
    from contextlib import asynccontextmanager

    worker = LinkWorker(nlp, limits.max_batch, limits.pipe_batch)

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="kalora-kg linker", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPProblem)
    async def _problem(request: Request, exc: HTTPProblem):
        return problem(exc.status, exc.error, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        detail = [{"field": ".".join(str(p) for p in e.get("loc", ())[1:]) or "body", "message": e.get("msg", "")}
                  for e in exc.errors()]
        return problem(422, "the request body does not have the expected fields", detail)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.error("unexpected failure on %s: %r", request.url.path, exc)
        return problem(500, "internal error while linking; the server log has the details")

    app.add_middleware(BodyGuard, limits=limits)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "name": name, "linker": source, "pipeline": nlp.pipe_names,
                "batches": worker.batches, "documents": worker.documents}

    @app.post("/link")
    async def link(req: LinkRequest) -> dict:
        if (req.text is None) == (req.documents is None):
            raise HTTPProblem(422, "give either \"text\" or \"documents\"")
        docs = [Document(id=0, text=req.text)] if req.text is not None else req.documents
        if len(docs) > limits.max_batch:
            raise HTTPProblem(413, f"{len(docs)} documents in one request; the limit is {limits.max_batch}")
        if not docs:
            raise HTTPProblem(422, "\"documents\" is empty")
        for i, d in enumerate(docs):
            where = "text" if req.text is not None else f"documents.{i}.text"
            if not d.text.strip():
                raise HTTPProblem(422, "a document is empty", [{"field": where, "message": "empty or whitespace only"}])
            if len(d.text) > limits.max_chars:
                raise HTTPProblem(413, f"document of {len(d.text):,} characters exceeds the limit of "
                                       f"{limits.max_chars:,}", [{"field": where}])
        ids = [d.id if d.id is not None else i for i, d in enumerate(docs)]
        out = await worker.submit("link", ([d.text for d in docs], ids, req.include_negated))
        if req.text is not None:
            return {"text": req.text, "spans": out[0]["spans"], "concepts": out[0]["concepts"]}
        return {"documents": out}

    @app.post("/candidates")
    async def candidates(req: CandidatesRequest) -> dict:
        if len(req.mentions) > limits.max_batch:
            raise HTTPProblem(413, f"{len(req.mentions)} mentions in one request; the limit is {limits.max_batch}")
        if req.k > limits.max_k:
            raise HTTPProblem(422, f"k must be at most {limits.max_k}", [{"field": "k"}])
        too_long = [i for i, m in enumerate(req.mentions) if len(m) > 1_000]
        if too_long:
            raise HTTPProblem(413, "a mention is longer than 1,000 characters", [{"field": f"mentions.{too_long[0]}"}])
        return {"mentions": await worker.submit("candidates", (req.mentions, req.k))}

    return app


def serve(nlp, host: str, port: int, limits: ServeLimits, *, name: str = "", source: str = "") -> None:
    """Run the API until interrupted (uvicorn, one process; the worker thread owns the pipeline)."""
    import uvicorn

    app = create_app(nlp, limits, name=name, source=source)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
