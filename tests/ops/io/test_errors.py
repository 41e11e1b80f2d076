import pytest

from ops.io import errors
from ops.io.errors import (
    CrossmatchError,
    ImageDecodeError,
    InputError,
    JobFailed,
    StorageError,
    UserError,
    canonical,
    describe,
    error_type,
    vocabulary,
)
from ops.io.storage import resolve
from ops.io.tables import OutputRun, read_table


def _classes(cls=CrossmatchError):
    return [cls] + [c for sub in cls.__subclasses__() for c in _classes(sub)]


def test_every_failure_has_one_snake_case_name():
    names = [c.error_type for c in _classes()]
    assert len(names) == len(set(names))  # one name, one failure
    assert all(n == n.lower() and " " not in n and n.isascii() for n in names)
    assert set(names) <= vocabulary()


def test_foreign_exceptions_are_named_by_the_vocabulary():
    assert error_type(ImageDecodeError("x")) == "image_decode_error"
    assert error_type(FileNotFoundError("gone")) == "not_found"
    assert error_type(PermissionError("no")) == "permission_denied"
    assert error_type(OSError("io")) == "read_error"
    assert error_type(ZeroDivisionError("bug")) == "unexpected_error"
    assert describe(ZeroDivisionError("bug")) == "ZeroDivisionError: bug"  # the class is kept in the message
    assert describe(ImageDecodeError("truncated")) == "truncated"
    assert {error_type(e) for e in (KeyError(), ValueError())} <= vocabulary()


def test_user_errors_and_input_errors_are_apart():
    assert issubclass(JobFailed, UserError) and issubclass(StorageError, UserError)
    assert not issubclass(ImageDecodeError, UserError) and issubclass(ImageDecodeError, InputError)
    assert "[redacted]" in str(StorageError("s3://user:pw@bucket/key"))


@pytest.mark.parametrize(
    "old, new",
    [
        ("EmptyFile", "empty_file"),
        ("UnknownMediaType", "unknown_media_type"),
        ("decode_error", "image_decode_error"),  # embed_faces' name before the vocabulary
        ("ImageDecodeError", "image_decode_error"),  # stylize's name for the same failure
        ("TooLarge", "too_large"),
        ("too_large", "too_large"),
        ("DecodeError", "audio_decode_error"),
        ("NoAudioStream", "no_audio_stream"),
        ("StorageError", "storage_error"),
        ("ItemTimeout", "item_timeout"),
        ("TimeoutError", "read_error"),  # an old run's OSError subclass, named as error_type() names it now
        ("ValueError", "unexpected_error"),
        ("ClientError", "unexpected_error"),
    ],
)
def test_old_names_read_as_new_ones(old, new):
    assert canonical(old) == new


def test_error_rows_carry_vocabulary_names_only_and_lose_nothing(tmp_path):
    run = OutputRun(resolve(str(tmp_path)), "r", "demo")
    rows = [{"uri": "a", "sha256": None, "error_type": "audio_decode_error", "message": "m"}]
    rows.append({"uri": "b", "sha256": None, "error_type": "DecodeError", "message": "m"})  # an old name
    rows.append({"uri": "c", "sha256": None, "error_type": "NewThing", "message": "m"})  # a name nobody listed
    run.write_errors(rows, stage="s")
    run.commit(tables=("errors",))
    got = read_table(resolve(str(tmp_path)), "errors", "r").sort_by("uri").to_pylist()
    assert [(r["error_type"], r["message"]) for r in got] == [
        ("audio_decode_error", "m"),
        ("audio_decode_error", "[DecodeError] m"),
        ("unexpected_error", "[NewThing] m"),
    ]


def test_the_vocabulary_lists_the_foreign_names_too():
    assert {name for _, name in errors.FOREIGN} | {errors.UNEXPECTED} <= vocabulary()
