"""The ``synth`` section of the run config (``RunConfig.synth``)."""

from __future__ import annotations

from string import Formatter
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

PROMPT_FIELDS = {"labels"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SynthPoolConfig(_Section):
    """The actor pool of one synth stage (the pool keys of a ``stages.<name>`` section)."""

    batch_size: int = Field(1, ge=1, description="Candidates (images to generate or check) per call.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor; fractional allowed; 0 = CPU.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per actor.")
    num_threads: int | None = Field(None, ge=1, description="torch threads per actor; default: num_cpus rounded up.")
    concurrency: tuple[int, int] = Field((1, 1), description="Actor pool size min..max.")


class SynthConfig(_Section):
    """``samflow synth``: new images from trusted masks (SD + ControlNet), kept only where the
    run's segment model (``stages.segment.model``) finds the masks again; CLIP
    (``stages.embed.model``) scores each image against its prompt."""

    model: str = Field(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        description="Stable Diffusion pipeline URI (Hub id, diffusers folder, s3://); tiny://controlnet "
        "alone builds a tiny random SD + ControlNet pair in code (random://controlnet: SD 1.5's size).",
    )
    controlnet: str | None = Field(
        None, description="ControlNet URI; null = the model folder's own controlnet/, else "
        "lllyasviel/control_v11p_sd15_seg. Leave unset with an in-code model.",
    )
    variants: int = Field(1, ge=1, description="Images generated per source image (K); raising it later "
                          "generates only the new variants.")
    seed: int = Field(0, ge=0, description="Base seed: each image's seed is a hash of it, the item and the variant.")
    prompt: str = Field(
        "a photo of {labels}", description="Prompt template; {labels} = the masks' labels, comma-separated.",
    )
    prompt_without_labels: str = Field("a photo", description="Prompt of an image none of whose masks has a label.")
    negative_prompt: str = Field("lowres, blurry, worst quality, low quality", description="Negative prompt.")
    steps: int = Field(20, ge=1, description="Denoising steps (UniPC sampler).")
    guidance_scale: float = Field(7.5, ge=0, description="Classifier-free guidance scale (<= 1: off).")
    conditioning_scale: float = Field(1.0, ge=0, description="Weight of the ControlNet's residuals.")
    short_side: int = Field(512, ge=8, description="Generated images' shorter side (pixels, before rounding "
                            "to the model's size multiple).")
    max_side: int = Field(768, ge=8, description="Cap on the generated images' longer side.")
    sources: list[Literal["ground_truth", "reviews", "engine"]] = Field(
        default_factory=lambda: ["ground_truth", "reviews", "engine"], min_length=1,
        description="Trusted masks, in priority order: an image's masks come from the first source "
        "that has any (ground_truth: annotation rows with source ground_truth; reviews: the reviews/ "
        "table's masks with an action in review_actions; engine: model masks above the thresholds below).",
    )
    review_actions: list[Literal["accepted", "corrected", "added"]] = Field(
        default_factory=lambda: ["accepted", "corrected"], description="Review actions whose masks are trusted.",
    )
    min_predicted_iou: float = Field(0.9, description="Engine masks: trusted from this predicted IoU.")
    min_stability_score: float = Field(0.95, description="Engine masks: trusted from this stability score.")
    min_area: int = Field(64, ge=1, description="Masks smaller than this many pixels (source image) are left out.")
    max_masks: int = Field(32, ge=1, description="At most this many masks per image (the largest).")
    min_fidelity: float = Field(
        0.5, description="Keep an image when the mean IoU between the conditioning masks and the segment "
        "model's masks for them (prompted by each one's box and inner point, the better of the two) is at "
        "least this; 0 keeps all.",
    )
    min_clip_score: float | None = Field(
        None, description="Also drop images whose CLIP image-prompt cosine is below this; null = never.",
    )
    dtype: Literal["auto", "float16", "bfloat16"] = Field(
        "auto", description="Generation dtype on a GPU (auto: bf16 where supported, else fp16); CPUs use fp32.",
    )
    jpeg_quality: int = Field(95, ge=1, le=100, description="JPEG quality of the written images.")
    save_conditions: bool = Field(False, description="Also write each condition map to SYN/_conditions/<key>.png.")
    shard_rows: int = Field(64, ge=1, description="Candidates per tar shard (one commit).")
    generate: SynthPoolConfig = Field(default_factory=SynthPoolConfig)
    verify: SynthPoolConfig = Field(default_factory=lambda: SynthPoolConfig(batch_size=4))

    @field_validator("prompt")
    @classmethod
    def _known_fields(cls, template: str) -> str:
        fields = {name for _, name, _, _ in Formatter().parse(template) if name is not None}
        if fields - PROMPT_FIELDS:
            raise ValueError(f"synth.prompt may only use {{labels}}, not {sorted(fields - PROMPT_FIELDS)}")
        return template
