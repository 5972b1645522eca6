"""Images of vision rows: reading them (`data:image/...;base64` URLs, `s3://` objects, local files) as RGB
PIL images, and sizing the model's image processor (`vision.imageSize`, `vision.maxImageTokens`).

Reading: a bad image is an `ImageError` naming the split, the row's line and the image's place in the row;
`refused` lists every bad image of a split (validate-data decodes each image once, before training).
Files and objects are read through the run's `Store` (the contract's endpoint and credentials); `http(s)://`
URLs are refused rather than fetched, so that what a run trains on is what its storage holds.

Sizing: resizing and normalizing stay the image processor's; `sized` only changes its target. A fixed-size
processor resizes to an imageSize square; a dynamic-resolution one (Qwen2-VL style: one token per
`patch_size` x `merge_size` square, `size` bounding the pixel count) gets a budget of imageSize^2 pixels,
lowered to fit maxImageTokens. A processor with a fixed image-token count cannot be lowered, only checked
(`image_tokens`). Neither reads the model: whether a vision tower takes the new size is the caller's check.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from finetune_trainer.data.rows import Row
from finetune_trainer.storage import StorageError, Store

DATA_PREFIX = "data:image/"
REMOTE = ("http://", "https://")
MOST_REFUSED = 20  # refused images listed by `refused`; the report keeps 32 failed rules in all
PROBE_SIDE = 4096  # the largest vision.imageSize: the most tokens a processor that caps the size can make


class ImageError(ValueError):
    pass


class SizingError(ValueError):
    pass


def shown(uri: str) -> str:
    """The URI as an error message shows it: a data URL without its payload."""
    if uri.startswith(DATA_PREFIX):
        return uri.partition(",")[0] + ",..."
    return uri if len(uri) <= 200 else uri[:200] + "..."


def decode(data: bytes) -> Image.Image:
    """The image in `data` (any format PIL reads), fully decoded and converted to RGB."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB")


def data_url_bytes(uri: str) -> bytes:
    header, _, payload = uri.partition(",")
    if not header.endswith(";base64"):
        raise ValueError("a data URL must be base64 encoded (data:image/<type>;base64,<data>)")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except binascii.Error as err:
        raise ValueError(f"invalid base64: {err}") from err


@dataclass(frozen=True)
class ImageReader:
    """Reads a row's images; every failure is an `ImageError` naming `<split> line <n>`."""

    store: Store

    def load(self, uri: str, *, split: str, line: int, index: int = 0) -> Image.Image:
        where = f"{split} line {line}: image {index + 1}"
        if uri.startswith(REMOTE):
            raise ImageError(
                f"{where}: {shown(uri)} is not fetched: put the image in the run's storage (s3://) or inline "
                "it as a data:image/...;base64 URL"
            )
        try:
            return decode(data_url_bytes(uri) if uri.startswith(DATA_PREFIX) else self.store.read_bytes(uri))
        except StorageError as err:
            raise ImageError(f"{where}: {err}") from err
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise ImageError(f"{where} ({shown(uri)}) cannot be decoded: {err}") from err

    def load_all(self, uris: Iterable[str], *, split: str, line: int) -> list[Image.Image]:
        return [self.load(uri, split=split, line=line, index=i) for i, uri in enumerate(uris)]

    def refused(self, rows: Iterable[Row], *, split: str, most: int = MOST_REFUSED) -> list[str]:
        """What training would refuse among the images of `rows`, one line per image, at most `most`
        (then one saying the rest went unchecked). Each image is read and decoded once and let go:
        `validate-data` calls this, before any GPU is requested."""
        found: list[str] = []
        for row in rows:
            for index, uri in enumerate(row.images):
                if len(found) == most:
                    return [*found, f"{split}: more images not checked after {most} refused"]
                try:
                    self.load(uri, split=split, line=row.line, index=index).close()
                except ImageError as err:
                    found.append(str(err))
        return found

    def check(self, rows: Iterable[Row], *, split: str) -> None:
        """Fail before training on what needs no storage to find: inline images that do not decode and
        URLs that are never read. Stored images are read and decoded when their batch is built."""
        for row in rows:
            for index, uri in enumerate(row.images):
                if uri.startswith((DATA_PREFIX, *REMOTE)):
                    self.load(uri, split=split, line=row.line, index=index).close()


def pixel_budget(image_processor: Any) -> bool:
    """Dynamic resolution: `size` bounds the pixel count (shortest_edge/longest_edge are pixel counts)."""
    return all(hasattr(image_processor, a) for a in ("merge_size", "patch_size")) and bool(
        image_processor.size
    )


def sized(image_processor: Any, *, side: int | None, most_tokens: int | None = None) -> Any:
    """The image processor resizing to `side` (a square, or a pixel budget of side^2 for dynamic resolution,
    capped at `most_tokens` tokens); the same object when there is nothing to change."""
    size = image_processor.size
    overrides: dict[str, Any] = {}
    if pixel_budget(image_processor):
        per_token = (image_processor.patch_size * image_processor.merge_size) ** 2
        most = side * side if side else size.longest_edge
        if most_tokens:
            most = min(most, most_tokens * per_token)
        if most != size.longest_edge:
            overrides["size"] = {"shortest_edge": min(size.shortest_edge or most, most), "longest_edge": most}
    elif side:
        if size.height and size.width:
            overrides["size"] = {"height": side, "width": side}
        elif size.shortest_edge:
            overrides["size"] = {"shortest_edge": side}
            if getattr(image_processor, "do_center_crop", False):
                overrides["crop_size"] = {"height": side, "width": side}
        else:
            raise SizingError(
                f"vision.imageSize: {type(image_processor).__name__} resizes by "
                f"{ {k: v for k, v in dict(size).items() if v} }, not to a square; leave imageSize unset"
            )
    if not overrides:
        return image_processor
    return type(image_processor).from_dict({**image_processor.to_dict(), **overrides})


def image_tokens(processor: Any) -> int:
    """The most tokens `processor` (a multimodal processor) turns one image into."""
    try:
        counted = processor._get_num_multimodal_tokens(image_sizes=[[PROBE_SIDE, PROBE_SIDE]])
        return int(max(counted["num_image_tokens"]))
    except (NotImplementedError, AttributeError, KeyError, TypeError) as err:
        raise SizingError(
            f"vision.maxImageTokens: {type(processor).__name__} cannot say how many tokens an image takes, "
            "so the limit cannot be applied; leave maxImageTokens unset"
        ) from err
