"""Synthetic vision rows: a red or blue square at a random place on grey noise, as PNG data URLs, in
image_label rows or in chat rows that ask what colour the square is."""

from __future__ import annotations

import base64
import io
import random
from typing import Any

from PIL import Image

COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220)}
QUESTION = "What color is the square?"


def png_bytes(color: str, rng: random.Random, side: int = 32) -> bytes:
    """A square of `color` at a random place on grey noise, as a PNG."""
    image = Image.new("RGB", (side, side))
    image.putdata([(g, g, g) for g in (rng.randrange(60, 200) for _ in range(side * side))])
    box = rng.randrange(side // 3, side // 2)
    x, y = rng.randrange(side - box), rng.randrange(side - box)
    image.paste(COLORS[color], (x, y, x + box, y + box))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_url(color: str, rng: random.Random, side: int = 32) -> str:
    """The same, as a PNG data URL."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(color, rng, side)).decode()


def label_rows(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"image": png_url(c, rng), "label": c} for c in (rng.choice(list(COLORS)) for _ in range(count))]


def chat_rows(count: int, seed: int, *, answer: str | None = None) -> list[dict[str, Any]]:
    """Chat rows about one 16x16 image each; the assistant names the colour, or always says `answer`."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        color = rng.choice(list(COLORS))
        image = {"type": "image_url", "image_url": {"url": png_url(color, rng, side=16)}}
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "You describe images."},
                    {"role": "user", "content": [image, {"type": "text", "text": QUESTION}]},
                    {"role": "assistant", "content": answer or f"It is {color}."},
                ]
            }
        )
    return rows
