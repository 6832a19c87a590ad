"""Snapshot format: publish/verify/load round trip, corruption, pruning, crashes, canary."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file
from tiny import tiny_model, tiny_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from protocol.weights import (
    CANARY_TOL,
    canonical_tensors,
    folder_dtype,
    saved_precision,
    WeightsError,
    canary_logprob,
    latest_snapshot,
    load_state_dict,
    param_digest,
    publish_snapshot,
    verify_snapshot,
)

torch.set_num_threads(1)


def _publish(tmp_path, version=1, seed=0, keep=3):
    return publish_snapshot(tmp_path / "weights", version, tiny_model(seed), tiny_tokenizer(), keep=keep)


def test_publish_verify_load_roundtrip(tmp_path):
    model = tiny_model(0)
    info = publish_snapshot(tmp_path / "w", 7, model, tiny_tokenizer())
    folder = tmp_path / "w" / "v000007"
    assert info["folder"] == str(folder.absolute()) and info["version"] == 7
    assert (folder / "READY").is_file() and (folder / "model.safetensors").is_file()
    raw = (folder / "manifest.json").read_bytes()
    assert info["manifest_sha256"] == hashlib.sha256(raw).hexdigest()
    manifest = verify_snapshot(folder, info["manifest_sha256"])
    assert manifest["version"] == 7 and manifest["format"] == 2
    assert manifest["param_digest"] == info["digest"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(manifest["files"])
    # digest: in-memory model == manifest == file content == fresh from_pretrained
    assert param_digest(model.state_dict().items()) == info["digest"]
    state = load_state_dict(folder)
    assert param_digest(state.items()) == info["digest"]
    fresh = AutoModelForCausalLM.from_pretrained(folder)
    assert param_digest(fresh.state_dict().items()) == info["digest"]
    for name, t in model.state_dict().items():
        assert torch.equal(state[name], t), name
    # the folder is a complete HF folder: tokenizer loads and encodes the same
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok("12+34=")["input_ids"] == tiny_tokenizer()("12+34=")["input_ids"]


def test_param_digest_properties():
    model = tiny_model(0)
    items = list(model.state_dict().items())
    d = param_digest(items)
    assert d == param_digest(reversed(items))  # order independent
    assert d != param_digest(tiny_model(1).state_dict().items())
    # one ulp-sized change anywhere changes it
    changed = dict(items)
    w = changed["model.norm.weight"].clone()
    w[0] = torch.nextafter(w[0], torch.tensor(10.0))
    changed["model.norm.weight"] = w
    assert param_digest(changed.items()) != d
    # values, not storage: bf16-rounded values differ; the same values held in fp32 agree
    bf = [(n, t.to(torch.bfloat16)) for n, t in items]
    assert param_digest(bf) == param_digest(bf) != d
    assert param_digest([(n, t.float()) for n, t in bf]) == param_digest(bf)
    assert param_digest([(n, t.double()) for n, t in items]) == d
    # integer tensors keep their dtype in the digest
    assert param_digest([("i", torch.arange(3))]) != param_digest([("i", torch.arange(3, dtype=torch.int32))])
    # renaming changes it
    assert param_digest([("x" + n, t) for n, t in items]) != d


def test_corrupt_byte_names_the_file(tmp_path):
    info = _publish(tmp_path)
    folder = tmp_path / "weights" / "v000001"
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"corrupted: model\.safetensors checksum mismatch"):
        verify_snapshot(folder, info["manifest_sha256"])
    with pytest.raises(WeightsError, match="model.safetensors"):
        load_state_dict(folder)


def test_missing_ready_missing_file_and_wrong_manifest_sha(tmp_path):
    info = _publish(tmp_path)
    folder = tmp_path / "weights" / "v000001"
    with pytest.raises(WeightsError, match="manifest.json sha256 mismatch"):
        verify_snapshot(folder, "0" * 64)
    (folder / "config.json").unlink()
    with pytest.raises(WeightsError, match="missing: config.json"):
        verify_snapshot(folder, info["manifest_sha256"])
    (folder / "READY").unlink()
    with pytest.raises(WeightsError, match="missing READY"):
        verify_snapshot(folder)
    with pytest.raises(WeightsError, match="missing snapshot folder"):
        verify_snapshot(tmp_path / "nope")


def test_tampered_manifest_is_caught(tmp_path):
    info = _publish(tmp_path)
    folder = tmp_path / "weights" / "v000001"
    m = json.loads((folder / "manifest.json").read_text())
    m["param_digest"] = "f" * 64
    (folder / "manifest.json").write_text(json.dumps(m))
    verify_snapshot(folder)  # without the published sha the edit is undetectable
    with pytest.raises(WeightsError, match="manifest.json sha256 mismatch"):
        verify_snapshot(folder, info["manifest_sha256"])


def test_keep_prunes_older_versions(tmp_path):
    root = tmp_path / "weights"
    model, tok = tiny_model(0), tiny_tokenizer()
    for v in range(1, 6):
        publish_snapshot(root, v, model, tok, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["v000004", "v000005"]
    assert latest_snapshot(root) == root / "v000005"


def test_crash_mid_write_is_ignored(tmp_path):
    root = tmp_path / "weights"
    publish_snapshot(root, 1, tiny_model(0), tiny_tokenizer())
    # crash while writing v2: temp folder left behind
    tmp = root / ".tmp-v000002-deadbeef"
    tmp.mkdir()
    tiny_model(1).save_pretrained(tmp)
    # crash after rename but before READY
    tiny_model(2).save_pretrained(root / "v000003")
    assert latest_snapshot(root) == root / "v000001"
    with pytest.raises(WeightsError, match="missing READY"):
        verify_snapshot(root / "v000003")
    # the next publish cleans both up and becomes the latest
    publish_snapshot(root, 4, tiny_model(3), tiny_tokenizer())
    assert sorted(p.name for p in root.iterdir()) == ["v000001", "v000004"]
    assert latest_snapshot(root) == root / "v000004"
    assert latest_snapshot(tmp_path / "absent") is None


def test_republish_same_version_replaces(tmp_path):
    a = _publish(tmp_path, version=3, seed=0)
    b = _publish(tmp_path, version=3, seed=1)
    assert a["digest"] != b["digest"]
    assert verify_snapshot(b["folder"], b["manifest_sha256"])["param_digest"] == b["digest"]


def test_canary_deterministic_and_weight_sensitive(tmp_path):
    model, tok = tiny_model(0), tiny_tokenizer()
    model.train()
    c1 = canary_logprob(model, tok)
    assert model.training  # mode restored
    c2 = canary_logprob(model, tok)
    assert c1 == c2
    assert c1 < 0 and abs(c1) > 1.0  # 24 tokens (23 chars + eos), far from certain
    other = canary_logprob(tiny_model(1), tok)
    assert abs(other - c1) > 100 * CANARY_TOL
    # a small perturbation of one layer moves it beyond the tolerance
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.add_(0.05)
    assert abs(canary_logprob(model, tok) - c1) > CANARY_TOL
    # learner-side value == value from the published folder loaded from scratch
    base = tiny_model(0)
    info = publish_snapshot(tmp_path / "w", 1, base, tok)
    fresh = AutoModelForCausalLM.from_pretrained(info["folder"])
    fresh_tok = AutoTokenizer.from_pretrained(info["folder"])
    assert abs(canary_logprob(fresh, fresh_tok) - c1) < 1e-9


def test_a_tied_model_and_its_snapshot_agree_and_a_real_difference_is_caught(tmp_path):
    from learner.local_models import build_model_folder

    folder = build_model_folder(tmp_path / "q", "qwen2", tied=True, dtype="float32")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    state = model.state_dict()
    assert "lm_head.weight" in state and state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
    assert list(canonical_tensors(state.items())) == [n for n in state if n != "lm_head.weight"]
    info = publish_snapshot(tmp_path / "w", 1, model, AutoTokenizer.from_pretrained(folder))
    on_disk = load_state_dict(info["folder"])
    assert "lm_head.weight" not in on_disk
    assert param_digest(state.items()) == param_digest(on_disk.items()) == info["digest"]
    # the same values untied (a second tensor under the head's name) are another model
    untied = {**state, "lm_head.weight": state["lm_head.weight"].clone()}
    assert param_digest(untied.items()) != info["digest"]
    # a tiny change of the shared tensor, seen through either name, is caught
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1e-3
    assert param_digest(model.state_dict().items()) != info["digest"]


def test_bf16_snapshots_from_fp32_master_weights(tmp_path):
    from learner.local_models import build_model_folder

    folder = build_model_folder(tmp_path / "q", "qwen2", tied=True, dtype="bfloat16")
    assert folder_dtype(folder) == torch.bfloat16
    master = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        for p in master.parameters():
            p.add_(1e-4)  # a step off the bf16 grid, as an optimiser step is
    exact = [t.clone() for t in master.state_dict().values()]
    info = publish_snapshot(tmp_path / "w", 1, master, AutoTokenizer.from_pretrained(folder), dtype=torch.bfloat16)
    snap = load_state_dict(info["folder"])
    assert {t.dtype for t in snap.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "w" / "v000001" / "config.json").read_text())["dtype"] == "bfloat16"
    assert param_digest(master.state_dict().items()) != info["digest"]  # the master is not on the grid
    with saved_precision(master, torch.bfloat16):
        assert param_digest(master.state_dict().items()) == info["digest"]
    assert all(torch.equal(a, b) for a, b in zip(exact, master.state_dict().values()))  # master restored
    reloaded = AutoModelForCausalLM.from_pretrained(info["folder"], dtype=torch.float32)
    assert param_digest(reloaded.state_dict().items()) == info["digest"]


def _tied_qwen(tmp_path, dtype="float32"):
    from learner.local_models import build_model_folder

    folder = build_model_folder(tmp_path / "q", "qwen2", tied=True, dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_written_files_are_save_pretrained_files_byte_for_byte(tmp_path, tied, dtype):
    from protocol.weights import save_model, write_model
    from protocol.weights_hash import file_hash

    model = _tied_qwen(tmp_path)[0] if tied else tiny_model(0)
    save_model(model, tmp_path / "hf", dtype)
    hashes, digest = write_model(model, tmp_path / "own", dtype)
    ref = sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert sorted(p.name for p in (tmp_path / "own").iterdir()) == ref
    assert "generation_config.json" in ref and list(hashes) == ["model.safetensors"]
    for name in ref:
        a, b = (tmp_path / "hf" / name).read_bytes(), (tmp_path / "own" / name).read_bytes()
        assert (json.loads(a) == json.loads(b)) if name.endswith(".json") else (a == b), name
    assert hashes["model.safetensors"] == file_hash(tmp_path / "hf" / "model.safetensors")
    assert digest == param_digest(load_file(tmp_path / "hf" / "model.safetensors").items())


def test_shards_match_save_pretrained(tmp_path):
    from protocol.weights import write_config
    from protocol.weights_write import INDEX_NAME, write_weights

    model = tiny_model(0)
    max_shard = 20_000  # bytes: the tiny model (~50 kB in bf16) splits into several files
    model.save_pretrained(tmp_path / "hf", state_dict=None, max_shard_size=max_shard)
    state = canonical_tensors(model.state_dict().items())
    hashes, digest = write_weights(tmp_path / "own", state, None, model.num_parameters(), max_shard)
    shards = sorted(p.name for p in (tmp_path / "hf").glob("*.safetensors"))
    assert len(shards) > 2 and sorted(hashes) == shards
    for name in shards + [INDEX_NAME]:
        assert (tmp_path / "own" / name).read_bytes() == (tmp_path / "hf" / name).read_bytes(), name
    write_config(model, tmp_path / "own", None)
    fresh = AutoModelForCausalLM.from_pretrained(tmp_path / "own")
    assert param_digest(fresh.state_dict().items()) == digest == param_digest(model.state_dict().items())


def test_save_pretrained_fallback_agrees_with_the_writer(tmp_path):
    from protocol.weights import write_model, write_model_by_save_pretrained

    model = _tied_qwen(tmp_path)[0]
    a = write_model(model, tmp_path / "a", torch.bfloat16)
    b = write_model_by_save_pretrained(model, tmp_path / "b", torch.bfloat16)
    assert a == b and len(a[1]) == 64


def test_digest_encodes_values_exactly():
    from protocol.weights_hash import digest_entry

    x = torch.tensor([1.0, -0.0, 0.0, 3.140625, float("inf")])  # all bfloat16 values
    assert digest_entry("x", x) == digest_entry("x", x.to(torch.bfloat16)) == digest_entry("x", x.half())
    assert b"\0bf16\0" in digest_entry("x", x)
    y = x.clone()
    y[1] = 0.0  # -0.0 -> +0.0: equal as numbers, another value in the file
    assert digest_entry("x", y) != digest_entry("x", x)
    z = x.clone()
    z[3] = torch.nextafter(z[3], torch.tensor(10.0))  # one float32 ulp: off the bf16 grid
    assert b"\0f32\0" in digest_entry("x", z) and digest_entry("x", z) != digest_entry("x", x)
    assert digest_entry("x", z) == digest_entry("x", z.double())
    assert digest_entry("x", x.reshape(5, 1)) != digest_entry("x", x)  # shape counts
    for t in (torch.zeros(0), torch.tensor(2.0), torch.zeros(0, dtype=torch.bfloat16)):
        assert digest_entry("e", t) == digest_entry("e", t.float())
    assert digest_entry("b", torch.tensor([True, False])) != digest_entry("b", torch.tensor([1, 0], dtype=torch.uint8))


def test_format_1_manifest_is_refused_and_a_resuming_learner_rewrites_it(tmp_path):
    from learner.service import publish_start

    model, tok = tiny_model(0), tiny_tokenizer()
    info = publish_snapshot(tmp_path / "weights", 2, model, tok)
    mpath = tmp_path / "weights" / "v000002" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["format"] = 1
    mpath.write_text(json.dumps(m))
    with pytest.raises(WeightsError, match=r"format 1 .*this version reads format 2 \(BLAKE3\) only.*republished"):
        verify_snapshot(mpath.parent)
    again = publish_start(tmp_path, 2, model, tok, keep=3, dtype=None)
    assert again["digest"] == info["digest"] and verify_snapshot(mpath.parent)["format"] == 2


def test_digest_compacts_in_pieces_like_in_one(monkeypatch):
    from protocol import weights_hash

    x = torch.randn(11).to(torch.bfloat16).float()
    whole = weights_hash.digest_entry("x", x)
    monkeypatch.setattr(weights_hash, "COMPACT_PIECE", 3)  # 4 pieces, the last one short
    assert weights_hash.digest_entry("x", x) == whole == weights_hash.digest_entry("x", x.to(torch.bfloat16))
    x[10] = torch.nextafter(x[10], torch.tensor(10.0))  # off the grid in the last piece only
    assert b"\0f32\0" in weights_hash.digest_entry("x", x)


def test_odd_tensors_are_written_as_safetensors_writes_them(tmp_path):
    from safetensors.torch import save

    from protocol.weights_hash import digest_entry
    from protocol.weights_write import write_file

    tensors = {"s": torch.tensor(1.5), "b": torch.tensor([True, False]), "e": torch.zeros(0, 2),
               "i": torch.arange(3, dtype=torch.int32), "h": torch.ones(2, 2, dtype=torch.float16)}
    entries: dict = {}
    write_file(tmp_path / "x.safetensors", tensors, torch.bfloat16, entries)
    cast = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()}
    assert (tmp_path / "x.safetensors").read_bytes() == save(cast, metadata={"format": "pt"})
    assert entries == {k: digest_entry(k, v) for k, v in cast.items()}
    assert entries["e"] == digest_entry("e", torch.zeros(0, 2, dtype=torch.bfloat16))
