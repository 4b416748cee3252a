"""Extractive QA data: offsets, BERT windows, TFDS squad and JSONL readers, answers, batches."""

import json
import re

import numpy as np
import pytest

from ptjax import config as config_lib
from ptjax.data import corpora, mlm, qa, tokenizer
from ptjax.data.builders import text as text_builders
from ptjax.data.tf_setup import import_tf
from ptjax.evaluation import qa_postprocess

tf = import_tf()

import tensorflow_datasets as tfds  # noqa: E402

CLS, SEP = 4, 5


def _example(qid, question, context, *answers):
    """A QAExample whose answer starts are found in the context (first occurrence)."""
    starts = tuple(context.index(a) for a in answers)
    return qa.QAExample(qid, question, context, tuple(answers), starts)


NORMANS = (
    "The Normans (Norman: Nourmands; French: Normands; Latin: Normanni) were the people who in "
    "the 10th and 11th centuries gave their name to Normandy, a region in France."
)
GAUDI = (
    "Antoni Gaudí designed the Sagrada Família in Barcelona; construction began in 1882 and the "
    "basilica was consecrated by Pope Benedict XVI in 2010."
)
EMOJI = (
    "The emoji 😀 is called 'grinning face' and was added to Unicode 6.1 in 2010; in Japanese "
    "the word for a smiling face is 笑顔 (egao)."
)
ZURICH = "Zürich is the largest city in Switzerland, with about 420,000 inhabitants."
EXAMPLES = [
    _example("n1", "In what country is Normandy located?", NORMANS, "France"),
    _example("n2", "When were the Normans in Normandy?", NORMANS, "10th and 11th centuries"),
    _example("g1", "Who designed the Sagrada Família?", GAUDI, "Antoni Gaudí", "Gaudí"),
    _example("g2", "Where is the Sagrada Família?", GAUDI, "Barcelona"),
    _example("e1", "What is 😀 called?", EMOJI, "grinning face"),
    _example("e2", "What is the Japanese word for a smiling face?", EMOJI, "笑顔"),
    _example("z1", "Which is the largest city in Switzerland?", ZURICH, "Zürich"),
    _example("z2", "How many people live in Zürich?", ZURICH, "420,000"),
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "bert.model"
    texts = text_builders.bible_verses()[:1000]
    return tokenizer.train_tokenizer(
        texts, str(path), vocab_size=800, control_symbols=mlm.BERT_CONTROL_SYMBOLS
    )


def _features(examples, tok, seq_len=128, max_query_len=32, doc_stride=32):
    return list(
        qa.make_features(
            examples, tok, seq_len=seq_len, max_query_len=max_query_len, doc_stride=doc_stride
        )
    )


def _config(**dataset):
    config = config_lib.base_config()
    config.seq_len = 64
    config.per_device_batch_size = 1
    config.qa.max_query_len = 16
    config.qa.doc_stride = 16
    for key, value in dataset.items():
        config.dataset[key] = value
    return config


def test_encode_with_offsets_maps_tokens_to_characters(tok):
    for text in [NORMANS, GAUDI, EMOJI, ZURICH, " two  spaces\tand a tab", "éé😀😀", ""]:
        ids, spans = tok.encode_with_offsets(text)
        assert ids == tok.encode(text)
        assert len(spans) == len(ids)
        starts = [s for s, _ in spans]
        assert starts == sorted(starts)  # In text order.
        covered = set()
        for start, end in spans:
            assert 0 <= start <= end <= len(text)
            piece = text[start:end]
            assert piece == piece.strip() or not piece.strip()  # No word-boundary whitespace.
            covered.update(range(start, end))
        assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())
    ids, spans = tok.encode_with_offsets("Café 😀")
    pieces = [(tok.id_to_piece(i), "Café 😀"[s:e]) for i, (s, e) in zip(ids, spans, strict=True)]
    # Byte-fallback pieces of one character all span that character.
    assert [text for piece, text in pieces if piece.startswith("<0x")] == ["é"] * 2 + ["😀"] * 4


def test_gold_tokens_map_back_to_the_answer(tok):
    features = _features(EXAMPLES, tok, seq_len=256)
    assert len(features) == len(EXAMPLES)  # Every context fits one window of 256.
    for feature, example in zip(features, EXAMPLES, strict=True):
        s, e = feature.start_position, feature.end_position
        assert 0 < s <= e
        assert feature.offsets[s, 0] >= 0 and feature.offsets[e, 0] >= 0
        text = example.context[feature.offsets[s, 0] : feature.offsets[e, 1]]
        assert text == example.answers[0]
        # [CLS] question [SEP] context [SEP]; types 0 then 1; offsets only on context tokens.
        question = tok.encode(example.question)
        ids = feature.input_ids
        assert ids[0] == CLS and ids[len(question) + 1] == SEP and ids[-1] == SEP
        assert list(ids[1 : len(question) + 1]) == question
        assert feature.context_offset == len(question) + 2
        assert list(ids[feature.context_offset : -1]) == tok.encode(example.context)
        types = feature.token_type_ids
        assert not types[: feature.context_offset].any() and types[feature.context_offset :].all()
        context = np.arange(len(ids))[feature.offsets[:, 0] >= 0]
        np.testing.assert_array_equal(context, np.arange(feature.context_offset, len(ids) - 1))
        assert feature.max_context[context].all() and not feature.max_context[: context[0]].any()


def _brute_max_context(windows, window, position):
    """BERT run_squad's _check_is_max_context, verbatim in spirit."""
    best_score, best_index = None, None
    for index, (start, length) in enumerate(windows):
        end = start + length - 1
        if position < start or position > end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best_index = score, index
    return window == best_index


def test_long_context_overlapping_windows_and_max_context(tok):
    filler = " ".join(text_builders.bible_verses()[:6])
    context = f"{filler} The treasure is hidden in Ravenholm near the old mill. {filler}"
    example = _example("long", "Where is the treasure hidden?", context, "Ravenholm")
    seq_len, max_query_len, stride = 48, 16, 12
    features = _features([example], tok, seq_len, max_query_len, stride)
    context_ids = tok.encode(context)
    window_len = seq_len - 3 - len(tok.encode(example.question))
    assert len(features) > 3
    windows = [(f.window_start, len(f.input_ids) - f.context_offset - 1) for f in features]
    assert [start for start, _ in windows] == [stride * i for i in range(len(features))]
    assert all(length == window_len for _, length in windows[:-1])  # Overlapping, full windows.
    assert windows[-1][0] + windows[-1][1] == len(context_ids)  # The last reaches the end.
    assert all(len(f.input_ids) <= seq_len for f in features)
    holding = 0
    for f, (start, length) in zip(features, windows, strict=True):
        np.testing.assert_array_equal(
            f.input_ids[f.context_offset : -1], context_ids[start : start + length]
        )
        if f.start_position:
            holding += 1
            text = context[f.offsets[f.start_position, 0] : f.offsets[f.end_position, 1]]
            assert text == "Ravenholm"
        else:
            assert f.end_position == 0  # Answer not wholly inside: points at [CLS].
    assert holding >= 2  # Overlapping windows both hold the answer.
    # Max context: exactly one window per context token, the one BERT's rule picks.
    owners = np.zeros(len(context_ids), int)
    for w, (f, (start, length)) in enumerate(zip(features, windows, strict=True)):
        flags = f.max_context[f.context_offset : f.context_offset + length]
        for j, flag in enumerate(flags):
            assert flag == _brute_max_context(windows, w, start + j)
            owners[start + j] += flag
    np.testing.assert_array_equal(owners, 1)


def test_question_is_truncated(tok):
    question = "What, according to the long and winding question that goes on, is the answer?"
    example = _example("q", question, ZURICH, "Zürich")
    (feature,) = _features([example], tok, seq_len=96, max_query_len=5)
    assert feature.context_offset == 7
    assert list(feature.input_ids[1:6]) == tok.encode(question)[:5]
    assert feature.input_ids[6] == SEP
    with pytest.raises(ValueError, match="qa.max_query_len"):
        _features([example], tok, seq_len=8, max_query_len=5)


def _squad_record(example):
    return {
        "id": example.id,
        "title": "t",
        "context": example.context,
        "question": example.question,
        "answers": {"text": list(example.answers), "answer_start": list(example.answer_starts)},
    }


def test_tfds_squad_through_mock_data(tmp_path, monkeypatch):
    config = _config(name="squad")
    records = {"validation": [_squad_record(e) for e in EXAMPLES]}

    def as_dataset(self, split, **kwargs):
        del kwargs
        return tf.data.Dataset.from_generator(
            lambda: iter(records[split]), output_signature=self.info.features.get_tensor_spec()
        )

    with pytest.raises(FileNotFoundError, match=r"tfds build squad --data_dir="):
        qa.load_examples(config.dataset, "validation", data_dir=str(tmp_path))
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        got = qa.load_examples(config.dataset, "validation", data_dir=str(tmp_path))
        assert got == EXAMPLES
        bad = _squad_record(EXAMPLES[0])
        bad["id"], bad["answers"]["answer_start"] = "bad-one", [3]
        records["validation"].append(bad)
        with pytest.raises(corpora.DataError, match="'bad-one'.*answer_start=3"):
            qa.load_examples(config.dataset, "validation", data_dir=str(tmp_path))


def _jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return str(path)


def _record(example):
    answers = [
        {"text": t, "answer_start": s}
        for t, s in zip(example.answers, example.answer_starts, strict=True)
    ]
    return {
        "id": example.id,
        "question": example.question,
        "context": example.context,
        "answers": answers,
    }


def test_qa_files_reading_and_sharding(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [_record(e) for e in EXAMPLES[:5]])
    (tmp_path / "more.jsonl").write_text(
        "\n" + json.dumps(_record(EXAMPLES[5])) + "\n\n", encoding="utf-8"
    )
    valid = _jsonl(tmp_path / "valid.jsonl", [_record(e) for e in EXAMPLES[6:]])
    config = _config(name="qa_files", train_files=f"{train},{tmp_path}/more.jsonl")
    config.dataset.eval_files = valid
    assert qa.load_examples(config.dataset, "train", data_dir="") == EXAMPLES[:6]
    assert qa.load_examples(config.dataset, "validation", data_dir="") == EXAMPLES[6:]
    shards = [
        qa.load_examples(config.dataset, "train", data_dir="", shard=(i, 4)) for i in range(4)
    ]
    assert [len(s) for s in shards] == [1, 2, 1, 2]
    assert sum(shards, []) == EXAMPLES[:6]  # Even, contiguous, disjoint.
    with pytest.raises(corpora.DataError, match="dataset.test_files"):
        qa.load_examples(config.dataset, "test", data_dir="")


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"bad.jsonl:2: invalid JSON"),
        ('{"id": "x", "question": "q", "answers": []}', r"bad.jsonl:2: missing field 'context'"),
        (
            '{"id": "x", "question": "q", "context": "abc", "answers": []}',
            r"bad.jsonl:2: 'answers' must be a non-empty list",
        ),
        (
            '{"id": "x", "question": "q", "context": "abc", "answers": [{"text": "b"}]}',
            r"bad.jsonl:2: answer .* 'answer_start' \(integer\)",
        ),
        (
            '{"id": "x", "question": "q", "context": "abc", '
            '"answers": [{"text": "b", "answer_start": 0}]}',
            r"bad.jsonl:2: example 'x': answer 'b' is not at answer_start=0.*reads 'a'",
        ),
        (
            '{"id": "n1", "question": "q", "context": "abc", '
            '"answers": [{"text": "b", "answer_start": 1}]}',
            r"bad.jsonl:2: id 'n1' was already used at .*bad.jsonl:1",
        ),
    ],
)
def test_qa_files_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_record(EXAMPLES[0])) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        qa.read_qa_jsonl([str(path)])


def test_qa_files_refuses_other_formats(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("id,question\n", encoding="utf-8")
    with pytest.raises(corpora.DataError, match="JSONL"):
        qa.read_qa_jsonl([str(path)])


def _logits(feature, start_at=(), end_at=()):
    """[128] start and end logits: -5 everywhere, given values at given positions."""
    start, end = np.full(128, -5.0, np.float32), np.full(128, -5.0, np.float32)
    for position, value in start_at:
        start[position] = value
    for position, value in end_at:
        end[position] = value
    return start, end


def _token_of(feature, example, text):
    """Positions of the first and last token of `text` (first occurrence) in a feature."""
    begin = example.context.index(text)
    end = begin + len(text)
    offsets = feature.offsets
    inside = np.flatnonzero(
        (offsets[:, 0] >= begin) & (offsets[:, 1] <= end) & (offsets[:, 0] >= 0)
    )
    return int(inside[0]), int(inside[-1])


def _predict(examples, features, rows, n_best=5, max_answer_len=30):
    starts = np.stack([r[0] for r in rows])
    ends = np.stack([r[1] for r in rows])
    return qa_postprocess.predict_answers(
        examples, features, starts, ends, n_best=n_best, max_answer_len=max_answer_len
    )


def test_postprocess_picks_the_best_valid_span(tok):
    example = EXAMPLES[3]  # Gaudí context.
    (feature,) = _features([example], tok)
    b0, b1 = _token_of(feature, example, "Barcelona")
    a0, a1 = _token_of(feature, example, "Antoni Gaudí")
    y0, _ = _token_of(feature, example, "1882")
    # The expected span wins.
    row = _logits(feature, [(b0, 5.0), (a0, 1.0)], [(b1, 5.0), (a1, 1.0)])
    assert _predict([example], [feature], [row]) == {"g2": "Barcelona"}
    # A higher-scoring pair that ends before it starts is skipped.
    row = _logits(feature, [(b0, 9.0), (a0, 1.0)], [(a1, 9.0), (b1, 1.0)])
    assert _predict([example], [feature], [row]) == {"g2": "Barcelona"}
    # A span longer than max_answer_len is skipped for a shorter one.
    row = _logits(feature, [(a0, 9.0)], [(y0, 9.0), (a1, 1.0)])
    long = y0 - a0 + 1
    got = _predict([example], [feature], [row], max_answer_len=long)["g2"]
    assert got.startswith("Antoni Gaudí designed") and got.endswith("began in 1")
    assert _predict([example], [feature], [row], max_answer_len=long - 1) == {"g2": "Antoni Gaudí"}
    # Only question / special tokens score: no valid span, empty prediction.
    row = _logits(feature, [(0, 9.0), (1, 8.0)], [(0, 9.0), (2, 8.0)])
    assert _predict([example], [feature], [row], n_best=2) == {"g2": ""}
    # Padding beyond the feature is ignored.
    assert len(feature.input_ids) < 127
    row = _logits(feature, [(127, 50.0), (b0, 1.0)], [(127, 50.0), (b1, 1.0)])
    assert _predict([example], [feature], [row]) == {"g2": "Barcelona"}


def test_postprocess_chooses_across_windows_and_respects_max_context(tok):
    filler = " ".join(text_builders.bible_verses()[:6])
    context = f"{filler} The treasure is hidden in Ravenholm near the old mill. {filler}"
    example = _example("long", "Where is the treasure hidden?", context, "Ravenholm")
    features = _features([example], tok, 48, 16, 12)
    holding = [i for i, f in enumerate(features) if f.start_position]
    owner = next(i for i in holding if features[i].max_context[features[i].start_position])
    lesser = next(i for i in holding if i != owner)  # Holds the answer, not as max context.
    other = next(i for i in range(len(features)) if i not in holding)
    f = features[other]
    word = next(i for i in range(f.context_offset, len(f.input_ids)) if f.max_context[i])
    word_text = context[f.offsets[word, 0] : f.offsets[word, 1]]
    assert word_text and word_text != "Ravenholm"

    def rows(scores):
        """Logit rows with score v on start and end of the answer (or `word`) of feature i."""
        out = [_logits(g) for g in features]
        for i, value in scores.items():
            g = features[i]
            s, e = (word, word) if i == other else (g.start_position, g.end_position)
            out[i][0][s], out[i][1][e] = value, value
        return out

    assert _predict([example], features, rows({owner: 3.0, other: 1.0}))["long"] == "Ravenholm"
    assert _predict([example], features, rows({owner: 3.0, other: 5.0}))["long"] == word_text
    # With one candidate per window, only the max-context window's answer start counts.
    assert _predict([example], features, rows({owner: 3.0}), n_best=1)["long"] == "Ravenholm"
    assert _predict([example], features, rows({lesser: 9.0}), n_best=1)["long"] == ""


def test_score_matches_squad_v11():
    examples = EXAMPLES[:4]
    predictions = {"n1": "france", "n2": "the 11th centuries", "g1": "Gaudí"}
    got = qa_postprocess.score(examples, predictions)
    # n1 exact (normalised); n2 F1: precision 2/2, recall 2/4, so 2/3; g1 matches its second gold.
    assert got["count"] == 4 and got["missing"] == 1
    assert got["exact_match"] == pytest.approx(50.0)
    assert got["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 0) / 4)


def test_eval_batches_cover_every_feature_once(tok):
    features = _features(EXAMPLES * 3, tok, seq_len=40, max_query_len=12, doc_stride=10)
    config = _config()
    config.seq_len, config.per_device_batch_size = 40, 2
    batches = list(qa.qa_eval_batches(features, config, 8))
    assert len(batches) == -(-len(features) // 16) and len(features) % 16  # Last one padded.
    seen = []
    for batch in batches:
        assert set(batch) == {*qa.QA_KEYS, "feature_index"}
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            assert batch[key].shape == (8, 2, 40) and batch[key].dtype == np.int32
        for key in ("start_positions", "end_positions", "feature_index"):
            assert batch[key].shape == (8, 2) and batch[key].dtype == np.int32
        assert batch["weights"].dtype == np.float32
        index, weights = batch["feature_index"].ravel(), batch["weights"].ravel()
        ids = batch["input_ids"].reshape(16, 40)
        mask = batch["attention_mask"].reshape(16, 40)
        np.testing.assert_array_equal(weights, index >= 0)
        assert not ids[index < 0].any() and not mask[index < 0].any()
        starts = batch["start_positions"].ravel()
        for row, i in enumerate(index):
            if i >= 0:
                f = features[i]
                np.testing.assert_array_equal(ids[row, : len(f.input_ids)], f.input_ids)
                assert mask[row].sum() == len(f.input_ids) and starts[row] == f.start_position
                seen.append(int(i))
    assert seen == list(range(len(features)))
    padded = list(qa.qa_eval_batches(features, config, 8, num_batches=len(batches) + 2))
    assert len(padded) == len(batches) + 2 and not padded[-1]["weights"].any()
    with pytest.raises(ValueError, match="num_batches"):
        list(qa.qa_eval_batches(features, config, 8, num_batches=1))


def test_train_batches_are_seeded_shuffled_and_resume(tok, tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [_record(e) for e in EXAMPLES])
    config = _config(name="qa_files", train_files=train)
    examples, features = qa.qa_eval_features(
        config, tok, split="train", data_dir="", process_index=0, process_count=1
    )
    assert examples == EXAMPLES

    def iterator():
        return qa.qa_train_batches(
            config, tok, data_dir="", process_index=0, process_count=1, local_device_count=8
        )

    it = iterator()
    batches = [next(it) for _ in range(-(-len(features) // 8))]  # At least one epoch.
    first = batches[0]
    assert set(first) == set(qa.QA_KEYS)
    assert first["input_ids"].shape == (8, 1, 64) and first["input_ids"].dtype == np.int32
    assert first["start_positions"].shape == (8, 1) and first["weights"].dtype == np.float32
    assert (first["weights"] == 1).all()
    rows = np.concatenate([b["input_ids"].reshape(8, 64) for b in batches])[: len(features)]
    expected = sorted(tuple(f.input_ids) for f in features)
    got = sorted(tuple(r[r != 0]) for r in rows)
    assert got == expected  # The first epoch is a permutation of all features.
    order = [tuple(r[r != 0]) for r in rows]
    assert order != [tuple(f.input_ids) for f in features]  # Shuffled.
    again = iterator()
    np.testing.assert_array_equal(next(again)["input_ids"], first["input_ids"])  # Seeded.
    again.save(str(tmp_path / "ckpt"))
    expected_next = [next(again) for _ in range(3)]
    restored = iterator()
    restored.restore(str(tmp_path / "ckpt"))
    for want in expected_next:
        got = next(restored)
        for key in qa.QA_KEYS:
            np.testing.assert_array_equal(got[key], want[key])


def test_learnable_set_answers_are_at_their_starts():
    passages = text_builders.bible_passages()[:100]
    examples = qa.make_learnable_qa(passages, 250, seed=0)
    assert len(examples) == 250 and len({e.id for e in examples}) == 250
    for example in examples:
        qa.check_answers(example, "test")
        key = example.question.removeprefix("What word comes after ").removesuffix("?")
        before = example.context[: example.answer_starts[0]]
        assert re.search(r"([A-Za-z]+)[^A-Za-z]*$", before).group(1) == key  # Key, then answer.
        assert len(re.findall(rf"\b{key}\b", example.context)) == 1
    assert qa.make_learnable_qa(passages, 250, seed=0) == examples  # Deterministic.
    assert qa.make_learnable_qa(passages, 250, seed=1) != examples
    config = _config(name="ptjax_qa_demo")
    validation = qa.load_examples(config.dataset, "validation", data_dir="")
    assert len(validation) == 234  # One per held-out ptjax_bible passage.
    half = qa.load_examples(config.dataset, "validation", data_dir="", shard=(1, 2))
    assert half == validation[117:]
