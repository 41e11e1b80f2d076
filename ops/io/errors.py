"""The one error vocabulary of crossmatch: every failure it names, and the name each has in ``errors/`` rows.

Two families. An ``InputError`` is one input's problem (a truncated JPEG, a WAV with no samples): the job records
it as an error row and goes on. A ``UserError`` stops the job with exit code 2 and a message that says how to fix
it (a missing prefix, a model not pulled). Every class carries its own ``error_type``, snake_case; an exception
from outside crossmatch (an ``OSError`` while reading, a bug in a decoder) is named by ``error_type()`` below, so
that one failure has one name in every job and every report.
"""

from __future__ import annotations

import builtins

from ops.io.redact import redact


class CrossmatchError(Exception):
    """Base of every failure crossmatch names; ``error_type`` is its name in error rows and summaries."""

    error_type = "error"


# -- one input's failure: an error row, never a failed job ------------------------------------------------------


class InputError(CrossmatchError):
    error_type = "input_error"


class EmptyFile(InputError):
    error_type = "empty_file"


class UnknownMediaType(InputError):
    error_type = "unknown_media_type"


class ImageError(InputError):
    error_type = "image_error"


class NotAnImage(ImageError):
    error_type = "unsupported_image"


class ImageDecodeError(ImageError):
    error_type = "image_decode_error"


class VideoDecodeError(ImageError):
    """A video whose frames cannot be decoded (not a container, or broken before its first frame)."""

    error_type = "video_decode_error"


class TooLarge(ImageError):
    error_type = "too_large"


class TooSmall(ImageError):
    error_type = "too_small"


class NoVideoStream(ImageError):
    error_type = "no_video_stream"


class AudioError(InputError):
    error_type = "audio_error"


class NoAudioStream(AudioError):
    error_type = "no_audio_stream"


class EmptyAudio(AudioError):
    error_type = "empty_audio"


class AudioDecodeError(AudioError):
    error_type = "audio_decode_error"


class TooLong(AudioError):
    error_type = "too_long"


class ItemTimeout(InputError):
    """One input took longer than the per-item limit (--item-timeout)."""

    error_type = "item_timeout"


class ContentChanged(InputError):
    """The bytes read now are not the bytes the manifest hashed (the object was rewritten in place since): nothing
    is made from them. The message gives both hashes."""

    error_type = "content_changed"


class InvalidEmbedding(InputError):
    """An embedding that is NaN, infinite or zero: set aside from matching, reported."""

    error_type = "invalid_embedding"


class UnmatchedPair(InputError):
    """A verification pair naming an item that has no embedding."""

    error_type = "unmatched_pair"


class PreviewError(InputError):
    """A report preview (thumbnail, clip) that cannot be made: the report shows the reason in its place."""

    error_type = "no_preview"


# -- a failure the user can fix: the job stops, exit code 2 ------------------------------------------------------


class UserError(CrossmatchError):
    """A failure the user can fix, with the fix in the message: jobs exit with code 2."""

    error_type = "user_error"


class JobFailed(UserError):
    """A job that cannot run as asked (bad options, missing input)."""

    error_type = "job_failed"


class AccountingMismatch(CrossmatchError):
    """The counts of a run do not add up (an input lost or counted twice): nothing is committed. Not the user's to
    fix: a bug, exit code 1."""

    error_type = "accounting_mismatch"


class UninformativeLabels(JobFailed):
    """Labels whose scores barely differ (folder names, not people): a calibration of them would state evidence
    there is not. The pipeline skips its calibration with this reason instead of stopping."""

    error_type = "uninformative_labels"


class StorageError(UserError):
    """A storage operation that failed, explained: the object and the fix (credentials redacted)."""

    error_type = "storage_error"

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


class NotFound(StorageError):
    """An object or prefix that is not there (deleted, a dangling link, a wrong path)."""

    error_type = "not_found"


class PermissionDenied(StorageError):
    """An object or prefix the credentials may not read or write."""

    error_type = "permission_denied"


class CommitError(UserError):
    """Committed output that cannot be read as asked (unknown run, newer schema, a listed file missing)."""

    error_type = "commit_error"


class ModelError(UserError):
    """A model that cannot be pulled, loaded or used as asked, with the fix in the message."""

    error_type = "model_error"


class EmbeddingError(UserError, ValueError):
    """An embedding set that cannot be matched as asked (mixed models, other dimensions, empty), with the fix."""

    error_type = "embedding_error"


class SearchError(UserError, ValueError):
    """A search that cannot run as asked (dimensions, precision, empty gallery)."""

    error_type = "search_error"


# -- exceptions from outside crossmatch, met while processing one input ------------------------------------------

# Most specific first: the first class an exception is an instance of names it.
FOREIGN = (
    (FileNotFoundError, "not_found"),
    (PermissionError, "permission_denied"),
    (MemoryError, "out_of_memory"),
    (OSError, "read_error"),
)
UNEXPECTED = "unexpected_error"  # anything else: a bug worth reporting; the message keeps the exception's class


def error_type(exc: BaseException) -> str:
    """The vocabulary's name for ``exc``."""
    if isinstance(exc, CrossmatchError):
        return exc.error_type
    for cls, name in FOREIGN:
        if isinstance(exc, cls):
            return name
    return UNEXPECTED


def describe(exc: BaseException) -> str:
    """An error row's message: the exception's text, with its class where the name alone would hide it."""
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, CrossmatchError) else f"{type(exc).__name__}: {text}"


def _names(cls: type[CrossmatchError]) -> set[str]:
    return {cls.error_type}.union(*(_names(sub) for sub in cls.__subclasses__()))


def vocabulary() -> frozenset[str]:
    """Every name an error row can carry."""
    return frozenset(_names(CrossmatchError) | {name for _, name in FOREIGN} | {UNEXPECTED})


# Names runs committed before the vocabulary carried (class names, and one snake_case name per job); the report
# reads old runs under the new names, so that one failure is counted once.
LEGACY = {
    "EmptyFile": "empty_file",
    "UnknownMediaType": "unknown_media_type",
    "ImageError": "image_error",
    "image_error": "image_error",
    "decode_error": "image_decode_error",  # embed_faces' name for images and videos alike: images are the many
    "ImageDecodeError": "image_decode_error",
    "NotAnImage": "unsupported_image",
    "TooLarge": "too_large",
    "NoVideoStream": "no_video_stream",
    "AudioError": "audio_error",
    "NoAudioStream": "no_audio_stream",
    "EmptyAudio": "empty_audio",
    "DecodeError": "audio_decode_error",  # embed_voices' name for an audio DecodeError
    "TooLong": "too_long",
    "ItemTimeout": "item_timeout",
    "StorageError": "storage_error",
    "FileNotFoundError": "not_found",
    "PermissionError": "permission_denied",
    "MemoryError": "out_of_memory",
    "OSError": "read_error",
}


def canonical(name: str) -> str:
    """An error type as the vocabulary names it today, whatever run wrote it: an old run's class name of a Python
    exception as ``error_type`` would name that exception now, any other unknown name as ``unexpected_error``."""
    if name in LEGACY:
        return LEGACY[name]
    if name in vocabulary():
        return name
    builtin = getattr(builtins, name, None)
    if isinstance(builtin, type) and issubclass(builtin, BaseException):
        return next((known for cls, known in FOREIGN if issubclass(builtin, cls)), UNEXPECTED)
    return UNEXPECTED
