"""The playground's HTTP face (FastAPI): the page, the run list, each run's options and curves, the compare
reports, and sampling jobs with progress over Server-Sent Events.

Every user error is a 4xx answer `{"error": "<one line naming the problem and the fix>"}`: a malformed
JSON body or a wrong type (400/422), a value over the server's limits (400), an id that names nothing
served (404). A failure inside one job is that job's error state; the server goes on.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from importlib.resources import files
from pathlib import Path

import yaml
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware

from genlab.engine.runs import CONFIG_YAML
from genlab.errors import ConfigError, GenlabError
from genlab.models.specs import TEXT_FAMILIES
from genlab.serve.jobs import Job, JobManager, ModelCache
from genlab.serve.roots import NotFound, Served, ServedRoots, curves, run_summary
from genlab.serve.sampling import (
    Limits,
    check_options,
    check_size,
    check_template,
    draw,
    form_options,
    limits_json,
    png_bytes,
)

STATIC = files("genlab.serve") / "static"
#: seconds between two looks at a job by an event stream
POLL_SECONDS = 0.05
#: the largest request body read (a prompt of `Limits.max_prompt_chars` and the options fit many times over)
MAX_BODY_BYTES = 1 << 20
#: the Host headers a loopback server answers: a page elsewhere that rebinds its own name to 127.0.0.1
#: (DNS rebinding) sends its own name, and is refused
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

Scalar = int | float | str | None


class SampleBody(BaseModel):
    """POST /api/sample: a run, how many samples, the seed and the family's options (or an infill text)."""

    model_config = ConfigDict(extra="forbid")
    run: str
    n: int = 16
    seed: int = Field(0, ge=0, le=2**63 - 1)
    options: dict[str, Scalar] = Field(default_factory=dict)
    text: str | None = None  # an infill template with [MASK:n] spans (mdlm runs)


class Axis(BaseModel):
    """One axis of a compare grid: an option name, "seed" or "run", and its values."""

    model_config = ConfigDict(extra="forbid")
    name: str
    values: list[int | float | str] = Field(min_length=1)


class CompareBody(SampleBody):
    """POST /api/compare: a sample request and one or two axes, every cell drawn at the same seed."""

    x: Axis
    y: Axis | None = None


class BoundedBody:
    """ASGI middleware: a body over `max_bytes` by its Content-Length (413), or a POST without one (411), is
    refused before it is read. Plain ASGI, so the event streams pass through untouched."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            size = dict(scope["headers"]).get(b"content-length")
            refusal = None
            if size is None and scope["method"] == "POST":
                refusal = _error(411, "send the request body with a Content-Length header")
            elif size is not None and (not size.isdigit() or int(size) > self.max_bytes):
                refusal = _error(413, f"the request body is over {self.max_bytes} bytes; send a shorter one")
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _validation_message(err: RequestValidationError) -> tuple[int, str]:
    """One line for a body that is not JSON (400) or does not fit the request's fields (422)."""
    errors = err.errors()
    if any(e.get("type") == "json_invalid" or tuple(e.get("loc", ())) == ("body",) for e in errors):
        return 400, ('malformed JSON body; send a JSON object such as {"run": "RUN_ID", "n": 4, "seed": 0, '
                     '"options": {}}')
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return 422, f"{where}: {first.get('msg', 'invalid')}{more}"


def create_app(paths, *, limits: Limits | None = None, cache: ModelCache | None = None, workers: int = 2,
               allowed_hosts: tuple[str, ...] | None = None) -> FastAPI:
    """The playground serving the run folders and compare reports found in `paths`.

    Args:
        allowed_hosts: the Host headers answered (`genlab serve` on loopback: LOOPBACK_HOSTS); None: any.
    """
    roots = ServedRoots(paths)
    limits = limits or Limits()
    jobs = JobManager(cache if cache is not None else ModelCache(), workers=workers)
    app = FastAPI(title="genlab serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.roots, app.state.jobs, app.state.limits = roots, jobs, limits
    app.router.add_event_handler("shutdown", jobs.shutdown)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    app.add_middleware(BoundedBody, max_bytes=MAX_BODY_BYTES)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        return _error(*_validation_message(err))

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, err: NotFound):
        return _error(404, str(err))

    @app.exception_handler(GenlabError)
    async def _user_error(request: Request, err: GenlabError):
        return _error(400, str(err))

    @app.get("/", include_in_schema=False)
    async def index():
        return Response((STATIC / "index.html").read_bytes(), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/api/runs")
    async def list_runs():
        runs = await asyncio.to_thread(lambda: [run_summary(s) for s in roots.runs().values()])
        return {"runs": runs, "limits": limits_json(limits)}

    # Handlers that walk the served folders are plain functions: FastAPI runs them in its thread pool, so the
    # event loop keeps streaming progress meanwhile.
    @app.get("/api/runs/{run_id:path}/options")
    def run_options(run_id: str):
        served = roots.run(run_id)
        summary = run_summary(served)
        family = summary["family"]
        return {"run": run_id, "family": family, "modality": summary["modality"],
                "text": family in TEXT_FAMILIES, "infill": family == "mdlm",
                "num_classes": summary["num_classes"], "options": form_options(family, _model_section(served))}

    @app.get("/api/runs/{run_id:path}/curves")
    async def run_curves(run_id: str):
        served = roots.run(run_id)
        return {"run": run_id, "curves": await asyncio.to_thread(curves, served.path)}

    @app.get("/api/reports")
    def list_reports():
        return {"reports": [{"id": r.id, "url": f"/reports/{r.id}/report.html"} for r in roots.reports().values()]}

    @app.get("/reports/{path:path}")
    def report_file(path: str):
        for report_id in sorted(roots.reports(), key=len, reverse=True):
            if path.startswith(report_id + "/"):
                return FileResponse(roots.report_file(report_id, path[len(report_id) + 1:]))
        raise NotFound(f"no report file {path!r} is served; GET /api/reports lists the reports")

    def planned(body: SampleBody, served: Served, options: dict) -> dict:
        """One cell's checked request: the run, its family and the options (4xx before any work)."""
        summary = run_summary(served)
        check_size(body.n, summary["shape"], limits)
        if body.text is not None and summary["family"] != "mdlm":
            raise ConfigError(f"infill needs a masked-diffusion text run (mdlm), but {served.id} is "
                              f"{summary['family']}; leave out `text` to sample")
        return {"served": served, "family": summary["family"],
                "options": check_options(summary["family"], options, limits)}

    def work_of(body: SampleBody, cells: list[tuple[dict, dict, int]]):
        """The job's work: draw each (cell labels, plan, seed) in turn, progress spread over the cells."""
        text = check_template(body.text, limits) if body.text is not None else None

        def work(job: Job):
            out = []
            for k, (labels, plan, seed) in enumerate(cells):
                model = jobs.cache.get(plan["served"].path)

                def progress(fraction, preview, k=k):
                    job.update(progress=(k + fraction) / len(cells),
                               preview=png_bytes(preview) if preview is not None else job.preview)

                drawn = draw(model, plan["served"].id, plan["served"].path, n=body.n, seed=seed,
                             options=plan["options"], text=text, progress=progress,
                             cancelled=job.cancel_event.is_set)
                out.append((labels, drawn))
            return out

        return work

    @app.post("/api/sample")
    def sample(body: SampleBody):
        plan = planned(body, roots.run(body.run), body.options)
        job = jobs.submit("sample", work_of(body, [({}, plan, body.seed)]), {"run": body.run, "columns": 1})
        return job.snapshot()

    @app.post("/api/compare")
    def compare(body: CompareBody):
        axes = [body.x] + ([body.y] if body.y is not None else [])
        for axis in axes:
            if len(axis.values) > limits.max_axis_values:
                raise ConfigError(f"axis {axis.name!r} has {len(axis.values)} values, over this server's limit of "
                                  f"{limits.max_axis_values}; give fewer")
        cells = []
        ys = body.y.values if body.y is not None else [None]
        for y, x in itertools.product(ys, body.x.values):
            labels = {"x": x} if body.y is None else {"x": x, "y": y}
            run_id, options, seed = body.run, dict(body.options), body.seed
            for axis, value in zip(axes, (x, y)):
                if axis.name == "run":
                    run_id = str(value)
                elif axis.name == "seed":
                    seed = _seed(value)
                else:
                    options[axis.name] = value
            cells.append((labels, planned(body, roots.run(run_id), options), seed))
        params = {"run": body.run, "x": body.x.model_dump(), "y": body.y.model_dump() if body.y else None,
                  "seed": body.seed, "n": body.n, "options": body.options, "columns": len(body.x.values)}
        job = jobs.submit("compare", work_of(body, cells), params)
        return job.snapshot()

    def job_of(job_id: str) -> Job:
        job = jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r} (finished jobs are kept for a while only); start a new one")
        return job

    @app.get("/api/jobs/{job_id}")
    async def job_status(job_id: str):
        return job_of(job_id).snapshot()

    @app.post("/api/jobs/{job_id}/cancel")
    async def cancel(job_id: str):
        job = job_of(job_id)
        jobs.cancel(job)
        return job.snapshot()

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: str, request: Request):
        job = job_of(job_id)

        async def stream():
            seen = -1
            while True:
                version, finished = job.version, job.finished
                if version != seen:
                    seen = version
                    yield f"event: {'end' if finished else 'progress'}\ndata: {json.dumps(job.snapshot())}\n\n"
                if finished or await request.is_disconnected():
                    return
                await asyncio.sleep(POLL_SECONDS)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/api/jobs/{job_id}/preview.png")
    async def preview(job_id: str):
        job = job_of(job_id)
        if job.preview is None:
            raise NotFound(f"job {job_id} has no preview yet (diffusion runs show one every few steps)")
        return Response(job.preview, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/api/jobs/{job_id}/image/{index}.png")
    async def image(job_id: str, index: int, download: bool = False):
        job = job_of(job_id)
        if not 0 <= index < len(job.pngs):
            raise NotFound(f"job {job_id} has no image {index} (state {job.state}, {len(job.pngs)} images)")
        headers = {"Content-Disposition": f'attachment; filename="genlab-{job_id}-{index}.png"'} if download else {}
        return Response(job.pngs[index], media_type="image/png", headers=headers)

    @app.get("/api/jobs/{job_id}/params.json")
    async def params(job_id: str):
        job = job_of(job_id)
        body = {"job": job.params, "cells": [c["params"] for c in job.cells]}
        return JSONResponse(body, headers={"Content-Disposition": f'attachment; filename="genlab-{job_id}.json"'})

    return app


def _seed(value) -> int:
    """A seed of a compare axis: a non-negative integer."""
    try:
        seed = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"seed expects a non-negative integer, got {value!r}") from None
    if seed < 0 or str(seed) != str(value).strip():
        raise ConfigError(f"seed expects a non-negative integer, got {value!r}")
    return seed


def _model_section(served: Served) -> dict:
    """The `model:` section of a run's config.yaml (the defaults its sampling options take)."""
    try:
        cfg = yaml.safe_load((Path(served.path) / CONFIG_YAML).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    section = cfg.get("model") if isinstance(cfg, dict) else None
    return section if isinstance(section, dict) else {}
