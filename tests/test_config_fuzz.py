"""Random invalid `--config.KEY=VALUE` overrides, through scripts/train.py's parsing into
train_and_evaluate: each fails with a clean error naming a key, and the workdir is untouched."""

import collections
import os
import traceback

from absl import flags
from hypothesis import given, settings
from hypothesis import strategies as st
from ml_collections import config_flags
from test_train_e2e import snapshot

from ptjax import config as config_lib
from ptjax import models, tasks
from ptjax.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = os.path.join(ROOT, "configs", "gpt_tiny.py")
SCHEMA = config_lib._flatten(config_lib.base_config())
INTS = sorted(k for k, v in SCHEMA.items() if type(v) is int)
FLOATS = sorted(k for k, v in SCHEMA.items() if type(v) is float)
GROUPS = sorted({k.rsplit(".", 1)[0] for k in SCHEMA if "." in k})
# Keys that valid extra overrides may set, mixed in with the invalid ones.
HARMLESS = {"log_every_steps": (1, 100), "seed": (0, 10_000), "eval_every_steps": (1, 1000)}
# Random configs per run of the suite; PTJAX_FUZZ_EXAMPLES=2000 for a deeper search (the
# examples are derandomized, so a given count always tries the same configs).
EXAMPLES = int(os.environ.get("PTJAX_FUZZ_EXAMPLES", "200"))


def parse(argv):
    """scripts/train.py's parsing: the unknown-key check, then absl + config_flags."""
    config_lib.check_override_flags(argv)
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", lock_config=True, flag_values=flag_values, sys_argv=argv
    )
    flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
    flag_values(argv)
    return flag_values.config, flag_values.workdir


def case(kind, overrides, names):
    return kind, [f"--config.{k}={v}" for k, v in overrides], set(names)


identifiers = st.from_regex(r"[a-z][a-z_]{0,10}(\.[a-z][a-z_]{0,10}){0,2}", fullmatch=True)
unknown_key = identifiers.filter(
    lambda k: k not in SCHEMA and not any(s.startswith(k + ".") for s in SCHEMA)
).map(lambda k: case("unknown key", [(k, 1)], [k]))
group_as_value = st.sampled_from(GROUPS).map(lambda g: case("wrong type", [(g, 3)], [g]))
letters = st.from_regex(r"[A-Za-z]{0,8}", fullmatch=True)
fractional = st.floats(-1e6, 1e6).filter(lambda x: x != int(x)).map(repr)
int_wrong_type = st.tuples(st.sampled_from(INTS), st.one_of(letters, fractional)).map(
    lambda kv: case("wrong type", [kv], [kv[0]])
)
float_wrong_type = st.tuples(st.sampled_from(FLOATS), letters).map(
    lambda kv: case("wrong type", [kv], [kv[0]])
)


@st.composite
def out_of_range(draw):
    key = draw(st.sampled_from(sorted(config_lib._RANGES)))
    low, high, ends = config_lib._RANGES[key]
    step = draw(st.integers(1, 10**6))
    options = []
    if isinstance(low, int):
        options += [low - step] + ([high + step] if high != float("inf") else [])
    else:
        options += [low - step / 7, "nan", "-inf"] + ([high + step / 7] if high < 1e300 else [])
        options += [low] if ends[0] == "(" else []
        options += [high] if ends[1] == ")" and high < 1e300 else []
    return case("out of range", [(key, draw(st.sampled_from(options)))], [key])


def _not_in(choices):
    return st.text("abcdefghijklmnopqrstuvwxyz_0123456789", max_size=10).filter(
        lambda v: v not in choices
    )


bad_choice = st.one_of(
    *[
        _not_in(choices).map(lambda v, k=key: case("bad choice", [(k, v)], [k]))
        for key, choices in config_lib._CHOICES.items()
    ],
    _not_in(tasks.TASKS).map(lambda v: case("bad choice", [("task", v)], ["task"])),
    _not_in(models.MODELS).map(lambda v: case("bad choice", [("model.family", v)], ["model"])),
    _not_in(models.MODELS["gpt"].sizes).map(
        lambda v: case("bad choice", [("model.size", v)], ["model.size"])
    ),
)


@st.composite
def impossible(draw):
    """Values fine alone, impossible together (or with the tokenizer's 512 pieces)."""
    n, k = draw(st.integers(1, 1000)), draw(st.integers(1, 1000))
    return draw(
        st.sampled_from(
            [
                case("impossible", [("model.max_len", n), ("seq_len", n + k)], ["seq_len"]),
                case("impossible", [("seq_len", 256 + k)], ["seq_len"]),  # gpt/tiny: 256.
                case(
                    "impossible",
                    [("total_steps", n), ("optimizer.warmup_steps", n + k)],
                    ["warmup_steps"],
                ),
                case("impossible", [("dataset.name", "text_files")], ["train_files"]),
                case("impossible", [("model.vocab_size", 512 + k)], ["vocab_size"]),
                case("impossible", [("model.vocab_size", max(512 - k, 1))], ["vocab_size"]),
                case(
                    "impossible",
                    [("sample_every_steps", n), ("sample_max_new_tokens", 255 + k)],
                    ["sample_max_new_tokens"],
                ),
                case("impossible", [("model.dropout_rate", 1 + k / 1000)], ["dropout_rate"]),
            ]
        )
    )


names_ = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
bad_path = st.one_of(
    names_.map(
        lambda v: case("bad path", [("tokenizer.path", f"/nonexistent/{v}")], ["tokenizer"])
    ),
    names_.map(lambda v: case("bad path", [("init_checkpoint", f"/nonexistent/{v}")], ["init_ch"])),
    names_.map(lambda v: case("bad path", [("dataset.train_split", f"x{v}")], ["train_split"])),
    names_.map(lambda v: case("bad path", [("dataset.eval_split", f"x{v}")], ["eval_split"])),
    names_.map(
        lambda v: case(
            "bad path",
            [("dataset.name", "text_files"), ("dataset.train_files", f"/nonexistent/{v}.txt")],
            ["train_files"],
        )
    ),
)
CATEGORIES = [
    unknown_key,
    st.one_of(group_as_value, int_wrong_type, float_wrong_type),
    out_of_range(),
    bad_choice,
    impossible(),
    bad_path,
]


@st.composite
def invalid_cases(draw):
    kind, overrides, names = draw(draw(st.sampled_from(CATEGORIES)))
    extra = draw(st.lists(st.sampled_from(sorted(HARMLESS)), max_size=2, unique=True))
    valid = [f"--config.{k}={draw(st.integers(*HARMLESS[k]))}" for k in extra if k not in names]
    mixed = draw(st.permutations(overrides + valid))
    return kind, mixed, names


def test_random_invalid_overrides_fail_cleanly_and_touch_nothing(
    tmp_path_factory, data_dir, tokenizer_file
):
    root = tmp_path_factory.mktemp("fuzz")
    existing = root / "existing"  # A workdir that already holds a run's config.
    existing.mkdir()
    (existing / "config.json").write_text("{}")
    before = snapshot(str(existing))
    fixed = [f"--config.dataset.data_dir={data_dir}", f"--config.tokenizer.path={tokenizer_file}"]
    seen = collections.Counter()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True)
    @given(invalid_cases(), st.booleans())
    def check(invalid, use_existing):
        kind, overrides, names = invalid
        workdir = str(existing if use_existing else root / "new")
        argv = ["train.py", f"--config={CONFIG_FILE}", f"--workdir={workdir}", *fixed, *overrides]
        try:
            config, workdir = parse(argv)
            trainer.train_and_evaluate(config, workdir, stop_after_steps=0)
        except (config_lib.ConfigError, flags.Error, *trainer.USER_ERRORS) as e:
            error = e
        else:
            raise AssertionError(f"{overrides} trained")
        message = str(error)
        assert any(name in message for name in names), (overrides, message)
        frames = traceback.extract_tb(error.__traceback__)
        assert not any(f"{os.sep}jax{os.sep}" in f.filename for f in frames), (overrides, frames)
        assert not os.path.exists(root / "new"), overrides
        assert snapshot(str(existing)) == before and os.listdir(existing) == ["config.json"]
        seen[kind] += 1

    check()
    print(f"\n{sum(seen.values())} invalid configs tried, all refused cleanly: {dict(seen)}")
    assert set(seen) == {
        "unknown key",
        "wrong type",
        "out of range",
        "bad choice",
        "impossible",
        "bad path",
    }
