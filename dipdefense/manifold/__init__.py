"""Generator-manifold pieces of paper 004 (pure torch): projection by inversion (INC) and the
min-max attack over latent pairs that robust training also uses."""

from dipdefense.manifold.inversion import Inversion, invert, seeded_latents
from dipdefense.manifold.minmax import (
    MinMaxResult,
    initial_pairs,
    minmax_attack,
    output_gap,
    pair_statistics,
    summarise_pairs,
)

__all__ = [
    "Inversion",
    "MinMaxResult",
    "initial_pairs",
    "invert",
    "minmax_attack",
    "output_gap",
    "pair_statistics",
    "seeded_latents",
    "summarise_pairs",
]
