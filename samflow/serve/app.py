"""``samflow serve DST``: a Ray Serve app (FastAPI ingress) over a run's indexes and models.

    GET  /healthz            {"status": "ok", "indexes": {"image": N, ...}}
    POST /search             {"text": "..."} | {"image": "<base64>"}, "k": 10, "kind": "image"|"mask"
    POST /embed              {"image": "<base64>"} | {"text": "..."}  -> {"embedding": [...], ...}
    POST /segment            {"image": "<base64>", "points": [[x, y], ...] | "boxes": [[x0, y0, x1, y1], ...]}
                             -> {"masks": [{"segmentation": RLE, "bbox", "area", "score"}, ...]}

CLIP calls from concurrent requests are batched with ``@serve.batch``. Ray Serve has no
authentication of its own: with a token (``SAMFLOW_SERVE_TOKEN`` for the CLI) every route but
/healthz wants ``Authorization: Bearer <token>`` (``fastapi.security.HTTPBearer``). Bodies are
typed (pydantic models FastAPI validates); bodies and decoded images are size-limited. Every bad
request gets a 4xx JSON ``{"error": "..."}`` saying what was wrong: malformed JSON 400, a body
that fails its model 422 (the validation errors, one line), too large 413, no token 401, a wrong
one 403. FastAPI reads a body before it checks the token, so malformed JSON is a 400 either way.
"""


import base64
import binascii
import hmac
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, model_validator

TOKEN_ENV = "SAMFLOW_SERVE_TOKEN"


@dataclass
class Limits:
    max_body_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_k: int = 1000
    max_prompts: int = 64
    clip_batch: int = 16


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class EmbedBody(_Body):
    text: str | None = None
    image: str | None = None

    @model_validator(mode="after")
    def _one_query(self) -> "EmbedBody":
        if (self.text is None) == (self.image is None):
            raise ValueError("give exactly one of 'text' or 'image'")
        return self


class SearchBody(EmbedBody):
    k: int = Field(10, ge=1)
    kind: Literal["image", "mask"] = "image"


class SegmentBody(_Body):
    image: str
    points: list[list[float]] | None = None
    boxes: list[list[float]] | None = None

    @model_validator(mode="after")
    def _one_prompt_kind(self) -> "SegmentBody":
        if (self.points is None) == (self.boxes is None):
            raise ValueError("give exactly one of 'points' or 'boxes'")
        prompts, width = (self.points, 2) if self.points is not None else (self.boxes, 4)
        if not prompts or any(len(p) != width for p in prompts):
            raise ValueError(f"{'points' if width == 2 else 'boxes'} must be a non-empty list of {width}-number lists")
        return self


# pydantic's error types for a body that is JSON but not an object
_NOT_AN_OBJECT = {"model_type", "model_attributes_type", "dict_type"}


def validation_error(exc: RequestValidationError) -> ApiError:
    """FastAPI's validation errors of a body as one line: 400 for malformed JSON, else 422."""
    errors = exc.errors()
    for error in errors:
        if error["type"] == "json_invalid":
            return ApiError(400, f"malformed JSON: {(error.get('ctx') or {}).get('error', error['msg'])}")
        if error["type"] in _NOT_AN_OBJECT and tuple(error["loc"]) == ("body",):
            return ApiError(422, "the body must be a JSON object")
    problems = "; ".join(f"{'.'.join(str(part) for part in error['loc'][1:]) or 'body'}: {error['msg']}"
                         for error in errors)
    return ApiError(422, problems)


def decode_image(data: str, limits: Limits) -> np.ndarray:
    """Base64 text -> HxWx3 uint8 RGB through the pipeline's decoder (EXIF rotation, colour
    modes, 16-bit), the pixel limit checked on the header before any pixels are decoded."""
    from samflow.media.image import DecodeError
    from samflow.media.image import decode_image as pipeline_decode

    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "'image' is not valid base64") from None
    try:
        return pipeline_decode(raw, limits.max_image_pixels)
    except DecodeError as exc:
        status = 413 if exc.error_type == "too_many_pixels" else 400
        raise ApiError(status, f"'image' is not a readable image: {exc.message}") from None


def segment_image(runner: Any, image: np.ndarray, body: SegmentBody) -> list[dict[str, Any]]:
    """One mask per prompt (SAM, single-mask output), as COCO RLE with bbox, area and score."""
    import torch

    from samflow.schemas import rle

    height, width = image.shape[:2]
    prompts = torch.tensor([body.points if body.points is not None else body.boxes], dtype=torch.float32)
    encoding = runner.encode([image])
    key = "points" if body.points is not None else "boxes"
    logits, scores = runner.decode(encoding, [0], multimask_output=False, **{key: prompts})
    masks = (runner.postprocess_masks(logits[0], encoding, 0) > 0).cpu().numpy()[:, 0]
    out = []
    for mask, score in zip(masks, scores[0, :, 0].tolist()):
        encoded = rle.encode(mask)
        out.append({"segmentation": encoded, "bbox": rle.to_bbox(encoded), "area": int(mask.sum()),
                    "score": round(float(score), 6), "size": [height, width]})
    return out


def http_app(token: str | None, limits: Limits) -> tuple[FastAPI, list[Any]]:
    """The FastAPI app with its error handlers, and the dependencies every guarded route takes
    (the bearer token, the body limit)."""
    app = FastAPI(title="samflow", docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        error = validation_error(exc)
        return JSONResponse({"error": error.message}, status_code=error.status)

    bearer = HTTPBearer(auto_error=False)

    async def authorized(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if not token:
            return
        if credentials is None:
            raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)")
        if not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise ApiError(403, "wrong bearer token")

    async def within_limit(request: Request) -> None:
        size = len(await request.body())  # the body FastAPI read, cached
        if size > limits.max_body_bytes:
            raise ApiError(413, f"request body is {size} bytes; the limit is {limits.max_body_bytes}")

    return app, [Depends(authorized), Depends(within_limit)]


def build_app(dst: str, storage: dict[str, Any] | None = None, token: str | None = None,
              limits: Limits | None = None, name: str = "samflow"):
    """The Serve application (bind it with ``serve.run``)."""
    from ray import serve

    limits = limits or Limits()
    app, guarded = http_app(token, limits)

    @serve.deployment(name=name)
    @serve.ingress(app)
    class SamflowApi:
        def __init__(self) -> None:
            from samflow.config import StorageConfig
            from samflow.index.commands import OpenIndex, RunIndex

            config = StorageConfig(**(storage or {}))
            run = RunIndex(dst, config)
            self.indexes = {kind: OpenIndex(dst, kind, config) for kind in ("image", "mask")
                            if run.manifest(kind) is not None}
            self.model = next((i.manifest.get("model") for i in self.indexes.values() if i.manifest.get("model")),
                              None) or run.model()
            self.run = run
            self._clip = None
            self._sam = None

        # -- models ---------------------------------------------------------------------

        @property
        def clip(self):
            if self._clip is None:
                from samflow.models.loading.registry import load_model

                if not self.model:
                    raise ApiError(409, f"no CLIP model recorded for {dst}")
                self._clip = load_model("auto", self.model, task="embed")
            return self._clip

        @serve.batch(max_batch_size=limits.clip_batch, batch_wait_timeout_s=0.005)
        async def embed_images(self, images: list[np.ndarray]) -> list[np.ndarray]:
            return list(self.clip.embed_images(images).float().numpy())

        @serve.batch(max_batch_size=limits.clip_batch, batch_wait_timeout_s=0.005)
        async def embed_texts(self, texts: list[str]) -> list[np.ndarray]:
            return list(self.clip.embed_texts(texts).float().numpy())

        async def _vector(self, text: str | None, image: str | None) -> np.ndarray:
            if text is not None:
                if not text.strip():
                    raise ApiError(422, "text: must not be empty")
                return await self.embed_texts(text)
            return await self.embed_images(decode_image(image, limits))

        # -- routes ---------------------------------------------------------------------

        @app.get("/healthz")
        async def healthz(self) -> dict[str, Any]:
            return {"status": "ok", "model": self.model,
                    "indexes": {kind: index.searcher.count for kind, index in self.indexes.items()}}

        @app.post("/search", dependencies=guarded)
        async def search(self, body: SearchBody) -> dict[str, Any]:
            if body.k > limits.max_k:
                raise ApiError(422, f"k: at most {limits.max_k}")
            index = self.indexes.get(body.kind)
            if index is None:
                raise ApiError(409, f"no {body.kind} index for {dst}; run `samflow index build {dst} --kind {body.kind}`")
            vector = await self._vector(body.text, body.image)
            return {"kind": body.kind, "results": index.query(vector[None], body.k)}

        @app.post("/embed", dependencies=guarded)
        async def embed(self, body: EmbedBody) -> dict[str, Any]:
            vector = await self._vector(body.text, body.image)
            return {"model": self.model, "dim": int(vector.shape[0]), "embedding": vector.tolist()}

        @app.post("/segment", dependencies=guarded)
        async def segment(self, body: SegmentBody) -> dict[str, Any]:
            prompts = body.points if body.points is not None else body.boxes
            if len(prompts) > limits.max_prompts:
                raise ApiError(422, f"at most {limits.max_prompts} prompts per request")
            image = decode_image(body.image, limits)
            return {"masks": segment_image(self.sam, image, body)}

        @property
        def sam(self):
            if self._sam is None:
                from samflow.models.loading.registry import load_model

                model = (self.run.run_models().get("segment") or {}).get("model")
                if not model:
                    raise ApiError(409, f"no segment model recorded for {dst}")
                self._sam = load_model("auto", model, task="segment")  # the registry tells SAM from SAM 2
            return self._sam

    return SamflowApi.bind()


def serve_forever(dst: str, host: str, port: int, token: str | None, limits: Limits | None = None) -> None:
    """Start Serve's HTTP proxy on host:port, deploy the app, and block until interrupted."""
    import time

    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init()
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(dst, token=token, limits=limits), route_prefix="/")
    print(f"samflow serve: http://{host}:{port} ({'bearer token required' if token else 'no token'}); Ctrl-C stops",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()

