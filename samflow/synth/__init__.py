"""``samflow synth``: new training images from trusted masks (Stable Diffusion + ControlNet),
kept only where the run's own segment model finds the masks again, written as SA-1B-style tars
that ``samflow annotate`` reads back with ground truth.

    settings   the ``synth`` config section          trusted    which masks are trusted, per image
    palette    ADE20K classes and colours             plan       candidates (image, variant) and keys
    condition  masks -> colour segmentation map       prompts    labels -> prompt
    generate   SD + ControlNet actor                  fidelity   segment-model IoU and CLIP actor
    tars       SA-1B tar shards, staged               store      commits, done keys, cleanup
    pipeline   the Ray Data graph and its commits
"""
