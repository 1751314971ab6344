"""Short H.264 videos made in the test from still photos, with PyAV (the decoder `keyframes` uses)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image


def video_from_photos(
    path: Path,
    photos: Sequence[Image.Image],
    *,
    seconds_each: int = 3,
    fps: int = 10,
    size: tuple[int, int] = (640, 480),
    gop_seconds: int | None = None,
) -> Path:
    """An MP4 (H.264, yuv420p) showing each photo for `seconds_each` seconds. Key frames come exactly every
    `gop_seconds` (default `seconds_each`: one at the start of each photo) and nowhere else (x264's scene-cut
    detection is off), so the test knows where they are."""
    import av
    import numpy as np

    gop = (gop_seconds or seconds_each) * fps
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"crf": "16", "preset": "veryfast", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        for photo in photos:
            pixels = np.asarray(photo.convert("RGB").resize(size, Image.Resampling.BICUBIC))
            for _ in range(seconds_each * fps):
                for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def skill_answers(images: list[bytes]) -> list[dict[str, Any]]:
    """The installed skill service's answers (`install_service`) for these images, sent as the indexer sends
    normalized images, in order."""
    import base64
    import json

    from shared.skill import service as app

    body = {
        "values": [
            {"recordId": str(i), "data": {"image": {"$type": "file", "data": base64.b64encode(image).decode()}}}
            for i, image in enumerate(images)
        ]
    }
    status, answer, _ = app.classify(json.dumps(body).encode(), {})
    assert status == 200
    values = sorted(json.loads(answer)["values"], key=lambda v: int(v["recordId"]))
    assert all(not v["errors"] for v in values)
    return [v["data"] for v in values]


def indexed_keyframes(container: Any, account_url: str = "https://st.blob.core.windows.net") -> list[dict[str, Any]]:
    """The documents the keyframes indexer would write for the `.jpg` blobs of `container` (a ContainerClient):
    the skill's answers (`images`, `labels`), and the field mappings `search-setup --keyframes` renders:
    `sourceVideo` = urlDecode(metadata source_video), `timestampMs` = metadata timestamp_ms, the key from the
    blob's path."""
    import base64
    import urllib.parse

    blobs = [b for b in container.list_blobs(include=["metadata"]) if b.name.endswith(".jpg")]
    answers = skill_answers([container.download_blob(b.name).readall() for b in blobs])
    documents = []
    for blob, answer in zip(blobs, answers, strict=True):
        path = f"{account_url}/{container.container_name}/{urllib.parse.quote(blob.name)}"
        documents.append(
            {
                "id": base64.urlsafe_b64encode(path.encode()).decode(),
                "metadata_storage_name": blob.name.rsplit("/", 1)[-1],
                "metadata_storage_path": path,
                "sourceVideo": urllib.parse.unquote(blob.metadata["source_video"]),
                "timestampMs": int(blob.metadata["timestamp_ms"]),
                "labels": answer["labels"],
                "images": [
                    {k: answer[k] for k in ("label", "confidence", "labels", "modelVersion")} | {"pageNumber": 0}
                ],
            }
        )
    return documents
