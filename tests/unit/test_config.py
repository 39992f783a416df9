"""Config checks: each mistake is reported at its file and line, start-up refuses errors, `leadscore config check`."""

from __future__ import annotations

import logging
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli.main import main
from app.settings import ServiceConfig, Settings
from models.spec import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    ConfigProblem,
    Severity,
    load_feature_spec,
    read_config_file,
)
from tests.support import REPO_ROOT

ERROR, WARNING = Severity.ERROR, Severity.WARNING

# A small config that checks clean; each test writes one mistake into it and finds it at its line.
BASE = """\
features:
  conversion_type: converted
  profile_attributes: [industry, company_size]
  counted_types: [email_send, email_click, page_view]
  ratios:
    - {name: email_ctr, numerator: email_click, denominator: email_send}
  high_intent: [pricing_view]
  signals:
    - {name: email_click, types: [email_click], half_life: 14d}
    - {name: page_view, types: [page_view], half_life: 7d}
    - {name: pricing_view, types: [page_view], where: {category: pricing}, half_life: 7d}
segments:
  tier:
    - name: customer
      when: {field: count.converted, op: gt, value: 0}
    - name: hot
      when:
        all:
          - {field: score, op: ge, value: 0.3}
          - {field: feature.hours_since_last_event, op: le, value: 168}
    - name: cold
      when: {all: []}
  fit:
    - name: enterprise
      when: {field: profile.company_size, op: in, value: ["1001-5000", "5000+"]}
    - name: unknown
      when: {all: []}
"""


def line_with(text: str, needle: str) -> int:
    """The 1-based line of the one line of `text` containing `needle`."""
    found = [number for number, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(found) == 1, f"{needle!r} is on lines {found}"
    return found[0]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def mistake(old: str, new: str) -> str:
    assert BASE.count(old) == 1, old
    return BASE.replace(old, new)


def only_problem(tmp_path: Path, text: str) -> ConfigProblem:
    problems = ServiceConfig.check(write(tmp_path, text))
    assert len(problems) == 1, [str(p) for p in problems]
    assert problems[0].file == tmp_path / "config.yaml"
    return problems[0]


@pytest.fixture(autouse=True)
def _no_config_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("LEADSCORE_CONFIG_PATH", raising=False)
    sigterm = signal.getsignal(signal.SIGTERM)  # the CLI's main installs its own handler
    yield
    signal.signal(signal.SIGTERM, sigterm)


# --- the shipped config and the base --------------------------------------------------------------------------------


def test_the_shipped_config_checks_clean() -> None:
    assert ServiceConfig.check(None) == []
    assert ServiceConfig.check(DEFAULT_CONFIG_PATH) == []
    config = ServiceConfig.load(None)
    assert config.segments.primary == "tier"
    assert "hours_since_last_event" in config.features.feature_names


def test_the_base_of_these_tests_checks_clean(tmp_path: Path) -> None:
    assert ServiceConfig.check(write(tmp_path, BASE)) == []


# --- YAML and structure ---------------------------------------------------------------------------------------------


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    # The flow mapping of the page_view signal is never closed.
    text = mistake("types: [page_view], half_life: 7d}", "types: [page_view], half_life: 7d")
    problem = only_problem(tmp_path, text)
    assert problem.severity is ERROR
    # PyYAML notices at the next line, where a ':' cannot continue the open mapping.
    assert problem.line == line_with(text, "pricing_view, types") == 11
    assert "invalid YAML" in problem.message
    assert "line 10" in problem.message  # where the open mapping starts
    assert "<unicode string>" not in problem.message
    assert str(problem).startswith(f"{tmp_path / 'config.yaml'}:11: error: invalid YAML")


def test_a_syntax_error_is_located_for_training_too(tmp_path: Path) -> None:
    path = write(tmp_path, "features:\n  signals: [a\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:3: invalid YAML"):
        read_config_file(path)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:3: invalid YAML"):
        load_feature_spec(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "this is an empty file"),
        ("- features\n- segments\n", "this is a YAML list"),
    ],
)
def test_a_document_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str, message: str) -> None:
    problem = only_problem(tmp_path, text)
    assert (problem.severity, problem.line) == (ERROR, None)
    assert message in problem.message


def test_a_missing_file_is_one_error(tmp_path: Path) -> None:
    problems = ServiceConfig.check(tmp_path / "absent.yaml")
    assert [(p.severity, p.line) for p in problems] == [(ERROR, None)]
    assert "cannot read the config file: No such file" in problems[0].message


def test_an_unknown_key_is_located_with_a_suggestion(tmp_path: Path) -> None:
    text = mistake("      when: {all: []}\n  fit:", "      whn: {all: []}\n  fit:")
    problems = ServiceConfig.check(write(tmp_path, text))
    messages = {(p.line, p.message) for p in problems if p.severity is ERROR}
    line = line_with(text, "whn:")
    assert (line, "segments.tier[2]: unknown key 'whn'; did you mean 'when'?") in messages
    assert (line - 1, "segments.tier[2]: missing key 'when'") in messages  # located at the rule itself


def test_a_signal_key_is_suggested_as_written_in_the_config(tmp_path: Path) -> None:
    text = mistake("types: [page_view], half_life: 7d}", "types: [page_view], half_lfe: 7d}")
    problems = ServiceConfig.check(write(tmp_path, text))
    line = line_with(text, "half_lfe")
    assert [(p.line, p.message) for p in problems] == [
        (line, "features.signals[1]: unknown key 'half_lfe'; did you mean 'half_life'?"),
    ]


def test_a_counting_signal_without_a_half_life_is_refused_and_a_last_value_needs_none(tmp_path: Path) -> None:
    text = mistake("types: [page_view], half_life: 7d}", "types: [page_view]}")
    problem = only_problem(tmp_path, text)
    assert problem.severity is ERROR and problem.line == line_with(text, "types: [page_view]}")
    assert "needs a half_life" in problem.message
    kept = mistake("types: [page_view], half_life: 7d}", "types: [page_view], value: seconds, aggregate: max}")
    assert ServiceConfig.check(write(tmp_path, kept)) == []


def test_an_out_of_range_value_names_the_entry_and_the_value(tmp_path: Path) -> None:
    text = mistake("  conversion_type: converted\n", "  conversion_type: converted\n  active_days_window: 365\n")
    problem = only_problem(tmp_path, text)
    assert problem.severity is ERROR
    assert problem.line == line_with(text, "active_days_window")
    assert problem.message == "features.active_days_window: Input should be less than or equal to 120 (got 365)"


def test_high_intent_naming_no_signal_points_at_high_intent(tmp_path: Path) -> None:
    text = mistake("high_intent: [pricing_view]", "high_intent: [pricing_veiw]")
    problem = only_problem(tmp_path, text)
    assert (problem.severity, problem.line) == (ERROR, line_with(text, "high_intent"))
    assert "['pricing_veiw']; did you mean 'pricing_view'?" in problem.message


def test_yaml_anchors_and_merge_keys_are_not_repeated_keys(tmp_path: Path) -> None:
    # A merged-in key overridden by the mapping itself is what `<<` is for, not a mistake.
    text = mistake(
        "    - name: cold\n      when: {all: []}\n",
        "    - &cold {name: cold, when: {all: []}}\n    - <<: *cold\n      name: frozen\n",
    )
    problems = ServiceConfig.check(write(tmp_path, text))
    assert [(p.line, p.message) for p in problems] == [
        (
            line_with(text, "name: frozen") - 1,
            "segment 'frozen' is never assigned: the rule 'cold' before it matches every lead",
        )
    ]


def test_a_key_written_twice_is_an_error(tmp_path: Path) -> None:
    # YAML itself keeps the second `tier` and drops the first without a word.
    text = BASE.replace("  fit:\n", "  tier:\n")
    problems = ServiceConfig.check(write(tmp_path, text))
    errors = [p for p in problems if p.severity is ERROR]
    assert [(p.line, p.message) for p in errors] == [
        (
            line_with(BASE, "  fit:"),
            f"segments.tier is written twice (first at line {line_with(BASE, 'tier:')}); "
            "YAML keeps only the last one: remove or rename one",
        )
    ]
    # The rules dropped with the first `tier` were the only ones counting conversions.
    assert [p.message.split(" appears")[0] for p in problems if p.severity is WARNING] == [
        "conversion_type 'converted'"
    ]


# --- segment rules --------------------------------------------------------------------------------------------------


def test_a_misspelt_feature_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    text = mistake("feature.hours_since_last_event", "feature.hours_since_last_evnt")
    problem = only_problem(tmp_path, text)
    assert problem.severity is ERROR
    assert problem.line == line_with(text, "hours_since_last_evnt") == 20
    assert problem.message == (
        "feature.hours_since_last_evnt: the features have no 'hours_since_last_evnt'; "
        "did you mean 'hours_since_last_event'?"
    )
    with pytest.raises(ConfigError) as refused:
        ServiceConfig.load(tmp_path / "config.yaml")
    assert str(refused.value) == f"{tmp_path / 'config.yaml'}:20: {problem.message}"


def test_a_ratio_that_does_not_exist_is_an_unknown_feature(tmp_path: Path) -> None:
    text = mistake("{field: score, op: ge, value: 0.3}", "{field: feature.email_crt, op: ge, value: 0.3}")
    problem = only_problem(tmp_path, text)
    assert (problem.severity, problem.line) == (ERROR, line_with(text, "email_crt"))
    assert problem.message.endswith("did you mean 'email_ctr'?")


def test_an_unknown_field_kind_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    text = mistake("{field: score, op: ge, value: 0.3}", "{field: scores, op: ge, value: 0.3}")
    problem = only_problem(tmp_path, text)
    assert (problem.severity, problem.line) == (ERROR, line_with(text, "scores"))
    assert "field 'scores' must be score, feature.<name>" in problem.message
    assert problem.message.endswith("did you mean 'score'?")


def test_an_unknown_operator_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    text = mistake("{field: score, op: ge, value: 0.3}", "{field: score, op: gte, value: 0.3}")
    problem = only_problem(tmp_path, text)
    assert (problem.severity, problem.line) == (ERROR, line_with(text, "gte"))
    assert problem.message.startswith("segments.tier[1].when.all[0]: op 'gte' is not one of")


def test_a_profile_attribute_that_is_not_configured_is_a_warning(tmp_path: Path) -> None:
    # Not an error: rules can read any attribute profile updates carry, modelled or not.
    text = mistake("field: profile.company_size", "field: profile.company_sise")
    problem = only_problem(tmp_path, text)
    assert (problem.severity, problem.line) == (WARNING, line_with(text, "company_sise"))
    assert "'company_sise' is not one of the profile_attributes; did you mean 'company_size'?" in problem.message


def test_a_count_of_a_type_nothing_names_is_a_warning(tmp_path: Path) -> None:
    text = mistake("field: count.converted", "field: count.page_veiw")
    problems = ServiceConfig.check(write(tmp_path, text))
    counted = [p for p in problems if "count.page_veiw" in p.message]
    assert [(p.severity, p.line) for p in counted] == [(WARNING, line_with(text, "page_veiw"))]
    assert "names event type 'page_veiw'; did you mean 'page_view'?" in counted[0].message


@pytest.mark.parametrize(
    ("old", "new", "needle", "message"),
    [
        (
            "{field: score, op: ge, value: 0.3}",
            '{field: score, op: ge, value: "0.3"}',
            '"0.3"',
            "score holds a number but '0.3' is text (write it without quotes), so this condition never holds",
        ),
        (
            '"1001-5000", "5000+"',
            '"1001-5000", NO',
            "NO]",
            "profile.company_size holds text but the member False is a boolean (YAML reads unquoted "
            "yes/no/on/off/true/false as booleans: quote it), so it never matches",
        ),
        (
            "{field: count.converted, op: gt, value: 0}",
            "{field: count.converted, op: gt}",
            "count.converted",
            "count.converted gt needs a value (to match a missing value: op: exists, value: false)",
        ),
    ],
)
def test_a_value_that_can_never_compare_is_an_error(
    tmp_path: Path, old: str, new: str, needle: str, message: str
) -> None:
    text = mistake(old, new)
    problem = only_problem(tmp_path, text)
    assert (problem.severity, problem.line, problem.message) == (ERROR, line_with(text, needle), message)


def test_a_score_threshold_outside_zero_to_one_is_a_warning(tmp_path: Path) -> None:
    text = mistake("{field: score, op: ge, value: 0.3}", "{field: score, op: ge, value: 30}")
    problem = only_problem(tmp_path, text)
    assert (problem.severity, problem.line) == (WARNING, line_with(text, "value: 30"))
    assert "(a percentage? write it as a fraction)" in problem.message


def test_a_repeated_segment_name_is_an_error_at_the_second(tmp_path: Path) -> None:
    text = mistake("    - name: cold\n", "    - name: hot\n")
    problem = only_problem(tmp_path, text)
    assert (problem.severity, problem.line) == (ERROR, line_with(BASE, "name: cold"))
    first = line_with(BASE, "name: hot")
    assert (
        problem.message == f"segment 'hot' is already in set 'tier' (line {first}); names must be unique within a set"
    )


def test_rules_after_a_catch_all_are_never_reached(tmp_path: Path) -> None:
    text = mistake(
        "    - name: unknown\n      when: {all: []}\n",
        "    - name: unknown\n      when: {all: []}\n    - name: smb\n      when: {field: score, op: ge, value: 0}\n",
    )
    problem = only_problem(tmp_path, text)
    assert (problem.severity, problem.line) == (WARNING, line_with(text, "name: smb"))
    assert problem.message == "segment 'smb' is never assigned: the rule 'unknown' before it matches every lead"


def test_a_last_rule_that_is_not_a_catch_all_is_a_warning(tmp_path: Path) -> None:
    # The last rule gets every lead no rule matches (SegmentRules.assign): its own condition is ignored.
    text = mistake("    - name: unknown\n      when: {all: []}\n", "")
    problem = only_problem(tmp_path, text)
    assert (problem.severity, problem.line) == (WARNING, line_with(text, "profile.company_size"))
    assert problem.message.startswith("the last rule 'enterprise' is the fallback of set 'fit'")


def test_an_empty_any_is_a_warning(tmp_path: Path) -> None:
    text = mistake("          - {field: score, op: ge, value: 0.3}\n", "          - {any: []}\n")
    problem = only_problem(tmp_path, text)
    assert (problem.severity, problem.line) == (WARNING, line_with(text, "any: []"))
    assert problem.message == "an empty `any` matches no lead (an empty `all` matches every lead)"


# --- features and event types ---------------------------------------------------------------------------------------


def test_a_misspelt_counted_type_is_a_warning_with_a_suggestion(tmp_path: Path) -> None:
    text = mistake("counted_types: [email_send, email_click, page_view]", "counted_types: [email_send, emial_click]")
    problem = only_problem(tmp_path, text)
    assert (problem.severity, problem.line) == (WARNING, line_with(text, "counted_types"))
    assert problem.message.startswith(
        "counted type 'emial_click' appears nowhere else in the config; did you mean 'email_click'?"
    )


def test_a_counted_type_only_counted_is_no_problem(tmp_path: Path) -> None:
    # Not every counted type has a signal (the shipped config counts webinar_register): no near twin, no warning.
    text = mistake("counted_types: [email_send,", "counted_types: [webinar_register, email_send,")
    assert ServiceConfig.check(write(tmp_path, text)) == []


def test_a_misspelt_conversion_type_is_a_warning(tmp_path: Path) -> None:
    text = mistake("conversion_type: converted", "conversion_type: convertd")
    problems = ServiceConfig.check(write(tmp_path, text))
    assert [(p.severity, p.line) for p in problems] == [(WARNING, 2), (WARNING, line_with(text, "count.converted"))]
    assert problems[0].message.startswith(
        "conversion_type 'convertd' appears in no signal, counted type, ratio or segment rule; "
        "did you mean 'converted'?"
    )
    assert "did you mean 'convertd'?" in problems[1].message  # and the rule counting the real type is flagged


def test_the_conversion_type_as_a_feature_is_a_warning(tmp_path: Path) -> None:
    text = mistake("page_view]\n", "page_view, converted]\n")
    problem = only_problem(tmp_path, text)
    assert (problem.severity, problem.line) == (WARNING, line_with(text, "counted_types"))
    assert problem.message.startswith("counted type 'converted' is the conversion_type: training sees leads only")


def test_a_repeated_feature_name_is_an_error(tmp_path: Path) -> None:
    text = mistake("email_ctr, numerator", "email_click_count, numerator")
    problem = only_problem(tmp_path, text)
    assert (problem.severity, problem.line) == (ERROR, line_with(text, "email_click_count"))
    assert problem.message == (
        f"features.ratios[0].name makes feature 'email_click_count', which is also made at line "
        f"{line_with(text, 'counted_types')}; feature names must be unique"
    )


def test_a_profile_attribute_named_like_a_built_in_feature_is_an_error(tmp_path: Path) -> None:
    text = mistake("[industry, company_size]", "[industry, company_size, active_days]")
    problem = only_problem(tmp_path, text)
    assert (problem.severity, problem.line) == (ERROR, line_with(text, "profile_attributes"))
    assert "makes feature 'active_days', which is a built-in feature" in problem.message


def test_a_type_listed_twice_in_a_signal_is_an_error(tmp_path: Path) -> None:
    text = mistake("types: [email_click]", "types: [email_click, email_click]")
    problem = only_problem(tmp_path, text)
    assert (problem.severity, problem.line) == (ERROR, line_with(text, "email_click, email_click"))
    assert (
        problem.message == "signal 'email_click' lists event type 'email_click' twice: each such event would add twice"
    )


def test_a_bare_number_half_life_is_a_warning(tmp_path: Path) -> None:
    text = mistake("types: [email_click], half_life: 14d", "types: [email_click], half_life: 14")
    problem = only_problem(tmp_path, text)
    assert (problem.severity, problem.line) == (WARNING, line_with(text, "half_life: 14}"))
    assert problem.message == (
        "signal 'email_click' halves every 14 ms, so it fades away between events; "
        "a bare number is milliseconds: write a duration like '7d' or '12h'"
    )


def test_an_unknown_top_level_key_is_a_warning(tmp_path: Path) -> None:
    text = BASE + "segmets: {}\n"
    problem = only_problem(tmp_path, text)
    assert (problem.severity, problem.line) == (WARNING, line_with(text, "segmets"))
    assert problem.message.endswith("did you mean 'segments'?")


def test_a_missing_section_is_an_error(tmp_path: Path) -> None:
    text = BASE[: BASE.index("segments:")]
    problem = only_problem(tmp_path, text)
    assert (problem.severity, problem.line) == (ERROR, None)
    assert problem.message.startswith("no 'segments' section")


# --- start-up: ServiceConfig.load -----------------------------------------------------------------------------------


def test_load_refuses_errors_with_one_file_line_message_per_error(tmp_path: Path) -> None:
    text = mistake("feature.hours_since_last_event", "feature.hours_since_last_evnt")
    text = text.replace("conversion_type: converted", "conversion_type: convertd")  # a warning: not in the error
    path = write(tmp_path, text.replace('value: ["1001-5000", "5000+"]', "value: [1001]"))
    with pytest.raises(ConfigError) as refused:
        ServiceConfig.load(path)
    lines = str(refused.value).splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [f"{path}:20", f"{path}:{line_with(text, 'company_size, op')}"]
    assert all(p.severity is ERROR for p in refused.value.problems)
    assert isinstance(refused.value, ValueError)


def test_load_logs_each_warning_and_accepts_the_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, mistake("conversion_type: converted", "conversion_type: convertd"))
    with caplog.at_level(logging.WARNING, logger="app.settings"):
        config = ServiceConfig.load(path)
    assert config.features.conversion_type == "convertd"
    logged = [r.getMessage() for r in caplog.records if r.name == "app.settings"]
    assert len(logged) == 2
    assert logged[0].startswith(f"{path}:2: warning: conversion_type 'convertd'")


def test_training_refuses_feature_errors_with_their_line(tmp_path: Path) -> None:
    path = write(tmp_path, mistake("types: [email_click]", "types: [email_click, email_click]"))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:9: signal 'email_click' lists event type"):
        load_feature_spec(path)


# --- leadscore config check -----------------------------------------------------------------------------------------


def test_cli_check_of_the_shipped_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check"]) == 0
    assert capsys.readouterr().out == f"{DEFAULT_CONFIG_PATH}: no problems\n"


def test_cli_check_without_a_file_checks_the_configured_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, mistake("feature.hours_since_last_event", "feature.hours_since_last_evnt"))
    monkeypatch.setenv("LEADSCORE_CONFIG_PATH", str(path))
    assert main(["config", "check"]) == 1
    assert capsys.readouterr().out.startswith(f"{path}:20: error: feature.hours_since_last_evnt")


def test_cli_check_reports_errors_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = mistake("feature.hours_since_last_event", "feature.hours_since_last_evnt")
    path = write(tmp_path, text.replace("conversion_type: converted", "conversion_type: convertd"))
    assert main(["config", "check", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{path}:2: warning: conversion_type 'convertd'")
    assert any(line.startswith(f"{path}:20: error: feature.hours_since_last_evnt") for line in out)
    assert out[-1] == f"{path}: 1 error, 2 warnings; the services refuse this config"


def test_cli_check_warnings_exit_0_unless_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(
        tmp_path, mistake("counted_types: [email_send, email_click,", "counted_types: [email_send, emial_click,")
    )
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{path}:4: warning: counted type 'emial_click' appears nowhere else in the config; did you mean "
        "'email_click'? (a misspelt type makes a feature that is always 0)",
        f"{path}: 0 errors, 1 warning; the services accept it and log the warnings",
    ]
    assert main(["config", "check", "--strict", str(path)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == f"{path}: 0 errors, 1 warning; --strict fails on warnings"


@pytest.mark.parametrize("text", ["features: [a\n", None])
def test_cli_check_of_unreadable_yaml_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None
) -> None:
    path = write(tmp_path, text) if text is not None else tmp_path / "absent.yaml"
    assert main(["config", "check", str(path)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}:2: error: invalid YAML" if text else f"{path}: error: cannot read")
    assert lines[1] == f"{path}: 1 error, 0 warnings; the services refuse this config"
    assert "Traceback" not in captured.err


def test_the_readme_documents_every_setting_with_its_default_in_the_settings_order() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme[readme.index("| variable | default | |") : readme.index("### Features and segments (YAML)")]
    documented = [m.group(1).lower() for m in re.finditer(r"^\| `LEADSCORE_([A-Z_]+)` \|", table, re.MULTILINE)]
    assert documented == list(Settings.model_fields)
    defaults = dict(re.findall(r"^\| `LEADSCORE_([A-Z_]+)` \| `([^`]*)`", table, re.MULTILINE))
    for name, field in Settings.model_fields.items():
        shown = defaults.get(name.upper())
        if shown is None:  # a default described in words (a path, a list)
            continue
        if isinstance(field.default, bool):
            assert shown == str(field.default).lower(), name
        elif isinstance(field.default, int | float):
            assert float(shown) == field.default, name
        elif isinstance(field.default, str):
            assert shown == field.default, name
