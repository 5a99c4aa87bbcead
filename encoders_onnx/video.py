"""Video vectors: untrusted video bytes -> a few representative frames -> the image encoder -> one vector.

Frame sampling is a single streaming pass over the decoded frames (PyAV, every codec FFmpeg has,
though only ``SUPPORTED_CODECS`` are accepted). Each frame gets a colour signature (the RGB
histogram, 8 bins a channel, of a 64x64 thumbnail), which barely moves when the camera pans,
zooms or turns but jumps at a cut. A frame becomes a *candidate* when it

* starts a shot: the first frame, or an L1 distance between its signature and the previous
  frame's above ``SCENE_THRESHOLD`` (a cut);
* is a keyframe (the decoded frame's key flag, which follows the packet flags, so it also holds
  for VP9, where ``skip_frame="NONKEY"`` does not filter);
* is the first frame at or after the next point of an even grid of ``max_frames`` points over
  the decoded stretch (the top-up).

Every cut starts a new shot. At most ``max_frames`` candidates are kept; when one more arrives,
one of them is dropped: while some shot has two or more kept frames, a frame of such a shot
(grid candidates before keyframes before shot starts, then the one closest in time to another
kept frame, which keeps the rest evenly spread); only when every kept frame is the sole frame of
its shot (more cuts than ``max_frames``), the one whose signature is nearest another's, so
look-alike shots merge first. Only kept frames are converted to RGB, and memory holds the kept
frames and their signatures, whatever the length of the video.

Limits and outcomes (``VideoError.code``):

* ``empty`` (zero bytes), ``too_large`` (more than ``max_bytes``);
* ``not_a_video``: no container format recognised, a still-image format (JPEG, PNG, ...), or an
  unreadable header, which is also what an MP4 cut short before its index (``moov`` at the end)
  gives;
* ``no_video_stream`` (e.g. audio only), ``unsupported_codec`` (not in ``SUPPORTED_CODECS``, or
  no decoder in this build), ``too_many_pixels`` (a frame over ``max_pixels``, header or stream);
* ``decode_error``: the decoder failed before any frame was decoded, or no frame came out;
* ``timeout``: decoding ran past ``timeout_s`` of wall-clock time (checked between packets).
  Always an error, never a partial result, so that a vector never depends on how busy the
  machine was; it is the only outcome that may differ on a retry.

Partial results are deterministic and flagged in ``SampledFrames.partial``: a video longer than
``max_seconds`` is sampled from its first ``max_seconds`` only (``"max_seconds"``); a decoder
error after at least one frame (a corrupt packet, a file cut mid-stream) ends decoding there,
keeping the frames seen so far (``"decode_error: ..."``); a stream whose frames end well before
its declared duration (a WebM cut short decodes cleanly up to the cut) is ``"truncated: ..."``.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

from encoders_onnx.decoding import MediaError
from encoders_onnx.image import ImageEncoder
from encoders_onnx.session import l2_normalize

Pooling = Literal["mean", "distinct"]
POOLINGS: tuple[str, ...] = ("mean", "distinct")
SUPPORTED_CODECS = frozenset({"h264", "hevc", "mpeg4", "vp8", "vp9", "av1"})
# Image formats (animated ones included): FFmpeg would open a product photo as a one-frame "video".
_STILL_IMAGE_FORMATS = frozenset({"image2", "gif", "webp", "apng"})
THUMB_SIDE = 64
HIST_BITS = 3  # top bits of each channel: 8 bins a channel, 512-bin colour signatures
# L1 distance (0-2) between the signatures of consecutive frames that counts as a cut. Measured on
# 40 generated two-shot clips of random Myntra products: within a shot (zoom, pan, rotation) at
# most 0.084; across the cut 0.094 once (two look-alike products), otherwise at least 0.15.
SCENE_THRESHOLD = 0.12
# Bumped whenever the sampling changes what it keeps: it is part of VideoEncoder.version.
SAMPLER_VERSION = "s1"
_PRIORITY = {"grid": 0, "key": 1, "scene": 2}  # within a crowded shot, the lowest is dropped first
# Largest frame decoded (DCI 4K; phones film at most UHD 3840x2160). The decoder holds several
# reference frames at full size: sampling a 3 s h264 clip peaked at 187 MB of RSS at 3840x2160
# and 308 MB at 5760x3240, so frames at the image cap (40 Mpixels) would take ~0.6 GB per video.
MAX_FRAME_PIXELS = 4096 * 2160


class VideoError(MediaError):
    """A video that gives no vector; ``code`` is one of the codes listed in the module docstring."""


@dataclass(frozen=True)
class VideoLimits:
    """What one video may cost: media time decoded, frames kept, frame size, wall-clock, bytes, pixels."""

    max_seconds: float = 30.0
    max_frames: int = 12
    max_side: int = 320
    timeout_s: float = 10.0
    max_bytes: int = 50_000_000
    max_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        if self.max_frames < 1 or self.max_side < 1 or self.max_seconds <= 0 or self.timeout_s <= 0:
            raise ValueError(f"video limits must be positive: {self}")

    @classmethod
    def from_settings(cls, settings: Any) -> "VideoLimits":
        """From ``streams.settings.Settings``; a frame's pixel cap is the image one (``max_image_pixels``),
        at most ``MAX_FRAME_PIXELS``."""
        return cls(
            max_seconds=float(settings.max_video_seconds),
            max_frames=int(settings.max_video_frames),
            max_side=int(settings.video_max_side),
            timeout_s=float(settings.video_decode_timeout_s),
            max_bytes=int(settings.max_video_bytes),
            max_pixels=min(int(settings.max_image_pixels), MAX_FRAME_PIXELS),
        )


@dataclass(frozen=True)
class SampledFrames:
    """The kept frames of one video, in time order."""

    frames: np.ndarray  # (k, h, w, 3) uint8 RGB, longer side <= max_side
    timestamps: np.ndarray  # (k,) float64 seconds since the first decoded frame
    shots: np.ndarray  # (k,) int: index of each frame's shot (0 = before the first cut)
    distinctness: np.ndarray  # (k,) float32 in (0, 1]: 1 / (kept frames of the same shot)
    reasons: tuple[str, ...]  # why each was a candidate: "scene", "key" or "grid"
    decoded: int  # frames decoded in all
    partial: str | None  # why decoding ended before the end of the stream, None if it did not


@dataclass(frozen=True)
class VideoEmbedding:
    """One video's vector and where it came from (the payload can record ``partial``)."""

    vector: np.ndarray  # (dim,) float32, unit length
    timestamps: np.ndarray  # of the frames that were pooled
    partial: str | None


def sample_frames(data: bytes, limits: VideoLimits) -> SampledFrames:
    """Pick at most ``limits.max_frames`` representative frames of a video file's first video stream."""
    deadline = time.monotonic() + limits.timeout_s
    if not data:
        raise VideoError("empty", "zero bytes")
    if len(data) > limits.max_bytes:
        raise VideoError("too_large", f"{len(data)} bytes > {limits.max_bytes}")
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="replace")
    except av.error.FFmpegError as exc:
        raise VideoError("not_a_video", f"no readable video container (unknown format, or cut short): {exc}") from exc
    with container:
        stream = _video_stream(container, limits)
        declared = _duration(container, stream)
        selector = _Selector(limits.max_frames, limits.max_side)
        spacing = min(declared or limits.max_seconds, limits.max_seconds) / limits.max_frames
        next_grid = spacing / 2
        thumbnailer = VideoReformatter()  # keeps its scaler between frames: a fresh one costs ~1 ms a frame
        previous: np.ndarray | None = None
        start: float | None = None
        shot, decoded, seconds = -1, 0, 0.0
        partial: str | None = None
        try:
            for frame in _decode(container, stream, deadline, limits):
                at = frame.time if frame.time is not None else decoded / float(stream.guessed_rate or 25)
                start = at if start is None else start
                if at - start > limits.max_seconds:
                    partial = "max_seconds"
                    break
                seconds = at - start
                decoded += 1
                thumb = thumbnailer.reformat(frame, THUMB_SIDE, THUMB_SIDE, "rgb24", interpolation="AREA")
                signature = _signature(thumb)
                reason = None
                if previous is None or np.abs(signature - previous).sum() > SCENE_THRESHOLD:
                    reason = "scene"
                    shot += 1
                elif frame.key_frame:
                    reason = "key"
                elif seconds >= next_grid:
                    reason = "grid"
                while next_grid <= seconds:
                    next_grid += spacing
                previous = signature
                if reason is not None:
                    selector.offer(frame, _Kept(None, signature, seconds, reason, shot))
        except _DecoderFailed as exc:
            if not selector.kept:
                raise VideoError("decode_error", str(exc.__cause__)) from exc.__cause__
            partial = f"decode_error: {exc.__cause__}"
    if not selector.kept:
        raise VideoError("decode_error", "the stream has no decodable frame")
    if partial is None and declared and declared - seconds > max(1.0, 0.1 * declared):
        partial = f"truncated: frames end at {seconds:.1f} s of {declared:.1f} s declared"
    return selector.result(decoded, partial)


class VideoEncoder:
    """Video bytes -> one unit vector in the image encoder's space, so a video is comparable to photos.

    Pooling of the kept frames' vectors: ``mean`` (shots weigh by their share of kept frames,
    i.e. roughly by duration), or ``distinct``: a weighted mean with each frame weighted by its
    distinctness, 1 / (kept frames of its shot), so that every shot weighs the same and a long
    static shot does not drown a short close-up. No learned attention: nothing to train.
    """

    def __init__(
        self, image_encoder: ImageEncoder, limits: VideoLimits, pooling: Pooling | str = "mean", batch_size: int = 32
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        self.image_encoder = image_encoder
        self.limits = limits
        self.pooling = pooling
        self.batch_size = batch_size
        self.dim: int = image_encoder.dim

    @property
    def version(self) -> str:
        """The image model's version plus everything that changes which frames are kept and how they pool."""
        limits = self.limits
        return (
            f"{self.image_encoder.version}+video-{SAMPLER_VERSION}-{self.pooling}"
            f"-f{limits.max_frames}-px{limits.max_side}-t{limits.max_seconds:g}"
        )

    def encode(self, data: bytes) -> np.ndarray:
        """The (dim,) unit vector of one video; raises ``VideoError``."""
        result = self.encode_many([data])[0]
        if isinstance(result, VideoError):
            raise result
        return result.vector

    def encode_many(self, items: Sequence[bytes]) -> list[VideoEmbedding | VideoError]:
        """One result per item, a bad video giving its ``VideoError`` without failing the others.

        The kept frames of all items go through the image encoder in a single call (which runs
        them ``batch_size`` at a time, so a worker batch of many videos stays bounded in memory).
        """
        samples: list[SampledFrames | VideoError] = []
        for data in items:
            try:
                samples.append(sample_frames(data, self.limits))
            except VideoError as exc:
                samples.append(exc)
        good = [s for s in samples if isinstance(s, SampledFrames)]
        images = [Image.fromarray(frame) for s in good for frame in s.frames]
        vectors = self.image_encoder.encode(images, batch_size=self.batch_size)
        results: list[VideoEmbedding | VideoError] = []
        offset = 0
        for sample in samples:
            if isinstance(sample, VideoError):
                results.append(sample)
                continue
            frame_vectors = vectors[offset : offset + len(sample.frames)]
            offset += len(sample.frames)
            results.append(VideoEmbedding(self._pool(frame_vectors, sample), sample.timestamps, sample.partial))
        return results

    def _pool(self, frame_vectors: np.ndarray, sample: SampledFrames) -> np.ndarray:
        weights = sample.distinctness if self.pooling == "distinct" else np.ones(len(frame_vectors), np.float32)
        return l2_normalize((weights @ frame_vectors)[None, :])[0]


class _DecoderFailed(Exception):
    """Raised from the decoding loop with the FFmpeg error as its cause, so sampling can keep what it has."""


def _video_stream(container: av.container.InputContainer, limits: VideoLimits) -> av.video.stream.VideoStream:
    """The first video stream, vetted before any frame is decoded."""
    if set(container.format.name.split(",")) & _STILL_IMAGE_FORMATS or container.format.name.endswith("_pipe"):
        raise VideoError("not_a_video", f"a still image ({container.format.name}), not a video")
    if not container.streams.video:
        raise VideoError("no_video_stream", f"{container.format.name} file without a video stream")
    stream = container.streams.video[0]
    context = stream.codec_context
    if context is None:
        raise VideoError("unsupported_codec", "this FFmpeg build has no decoder for the stream's codec")
    if context.codec.canonical_name not in SUPPORTED_CODECS:
        raise VideoError(
            "unsupported_codec", f"codec {context.codec.canonical_name!r} is not one of {sorted(SUPPORTED_CODECS)}"
        )
    if context.width * context.height > limits.max_pixels:
        raise VideoError("too_many_pixels", f"{context.width}x{context.height} > {limits.max_pixels} pixels")
    return stream


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    """Declared duration of the stream in seconds, else of the container (WebM leaves the stream's
    unset), None if neither says."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _decode(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, deadline: float, limits: VideoLimits
) -> Iterator[av.VideoFrame]:
    """Decoded frames; the deadline is checked between packets, FFmpeg errors become ``_DecoderFailed``."""
    packets = container.demux(stream)
    while True:
        if time.monotonic() > deadline:
            raise VideoError("timeout", f"decoding took longer than {limits.timeout_s:g} s")
        try:
            packet = next(packets, None)
            if packet is None:
                return
            frames = packet.decode()
        except av.error.FFmpegError as exc:
            raise _DecoderFailed() from exc
        for frame in frames:
            if frame.width * frame.height > limits.max_pixels:
                raise VideoError("too_many_pixels", f"a {frame.width}x{frame.height} frame > {limits.max_pixels} pixels")
            yield frame


@dataclass
class _Kept:
    rgb: np.ndarray | None  # None while only a candidate: converted once it is kept
    signature: np.ndarray
    seconds: float
    reason: str
    shot: int


class _Selector:
    """The bounded set of kept frames: every shot keeps one while it can, the rest spread in time."""

    def __init__(self, capacity: int, max_side: int) -> None:
        self.capacity = capacity
        self.max_side = max_side
        self.kept: list[_Kept] = []
        self._reformatter = VideoReformatter()
        self._size: tuple[int, int] | None = None  # (width, height) of every kept frame

    def offer(self, frame: av.VideoFrame, candidate: _Kept) -> None:
        """Keep ``candidate`` (a frame of ``frame``) unless it is the one to drop."""
        if len(self.kept) >= self.capacity:
            drop = _least_useful(self.kept + [candidate])
            if drop == len(self.kept):
                return
            del self.kept[drop]
        candidate.rgb = self._rgb(frame)
        self.kept.append(candidate)

    def _rgb(self, frame: av.VideoFrame) -> np.ndarray:
        """RGB at the size fixed by the first kept frame (longer side <= max_side), whatever later frames do."""
        if self._size is None:
            scale = min(1.0, self.max_side / max(frame.width, frame.height))
            self._size = (max(1, round(frame.width * scale)), max(1, round(frame.height * scale)))
        width, height = self._size
        return self._reformatter.reformat(frame, width, height, "rgb24", interpolation="AREA").to_ndarray()

    def result(self, decoded: int, partial: str | None) -> SampledFrames:
        shots = np.array([k.shot for k in self.kept])
        per_shot = (shots[:, None] == shots[None, :]).sum(axis=1)
        return SampledFrames(
            frames=np.stack([k.rgb for k in self.kept]),
            timestamps=np.array([k.seconds for k in self.kept]),
            shots=shots,
            distinctness=(1.0 / per_shot).astype(np.float32),
            reasons=tuple(k.reason for k in self.kept),
            decoded=decoded,
            partial=partial,
        )


def _least_useful(entries: list[_Kept]) -> int:
    """Index of the entry to drop (see the module docstring); on a full tie the later one."""
    shots = [e.shot for e in entries]
    crowded = [i for i, e in enumerate(entries) if shots.count(e.shot) > 1]
    if crowded:

        def key(i: int) -> tuple[int, float, int]:
            gap = min(abs(entries[i].seconds - e.seconds) for j, e in enumerate(entries) if j != i)
            return (_PRIORITY[entries[i].reason], gap, -i)

        return min(crowded, key=key)
    signatures = np.stack([e.signature for e in entries])
    nearest = np.abs(signatures[:, None, :] - signatures[None, :, :]).sum(axis=2)
    np.fill_diagonal(nearest, np.inf)
    return min(range(len(entries)), key=lambda i: (nearest[i].min(), -i))


def _signature(thumb: av.VideoFrame) -> np.ndarray:
    """The normalised RGB histogram (2**HIST_BITS bins a channel) of an rgb24 thumbnail."""
    bins = (thumb.to_ndarray() >> (8 - HIST_BITS)).astype(np.uint16)
    index = (bins[..., 0] << (2 * HIST_BITS)) | (bins[..., 1] << HIST_BITS) | bins[..., 2]
    return (np.bincount(index.ravel(), minlength=1 << (3 * HIST_BITS)) / index.size).astype(np.float32)
