"""Claims as data: the safe expression language, preflight checks, and core judging a run's results."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from runner.core.claims import evaluate, evaluate_claims, format_path, parse_claim
from runner.core.cli import compose_recipe, run_recipe
from runner.core.errors import ConfigError
from tests.conftest import run_cli

RESULTS = {
    "base": {"asr": 0.5, "orr": 0.4, "n": 200},
    "trained": {"asr": 0.1, "orr": 0.3, "n": 200},
    "systems": {"base+guard": {"asr": 0.2}, "base": {"asr": 0.5}},
    "by_concurrency": {"10": {"speedup": 1.4}, "100": {"speedup": 2.5}},
    "curve": [0.9, 0.5, 0.2],
    "converged": True,
    "time_to_target": {"fedbuff": 120.0, "fedavgm": "inf"},
    "missing_value": None,
}


def _ns(d):
    return SimpleNamespace(**{k: _ns(v) for k, v in d.items()}) if isinstance(d, dict) else d


# Each expression without bracket segments is evaluated by Python itself as the reference.
PYTHON_COMPARABLE = [
    "trained.asr < base.asr",
    "trained.orr <= base.orr",
    "trained.asr < base.asr and trained.orr > base.orr",
    "trained.asr > base.asr or trained.orr < base.orr",
    "not trained.asr > base.asr",
    "0 <= trained.asr < base.asr <= 1",
    "0 <= trained.asr > base.asr",
    "abs(trained.asr - base.asr) > 0.3",
    "min(trained.asr, trained.orr) * 2 == 0.2",
    "max(base.asr, base.orr, 0.45) / 2 >= 0.25",
    "-trained.asr + base.asr > 0.39",
    "base.n == trained.n",
    "base.n != trained.n",
    "converged",
    "not converged or base.asr < 0",
]


@pytest.mark.parametrize("expression", PYTHON_COMPARABLE)
def test_claims_agree_with_python_semantics(expression):
    reference = eval(expression, {"abs": abs, "min": min, "max": max}, vars(_ns(RESULTS)))  # trusted test text
    verdict = evaluate(parse_claim("c", expression), RESULTS)
    assert verdict.holds is reference and verdict.reason is None


def test_bracket_segments_list_indices_and_infinite_values():
    holds = lambda e: evaluate(parse_claim("c", e), RESULTS)  # noqa: E731
    assert holds('systems["base+guard"].asr < systems.base.asr').holds
    assert holds('by_concurrency["100"].speedup > by_concurrency["10"].speedup').holds
    assert holds("curve[2] < curve[0]").holds and not holds("curve[-1] > curve[0]").holds
    # results.json stores an infinite time (never reached) as "inf": reaching the target is faster
    v = holds("time_to_target.fedbuff < time_to_target.fedavgm")
    assert v.holds and v.values["time_to_target.fedavgm"] == math.inf
    v = holds('systems["base+guard"].asr < base.asr')
    assert v.values == {'systems["base+guard"].asr': 0.2, "base.asr": 0.5}


def test_path_formatting_round_trips_through_the_parser():
    for path in [("a",), ("systems", "base+guard", "asr"), ("by_c", "10", "x"), ("curve", 2), ("q", 'a"b')]:
        claim = parse_claim("c", f"{format_path(path)} > 0")
        assert claim.paths == (path,)


@pytest.mark.parametrize(("expression", "reason"), [
    ("trained.asr < nowhere.asr", "nowhere.asr is missing"),
    ("missing_value > 0", "missing_value is null"),
    ('systems["no guard"].asr < 1', 'systems["no guard"].asr is missing'),
    ("curve[7] < 1", "curve[7] is missing"),
    ("systems < 1", "not a number"),
    ("base.asr / (base.n - trained.n) > 0", "division by zero"),
    ("base.asr and converged", "not true/false"),
    ("base.asr", "not true/false"),
    # a missing value fails the claim even where `or` could short-circuit past it
    ("converged or nowhere > 0", "nowhere is missing"),
])
def test_unjudgeable_claims_do_not_hold_and_say_why(expression, reason):
    verdict = evaluate(parse_claim("c", expression), RESULTS)
    assert verdict.holds is False and reason in verdict.reason


@pytest.mark.parametrize("expression", [
    "__import__('os').system('true') == 0",
    "open('x') == 1",
    "base.asr ** 2 < 1",
    "base.asr < 'a'",
    "[x for x in base] == 1",
    "(lambda: 1)() == 1",
    "base.asr if converged else 1",
    "base.asr < 1 < True",
    "len(curve) > 1",
    "max(base.asr, key=abs) > 0",
    "trained.asr - base.asr",
    "trained.asr <",
    "",
    "base[trained.asr] > 0",
])
def test_expressions_outside_the_claim_language_are_config_errors(expression):
    with pytest.raises(ConfigError, match="claim 'bad'"):
        parse_claim("bad", expression)


def test_a_mapping_read_by_a_claim_is_recorded_by_its_size_not_copied():
    verdict = evaluate(parse_claim("c", "systems < 1"), RESULTS)
    assert verdict.values == {"systems": "<dict of 2>"} and not verdict.holds


def test_paths_are_looked_up_in_the_results_never_as_python_attributes():
    verdict = evaluate(parse_claim("c", "base.__class__ == 1"), RESULTS)
    assert verdict.holds is False and "base.__class__ is missing" in verdict.reason


def test_evaluate_claims_returns_holds_and_info():
    holds, info = evaluate_claims({"down": "trained.asr < base.asr", "up": "trained.asr > base.asr"}, RESULTS)
    assert holds == {"down": True, "up": False}
    assert info["down"] == {"expression": "trained.asr < base.asr", "holds": True,
                            "values": {"trained.asr": 0.1, "base.asr": 0.5}, "reason": None}


def test_a_null_expression_withdraws_an_inherited_claim():
    holds, _ = evaluate_claims({"down": "trained.asr < base.asr", "up": None}, RESULTS)
    assert holds == {"down": True}
    cfg = compose_recipe("fedbuff_dp")  # inherits fedbuff's claims and withdraws one of them
    assert "fewer_updates_than_fedasync" in compose_recipe("fedbuff").claims
    assert cfg.claims.fewer_updates_than_fedasync is None and cfg.claims.beats_fedasync_final_accuracy


def test_a_bad_claim_fails_composition_naming_it():
    with pytest.raises(ConfigError, match="claim 'broken'"):
        compose_recipe("smoke", ["+claims.broken='eval_loss <<< 1'"])
    with pytest.raises(ConfigError, match="claim 'call'"):
        compose_recipe("smoke", ["+claims.call='eval_loss.mean() < 1'"])


def test_bad_claim_on_the_command_line_exits_2_before_any_output(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("+recipe=smoke", "+claims.sneaky=\"__import__('os') == 1\"", f"run.output_root={out}")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("config error: claim 'sneaky'") and "Traceback" not in proc.stderr
    assert not out.exists()


def test_core_judges_claims_after_the_run_and_writes_them(tmp_path):
    claims = ["+claims.loss_falls='eval_loss < eval_loss_initial'",
              "+claims.loss_rises='eval_loss > eval_loss_initial'", "+claims.absent='nothing.here < 1'"]
    small = ["run.smoke=true", "algorithm.steps=20", "algorithm.warmup_steps=2", "run.progress=false"]
    out = run_recipe("smoke", [*small, *claims],
                     run_dir=tmp_path)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["claims"] == out["claims"]
    falls = written["eval_loss"] < written["eval_loss_initial"]  # the reference: the written numbers themselves
    assert written["claims"]["loss_falls"] is falls and written["claims"]["loss_rises"] is (not falls)
    absent = written["claims_info"]["absent"]
    assert written["claims"]["absent"] is False and "nothing.here is missing" in absent["reason"]
    assert written["claims_info"]["loss_falls"]["values"] == {"eval_loss": written["eval_loss"],
                                                             "eval_loss_initial": written["eval_loss_initial"]}
    summary = (tmp_path / "summary.md").read_text()
    assert "## Claims" in summary and "`eval_loss < eval_loss_initial`" in summary
    assert "nothing.here is missing" in summary
