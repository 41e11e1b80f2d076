"""Media kind from content (magic bytes), never from the file name: archives are full of wrong extensions."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MediaKind:
    """What a file is: ``kind`` names the format ("jpeg"), ``category`` is "image", "audio" or "video"."""

    kind: str
    category: str
    mime: str


def sniff(head: bytes) -> MediaKind | None:
    """The media kind of a file from its first bytes (4 KiB is enough), or None when it is none we handle."""
    if head.startswith(b"\xff\xd8\xff"):
        return MediaKind("jpeg", "image", "image/jpeg")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return MediaKind("png", "image", "image/png")
    if head.startswith((b"GIF87a", b"GIF89a")):
        return MediaKind("gif", "image", "image/gif")
    if head.startswith(b"BM") and len(head) >= 26 and head[14:18] in _BMP_HEADER_SIZES:
        return MediaKind("bmp", "image", "image/bmp")
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):  # classic and BigTIFF
        return MediaKind("tiff", "image", "image/tiff")
    if head.startswith(b"RIFF") and len(head) >= 12:
        form = head[8:12]
        if form == b"WEBP":
            return MediaKind("webp", "image", "image/webp")
        if form == b"WAVE":
            return MediaKind("wav", "audio", "audio/wav")
        if form == b"AVI ":
            return MediaKind("avi", "video", "video/x-msvideo")
        return None
    if head.startswith(b"RF64") and head[8:12] == b"WAVE":  # WAV over 4 GiB
        return MediaKind("wav", "audio", "audio/wav")
    if head.startswith(b"fLaC"):
        return MediaKind("flac", "audio", "audio/flac")
    if head.startswith(b"OggS"):
        # The first page carries the codec's identification header.
        if b"OpusHead" in head[:128]:
            return MediaKind("opus", "audio", "audio/ogg; codecs=opus")
        if b"\x80theora" in head[:128]:
            return MediaKind("ogv", "video", "video/ogg")
        return MediaKind("ogg", "audio", "audio/ogg")
    if head.startswith(b"ID3") or _is_mpeg_audio_frame(head):
        return MediaKind("mp3", "audio", "audio/mpeg")
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return _iso_media(head[8:12])
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: Matroska or WebM, told apart by the DocType
        if b"webm" in head[:4096]:
            return MediaKind("webm", "video", "video/webm")
        return MediaKind("mkv", "video", "video/x-matroska")
    if len(head) >= 8 and head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip") and head[:4] != b"\x00" * 4:
        return MediaKind("mov", "video", "video/quicktime")  # old QuickTime files without an ftyp box
    return None


# BITMAPCOREHEADER, BITMAPINFOHEADER and its V2-V5 successors, little-endian: guards "BM" text files.
_BMP_HEADER_SIZES = {n.to_bytes(4, "little") for n in (12, 40, 52, 56, 64, 108, 124)}

_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "}


def _iso_media(brand: bytes) -> MediaKind:
    if brand in _AUDIO_BRANDS:
        return MediaKind("m4a", "audio", "audio/mp4")
    if brand == b"qt  ":
        return MediaKind("mov", "video", "video/quicktime")
    if brand in (b"heic", b"heix", b"mif1", b"msf1", b"avif"):
        return MediaKind("heif", "image", "image/heif")
    return MediaKind("mp4", "video", "video/mp4")


def _is_mpeg_audio_frame(head: bytes) -> bool:
    """A raw MPEG-1/2 Layer III frame header (MP3 without ID3 tag)."""
    if len(head) < 4 or head[0] != 0xFF or (head[1] & 0xE0) != 0xE0:
        return False
    version = (head[1] >> 3) & 0b11
    layer = (head[1] >> 1) & 0b11
    bitrate = head[2] >> 4
    rate = (head[2] >> 2) & 0b11
    return version != 0b01 and layer == 0b01 and bitrate not in (0, 0xF) and rate != 0b11
