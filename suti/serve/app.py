"""The FastAPI application: a static page plus a small JSON API over one loaded pipeline.

    POST   /api/uploads                  raw photo bytes (header X-Filename) -> {id, name, thumbnail, ...}
    POST   /api/uploads/from-pair/{id}   a pairs-database record as a subject photo
    DELETE /api/uploads/{id}
    POST   /api/jobs                     JSON settings -> 202 {id, status, position}
    GET    /api/jobs/{id}                status, queue position, step progress, image URLs or the error
    DELETE /api/jobs/{id}                cancel
    GET    /api/jobs/{id}/images/{i}.png the result, its settings in the PNG's text chunks
    GET    /api/search?q=...&k=...       text -> nearest pairs (with --database)

Every refusal is JSON ``{"error": message}`` with a 4xx/5xx status, which the page shows as it is.
"""
from __future__ import annotations

import io
import logging
import threading
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from urllib.parse import unquote

from fastapi import FastAPI, Request
from retrieval.errors import RetrievalError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from .jobs import GenerationRequest, Job, JobQueue, QueueFull
from .settings import ServeSettings
from .uploads import UploadError, UploadStore
from .validate import RequestError, parse_generation

log = logging.getLogger("suti.serve")
STATIC = Path(str(resources.files("suti.serve") / "static"))


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(pipe, settings: ServeSettings | None = None, *, database=None, model_name: str = "",
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """An ASGI app serving ``pipe`` (a loaded ``SuTIPipeline``); ``database`` is an optional open
    ``retrieval.PairsDatabase`` for the search tab. ``allowed_hosts`` (Host header names) refuses requests
    addressed to other names, which stops DNS-rebinding pages from reaching a server bound to 127.0.0.1."""
    settings = settings or ServeSettings()
    uploads = UploadStore(settings.max_upload_bytes, settings.max_pending_uploads, settings.upload_ttl_s)
    queue = JobQueue(pipe, model_name=model_name, max_waiting=settings.max_waiting,
                     keep_finished=settings.keep_finished_jobs, on_finish=lambda job: uploads.unpin(job.upload_ids))
    uses_context = any(s.uses_context for s in pipe.cascade.stages)
    db_lock = threading.Lock()  # the database's index and embedder serve one search at a time

    @asynccontextmanager
    async def lifespan(app):
        yield
        queue.close()
        uploads.close()

    app = FastAPI(title="suti serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.queue, app.state.uploads, app.state.settings = queue, uploads, settings
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return _error(str(exc.detail), exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request, exc):
        log.exception("unhandled error on %s", request.url.path)
        return _error(f"internal server error ({type(exc).__name__}); the server log has the details", 500)

    # -- page ----------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info")
    def info():
        return {
            "model": model_name, "stages": [{"name": s.name, "size": s.image_size, "context": s.uses_context}
                                            for s in pipe.cascade.stages],
            "uses_context": uses_context, "database": None if database is None else {"records": len(database)},
            "limits": {"max_photos": settings.max_photos, "max_upload_bytes": settings.max_upload_bytes,
                       "max_images": settings.max_images, "max_steps": settings.max_steps,
                       "max_waiting": settings.max_waiting},
            "defaults": {"steps": settings.default_steps, "guidance": settings.default_guidance,
                         "guidance_mode": "interleaved", "text_ratio": 0.5, "num_images": 2},
        }

    # -- uploads -------------------------------------------------------------------------------
    @app.post("/api/uploads", status_code=201)
    async def upload(request: Request):
        name = unquote(request.headers.get("x-filename", "") or "photo")
        length = request.headers.get("content-length")
        try:
            writer = uploads.begin(name, int(length) if length and length.isdigit() else None)
        except UploadError as e:
            return _error(str(e), e.status)
        try:
            async for chunk in request.stream():  # streamed to the temporary folder, capped as it comes
                writer.write(chunk)
            up = await run_in_threadpool(writer.finish)
        except UploadError as e:
            writer.abort()
            return _error(str(e), e.status)
        except BaseException:
            writer.abort()
            raise
        return up.describe()

    @app.post("/api/uploads/from-pair/{record_id}", status_code=201)
    def upload_from_pair(record_id: int):
        if database is None:
            return _error("this server was started without --database", 404)
        try:
            with db_lock:
                record = database.get(record_id)
                image = database.load_image(record)
        except (KeyError, IndexError, ValueError, OSError, RetrievalError) as e:
            return _error(f"pairs database record {record_id}: {e}", 404)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        try:
            writer = uploads.begin(f"{record.get('key', record_id)}.png", len(buf.getvalue()))
            writer.write(buf.getvalue())
            up = writer.finish()
        except UploadError as e:
            return _error(str(e), e.status)
        return {**up.describe(), "caption": record.get("caption") or ""}

    @app.get("/api/uploads/{upload_id}/thumbnail.jpg")
    def thumbnail(upload_id: str):
        try:
            return Response(uploads.get(upload_id).thumbnail, media_type="image/jpeg")
        except UploadError as e:
            return _error(str(e), e.status)

    @app.delete("/api/uploads/{upload_id}")
    def delete_upload(upload_id: str):
        if not uploads.remove(upload_id):
            return _error(f"photo {upload_id!r} is not on the server", 404)
        return {"removed": upload_id}

    # -- generation -------------------------------------------------------------------------------
    def describe(job: Job) -> dict:
        out = {"id": job.id, "status": job.status, "position": queue.position(job), "step": job.step,
               "total_steps": job.total_steps, "stage": job.stage, "error": job.error,
               "settings": job.request.settings(), "waiting": queue.waiting()}
        if job.started:
            out["seconds"] = round((job.finished or time.time()) - job.started, 3)
        if job.status == "done":
            out["images"] = [{"url": f"/api/jobs/{job.id}/images/{i}.png",
                              "download": f"/api/jobs/{job.id}/images/{i}.png?download=1"}
                             for i in range(len(job.images))]
        return out

    @app.post("/api/jobs", status_code=202)
    async def submit(request: Request):
        try:
            payload = await request.json()
        except ValueError:
            return _error("the request body must be JSON", 400)
        try:
            p = parse_generation(payload, settings)
        except RequestError as e:
            return _error(str(e), 400)
        if p["subjects"] and not uses_context:
            return _error("this checkpoint is text-to-image only (no context attention): it cannot use subject "
                          "photos; remove them, or serve a SuTI checkpoint", 400)
        ids = [u for u, _ in p["subjects"]]
        try:
            photos = uploads.pin(ids)
        except UploadError as e:
            return _error(str(e), e.status)
        req = GenerationRequest(
            prompt=p["prompt"], subject_paths=[u.path for u in photos], subject_texts=[c for _, c in p["subjects"]],
            subject_sha256=[u.sha256 for u in photos], num_images=p["num_images"], steps=p["steps"],
            guidance=p["guidance"], guidance_mode=p["guidance_mode"], context_guidance=p["context_guidance"],
            text_ratio=p["text_ratio"], seed=p["seed"], fit=p["fit"])
        try:
            job = queue.submit(req, ids)
        except QueueFull as e:
            uploads.unpin(ids)
            return _error(str(e), 503)
        return JSONResponse(describe(job), status_code=202)

    def _job(job_id: str) -> Job:
        job = queue.get(job_id)
        if job is None:
            raise StarletteHTTPException(404, f"request {job_id!r} is unknown (finished long ago, or never made)")
        return job

    @app.get("/api/jobs/{job_id}")
    def status(job_id: str):
        return describe(_job(job_id))

    @app.delete("/api/jobs/{job_id}")
    def cancel(job_id: str):
        _job(job_id)
        return describe(queue.cancel(job_id))

    @app.get("/api/jobs/{job_id}/images/{index}.png")
    def image(job_id: str, index: int, download: bool = False):
        job = _job(job_id)
        if job.status != "done":
            return _error(f"request {job_id!r} is {job.status}, it has no images", 409)
        if not 0 <= index < len(job.images):
            return _error(f"request {job_id!r} has {len(job.images)} images; no image {index}", 404)
        headers = {"Content-Disposition": f'attachment; filename="suti-{job_id}-{index}.png"'} if download else {}
        return Response(job.images[index], media_type="image/png", headers=headers)

    # -- pairs database ---------------------------------------------------------------------------
    @app.get("/api/search")
    def search(q: str = "", k: int = 8):
        if database is None:
            return _error("this server was started without --database", 404)
        if not q.strip():
            return _error("write some text to search for", 400)
        if not 1 <= k <= 50:
            return _error(f"k must be between 1 and 50, got {k}", 400)
        try:
            with db_lock:
                hits = database.search_text(q.strip(), k=k)
        except RetrievalError as e:
            return _error(f"search failed: {e}", 400)
        return {"query": q.strip(), "results": [
            {"id": int(h["id"]), "key": h.get("key"), "caption": h.get("caption") or "", "score": float(h["score"]),
             "url": h.get("url"), "page_url": h.get("page_url"), "thumbnail": f"/api/pairs/{int(h['id'])}/thumbnail.jpg"}
            for h in hits]}

    @app.get("/api/pairs/{record_id}/thumbnail.jpg")
    def pair_thumbnail(record_id: int):
        if database is None:
            return _error("this server was started without --database", 404)
        try:
            with db_lock:
                image = database.load_image(database.get(record_id))
        except (KeyError, IndexError, ValueError, OSError, RetrievalError) as e:
            return _error(f"pairs database record {record_id}: {e}", 404)
        image.thumbnail((256, 256))
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="JPEG", quality=85)
        return Response(buf.getvalue(), media_type="image/jpeg")

    return app
