"""Size presets of the motion models, torch-free: the one table that both
:func:`.models.build_model` and the settings (:class:`.settings.MotionModelSettings`, which
run in the Snakemake process before any job, without torch) read."""

from __future__ import annotations

from typing import Final

__all__ = ["MODEL_KINDS", "PRESETS"]

#: The model architectures (``arch`` / ``kind``).
MODEL_KINDS: Final[tuple[str, ...]] = ("autobots", "wayformer")

#: Size presets per model kind. ``mini``: CPU-sized, Wayformer about 10x AutoBots in parameters.
#: ``paper``: AutoBots-Ego as in UniTraj's config (d 128, 16 heads, 2+2 layers, feed-forward
#: 384 = 3 d); Wayformer after UniTraj's config (width 256, 4 heads, 192 latent queries, 8 decoder
#: layers, feed-forward 1024) with 6 latent self-attention layers (our choice): about 9x AutoBots.
PRESETS: Final[dict[str, dict[str, dict[str, int]]]] = {
    "autobots": {
        "mini": {"width": 32, "heads": 4, "enc_layers": 2, "dec_layers": 2, "ffn_mult": 2, "num_modes": 6},
        "paper": {"width": 128, "heads": 16, "enc_layers": 2, "dec_layers": 2, "ffn_mult": 3, "num_modes": 6},
    },
    "wayformer": {
        "mini": {
            "width": 112,
            "heads": 4,
            "num_latents": 16,
            "enc_layers": 2,
            "dec_layers": 2,
            "ffn_mult": 4,
            "num_modes": 6,
        },
        "paper": {
            "width": 256,
            "heads": 4,
            "num_latents": 192,
            "enc_layers": 6,
            "dec_layers": 8,
            "ffn_mult": 4,
            "num_modes": 6,
        },
    },
}
