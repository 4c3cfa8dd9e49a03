"""Image task pipelines in the server: images -> core inference -> answers.

Each image becomes its own inference request; the core's dynamic batcher merges concurrent ones
(images of one request and of other requests alike), and fully convolutional models can take
images of different sizes without padding. Decoding and encoding run in a bounded thread pool so
the event loop never blocks on Pillow.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image

from serving import tracing
from serving.core.types import InferRequest, RequestedOutput, Tensor
from serving.errors import InvalidInput, PayloadTooLarge
from serving.tasks import explain as explain_mod
from serving.tasks import postprocess as post
from serving.tasks.images import Prepared, is_small_image, prepare, total_pixels
from serving.tasks.kinds import Task, TaskResult, task_of
from serving.tasks.options import TaskOptions
from serving.tasks.spec import TaskSpec

if TYPE_CHECKING:
    from serving.core.loaded import LoadedVersion
    from serving.core.service import InferenceService
    from serving.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_IMAGES_PER_REQUEST = 64


@dataclass(frozen=True, slots=True)
class _Model:
    """One request's model: the version it resolved to (run by that version alone, whatever
    reloads meanwhile) with that version's task."""

    handle: LoadedVersion
    spec: TaskSpec
    task: Task

    @property
    def labels(self) -> tuple[str, ...]:
        return self.handle.spec.labels


class Pipelines:
    """Runs each model's image task (chosen by its spec) between the transports and the core."""

    def __init__(self, service: InferenceService, settings: Settings) -> None:
        self.service = service
        self._max_pixels = int(settings.max_image_pixels)
        # Pillow refuses images over 2x its own limit at open time; raise that limit when the
        # operator allows larger images, so our header check stays the one that decides.
        if self._max_pixels > (Image.MAX_IMAGE_PIXELS or 0):
            Image.MAX_IMAGE_PIXELS = self._max_pixels
        self._mask_json_values = int(settings.max_mask_json_values)
        self._request_pixels = int(settings.max_request_image_pixels)
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(settings.image_workers)),
                                        thread_name_prefix="capserve-image")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    def _model(self, name: str, version: str) -> _Model:
        handle = self.service.resolve(name, version)  # ModelNotFound for unknown
        spec = handle.spec.task_spec()  # InvalidInput: no image task
        return _Model(handle=handle, spec=spec, task=task_of(spec))

    async def _prepare(self, spec: TaskSpec, data: bytes) -> Prepared:
        # A thread hop costs more than decoding a thumbnail-sized image (a 28x28 PNG decodes in
        # tens of microseconds), so small images are prepared on the event loop directly.
        if is_small_image(data):
            return prepare(spec, data, self._max_pixels)
        return await self._run(prepare, spec, data, self._max_pixels)

    async def _render(self, entry: _Model, prepared: Prepared, out: dict[str, np.ndarray],
                      options: TaskOptions) -> TaskResult:
        # Label JSON is cheap; only image encoding (masks, stylized images) leaves the loop.
        args = (entry.spec, entry.labels, prepared, out, options)
        if entry.task.inline(options):
            return entry.task.render(*args)
        return await self._run(entry.task.render, *args)

    async def _prepare_all(self, spec: TaskSpec, images: Sequence[bytes]) -> list[Prepared]:
        if not images:
            raise InvalidInput("no image in the request (send the image as the body or as "
                               "multipart field 'data')")
        if len(images) > MAX_IMAGES_PER_REQUEST:
            raise InvalidInput(f"{len(images)} images in one request; the limit is "
                               f"{MAX_IMAGES_PER_REQUEST}")
        if len(images) == 1:
            return [await self._prepare(spec, images[0])]
        # Each image is within max_image_pixels; together they must be within this too, or
        # one multipart request of 64 parts could make 64 full-size decodes.
        total = await self._run(total_pixels, list(images))
        if total > self._request_pixels:
            raise PayloadTooLarge(
                f"the {len(images)} images of this request have {total} pixels together, over "
                f"the limit of {self._request_pixels} pixels (max_request_image_pixels)")
        return list(await asyncio.gather(*(self._prepare(spec, img) for img in images)))

    async def _infer(self, model: _Model, tensor: np.ndarray,
                     outputs: Sequence[str]) -> dict[str, np.ndarray]:
        handle = model.handle
        batched = handle.spec.batched
        data = tensor[None] if batched else tensor
        request = InferRequest(
            model_name=handle.name, model_version=handle.version,
            inputs=[Tensor(handle.spec.inputs[0].name, "FP32", tuple(data.shape), data)],
            outputs=[RequestedOutput(name) for name in outputs])
        response = await self.service.infer(request, handle)
        return {t.name: (t.data[0] if batched else t.data) for t in response.outputs}

    @staticmethod
    def _wanted(model: _Model, options: TaskOptions, explain: bool) -> list[str]:
        names = [o.name for o in model.handle.spec.outputs]
        return model.task.wanted(model.spec.model, names, options, explain)

    async def predict(self, model: str, version: str, images: Sequence[bytes],
                      options: TaskOptions) -> list[TaskResult]:
        """One answer per image, in order."""
        entry = self._model(model, version)
        with tracing.child_span("decode", images=len(images)):
            prepared = await self._prepare_all(entry.spec, images)
        wanted = self._wanted(entry, options, explain=False)
        # The JSON mask budget is per request: its images share it.
        options = dataclasses.replace(
            options, mask_json_values=max(1, self._mask_json_values // len(prepared)))
        if len(prepared) == 1:
            out = await self._infer(entry, prepared[0].tensor, wanted)
            with tracing.child_span("encode"):
                return [await self._render(entry, prepared[0], out, options)]
        outputs = await asyncio.gather(
            *(self._infer(entry, p.tensor, wanted) for p in prepared))
        with tracing.child_span("encode"):
            return list(await asyncio.gather(
                *(self._render(entry, p, out, options)
                  for p, out in zip(prepared, outputs, strict=True))))

    async def explain(self, model: str, version: str, images: Sequence[bytes],
                      options: TaskOptions) -> list[TaskResult]:
        """CapsNet: poses, reconstruction and the pose-perturbation grid per image."""
        entry = self._model(model, version)
        if not entry.task.explains:
            raise InvalidInput(f"explanations are available for capsule models only; "
                               f"'{model}' is a {entry.spec.task} model")
        decoder_name = entry.spec.decoder_model
        if not decoder_name:
            raise InvalidInput(f"capsule model '{model}' names no decoder_model parameter")
        decoder = self.service.resolve(decoder_name)
        prepared = await self._prepare_all(entry.spec, images)
        wanted = self._wanted(entry, options, explain=True)
        outputs = await asyncio.gather(
            *(self._infer(entry, p.tensor, wanted) for p in prepared))
        results = []
        for out in outputs:
            cls = int(np.argmax(out["lengths"]))
            variants = explain_mod.perturbed_poses(out["poses"], cls)
            chunk = decoder.spec.max_batch_size or 1
            # Every chunk is its own request, so the decoder's batcher runs them side by side.
            chunks = await asyncio.gather(*(
                self._decode(decoder, variants[i:i + chunk])
                for i in range(0, len(variants), chunk)))
            recon = np.concatenate(chunks, axis=0)
            results.append(await self._run(render_explanation, entry.labels, out, recon,
                                           options))
        return results

    async def _decode(self, decoder: LoadedVersion, poses: np.ndarray) -> np.ndarray:
        """Reconstructions [N, ...] for pose sets [N, C, D] (one request per set when the
        decoder does not batch)."""
        spec = decoder.spec
        input_name, output = spec.inputs[0].name, spec.outputs[0].name

        async def one(data: np.ndarray) -> np.ndarray:
            request = InferRequest(model_name=decoder.name, model_version=decoder.version, inputs=[
                Tensor(input_name, "FP32", tuple(data.shape), np.ascontiguousarray(data))],
                outputs=[RequestedOutput(output)])
            return (await self.service.infer(request, decoder)).outputs[0].data

        if spec.batched:
            return await one(poses)
        return np.stack(await asyncio.gather(*(one(p) for p in poses)))


def render_explanation(labels: Sequence[str], outputs: dict[str, np.ndarray],
                       recon: np.ndarray, options: TaskOptions) -> TaskResult:
    lengths, poses = outputs["lengths"], outputs["poses"]
    grid = explain_mod.grid_png(recon, dims=poses.shape[1])
    if options.format == "png":
        return TaskResult(grid, post.PNG)
    cls = int(np.argmax(lengths))
    body = post.capsule(lengths, labels, options.topk, None, outputs["reconstruction"])
    body["pose"] = np.round(poses[cls].astype(np.float64), 6).tolist()
    body["poses"] = np.round(poses.astype(np.float64), 6).tolist()
    body["perturbation"] = {
        "steps": [round(float(s), 4) for s in explain_mod.STEPS],
        "rows": "pose dimension", "columns": "added value",
        "grid_png": base64.b64encode(grid).decode("ascii"),
    }
    return TaskResult(post.dumps(body), post.JSON)
