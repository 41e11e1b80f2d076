import pytest

from ops.faces.dlib_format import DlibFormatError, _Reader, read_net


def test_integers_floats_strings_and_bools_follow_dlibs_encoding():
    # 2; -28; the float 0.04 as dlib writes it (mantissa 0xa3d70a, exponent -28); "con_4"; true
    r = _Reader(b"\x01\x02" + b"\x81\x1c" + b"\x03\x0a\xd7\xa3\x81\x1c" + b"\x01\x05con_4" + b"1")
    assert r.int() == 2
    assert r.int() == -28
    assert r.float() == pytest.approx(0.04, rel=1e-6)
    assert r.string() == "con_4"
    assert r.bool() is True


def test_tensors_are_raw_little_endian_float32():
    import numpy as np

    values = np.arange(6, dtype="<f4")
    r = _Reader(b"\x01\x02" + b"\x01\x01\x01\x02\x01\x03\x01\x01" + values.tobytes())
    assert r.tensor().shape == (1, 2, 3, 1)


def test_truncated_and_foreign_files_are_refused():
    with pytest.raises(DlibFormatError, match="truncated"):
        _Reader(b"\x01\x02\x01\x05").tensor()
    with pytest.raises(DlibFormatError, match="not a dlib network"):
        read_net(b"\x01\x02\x01\x05hello")
