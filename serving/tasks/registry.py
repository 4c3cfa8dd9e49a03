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
from serving.tasks.options import TaskOptions
from serving.tasks.spec import TaskSpec

if TYPE_CHECKING:
    from serving.core.service import InferenceService
    from serving.generated.model_config_pb2 import ModelConfig
    from serving.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_IMAGES_PER_REQUEST = 64


@dataclass(frozen=True, slots=True)
class TaskResult:
    body: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class _Model:
    spec: TaskSpec
    labels: list[str]
    input_name: str
    batched: bool
    output_names: list[str]


class TaskRegistry:
    """Chooses each model's pipeline from its config parameters and runs it."""

    def __init__(self, service: InferenceService, settings: Settings) -> None:
        self.service = service
        self._max_pixels = int(settings.max_image_pixels)
        # Pillow refuses images over 2x its own limit at open time; raise that limit when the
        # operator allows larger images, so our header check stays the one that decides.
        if self._max_pixels > (Image.MAX_IMAGE_PIXELS or 0):
            Image.MAX_IMAGE_PIXELS = self._max_pixels
        # (model, version) -> (the config message it was built from, the pipeline entry)
        self._models: dict[tuple[str, str], tuple[ModelConfig, _Model]] = {}
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
        config = self.service.model_config_view(name, version)  # ModelNotFound for unknown
        cached = self._models.get((name, version))
        if cached is not None and cached[0] is config:
            return cached[1]
        model = self._build_model(name, version, config)
        self._models[(name, version)] = (config, model)
        return model

    def _build_model(self, name: str, version: str, config: ModelConfig) -> _Model:
        params = {k: v.string_value for k, v in config.parameters.items()}
        spec = TaskSpec.from_parameters(name, params)
        if not config.input:
            raise InvalidInput(f"model '{name}' declares no input")
        return _Model(spec=spec, labels=list(self.service.model_labels(name, version)),
                      input_name=config.input[0].name, batched=config.max_batch_size > 0,
                      output_names=[o.name for o in config.output])

    async def _prepare(self, spec: TaskSpec, data: bytes) -> Prepared:
        # A thread hop costs more than decoding a thumbnail-sized image (a 28x28 PNG decodes in
        # tens of microseconds), so small images are prepared on the event loop directly.
        if is_small_image(data):
            return prepare(spec, data, self._max_pixels)
        return await self._run(prepare, spec, data, self._max_pixels)

    async def _render(self, entry: _Model, prepared: Prepared, out: dict[str, np.ndarray],
                      options: TaskOptions) -> TaskResult:
        # Label JSON is cheap; only image encoding (masks, stylized images) leaves the loop.
        if entry.spec.task == "classification" or (
                entry.spec.task == "capsule_classification" and not options.reconstruction):
            return render(entry.spec, entry.labels, prepared, out, options)
        return await self._run(render, entry.spec, entry.labels, prepared, out, options)

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

    async def _infer(self, model: _Model, version: str, tensor: np.ndarray,
                     outputs: Sequence[str]) -> dict[str, np.ndarray]:
        data = tensor[None] if model.batched else tensor
        request = InferRequest(
            model_name=model.spec.model, model_version=version,
            inputs=[Tensor(model.input_name, "FP32", tuple(data.shape), data)],
            outputs=[RequestedOutput(name) for name in outputs])
        response = await self.service.infer(request)
        return {t.name: (t.data[0] if model.batched else t.data) for t in response.outputs}

    def _wanted(self, model: _Model, options: TaskOptions, explain: bool) -> list[str]:
        names = model.output_names
        if model.spec.task != "capsule_classification":
            return names[:1]
        wanted = ["lengths"]
        if options.poses or explain:
            wanted.append("poses")
        if options.reconstruction or explain:
            wanted.append("reconstruction")
        missing = [n for n in wanted if n not in names]
        if missing:
            raise InvalidInput(f"capsule model '{model.spec.model}' lacks output(s) "
                               f"{', '.join(missing)}")
        return wanted

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
            out = await self._infer(entry, version, prepared[0].tensor, wanted)
            with tracing.child_span("encode"):
                return [await self._render(entry, prepared[0], out, options)]
        outputs = await asyncio.gather(
            *(self._infer(entry, version, p.tensor, wanted) for p in prepared))
        with tracing.child_span("encode"):
            return list(await asyncio.gather(
                *(self._render(entry, p, out, options)
                  for p, out in zip(prepared, outputs, strict=True))))

    async def explain(self, model: str, version: str, images: Sequence[bytes],
                      options: TaskOptions) -> list[TaskResult]:
        """CapsNet: poses, reconstruction and the pose-perturbation grid per image."""
        entry = self._model(model, version)
        if entry.spec.task != "capsule_classification":
            raise InvalidInput(f"explanations are available for capsule models only; "
                               f"'{model}' is a {entry.spec.task} model")
        decoder_name = entry.spec.decoder_model
        if not decoder_name:
            raise InvalidInput(f"capsule model '{model}' names no decoder_model parameter")
        decoder = self.service.model_config(decoder_name)
        prepared = await self._prepare_all(entry.spec, images)
        wanted = self._wanted(entry, options, explain=True)
        outputs = await asyncio.gather(
            *(self._infer(entry, version, p.tensor, wanted) for p in prepared))
        results = []
        for out in outputs:
            cls = int(np.argmax(out["lengths"]))
            variants = explain_mod.perturbed_poses(out["poses"], cls)
            chunk = decoder.max_batch_size or 1
            # Every chunk is its own request, so the decoder's batcher runs them side by side.
            chunks = await asyncio.gather(*(
                self._decode(decoder_name, decoder.input[0].name, variants[i:i + chunk],
                             batched=decoder.max_batch_size > 0,
                             output=decoder.output[0].name)
                for i in range(0, len(variants), chunk)))
            recon = np.concatenate(chunks, axis=0)
            results.append(await self._run(render_explanation, entry.labels, out, recon,
                                           options))
        return results

    async def _decode(self, name: str, input_name: str, poses: np.ndarray, *, batched: bool,
                      output: str) -> np.ndarray:
        """Reconstructions [N, ...] for pose sets [N, C, D] (one request per set when the
        decoder does not batch)."""
        async def one(data: np.ndarray) -> np.ndarray:
            request = InferRequest(model_name=name, inputs=[
                Tensor(input_name, "FP32", tuple(data.shape), np.ascontiguousarray(data))],
                outputs=[RequestedOutput(output)])
            return (await self.service.infer(request)).outputs[0].data

        if batched:
            return await one(poses)
        return np.stack(await asyncio.gather(*(one(p) for p in poses)))


_FORMATS_OF = {"classification": ("json",), "segmentation": ("json", "png"),
               "style_transfer": ("png", "jpeg"), "capsule_classification": ("json",)}


def render(spec: TaskSpec, labels: Sequence[str], prepared: Prepared,
           outputs: dict[str, np.ndarray], options: TaskOptions) -> TaskResult:
    """Post-process one image's outputs into the bytes the client receives."""
    task = spec.task
    if options.format and options.format not in _FORMATS_OF[task]:
        if options.explicit_format:
            raise InvalidInput(f"a {task} model answers in {' or '.join(_FORMATS_OF[task])}, "
                               f"not {options.format}")
        options = dataclasses.replace(options, format="")  # Accept was only a preference
    if task == "classification":
        (logits,) = outputs.values()
        body = post.classification(logits, labels, options.topk, spec.output_semantics or "logits")
        return TaskResult(post.dumps(body), post.JSON)
    if task == "segmentation":
        (logits,) = outputs.values()
        if options.format == "json" or options.probabilities:
            body_json = post.segmentation_json(logits, labels, prepared.original_size,
                                               options.probabilities, prepared.fed_size,
                                               prepared.content_box, options.mask_json_values)
            return TaskResult(post.dumps(body_json), post.JSON)
        if options.format == "jpeg":
            raise InvalidInput("segmentation masks are PNG or JSON, not JPEG")
        mask = post.mask_at(logits, prepared.original_size, prepared.fed_size,
                            prepared.content_box)
        return TaskResult(post.mask_png(mask, logits.shape[0]), post.PNG)
    if task == "style_transfer":
        (image,) = outputs.values()
        if options.format == "json":
            raise InvalidInput("style transfer answers with an image: format png or jpeg")
        body_bytes, ctype = post.style_image(image, options.format or "png")
        return TaskResult(body_bytes, ctype)
    # capsule_classification
    if options.format in ("png", "jpeg"):
        raise InvalidInput("capsule classification answers with JSON")
    capsule = post.capsule(outputs["lengths"], labels, options.topk,
                           outputs.get("poses") if options.poses else None,
                           outputs.get("reconstruction") if options.reconstruction else None)
    return TaskResult(post.dumps(capsule), post.JSON)


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
