"""Pictures of MMA masks: text for the terminal, PNG for files. Uses only aki.mma and matplotlib."""

from __future__ import annotations

from pathlib import Path

import torch

from .mma import Role

ROLE_LETTERS = {Role.TEXT: "T", Role.MEDIA: "M", Role.RESPONSE: "R"}
# One colour per query role, so the media rows that MMA unlocks stand out.
ROLE_COLOURS = {
    Role.TEXT: (0.25, 0.45, 0.85),
    Role.MEDIA: (0.90, 0.45, 0.10),
    Role.RESPONSE: (0.20, 0.65, 0.35),
}


def mask_to_text(mask: torch.Tensor, roles: torch.Tensor) -> str:
    """A ``[L, L]`` boolean mask as text: one row per query, ``■`` allowed, ``·`` not, role letters on both axes."""
    letters = [ROLE_LETTERS[Role(int(r))] for r in roles]
    lines = ["    " + " ".join(letters)]
    for q, row in enumerate(mask.tolist()):
        lines.append(f"{letters[q]:>3} " + " ".join("■" if allowed else "·" for allowed in row))
    return "\n".join(lines)


def save_mask_png(
    mask: torch.Tensor,
    roles: torch.Tensor,
    path: str | Path,
    *,
    title: str = "MMA mask",
    tokens: list[str] | None = None,
) -> Path:
    """Save a ``[L, L]`` boolean mask as a PNG: allowed cells coloured by the query's role, axes labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    length = mask.shape[-1]
    image = torch.ones(length, length, 3)
    for q in range(length):
        image[q, mask[q]] = torch.tensor(ROLE_COLOURS[Role(int(roles[q]))])
    labels = tokens or [ROLE_LETTERS[Role(int(r))] for r in roles]
    size = min(12.0, 2.0 + 0.3 * length)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(image.numpy(), interpolation="nearest")
    if length <= 64:
        axes.set_xticks(range(length), labels, rotation=90 if tokens else 0, fontsize=8)
        axes.set_yticks(range(length), labels, fontsize=8)
    axes.set_xlabel("key (attended to)")
    axes.set_ylabel("query")
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=ROLE_COLOURS[role], label=f"{role.name.lower()} query")
        for role in Role
    ]
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    axes.set_title(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
