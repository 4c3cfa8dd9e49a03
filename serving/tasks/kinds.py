"""One :class:`Task` per task kind: what it answers in, which outputs it reads, how it renders.

The server's pipelines and the TorchServe handler both look the kind up here, so a kind is
described once (formats, wanted outputs, rendering, whether rendering may run on the event loop).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from serving.errors import InvalidInput
from serving.tasks import postprocess as post
from serving.tasks.options import TaskOptions

if TYPE_CHECKING:
    from serving.tasks.images import Prepared
    from serving.tasks.spec import TaskSpec


@dataclass(frozen=True, slots=True)
class TaskResult:
    body: bytes
    content_type: str


class Task:
    """A task kind. Subclasses set the class attributes and implement :meth:`_render`."""

    kind = ""
    formats: tuple[str, ...] = ("json",)  # what it can answer in; the first is the default
    explains = False  # answers /explanations (poses and a perturbation grid)

    def wanted(self, model: str, outputs: Sequence[str], options: TaskOptions,
               explain: bool = False) -> list[str]:
        """The model outputs to ask for (most kinds read only the first)."""
        return list(outputs[:1])

    def inline(self, options: TaskOptions) -> bool:
        """Whether rendering is cheap enough for the event loop (JSON labels are; encoding an
        image is not)."""
        return False

    def render(self, spec: TaskSpec, labels: Sequence[str], prepared: Prepared,
               outputs: dict[str, np.ndarray], options: TaskOptions) -> TaskResult:
        """Post-process one image's outputs into the bytes the client receives."""
        if options.format and options.format not in self.formats:
            if options.explicit_format:
                raise InvalidInput(f"a {self.kind} model answers in "
                                   f"{' or '.join(self.formats)}, not {options.format}")
            options = dataclasses.replace(options, format="")  # Accept was only a preference
        return self._render(spec, labels, prepared, outputs, options)

    def _render(self, spec: TaskSpec, labels: Sequence[str], prepared: Prepared,
                outputs: dict[str, np.ndarray], options: TaskOptions) -> TaskResult:
        raise NotImplementedError


class Classification(Task):
    kind = "classification"

    def inline(self, options: TaskOptions) -> bool:
        return True

    def _render(self, spec: TaskSpec, labels: Sequence[str], prepared: Prepared,
                outputs: dict[str, np.ndarray], options: TaskOptions) -> TaskResult:
        (logits,) = outputs.values()
        body = post.classification(logits, labels, options.topk, spec.output_semantics or "logits")
        return TaskResult(post.dumps(body), post.JSON)


class Segmentation(Task):
    kind = "segmentation"
    formats = ("json", "png")

    def _render(self, spec: TaskSpec, labels: Sequence[str], prepared: Prepared,
                outputs: dict[str, np.ndarray], options: TaskOptions) -> TaskResult:
        (logits,) = outputs.values()
        if options.format == "json" or options.probabilities:
            body = post.segmentation_json(logits, labels, prepared.original_size,
                                          options.probabilities, prepared.fed_size,
                                          prepared.content_box, options.mask_json_values)
            return TaskResult(post.dumps(body), post.JSON)
        mask = post.mask_at(logits, prepared.original_size, prepared.fed_size,
                            prepared.content_box)
        return TaskResult(post.mask_png(mask, logits.shape[0]), post.PNG)


class StyleTransfer(Task):
    kind = "style_transfer"
    formats = ("png", "jpeg")

    def _render(self, spec: TaskSpec, labels: Sequence[str], prepared: Prepared,
                outputs: dict[str, np.ndarray], options: TaskOptions) -> TaskResult:
        (image,) = outputs.values()
        body, ctype = post.style_image(image, options.format or "png")
        return TaskResult(body, ctype)


class CapsuleClassification(Task):
    kind = "capsule_classification"
    explains = True

    def wanted(self, model: str, outputs: Sequence[str], options: TaskOptions,
               explain: bool = False) -> list[str]:
        wanted = ["lengths"]
        if options.poses or explain:
            wanted.append("poses")
        if options.reconstruction or explain:
            wanted.append("reconstruction")
        missing = [n for n in wanted if n not in outputs]
        if missing:
            raise InvalidInput(f"capsule model '{model}' lacks output(s) {', '.join(missing)}")
        return wanted

    def inline(self, options: TaskOptions) -> bool:
        return not options.reconstruction  # the reconstruction is encoded as a PNG

    def _render(self, spec: TaskSpec, labels: Sequence[str], prepared: Prepared,
                outputs: dict[str, np.ndarray], options: TaskOptions) -> TaskResult:
        body = post.capsule(outputs["lengths"], labels, options.topk,
                            outputs.get("poses") if options.poses else None,
                            outputs.get("reconstruction") if options.reconstruction else None)
        return TaskResult(post.dumps(body), post.JSON)


TASKS: dict[str, Task] = {t.kind: t for t in (
    Classification(), Segmentation(), StyleTransfer(), CapsuleClassification())}


def task_of(spec: TaskSpec) -> Task:
    return TASKS[spec.task]  # TaskSpec.from_parameters admits only these kinds


def render(spec: TaskSpec, labels: Sequence[str], prepared: Prepared,
           outputs: dict[str, np.ndarray], options: TaskOptions) -> TaskResult:
    """Post-process one image's outputs with the model's task."""
    return task_of(spec).render(spec, labels, prepared, outputs, options)
