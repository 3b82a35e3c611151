"""The pixel normalisation a model states (metadata or bundle), checked: pixels are scaled to [0, 1] first, and
(pixel - mean) / std must keep them where an image network sees them, not at 1e30 or sign-flipped."""

from typing import List, Optional, Tuple

# ImageNet's normalisation reaches 2.64; one that reaches beyond this is a typo or a tampered file.
MAX_NORMALISED = 1e4
METADATA_NAMES = ("model metadata 'mean'", "model metadata 'std'")


def normalisation_problem(
    mean: List[float], std: List[float], names: Tuple[str, str] = METADATA_NAMES
) -> Optional[str]:
    """Why per-channel finite `mean`/`std` (called `names` in the message) are no image normalisation."""
    if any(value <= 0 for value in std):
        return f"{names[1]} must be positive numbers, got {std}"
    reach = max(max(abs(low / scale), abs((1 - low) / scale)) for low, scale in zip(mean, std))
    if reach > MAX_NORMALISED:
        return (
            f"{names[0]} {mean} and {names[1]} {std} scale pixels in [0, 1] to {reach:.3g} "
            f"(a normalisation keeps them within {MAX_NORMALISED:g})"
        )
    return None
