"""The data engine's rounds: which segment model is current, and what each round did.

A round (``samflow engine-round``, the flow in `samflow/flows/engine_round.py`) annotates with the
current model, scores it on a held-out split, fine-tunes it on DST's ground truth and reviews,
scores the new model on the same split, and keeps the new one only when it scores higher. Each
round is one JSON record under ``DST/_rounds/``; the newest record names the current model.
"""
