"""Lazy annotation reading: byte spans of JSON/JSONL records, equal to a full json.load."""
import json

import numpy as np
import pytest

from lmm.data import sources
from lmm.data.dataset import SampleProcessor, Skip, process
from lmm.data.sources import ConcatSource, JsonSource, open_sources
from tests.llava_fixture import good_records, write_dataset

AWKWARD = [{"id": i, "conversations": [{"from": "human", "value": 'é ünï "quoted" \\ ] } { , ' * (i % 4)}],
            "nested": [[1, {"a": None}], 2.5e-3, True]} for i in range(120)]


@pytest.mark.parametrize("indent", [None, 2])
def test_json_list_records_equal_json_load_across_chunk_edges(tmp_path, monkeypatch, indent):
    monkeypatch.setattr(sources, "CHUNK", 61)  # many records straddle a read boundary
    path = tmp_path / "a.json"
    path.write_text(json.dumps(AWKWARD, indent=indent, ensure_ascii=False), encoding="utf-8")
    source = JsonSource(path, tmp_path)
    assert len(source) == len(AWKWARD)
    assert [source.read(i) for i in range(len(source))] == json.loads(path.read_text(encoding="utf-8"))


def test_jsonl_skips_blank_lines_and_reports_a_bad_line_as_a_skip(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "CHUNK", 50)
    path = tmp_path / "a.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in AWKWARD[:10]]
    path.write_text("\n".join(lines[:5]) + "\n\n  \r\n" + "{not json\n[1, 2]\n" + "\n".join(lines[5:]), encoding="utf-8")
    source = JsonSource(path, tmp_path)
    assert len(source) == 12
    assert [source.read(i) for i in (0, 4, 7, 11)] == [AWKWARD[0], AWKWARD[4], AWKWARD[5], AWKWARD[9]]
    with pytest.raises(Exception) as bad:
        source.read(5)
    assert bad.value.reason == "invalid_json" and "a.jsonl record 5" in str(bad.value)
    with pytest.raises(Exception) as not_object:
        source.read(6)
    assert not_object.value.reason == "not_a_record"


@pytest.mark.parametrize("text, message", [
    ('{"id": 1}', "expected a JSON list"),
    ('[{"id": 1}, {"id": 2,}]', r"invalid JSON at byte 21 \(line 1\)"),
    ('[{"id": 1}\n {"id": 2}]', r"expected ',' or '\]' at byte 12 \(line 2\)"),
    ('[{"id": 1},', "not closed"),
])
def test_a_broken_json_file_is_a_clear_error_with_its_position(tmp_path, text, message):
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        JsonSource(tmp_path / "bad.json", tmp_path)


def test_spans_are_cached_and_follow_the_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(AWKWARD[:3]))
    index = tmp_path / "index"
    assert len(JsonSource(path, tmp_path, index_dir=str(index))) == 3
    cached = list(index.glob("a-*.spans.npy"))
    assert len(cached) == 1 and np.load(cached[0]).shape == (3, 2)
    path.write_text(json.dumps(AWKWARD[:5]))  # changed file: new fingerprint, new spans
    assert len(JsonSource(path, tmp_path, index_dir=str(index))) == 5


def test_a_worker_copy_reads_without_the_parent_file_handle(tmp_path):
    import pickle

    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in AWKWARD[:4]))
    source = JsonSource(path, tmp_path)
    source.read(0)
    copy = pickle.loads(pickle.dumps(source))
    assert copy._fd is None and copy.read(3) == AWKWARD[3]


def test_several_files_with_their_own_image_roots(tmp_path, tiny_lmm):
    a = write_dataset(tmp_path / "rootA", good_records(4, "a"), "a.json")
    b = write_dataset(tmp_path / "rootB", good_records(3, "b"), "b.jsonl")
    source = open_sources([str(a), str(b)], [str(tmp_path / "rootA"), str(tmp_path / "rootB")])
    assert isinstance(source, ConcatSource) and len(source) == 7
    assert [source.read(i)["id"] for i in range(7)] == ["a0", "a1", "a2", "a3", "b0", "b1", "b2"]
    assert source.open_image(5, "coco/b1.jpg") == tmp_path / "rootB/coco/b1.jpg"
    processor = SampleProcessor(tiny_lmm.tokenizer, tiny_lmm.template, tiny_lmm.image_transform,
                                tiny_lmm.num_visual_tokens, max_length=256)
    samples = [process(source, processor, i) for i in range(7)]
    assert not any(isinstance(s, Skip) for s in samples)
    with pytest.raises(ValueError, match="one root for all files or one per file"):
        open_sources([str(a), str(b)], [str(tmp_path)] * 3)
    with pytest.raises(ValueError, match=r"valid: \['json', 'litdata'\]"):
        open_sources([str(a)], str(tmp_path), kind="webdataset")
