"""audiokv.* GGUF keys: write -> read round trip, byte-exact copy, validation of every key."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from audiokv_edge.profile import gguf_keys as gp
from audiokv_edge.profile.head_profile import HeadProfile
from audiokv_edge.profile.defaults import ProfileDefaults
from tests.gguf_testfiles import write_tiny_gguf


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _profile(n_layer=3, n_head_kv=2, seed=1, **source) -> HeadProfile:
    rng = np.random.default_rng(seed)
    scores = (rng.random((n_layer, n_head_kv)) + 0.01).astype(np.float32).astype(np.float64)
    return HeadProfile(scores, source={"calibration": "unit-test", **source})


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.gguf"
    write_tiny_gguf(path, extra_kv={"general.description": "kept as is"})
    return path


def test_no_profile_reads_none(model):
    assert gp.read_profile(model) is None
    assert gp.read_defaults(model) is None


@pytest.mark.parametrize("alignment", [None, 64])
def test_round_trip_scores_source_defaults(tmp_path, alignment):
    src = tmp_path / "m.gguf"
    write_tiny_gguf(src, alignment=alignment)
    before = _sha(src)
    prof = _profile(date="2026-01-02T03:04:05Z")
    dflt = ProfileDefaults(window=16, sss_alpha=0.5, sss_gamma=0.7, keep=0.4)
    dst = tmp_path / "out.gguf"
    stored = gp.write_profile(src, prof, dst, dflt)
    got, got_d = gp.read_stored(dst)
    np.testing.assert_array_equal(got.scores, prof.scores)          # float32-representable: exact
    assert got.source == stored.source
    assert got.source["calibration"] == "unit-test" and got.source["date"] == "2026-01-02T03:04:05Z"
    assert got.source["tool_version"].startswith("audiokv-edge")
    assert got_d == dflt
    assert _sha(src) == before                                       # input untouched
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_scores_are_stored_as_float32(model, tmp_path):
    prof = HeadProfile(np.array([[0.1, 0.2], [1 / 3, 0.4], [0.5, 2 / 3]]), source={"calibration": "c"})
    gp.write_profile(model, prof, tmp_path / "o.gguf")
    got = gp.read_profile(tmp_path / "o.gguf")
    np.testing.assert_array_equal(got.scores, prof.scores.astype(np.float32).astype(np.float64))


def test_copy_is_byte_exact_for_tensors_and_metadata(model, tmp_path):
    dst = tmp_path / "o.gguf"
    gp.write_profile(model, _profile(), dst)
    a, b = GGUFReader(model), GGUFReader(dst)
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for ta, tb in zip(a.tensors, b.tensors):
        assert ta.tensor_type == tb.tensor_type
        assert list(ta.shape) == list(tb.shape)
        assert ta.data_offset - a.data_offset == tb.data_offset - b.data_offset
        assert ta.data.tobytes() == tb.data.tobytes()
        assert tb.data_offset % b.alignment == 0
    assert bytes(a.data[a.data_offset:]) == bytes(b.data[b.data_offset:])
    other = [k for k in a.fields if not k.startswith("GGUF.")]
    assert other == [k for k in b.fields if not k.startswith(("GGUF.", "audiokv."))]
    for k in other:
        assert a.fields[k].contents() == b.fields[k].contents(), k


def test_rewrite_replaces_existing_profile(model, tmp_path):
    first, second = tmp_path / "1.gguf", tmp_path / "2.gguf"
    gp.write_profile(model, _profile(seed=1), first, ProfileDefaults(keep=0.6))
    prof2 = _profile(seed=2, extra="note")
    gp.write_profile(first, prof2, second)
    got, got_d = gp.read_stored(second)
    np.testing.assert_array_equal(got.scores, prof2.scores)
    assert got.source["extra"] == "note"
    assert got_d is None
    n_keys = [k for k in GGUFReader(second).fields if k == gp.KEY_SCORES]
    assert len(n_keys) == 1
    assert bytes(GGUFReader(model).data[GGUFReader(model).data_offset:]) == \
        bytes(GGUFReader(second).data[GGUFReader(second).data_offset:])


def test_progress_callback_counts_every_data_byte(model, tmp_path):
    seen = []
    gp.write_profile(model, _profile(), tmp_path / "o.gguf", progress=seen.append)
    r = GGUFReader(model)
    assert sum(seen) == r.data.shape[0] - r.data_offset


def test_head_count_kv_fallback_and_per_layer_array(tmp_path):
    src = tmp_path / "arr.gguf"
    write_tiny_gguf(src, n_layer=3, head_count_kv_array=[2, 2, 2])
    assert gp.model_shape(gp.open_gguf(src)).n_head_kv == 2
    bad = tmp_path / "var.gguf"
    write_tiny_gguf(bad, n_layer=3, head_count_kv_array=[2, 1, 2])
    with pytest.raises(gp.GGUFProfileError, match="varies per layer"):
        gp.write_profile(bad, _profile(), tmp_path / "o.gguf")


# ------------------------------------------------------------------------------------- write-side refusals

def test_wrong_shape_refused(model, tmp_path):
    with pytest.raises(gp.GGUFProfileError, match=r"shape \(4, 2\).*3 layers x 2 KV heads"):
        gp.write_profile(model, _profile(n_layer=4), tmp_path / "o.gguf")
    assert not (tmp_path / "o.gguf").exists()


def test_same_path_refused_also_via_links(model, tmp_path):
    link = tmp_path / "link.gguf"
    os.symlink(model, link)
    hard = tmp_path / "hard.gguf"
    os.link(model, hard)
    before = _sha(model)
    for dst in (model, link, hard, tmp_path / "." / "model.gguf"):
        with pytest.raises(gp.GGUFProfileError, match="is the input"):
            gp.write_profile(model, _profile(), dst)
    assert _sha(model) == before


def test_source_needs_calibration(model, tmp_path):
    with pytest.raises(gp.GGUFProfileError, match="calibration"):
        gp.write_profile(model, HeadProfile(np.ones((3, 2))), tmp_path / "o.gguf")
    with pytest.raises(gp.GGUFProfileError, match="must be a string"):
        gp.write_profile(model, HeadProfile(np.ones((3, 2)), source={"calibration": "c", "n": 3}),
                         tmp_path / "o.gguf")
    assert not (tmp_path / "o.gguf").exists()


@pytest.mark.parametrize("kwargs, match", [
    ({"window": 0}, "window"), ({"keep": 0.0}, "keep"), ({"keep": 1.5}, "keep"),
    ({"sss_alpha": float("nan")}, "finite"), ({"sss_gamma": 1 / 3}, "decimal places"),
    ({"window": 3.0}, "int"),
])
def test_defaults_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProfileDefaults(**kwargs)


# ------------------------------------------------------------------------------------- read-side validation

def _write_raw(path, kv: dict, n_layer=3, n_head_kv=2):
    """A GGUF whose audiokv.* keys are written verbatim (type, value) to test the reader's checks."""
    w = GGUFWriter(str(path), "qwen2")
    w.add_block_count(n_layer)
    w.add_head_count(4)
    w.add_head_count_kv(n_head_kv)
    for key, (gtype, value, sub) in kv.items():
        w.add_key_value(key, value, gtype, sub_type=sub)
    w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _good_kv(scores=None):
    s = np.asarray(scores if scores is not None else np.arange(1, 7), dtype=np.float32).ravel()
    return {
        gp.KEY_FORMAT_VERSION: (GGUFValueType.UINT32, 1, None),
        gp.KEY_N_LAYER: (GGUFValueType.UINT32, 3, None),
        gp.KEY_N_HEAD_KV: (GGUFValueType.UINT32, 2, None),
        gp.KEY_SCORES: (GGUFValueType.ARRAY, [float(v) for v in s], GGUFValueType.FLOAT32),
        gp.KEY_SCORES_HEX: (GGUFValueType.STRING, " ".join(float(v).hex() for v in s), None),
        "audiokv.source.calibration": (GGUFValueType.STRING, "c", None),
        "audiokv.source.date": (GGUFValueType.STRING, "d", None),
        "audiokv.source.tool_version": (GGUFValueType.STRING, "t", None),
    }


def test_raw_good_file_reads(tmp_path):
    _write_raw(tmp_path / "g.gguf", _good_kv())
    np.testing.assert_array_equal(gp.read_profile(tmp_path / "g.gguf").scores, np.arange(1, 7).reshape(3, 2))


def _mutate(name):
    kv = _good_kv()
    if name == "version":
        kv[gp.KEY_FORMAT_VERSION] = (GGUFValueType.UINT32, 2, None)
    elif name == "no_version":
        del kv[gp.KEY_FORMAT_VERSION]
    elif name == "version_type":
        kv[gp.KEY_FORMAT_VERSION] = (GGUFValueType.INT32, 1, None)
    elif name == "scores_type":
        kv[gp.KEY_SCORES] = (GGUFValueType.ARRAY, list(range(1, 7)), GGUFValueType.INT32)
    elif name == "scores_len":
        kv[gp.KEY_N_LAYER] = (GGUFValueType.UINT32, 2, None)
    elif name == "nan":
        kv.update({k: v for k, v in _good_kv([1, 2, np.nan, 4, 5, 6]).items() if "scores" in k})
    elif name == "negative":
        kv.update({k: v for k, v in _good_kv([1, 2, 3, -4, 5, 6]).items() if "scores" in k})
    elif name == "zero":
        kv.update({k: v for k, v in _good_kv(np.zeros(6)).items() if "scores" in k})
    elif name == "hex_mismatch":
        kv[gp.KEY_SCORES_HEX] = (GGUFValueType.STRING, " ".join(["0x1p+0"] * 6), None)
    elif name == "hex_garbage":
        kv[gp.KEY_SCORES_HEX] = (GGUFValueType.STRING, "one two", None)
    elif name == "no_source":
        del kv["audiokv.source.date"]
    elif name == "unknown_key":
        kv["audiokv.budget_mode"] = (GGUFValueType.STRING, "x", None)
    elif name == "defaults_type":
        kv["audiokv.defaults.window"] = (GGUFValueType.FLOAT32, 32.0, None)
    elif name == "defaults_range":
        kv["audiokv.defaults.keep"] = (GGUFValueType.FLOAT64, 1.5, None)
    return kv


@pytest.mark.parametrize("name, match", [
    ("version", "format_version = 2 is not supported"),
    ("no_version", "no audiokv.format_version"),
    ("version_type", "format_version has type INT32, expected UINT32"),
    ("scores_type", "expected ARRAY of FLOAT32"),
    ("scores_len", "has 6 values but"),
    ("nan", "NaN or infinite score at layer 1, KV head 0"),
    ("negative", "negative score at layer 1, KV head 1"),
    ("zero", "all zero"),
    ("hex_mismatch", "does not hold the same values"),
    ("hex_garbage", "not a list of hex floats"),
    ("no_source", "missing audiokv.source.date"),
    ("unknown_key", "unknown key.*audiokv.budget_mode"),
    ("defaults_type", "defaults.window has type FLOAT32"),
    ("defaults_range", "keep must be in"),
])
def test_reader_names_the_problem(tmp_path, name, match):
    path = tmp_path / f"{name}.gguf"
    _write_raw(path, _mutate(name))
    with pytest.raises(gp.GGUFProfileError, match=match):
        gp.read_stored(path)


def test_reader_checks_shape_against_model(tmp_path):
    path = tmp_path / "m.gguf"
    _write_raw(path, _good_kv(), n_layer=4)
    with pytest.raises(gp.GGUFProfileError, match=r"3 layers x 2 KV heads but the model \(qwen2\) has 4 x 2"):
        gp.read_profile(path)


def test_not_a_gguf_and_truncated(model, tmp_path):
    txt = tmp_path / "x.gguf"
    txt.write_text("hello world, not a model\n")
    with pytest.raises(gp.GGUFProfileError, match="not a GGUF file"):
        gp.read_profile(txt)
    empty = tmp_path / "e.gguf"
    empty.write_bytes(b"")
    with pytest.raises(gp.GGUFProfileError, match="not a GGUF file"):
        gp.read_profile(empty)
    data = model.read_bytes()
    r = GGUFReader(model)
    for cut, match in ((20, "truncated"), (r.tensors[0].field.offset + 3, "truncated"),
                       (len(data) - 40, "truncated: tensor 'output_norm.weight' ends at byte")):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(gp.GGUFProfileError, match=match):
            gp.read_profile(bad)


def test_header_parser_agrees_with_gguf_py(tmp_path):
    """gguf_header.GGUFHeader (our fast parser) reads what gguf-py's GGUFReader reads, for every value type."""
    from audiokv_edge.profile.gguf_header import GGUFHeader

    path = tmp_path / "types.gguf"
    w = GGUFWriter(str(path), "qwen2")
    w.add_block_count(2)
    values = {"t.u8": (GGUFValueType.UINT8, 7), "t.i8": (GGUFValueType.INT8, -7), "t.u16": (GGUFValueType.UINT16, 700),
              "t.i16": (GGUFValueType.INT16, -700), "t.u32": (GGUFValueType.UINT32, 70000),
              "t.i32": (GGUFValueType.INT32, -70000), "t.f32": (GGUFValueType.FLOAT32, 0.25),
              "t.bool": (GGUFValueType.BOOL, True), "t.u64": (GGUFValueType.UINT64, 2**40),
              "t.i64": (GGUFValueType.INT64, -2**40), "t.f64": (GGUFValueType.FLOAT64, 0.1),
              "t.str": (GGUFValueType.STRING, "héllo")}
    for k, (t, v) in values.items():
        w.add_key_value(k, v, t)
    w.add_array("t.arr_str", ["a", "", "ccc"] * 50)
    w.add_array("t.arr_i32", list(range(-5, 5)))
    w.add_array("t.arr_bool", [True, False])
    w.add_tensor("a.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    w.add_tensor("b.weight", np.arange(5, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    h, r = GGUFHeader(path), GGUFReader(path)
    assert list(h.entries) == [k for k in r.fields if not k.startswith("GGUF.")]
    for k, (t, v) in values.items():
        assert h.scalar(k, (t,)) == r.fields[k].contents() == (v if t != GGUFValueType.FLOAT32 else 0.25), k
    np.testing.assert_array_equal(h.array("t.arr_i32", (GGUFValueType.INT32,)), list(range(-5, 5)))
    assert h.entries["t.arr_str"].count == 150
    assert [(t.name, t.offset, t.n_bytes) for t in h.tensors] == \
        [(t.name, t.data_offset - r.data_offset, t.n_bytes) for t in r.tensors]
    assert h.data_offset == r.data_offset
    with pytest.raises(gp.GGUFFormatError, match="t.u32 has type UINT32, expected STRING"):
        h.scalar("t.u32", (GGUFValueType.STRING,))


def test_big_endian_gguf_round_trip(tmp_path):
    """A big-endian GGUF keeps its byte order: the new keys are written big-endian and read back exactly."""
    from gguf import GGUFEndian

    src = tmp_path / "be.gguf"
    w = GGUFWriter(str(src), "qwen2", endianess=GGUFEndian.BIG)
    w.add_block_count(3)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_tensor("output_norm.weight", np.arange(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    dst = tmp_path / "be-out.gguf"
    prof = _profile()
    gp.write_profile(src, prof, dst, ProfileDefaults(window=4, keep=0.25))
    got, d = gp.read_stored(dst)
    np.testing.assert_array_equal(got.scores, prof.scores)
    assert d == ProfileDefaults(window=4, keep=0.25)
    r = GGUFReader(dst)
    assert r.endianess == GGUFEndian.BIG
    np.testing.assert_array_equal(r.fields[gp.KEY_SCORES].contents(), prof.scores.ravel().astype(np.float32))
    assert r.fields[gp.KEY_FORMAT_VERSION].contents() == 1
