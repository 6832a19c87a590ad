"""Chunks of snapshot files for remote actors: only listed files of kept, READY snapshots."""

from learner.weights_server import read_chunk
from protocol.weights import publish_snapshot
from tiny import tiny_model, tiny_tokenizer


def test_chunks_reassemble_the_file_and_nothing_else_is_served(tmp_path):
    info = publish_snapshot(tmp_path, 3, tiny_model(0), tiny_tokenizer(), keep=1)
    target = tmp_path / "v000003" / "model.safetensors"
    data, offset, size = b"", 0, None
    while size is None or offset < size:
        chunk, size = read_chunk(tmp_path, 3, "model.safetensors", offset, 1000)
        data, offset = data + chunk, offset + len(chunk)
    assert data == target.read_bytes() and info["version"] == 3
    assert read_chunk(tmp_path, 3, "manifest.json", 0, 10)[1] > 0
    assert read_chunk(tmp_path, 3, "../../etc/passwd", 0, 10) is None  # not listed in the manifest
    assert read_chunk(tmp_path, 3, "READY", 0, 10) is None
    assert read_chunk(tmp_path, 2, "model.safetensors", 0, 10) is None  # never published
    (tmp_path / "v000003" / "READY").unlink()
    assert read_chunk(tmp_path, 3, "model.safetensors", 0, 10) is None  # not READY


def test_a_chunk_is_a_view_of_the_file_that_outlives_its_pruning(tmp_path):
    import shutil

    publish_snapshot(tmp_path, 1, tiny_model(0), tiny_tokenizer(), keep=1)
    target = tmp_path / "v000001" / "model.safetensors"
    expected = target.read_bytes()
    size = len(expected)
    chunk, got_size = read_chunk(tmp_path, 1, "model.safetensors", 4097, 20_000)  # not on a page boundary
    assert got_size == size and len(chunk) == 20_000 and isinstance(chunk, memoryview)
    tail, _ = read_chunk(tmp_path, 1, "model.safetensors", size - 10, 1000)
    assert bytes(tail) == expected[-10:]
    assert read_chunk(tmp_path, 1, "model.safetensors", size, 1000) == (b"", size)  # at the end: empty
    shutil.rmtree(tmp_path / "v000001")  # pruned while the chunk is still being sent
    assert bytes(chunk) == expected[4097:24_097]
