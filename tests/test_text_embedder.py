"""Sentence embeddings: a tiny random sentence-transformers-style BERT (config.json, weights,
tokenizer, modules.json, 1_Pooling, 2_Normalize) imported into a workdir gives the vectors of
transformers' BertModel with the same pooling, through `TextEmbedder` and scripts/embed.py."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ptjax import TextEmbedder
from ptjax.interop import export_hf, hf_pooling, import_hf

torch = pytest.importorskip("torch")
from hf_reference import perturb, tiny_bert_config  # noqa: E402  (after torch is known to be there)

transformers = pytest.importorskip("transformers")

TOKENS = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list("abcdefghijklmnopqrstuvwxyz.,!?")
    + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    + ["the", "fox", "dog", "quick", "brown", "lazy", "jumps", "over", "man", "eats"]
)
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A man eats.",
    "",
    "dog",
    "the the the the the the the the the the the the the the the the the the the the",
    "Quick!",
]
MAX_SEQ = 16


@pytest.fixture(scope="module")
def st_dir(tmp_path_factory):
    """A sentence-transformers model directory as sentence-transformers 2.x saves one."""
    path = str(tmp_path_factory.mktemp("st") / "model")
    config = tiny_bert_config(len(TOKENS))
    model = perturb(transformers.BertModel(config, add_pooling_layer=True))
    model.save_pretrained(path)
    transformers.BertTokenizer(vocab={t: i for i, t in enumerate(TOKENS)}).save_pretrained(path)
    st = "sentence_transformers.models."
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": st + "Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": st + "Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": st + "Normalize"},
    ]
    os.makedirs(os.path.join(path, "1_Pooling"))
    os.makedirs(os.path.join(path, "2_Normalize"))
    pooling = {
        "word_embedding_dimension": 64,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    for name, data in (
        ("modules.json", modules),
        ("1_Pooling/config.json", pooling),
        ("sentence_bert_config.json", {"max_seq_length": MAX_SEQ, "do_lower_case": False}),
    ):
        with open(os.path.join(path, name), "w") as f:
            json.dump(data, f)
    return path, model


def _reference(model, path, texts, pooling="mean", normalize=True):
    """transformers' BertModel + the pooling, as sentence-transformers computes it."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_SEQ, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    if pooling == "mean":
        out = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    elif pooling == "max":
        out = hidden.masked_fill(mask == 0, -1e9).max(1).values
    else:
        out = hidden[:, 0]
    if normalize:
        out = torch.nn.functional.normalize(out, p=2, dim=1)
    return out.numpy()


@pytest.fixture(scope="module")
def workdir(st_dir, tmp_path_factory):
    path, _ = st_dir
    workdir = str(tmp_path_factory.mktemp("run") / "imported")
    model = import_hf(path, workdir)
    assert any("TextEmbedder pools mean, L2-normalised" in note for note in model.notes)
    kept = sorted(os.listdir(os.path.join(workdir, hf_pooling.ST_DIR)))
    assert kept == ["1_Pooling", "2_Normalize", "modules.json", "sentence_bert_config.json"]
    return workdir


def test_embeddings_match_transformers_with_the_checkpoints_pooling(st_dir, workdir):
    path, model = st_dir
    embed = TextEmbedder.from_workdir(workdir)
    assert (embed.pooling, embed.normalize, embed.max_len) == (("mean",), True, MAX_SEQ)
    got = embed(TEXTS)
    want = _reference(model, path, TEXTS)
    assert got.shape == (len(TEXTS), 64) and got.dtype == np.float32
    print(f"mean pooling: max diff {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    # Padding never enters a pool: alone, in small batches or large, the same vectors.
    small = TextEmbedder.from_workdir(workdir, batch_size=2)
    np.testing.assert_allclose(small(TEXTS), got, atol=1e-5)
    np.testing.assert_allclose(embed(TEXTS[1:2])[0], got[1], atol=1e-5)
    assert embed([]).shape == (0, 64)


@pytest.mark.parametrize("pooling", ["cls", "max"])
def test_chosen_pooling_and_normalisation(st_dir, workdir, pooling):
    path, model = st_dir
    embed = TextEmbedder.from_workdir(workdir, pooling=pooling, normalize=False)
    want = _reference(model, path, TEXTS, pooling=pooling, normalize=False)
    np.testing.assert_allclose(embed(TEXTS), want, atol=1e-5)


def test_pooling_files_are_checked_and_exported(st_dir, workdir, tmp_path):
    out = str(tmp_path / "export")
    assert export_hf(workdir, out) == "BertModel"
    for name in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert hf_pooling.settings(out) == {"pooling": ("mean",), "normalize": True, "max_len": 16}
    bad = tmp_path / "bad"
    (bad / "1_Pooling").mkdir(parents=True)
    (bad / "modules.json").write_text(
        json.dumps([{"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}])
    )
    (bad / "1_Pooling" / "config.json").write_text('{"pooling_mode_weightedmean_tokens": true}')
    with pytest.raises(ValueError, match="pooling_mode_weightedmean_tokens"):
        hf_pooling.settings(str(bad))
    (bad / "modules.json").write_text('[{"type": "sentence_transformers.models.Dense"}]')
    with pytest.raises(ValueError, match="models.Dense"):
        hf_pooling.settings(str(bad))
    with pytest.raises(ValueError, match="pooling="):
        TextEmbedder.from_workdir(workdir, pooling="median")


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_embed_script_writes_vectors_and_never_replaces_a_file(workdir, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS[:2]) + "\n")
    output = tmp_path / "vectors.npy"
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "embed.py")
    env = dict(os.environ, PTJAX_NO_ENV_TUNING="1")
    args = [sys.executable, script, f"--workdir={workdir}", f"--input={texts}"]
    done = subprocess.run(
        [*args, f"--output={output}", "--pooling=cls", "--normalize=false"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    want = TextEmbedder.from_workdir(workdir, pooling="cls", normalize=False)(TEXTS[:2])
    np.testing.assert_allclose(np.load(output), want, atol=1e-6)
    before = output.read_bytes()
    again = subprocess.run(
        [*args, f"--output={output}"], capture_output=True, text=True, env=env, timeout=300
    )
    assert again.returncode == 2 and "exists" in again.stderr
    assert output.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["texts.txt", "vectors.npy"]
