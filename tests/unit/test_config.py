"""Config models: defaults, bounds, and unknown keys named in the error."""

import pytest

from protocol.config import ConfigError, RunConfig, load_config, parse_config
from deploy.cli import DEFAULT_CONFIG, parse_sets


def test_default_config_loads():
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.learner.lr == 1e-4 and cfg.actor.count == 2 and cfg.credit.method == "uniform"


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[learner]\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"\[learner.learning_rate\] unknown key"):
        load_config(p)


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match=r"\[trainer\] unknown key"):
        parse_config({"trainer": {}})


def test_bounds_are_enforced():
    with pytest.raises(ConfigError, match=r"\[actor.group_size\]"):
        parse_config({"actor": {"group_size": 1}})
    with pytest.raises(ConfigError, match=r"\[loss.eps_low\]"):
        parse_config({"loss": {"eps_low": 1.5}})


def test_bad_toml_is_reported(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[learner\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)


def test_overrides_and_json_round_trip(tmp_path):
    cfg = load_config(DEFAULT_CONFIG, parse_sets(["learner.max_steps=3", "task.name=\"arith\""]))
    assert cfg.learner.max_steps == 3
    p = tmp_path / "config.json"
    p.write_text(cfg.resolved_json())
    assert load_config(p) == cfg
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_sets(["max_steps=3"])


def test_every_field_is_documented_and_bounded_where_numeric():
    for section in RunConfig.model_fields.values():
        model = section.annotation
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_cross_section_rules_name_both_keys():
    # screening samples >= the group size: screening is off (a group_size-4 config needs no second key)
    assert parse_config({"actor": {"group_size": 4}}).learner.screen_samples == 4
    with pytest.raises(ConfigError, match=r"loss.max_lag \(1\) must be >= learner.publish_every - 1 \(2\)"):
        parse_config({"learner": {"publish_every": 3}})
    assert parse_config({"learner": {"publish_every": 3}, "loss": {"max_lag": 2}}).learner.publish_every == 3
    with pytest.raises(ConfigError, match=r"actor.broadcast_rank \(2\) needs the hf engine and learner.broadcast_world_size > 2"):
        parse_config({"actor": {"broadcast_rank": 2}, "learner": {"broadcast_world_size": 2}})
    assert parse_config({"actor": {"broadcast_rank": 1}, "learner": {"broadcast_world_size": 2}}).actor.broadcast_rank == 1


def test_a_cross_section_error_in_a_file_names_the_file(tmp_path):
    p = tmp_path / "run.toml"
    p.write_text("[learner]\npublish_every = 3\n")
    with pytest.raises(ConfigError, match=rf"{p}: \[config\] .*loss.max_lag \(1\) must be >= learner.publish_every - 1"):
        load_config(p)


def test_a_resolved_config_of_any_task_loads_again():
    """config.json names every key (arith's terms/digits too): the learner must accept it for any task."""
    import json

    for task in ("arith", "countdown", "math", "code"):
        cfg = parse_config({"task": {"name": task}})
        assert parse_config(json.loads(cfg.resolved_json())).task.name == task
    with pytest.raises(ConfigError, match="terms apply to task 'arith' only"):
        parse_config({"task": {"name": "countdown", "terms": 10}})
