"""The demo model's speech data set: the recording sequence is a pure function of its settings (the default one is
the sequence the built-in model was trained on), and a second long-form sequence adds to a data directory without
touching what is there."""

from __future__ import annotations

import pytest

from audiokv_edge.demo_model import dataset


def test_default_sequence_is_the_one_the_model_was_trained_on():
    specs = dataset.recording_specs(8)
    assert [s.kind for s in specs] == ["packed", "packed", "long", "packed", "packed", "short", "packed", "packed"]
    assert specs[0].id == "000000" and specs[0].voice.label == "espeak-ng:en-us+klatt:s0.94:p0:r0:n0"
    assert all(s.long_range_s == dataset.LONG_RANGE_S for s in specs)
    assert dataset.recording_specs(8) == specs


def test_long_form_sequence_has_its_own_ids_kinds_and_range():
    specs = dataset.recording_specs(20, seed=20_000, kind_weights={"long": 1.0}, id_prefix="L",
                                    long_range_s=(60, 180))
    assert [s.id for s in specs[:2]] == ["L000000", "L000001"]
    assert {s.kind for s in specs} == {"long"} and {s.long_range_s for s in specs} == {(60.0, 180.0)}
    assert not any(s.voice.reserved for s in specs)


@pytest.mark.parametrize("kw", [dict(kind_weights={"medium": 1.0}), dict(kind_weights={"long": -1.0, "short": 2.0}),
                                dict(kind_weights={}), dict(long_range_s=(10, 20)), dict(long_range_s=(90, 60))])
def test_bad_settings_are_refused(kw):
    with pytest.raises(ValueError):
        dataset.recording_specs(3, **kw)


@pytest.mark.slow
def test_long_form_set_adds_to_a_data_directory(tmp_path):
    sentences = ["The quick brown fox jumps over the lazy dog.", "A stitch in time saves nine.",
                 "Every cloud has a silver lining, they say."]
    assert dataset.build(tmp_path, 1, sentences=sentences, kind_weights={"short": 1.0}, workers=1) == 1
    assert dataset.build(tmp_path, 1, seed=20_000, sentences=sentences, kind_weights={"long": 1.0}, id_prefix="L",
                         long_range_s=(30, 31), workers=1) == 2
    first, extra = dataset.read_manifest(tmp_path)
    assert first["id"] == "000000" and first["kind"] == "short"
    assert extra["id"] == "L000000" and extra["kind"] == "long" and extra["seconds"] >= 30.0
    assert (tmp_path / "audio" / "L000000.flac").is_file()
    # a re-run finds both done and synthesises nothing
    assert dataset.build(tmp_path, 1, seed=20_000, sentences=sentences, kind_weights={"long": 1.0}, id_prefix="L",
                         long_range_s=(30, 31), workers=1) == 2
