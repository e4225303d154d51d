"""The validated configuration: defaults, every kind of bad value, TOML files, round trips."""

import dataclasses
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from predictd.cli import config_cmd  # noqa: F401 - registers `predictd config`
from predictd.cli.main import cli
from predictd.config import Config, config_reference_markdown, describe, from_dict, load, to_toml
from predictd.errors import PredictdError


def test_defaults_are_valid():
    cfg = Config()
    assert from_dict({}) == cfg
    assert from_dict(cfg.to_dict()) == cfg  # every default passes its own checks
    assert load(None) == cfg
    assert (cfg.transform, cfg.latent_factors, cfg.solver, cfg.ri2) == ("arcsinh", 3, "als", 0.01)


def test_every_key_has_help_and_a_typed_default():
    rows = describe()
    assert [r[0] for r in rows] == [f.name for f in dataclasses.fields(Config)]
    for key, default, help in rows:
        assert help and isinstance(help, str), key
        assert type(default) in (bool, int, float, str), key


@pytest.mark.parametrize("key, value, words", [
    ("latent_factors", "20", "must be an integer"),
    ("latent_factors", 20.0, "must be an integer"),
    ("latent_factors", True, "must be an integer"),      # bool is not an int here
    ("latent_factors", 0, "must be >= 1"),
    ("latent_factors", 1001, "must be <= 1000"),
    ("training_fraction", 0.0, "must be > 0.0"),         # open lower bound
    ("training_fraction", 1.5, "must be <= 1.0"),
    ("validation_fraction", 0.95, "must be <= 0.9"),
    ("rc", -1.0, "must be >= 0.0"),
    ("rc", float("nan"), "must be finite"),
    ("ri2", float("inf"), "must be finite"),
    ("learning_rate", "0.1", "must be a number"),
    ("learning_rate", False, "must be a number"),
    ("solver", "adam", "must be one of 'als', 'sgd'"),
    ("transform", "log", "must be one of"),
    ("transform", 1, "must be a string"),
    ("output_dtype_check", 1, "must be true or false"),
    ("output_dtype_check", "yes", "must be true or false"),
    ("seed", -1, "must be >= 0"),
    ("seed", 2 ** 31, "must be <="),
    ("stack_similar", -1, "must be >= 0"),
    ("stack_similar_tau", 0.0, "must be > 0.0"),
])
def test_bad_values_name_the_key(key, value, words):
    with pytest.raises(PredictdError) as e:
        from_dict({key: value})
    msg = str(e.value)
    assert repr(key) in msg and words in msg, msg
    assert "\n" not in msg


def test_stack_similarity_is_off_at_width_zero():
    assert from_dict({}).stack_similarity() == (1001, 0.2)
    assert from_dict({"stack_similar": 501, "stack_similar_tau": 0.5}).stack_similarity() == \
        (501, 0.5)
    assert from_dict({"stack_similar": 0, "stack_hinges": False}).stack_similarity() is None


def test_stacking_statistics_use_at_most_stack_max_blocks_evenly_spaced():
    from predictd.train import stack_blocks
    blocks = [("chr1", b, b * 10, 10) for b in range(10)]
    assert stack_blocks(blocks, 4) == [blocks[i] for i in (0, 3, 6, 9)]
    assert stack_blocks(blocks, 10) == blocks and stack_blocks(blocks, 64) == blocks
    assert stack_blocks(blocks, 1) == [blocks[0]]


def test_ints_are_accepted_for_floats():
    cfg = from_dict({"rc": 3, "learning_rate": 1})
    assert cfg.rc == 3.0 and isinstance(cfg.rc, float)
    assert isinstance(cfg.learning_rate, float)


def test_unknown_key_with_and_without_a_hint():
    with pytest.raises(PredictdError, match=r"unknown key 'latent_factor'.*did you mean "
                                             r"'latent_factors'"):
        from_dict({"latent_factor": 10})
    with pytest.raises(PredictdError) as e:
        from_dict({"zzz": 1})
    assert "unknown key 'zzz'" in str(e.value) and "did you mean" not in str(e.value)


def test_replace_validates():
    cfg = Config().replace(latent_factors=7)
    assert cfg.latent_factors == 7
    with pytest.raises(PredictdError, match="latent_factors"):
        Config().replace(latent_factors=-7)


def test_checksum_tracks_values():
    assert Config().checksum() == Config().checksum()
    assert Config().checksum() != Config(seed=2).checksum()


def test_lambdas_scaling():
    cfg = Config(latent_factors=10, rc=2.0, ra=4.0, ri=1.0)
    assert cfg.lambdas(4, 8, 50) == pytest.approx((2 / 40, 4 / 80, 1 / 500))


def test_load_toml_file_with_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('solver = "sgd"\nlatent_factors = 12\nrc = 1\n# a comment\n')
    cfg = load(str(p), overrides={"seed": 9})
    assert (cfg.solver, cfg.latent_factors, cfg.rc, cfg.seed) == ("sgd", 12, 1.0, 9)
    assert cfg.transform == "arcsinh"  # untouched keys keep defaults


@pytest.mark.parametrize("text, words", [
    ("[model]\nlatent_factors = 3\n", "unknown section [model]"),
    ("latent_factors = 3\n[solver_opts]\nx = 1\n", "unknown section [solver_opts]"),
    ("latent_factors = \n", "not valid TOML"),
    ("latnt_factors = 3\n", "unknown key 'latnt_factors'"),
    ("latent_factors = 3.5\n", "'latent_factors' must be an integer"),
    ("solver = 'newton'\n", "'solver' must be one of"),
])
def test_bad_toml_files(tmp_path, text, words):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(PredictdError) as e:
        load(str(p))
    assert words in str(e.value) and str(p) in str(e.value), str(e.value)


def test_missing_and_unreadable_paths(tmp_path):
    with pytest.raises(PredictdError, match="not found"):
        load(str(tmp_path / "nope.toml"))
    with pytest.raises(PredictdError, match="directory"):
        load(str(tmp_path))
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe\x00solver")
    with pytest.raises(PredictdError, match="not valid TOML"):
        load(str(p))


def test_to_toml_round_trips(tmp_path):
    cfg = Config(solver="sgd", latent_factors=33, ra=1.23e-7, rc=0.0,
                 training_regions='pilot "v2".bed',
                 output_dtype_check=False, min_improvement=0.0, seed=2 ** 31 - 1,
                 training_fraction=1e-4, transform="none")
    text = to_toml(cfg)
    assert text.count("\n# ") + 1 == len(describe())  # one help comment per key
    p = tmp_path / "round.toml"
    p.write_text(text)
    assert load(str(p)) == cfg
    p.write_text(to_toml(Config()))
    assert load(str(p)) == Config()


def test_float_values_survive_exactly(tmp_path):
    for value in (0.1, 1e-8, 2.9, 3.66, 1 / 3, 123456.789):
        cfg = Config(rc=value)
        p = tmp_path / "f.toml"
        p.write_text(to_toml(cfg))
        got = load(str(p)).rc
        assert got == value and not math.isnan(got)


def test_configuration_doc_is_the_generated_reference():
    doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert doc.read_text(encoding="utf-8") == config_reference_markdown(), (
        "docs/configuration.md is stale: regenerate it with "
        "`predictd config --markdown > docs/configuration.md`")


def test_reference_lists_every_key_with_its_default_and_bounds():
    text = config_reference_markdown()
    for key, default, help in describe():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{key}` |"))
        assert help in row, key
    assert "| `transform` | string | `\"arcsinh\"` | `\"arcsinh\"` or `\"none\"` |" in text
    assert "| `training_fraction` | float | `0.01` | > 0.0, ≤ 1.0 |" in text
    assert "| `stack` | bool | `true` | `true` or `false` |" in text


def test_config_markdown_command_prints_the_reference():
    res = CliRunner().invoke(cli, ["config", "--markdown"])
    assert res.exit_code == 0, res.output
    assert res.output == config_reference_markdown()


def test_stack_hinges_need_the_similarity_weighted_averages():
    assert Config(stack_hinges=True).stack_hinges
    with pytest.raises(PredictdError, match="stack_hinges = false"):
        Config(stack_hinges=True, stack_similar=0)
    assert Config(stack_hinges=False, stack_similar=0).stack_similarity() is None
