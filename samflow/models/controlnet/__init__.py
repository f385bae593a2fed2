"""Stable Diffusion + ControlNet (diffusers' ``StableDiffusionControlNetPipeline``), family ``controlnet``.

    runner = load_model("controlnet", "tiny://controlnet")           # the tiny pair, built in code
    runner = load_pair("stable-diffusion-v1-5/stable-diffusion-v1-5", "lllyasviel/control_v11p_sd15_seg")
    images = runner.generate(conditions, prompts, seeds, steps=20)   # HxWx3 uint8 RGB each

``parts.py`` loads the pipeline's parts (in code, local folders, Hub ids); ``runner.py`` runs it.
"""

from samflow.models.controlnet.runner import ControlNetRunner, build, load_pair

__all__ = ["ControlNetRunner", "build", "load_pair"]
