"""One sampling worker and its queue: requests run one at a time, in order, on a thread of their own.

The model is loaded once and shared; only this worker samples from it. Per-step progress comes from the
pipeline's step callback, which also stops a cancelled request at its next step.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from .png import png_with_settings

log = logging.getLogger("suti.serve")

GUIDANCE_MODES = ("interleaved", "text", "context", "joint", "none")
FIT_MODES = ("center-crop", "pad")


class QueueFull(RuntimeError):
    pass


class JobCancelled(Exception):
    pass


@dataclass
class GenerationRequest:
    prompt: str
    subject_paths: list = field(default_factory=list)     # files in the upload folder
    subject_texts: list = field(default_factory=list)
    subject_sha256: list = field(default_factory=list)
    num_images: int = 1
    steps: int = 50
    guidance: float = 5.0
    guidance_mode: str = "interleaved"
    context_guidance: float | None = None
    text_ratio: float = 0.5
    seed: int = 0
    fit: str = "center-crop"

    def settings(self) -> dict:
        """What a result PNG records: enough to make it again from the same photos."""
        s = {"prompt": self.prompt, "num_images": self.num_images, "steps": self.steps, "seed": self.seed,
             "guidance": self.guidance}
        if self.subject_paths:
            s.update(guidance_mode=self.guidance_mode, text_ratio=self.text_ratio, fit=self.fit,
                     context_guidance=self.guidance if self.context_guidance is None else self.context_guidance,
                     subject_texts=list(self.subject_texts), subject_sha256=list(self.subject_sha256))
        return s


@dataclass
class Job:
    id: str
    request: GenerationRequest
    upload_ids: list
    status: str = "queued"  # queued | running | done | error | cancelled
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    step: int = 0
    total_steps: int = 0
    stage: str | None = None
    images: list = field(default_factory=list)  # PNG bytes
    error: str | None = None
    cancel_requested: bool = False

    @property
    def done(self) -> bool:
        return self.status in ("done", "error", "cancelled")


class JobQueue:
    def __init__(self, pipe, *, model_name: str = "", max_waiting: int = 8, keep_finished: int = 32,
                 on_finish=None):
        self.pipe, self.model_name = pipe, model_name
        self.max_waiting, self.keep_finished = max_waiting, keep_finished
        self.on_finish = on_finish  # called with each finished job (the server unpins its photos)
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._current: Job | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="suti-serve-sampler", daemon=True)
        self._thread.start()

    # -- progress (runs on the worker thread, inside the pipeline) --------------------------------
    def _on_step(self, stage_name: str, step: int, steps: int) -> None:
        job = self._current
        if job is None:
            return
        if job.cancel_requested:  # checked before counting: a cancelled request reports the steps it kept
            raise JobCancelled
        job.step += 1
        job.stage = stage_name

    # -- the queue --------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest, upload_ids=()) -> Job:
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            active = len(self._waiting) + (self._current is not None)
            if active > self.max_waiting:  # one running plus max_waiting waiting
                raise QueueFull(f"the queue is full ({len(self._waiting)} requests waiting); try again in a "
                                f"minute")
            job = Job(secrets.token_hex(8), request, list(upload_ids),
                      total_steps=request.steps * len(self.pipe.cascade.stages))
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._forget_old()
            self._cond.notify_all()
            return job

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int:
        """How many requests run or wait ahead of this one (0: it is running or finished)."""
        with self._cond:
            if job.status != "queued":
                return 0
            ahead = 1 if self._current is not None else 0
            for other in self._waiting:
                if other is job:
                    break
                ahead += 1
            return ahead

    def cancel(self, job_id: str) -> Job | None:
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None or job.done:
                return job
            job.cancel_requested = True
            if job.status == "queued":
                self._waiting.remove(job)
                self._finish(job, "cancelled")
            return job

    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            for job in list(self._waiting):
                job.cancel_requested = True
                self._finish(job, "cancelled")
            self._waiting.clear()
            if self._current is not None:
                self._current.cancel_requested = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.done]
        for job in finished[:max(0, len(finished) - self.keep_finished)]:
            del self._jobs[job.id]

    def _finish(self, job: Job, status: str, error: str | None = None) -> None:
        job.status, job.error, job.finished = status, error, time.time()
        if self.on_finish is not None:
            try:
                self.on_finish(job)
            except Exception:  # noqa: BLE001 - a cleanup failure must not stop the worker
                log.exception("on_finish failed for job %s", job.id)

    # -- the worker ---------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._waiting.popleft()
                job.status, job.started = "running", time.time()
                self._current = job
            try:
                images = self._sample(job.request)
                with self._cond:
                    job.images = images
                    self._finish(job, "done")
            except JobCancelled:
                with self._cond:
                    self._finish(job, "cancelled")
            except (ValueError, OSError) as e:  # bad photos or settings the checks could not foresee
                with self._cond:
                    self._finish(job, "error", str(e))
            except Exception as e:  # noqa: BLE001 - report it on the page, keep serving
                log.exception("request %s failed", job.id)
                with self._cond:
                    self._finish(job, "error", f"internal error while sampling ({type(e).__name__}: {e})")
            finally:
                with self._cond:
                    self._current = None
                    self._forget_old()

    def _sample(self, r: GenerationRequest) -> list[bytes]:
        kwargs = dict(num_images=r.num_images, steps=r.steps, guidance=r.guidance, seed=r.seed,
                      callback=self._on_step)
        if r.subject_paths:
            kwargs.update(subject_images=list(r.subject_paths), subject_texts=list(r.subject_texts),
                          guidance_mode=r.guidance_mode, context_guidance=r.context_guidance,
                          text_ratio=r.text_ratio, fit=r.fit)
        images = self.pipe(r.prompt, **kwargs)
        settings = r.settings()
        if self.model_name:
            settings["model"] = self.model_name
        return [png_with_settings(im, {**settings, "image_index": i}) for i, im in enumerate(images)]
