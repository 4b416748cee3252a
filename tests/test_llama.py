"""Llama-style decoders (ptjax.models.llama): published parameter counts, RoPE with Llama 3's
scaling, grouped-query attention with a key/value-heads cache, and parity with transformers'
LlamaForCausalLM (logits within 1e-4, greedy decoding token for token) on tiny random models
built offline, tied and untied; HF import and export through scripts' code path."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptjax import models
from ptjax.config import ConfigError, base_config
from ptjax.config_presets import llama_config
from ptjax.decoding import DecodeConfig, sample
from ptjax.models import llama
from ptjax.run import validate


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _abstract_params(cfg, length=8):
    dummy = jnp.zeros((1, length), jnp.int32)
    return jax.eval_shape(lambda: llama.Llama(cfg).init(jax.random.PRNGKey(0), dummy))["params"]


@pytest.mark.parametrize(
    "size, published", [("135m", 134_515_008), ("360m", 361_821_120), ("1b", 1_235_814_400)]
)
def test_named_sizes_have_their_published_parameter_counts(size, published):
    cfg = llama.LlamaConfig(**llama.SIZES[size])
    assert llama.num_params(cfg) == published
    params = _abstract_params(cfg)
    assert _count(params) == published
    attn = params["h_0"]["attn"]
    assert attn["key"]["kernel"].shape == (cfg.d_model, cfg.num_kv_heads, cfg.head_dim)
    assert attn["query"]["kernel"].shape == (cfg.d_model, cfg.num_heads, cfg.head_dim)
    assert "lm_head" not in params  # All three tie the output projection to the embedding.


def test_untied_model_has_its_own_output_projection():
    cfg = llama.LlamaConfig(**{**llama.SIZES["tiny"], "tie_embeddings": False})
    params = _abstract_params(cfg)
    assert params["lm_head"]["kernel"].shape == (cfg.d_model, cfg.vocab_size)
    assert _count(params) == llama.num_params(cfg)


def test_llama3_rope_scaling_keeps_short_waves_and_stretches_long_ones():
    cfg = llama.LlamaConfig(**llama.SIZES["1b"])
    plain = llama.inverse_frequencies(dataclasses.replace(cfg, rope_scaling="none"))
    scaled = llama.inverse_frequencies(cfg)
    wavelen = 2 * np.pi / np.asarray(plain)
    short, long = wavelen < 8192 / 4, wavelen > 8192 / 1
    np.testing.assert_array_equal(np.asarray(scaled)[short], np.asarray(plain)[short])
    np.testing.assert_allclose(np.asarray(scaled)[long], np.asarray(plain)[long] / 32, rtol=1e-6)
    assert short.any() and long.any() and not (short | long).all()  # Some are interpolated.


def test_config_keys_reach_the_model_and_bad_values_are_named():
    config = llama_config("tiny")
    config.model.num_kv_heads = 1
    config.model.rope_theta = 500_000.0
    config.model.tie_embeddings = "false"
    config.model.rope_scaling = "llama3:8:1:4:64"
    validate(config)
    cfg = models.MODELS["llama"].make_config(config, 1000)
    assert (cfg.num_kv_heads, cfg.rope_theta, cfg.tie_embeddings) == (1, 500_000.0, False)
    assert cfg.scaling == llama.RopeScaling(8.0, 1.0, 4.0, 64)
    config.model.num_kv_heads = 3  # 4 heads do not split into 3 groups.
    with pytest.raises(ConfigError, match="num_heads=4 is not a multiple of num_kv_heads=3"):
        validate(config)
    config.model.num_kv_heads = 0
    config.model.rope_scaling = "yarn:4"
    with pytest.raises(ConfigError, match="model.rope_scaling='yarn:4'"):
        validate(config)
    gpt = base_config()
    gpt.model.rope_theta = 1e6
    with pytest.raises(ConfigError, match="applies to Llama-style decoders"):
        validate(gpt)


def _tiny(**changes):
    base = dict(
        vocab_size=101, max_len=64, num_layers=2, num_heads=4, num_kv_heads=2, d_model=32, d_ff=64
    )
    return llama.LlamaConfig(**{**base, **changes})


def _init(cfg, seed=0):
    dummy = jnp.zeros((1, 8), jnp.int32)
    params = llama.Llama(cfg).init(jax.random.PRNGKey(seed), dummy)["params"]
    # Norm scales away from 1, so a wrong norm placement shows.
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x * 1.5 if "scale" in jax.tree_util.keystr(path) else x, params
    )


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_cached_decoding_equals_the_full_forward(kv_heads):
    cfg = _tiny(num_kv_heads=kv_heads)
    model, params = llama.Llama(cfg), _init(cfg)
    ids = jax.random.randint(jax.random.PRNGKey(1), (2, 10), 0, cfg.vocab_size)
    full = model.apply({"params": params}, ids)
    prefill, step = llama.decode_fns(model, 6)
    decode_params = llama.prepare_decode_params(params)
    mask = jnp.ones((2, 4), bool)
    logits, cache = prefill(decode_params, ids[:, :4], mask)
    assert cache["layers"][0]["key"].shape == (2, kv_heads, 10, cfg.head_dim)
    np.testing.assert_allclose(logits, full[:, 3], atol=1e-5)
    for t in range(4, 10):
        logits, cache = step(decode_params, ids[:, t], cache)
        np.testing.assert_allclose(logits, full[:, t], atol=1e-5)


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_packed_segments_never_attend_across_documents():
    cfg = _tiny()
    model, params = llama.Llama(cfg), _init(cfg)
    a = jax.random.randint(jax.random.PRNGKey(2), (1, 5), 0, cfg.vocab_size)
    b = jax.random.randint(jax.random.PRNGKey(3), (1, 7), 0, cfg.vocab_size)
    packed = jnp.concatenate([a, b], axis=1)
    segments = jnp.array([[1] * 5 + [2] * 7])
    positions = jnp.array([list(range(5)) + list(range(7))])
    out = model.apply({"params": params}, packed, positions, segments)
    np.testing.assert_allclose(out[:, :5], model.apply({"params": params}, a), atol=1e-5)
    np.testing.assert_allclose(out[:, 5:], model.apply({"params": params}, b), atol=1e-5)


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_scanned_layers_and_remat_compute_the_same_function():
    cfg = _tiny()
    params = _init(cfg)
    ids = jax.random.randint(jax.random.PRNGKey(4), (2, 9), 0, cfg.vocab_size)
    want = llama.Llama(cfg).apply({"params": params}, ids)
    scanned = llama.Llama(dataclasses.replace(cfg, scan_layers=True, remat="full"))
    from ptjax.models import scan

    got = scanned.apply({"params": scan.stack_layers(params)}, ids)
    np.testing.assert_allclose(got, want, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Hugging Face parity.

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from hf_reference import padded, perturb  # noqa: E402  (after torch is known to be there)

from ptjax.interop import hf_llama  # noqa: E402


def _hf_model(tied: bool, kv_heads: int, scaling: dict | None, vocab: int = 120):
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        rope_theta=5000.0,
        rope_scaling=scaling,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        attn_implementation="eager",
    )
    model = perturb(transformers.LlamaForCausalLM(config))
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(10.0)  # Peaked next tokens: no near-ties.
        if not tied:
            model.lm_head.weight.mul_(10.0)
    return model


CASES = {
    "gqa-tied": (True, 2, None),
    "mqa-untied-llama3": (
        False,
        1,
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    ),
}


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_and_greedy_decoding_match_transformers(case):
    hf = _hf_model(*CASES[case])
    cfg = hf_llama.model_config(hf.config.to_dict())
    assert cfg.tie_embeddings == CASES[case][0] and cfg.num_kv_heads == CASES[case][1]
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    params = jax.tree.map(jnp.asarray, hf_llama.params_from_hf(state, cfg))
    model = llama.Llama(cfg)
    ids, mask = padded(cfg.vocab_size, seed=3, length=20)
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got = np.asarray(model.apply({"params": params}, ids))
    real = mask.astype(bool)
    print(f"Llama {case}: logits max diff {np.abs(got - want)[real].max():.2e}")
    np.testing.assert_allclose(got[real], want[real], atol=1e-4)

    # Greedy decoding of left-padded prompts of different lengths vs generate, one by one.
    prompts = [[1, 5, 9, 14, 3], [1, 7], [1, 30, 31, 32]]
    decode = DecodeConfig(max_new_tokens=12, eos_id=2, pad_id=0)
    prefill, step = llama.decode_fns(model, decode.max_new_tokens)
    width = max(map(len, prompts))
    prompt = np.zeros((len(prompts), width), np.int32)
    prompt_mask = np.zeros((len(prompts), width), bool)
    for i, p in enumerate(prompts):
        prompt[i, width - len(p) :], prompt_mask[i, width - len(p) :] = p, True
    tokens, _ = sample(
        prefill,
        step,
        llama.prepare_decode_params(params),
        jnp.asarray(prompt),
        jnp.asarray(prompt_mask),
        jax.random.PRNGKey(0),
        decode,
    )
    for row, p in zip(np.asarray(tokens), prompts, strict=True):
        with torch.no_grad():
            ref = hf.generate(
                torch.tensor([p]), max_new_tokens=12, do_sample=False, eos_token_id=2,
                pad_token_id=0,
            )[0, len(p):].tolist()  # fmt: skip
        n = len(ref)
        assert list(row[:n]) == ref, (list(row), ref)


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_state_dict_round_trips_and_refuses_what_ptjax_lacks():
    hf = _hf_model(False, 2, None)
    cfg = hf_llama.model_config(hf.config.to_dict())
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    back, arch = hf_llama.params_to_hf(hf_llama.params_from_hf(state, cfg), cfg)
    assert arch == "LlamaForCausalLM" and sorted(back) == sorted(state)
    for name in state:
        np.testing.assert_array_equal(back[name], state[name])
    config = hf.config.to_dict()
    for key, value, message in (
        ("attention_bias", True, "attention_bias=True"),
        ("hidden_act", "gelu", "hidden_act='gelu'"),
        ("sliding_window", 16, "sliding_window=16"),
        ("rope_scaling", {"rope_type": "yarn", "factor": 4.0}, "rope_scaling="),
    ):
        with pytest.raises(hf_llama.tm.ConversionError, match=message):
            hf_llama.model_config({**config, key: value})
    json.dumps(hf_llama.hf_config(cfg, arch, bos_id=1, eos_id=2))  # A config.json.


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_qwen2_with_query_key_value_biases_matches_transformers():
    config = transformers.Qwen2Config(
        vocab_size=120, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rope_theta=5000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
        attn_implementation="eager",
    )  # fmt: skip
    hf = perturb(transformers.Qwen2ForCausalLM(config))
    cfg = hf_llama.model_config(hf.config.to_dict())
    assert cfg.qkv_bias and cfg.num_kv_heads == 2
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    params = hf_llama.params_from_hf(state, cfg)
    assert params["h_0"]["attn"]["key"]["bias"].shape == (2, cfg.head_dim)
    assert llama.num_params(cfg) == _count(params)
    ids, mask = padded(cfg.vocab_size, seed=4, length=16)
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got = np.asarray(llama.Llama(cfg).apply({"params": jax.tree.map(jnp.asarray, params)}, ids))
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4)
    back, arch = hf_llama.params_to_hf(params, cfg)
    assert arch == "Qwen2ForCausalLM" and sorted(back) == sorted(
        k for k in state if k != "lm_head.weight"
    )


# Llama 3's pre-tokenizer split (tokenizer.json of meta-llama/Llama-3.2-1B).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def test_a_llama3_style_tokenizer_gives_transformers_ids(tmp_path):
    """A byte-level BPE with Llama 3's split, ignore_merges and a BOS-adding post-processor,
    trained offline: ptjax's ids equal PreTrainedTokenizerFast's (without special tokens, as
    ptjax's pipelines add none behind the caller's back), and decode round-trips."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from ptjax.data.tokenizer import load_tokenizer

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["In the beginning God created the heaven and the earth.", "Don't 123456 go!"] * 30
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)]
    )
    path = str(tmp_path / "tokenizer.json")
    tok.save(path)  # No tokenizer_config.json: ptjax knows Llama 3's special-token names.
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_file=path, bos_token=specials[0], eos_token=specials[1]
    )
    ours = load_tokenizer(path)
    texts = [
        "In the beginning, God's 12345 heavens!",
        "  spaces\tand\n\nlines  ",
        "Café naïve 東京 😀",
        "they'LL say 'tis I'M",
        "",
    ]
    for text in texts:
        want = hf(text, add_special_tokens=False).input_ids
        assert ours.encode(text) == want, text
        assert ours.decode(want) == hf.decode(want) == text
    assert hf("hi").input_ids[0] == 0 and ours.encode("hi")[0] != 0  # BOS only on request.
    assert (ours.bos_id, ours.eos_id) == (0, 1)
    assert ours.bos_documents  # Its post-processor put <|begin_of_text|> first.


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_import_generate_fine_tune_and_export_a_llama_directory(tmp_path, data_dir):
    from ptjax.interop import export_hf, hf_weights, import_hf
    from ptjax.run import Run

    tokenizers = pytest.importorskip("tokenizers")
    bpe = tokenizers.ByteLevelBPETokenizer()
    texts = ["in the beginning god created the heaven and the earth", "hello world"] * 20
    bpe.train_from_iterator(texts, vocab_size=300, min_frequency=1, special_tokens=["<s>", "</s>"])
    hf = _hf_model(False, 2, CASES["mqa-untied-llama3"][2], vocab=bpe.get_vocab_size())
    hf.config.bos_token_id, hf.config.eos_token_id = bpe.token_to_id("<s>"), bpe.token_to_id("</s>")
    hf_dir = str(tmp_path / "hf")
    hf.save_pretrained(hf_dir)
    bpe.save(os.path.join(hf_dir, "tokenizer.json"))
    with open(os.path.join(hf_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "</s>"}, f)

    workdir = str(tmp_path / "run")
    import_hf(hf_dir, workdir)
    run = Run.open(workdir)
    assert (run.config.model.family, run.config.task) == ("llama", "causal_lm")
    assert run.config.model.tie_embeddings == "false"
    gen = run.generator()
    prompt = gen.tokenizer.encode("in the beginning")
    decode = DecodeConfig(max_new_tokens=8, eos_id=gen.tokenizer.eos_id, pad_id=0)
    ours = gen.generate_ids([prompt], decode)[0]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                          eos_token_id=gen.tokenizer.eos_id, pad_token_id=0)  # fmt: skip
    ref = ref[0, len(prompt) :].tolist()
    assert ours == [t for t in ref if t != gen.tokenizer.eos_id][: len(ours)]

    # Fine-tuning starts from it like from any run: the shape and Llama settings come along.
    from ptjax.train import trainer

    config = llama_config("tiny")
    config.init_checkpoint, config.dataset.data_dir = workdir, data_dir
    config.seq_len, config.per_device_batch_size, config.total_steps = 32, 1, 2
    config.optimizer.warmup_steps, config.sample_every_steps = 1, 0
    config.eval_every_steps = config.checkpoint_every_steps = 2
    config.dataset.max_eval_batches = 1
    tuned = str(tmp_path / "tuned")
    assert trainer.train_and_evaluate(config, tuned)["step"] == 2
    tuned_config = Run.open(tuned).config.model
    assert (tuned_config.tie_embeddings, tuned_config.rope_scaling) == (
        "false",
        "llama3:8:1:4:16",
    )

    out_dir = str(tmp_path / "export")
    assert export_hf(workdir, out_dir) == "LlamaForCausalLM"
    a, b = hf_weights.read_state_dict(hf_dir), hf_weights.read_state_dict(out_dir)
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    again = transformers.LlamaForCausalLM.from_pretrained(out_dir, attn_implementation="eager")
    ids = torch.tensor([prompt])
    with torch.no_grad():
        np.testing.assert_array_equal(again(ids).logits.numpy(), hf(ids).logits.numpy())


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_a_llama_run_trains_samples_resumes_and_generates(tmp_path, data_dir, tokenizer_file):
    """The trainer end to end on 8 devices (pmap), then the run reopened for generation."""
    import test_train_e2e as e2e

    from ptjax.run import Run
    from ptjax.train import trainer

    config = llama_config("tiny")
    config.dataset.data_dir = data_dir
    config.tokenizer.path = tokenizer_file
    config.seq_len, config.per_device_batch_size = 32, 1
    config.model.num_layers = 1  # The trainer and the reopened run under test, not depth.
    config.total_steps, config.log_every_steps, config.optimizer.warmup_steps = 6, 1, 2
    config.eval_every_steps = config.checkpoint_every_steps = config.sample_every_steps = 3
    config.dataset.max_eval_batches = 1
    workdir = str(tmp_path / "run")
    trainer.train_and_evaluate(config, workdir, stop_after_steps=3)
    result = trainer.train_and_evaluate(config, workdir)  # Resumes at step 3.
    assert result["step"] == 6
    losses = e2e.read_scalars(workdir)["train/loss"]
    assert sorted(losses) == list(range(1, 7)) and all(np.isfinite(list(losses.values())))
    run = Run.open(workdir)
    assert run.facts["family"] == "llama"
    out = run.generator().generate(["In the beginning"], max_new_tokens=5)
    assert len(out) == 1 and isinstance(out[0], str)
