"""The grader library (finetune_trainer.graders): templates, string_check, every text_similarity metric,
score_model with a reward model and a causal judge built from configs, and multi with weights and
formulas. Python graders and their sandbox are in tests/integration/test_python_grader_sandbox.py."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import TypeAdapter
from transformers import AutoTokenizer, LlamaForCausalLM, LlamaForSequenceClassification

from finetune_api.v1alpha1.graders import Grader
from finetune_trainer.graders import Compiled, GraderError, Result, compile_grader, sample_from_text
from helpers import tinymodels

GRADER: TypeAdapter[Any] = TypeAdapter(Grader)
CORPUS = [
    "What is two plus two? Four.",
    "The quick brown fox jumps over the lazy dog.",
    "Grade the answer from 0 to 10: 7",
    "Reply with a number only.",
] * 20


def grader(**spec: Any) -> Compiled:
    return compile_grader(GRADER.validate_python({"name": "g", **spec}))


def grade_one(compiled: Compiled, output: str, item: dict[str, Any] | None = None) -> Result:
    return compiled.grade([sample_from_text(output)], [item or {}])[0]


# --- templates -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "output", "item", "rendered"),
    [
        ("{{sample.output_text}}", "hello", {}, "hello"),
        ("{{ item.answer }}", "", {"answer": "42"}, "42"),
        ("{{item.meta.ref.city}}", "", {"meta": {"ref": {"city": "Lyon"}}}, "Lyon"),
        ("{{item.choices.1}}", "", {"choices": ["a", "b"]}, "b"),
        ("{{sample.output_json.order.qty}}", '{"order": {"qty": 3}}', {}, "3"),
        ("{{item.ref}}", "", {"ref": {"b": [1, True, None]}}, '{"b": [1, true, null]}'),
        ("Q: {{item.q}} A: {{sample.output_text}}!", "yes", {"q": "ok?"}, "Q: ok? A: yes!"),
        ('{"keep": {"braces": 1}}', "", {}, '{"keep": {"braces": 1}}'),
    ],
)
def test_templates_render_sample_and_item_fields(
    template: str, output: str, item: dict, rendered: str
) -> None:
    check = grader(type="string_check", input=template, reference=rendered, operation="eq")
    result = grade_one(check, output, item)
    assert result.error is None
    assert result.score == 1.0


@pytest.mark.parametrize(
    ("template", "output", "item", "message"),
    [
        ("{{item.reference.answer}}", "x", {"reference": {}}, "item.reference has no field 'answer'"),
        ("{{item.answer}}", "x", {"question": "q"}, "item has no field 'answer'"),
        ("{{sample.output_json.qty}}", "not json", {}, "sample.output_json is null"),
        ("{{item.choices.5}}", "x", {"choices": ["a"]}, "item.choices has no field '5'"),
    ],
)
def test_a_missing_field_fails_that_sample_only(template: str, output: str, item: dict, message: str) -> None:
    check = grader(type="string_check", input=template, reference="x", operation="eq")
    everything = {"answer": "x", "reference": {"answer": 1}, "choices": list("abcdef")}
    bad, good = check.grade([sample_from_text(output), sample_from_text('{"qty": 1}')], [item, everything])
    assert bad.score == 0.0
    assert bad.error is not None
    assert message in bad.error
    assert template in bad.error
    assert good.error is None


@pytest.mark.parametrize(
    ("template", "named"),
    [("{{row.answer}}", "'row'"), ("{{ output_text }}", "'output_text'"), ("{{item..a}}", "not a field")],
)
def test_a_template_outside_sample_and_item_is_refused_at_compile_time(template: str, named: str) -> None:
    with pytest.raises(GraderError, match="reference") as err:
        grader(type="string_check", input="x", reference=template, operation="eq")
    assert named in str(err.value)
    assert "grader 'g'" in str(err.value)


def test_sample_from_text_parses_json_replies_only() -> None:
    assert sample_from_text('{"a": [1, 2]}') == {"output_text": '{"a": [1, 2]}', "output_json": {"a": [1, 2]}}
    assert sample_from_text("The answer is 4") == {"output_text": "The answer is 4", "output_json": None}


# --- string_check ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "output", "reference", "score"),
    [
        ("eq", "Paris", "Paris", 1.0),
        ("eq", "Paris ", "Paris", 0.0),
        ("eq", "paris", "Paris", 0.0),
        ("ne", "Lyon", "Paris", 1.0),
        ("ne", "Paris", "Paris", 0.0),
        ("like", "The capital is Paris.", "Paris", 1.0),
        ("like", "The capital is paris.", "Paris", 0.0),
        ("ilike", "THE CAPITAL IS PARIS.", "paris", 1.0),
        ("ilike", "The capital is Lyon.", "paris", 0.0),
    ],
)
def test_string_check_operations(operation: str, output: str, reference: str, score: float) -> None:
    check = grader(
        type="string_check", input="{{sample.output_text}}", reference="{{item.ref}}", operation=operation
    )
    result = grade_one(check, output, {"ref": reference})
    assert (result.score, result.passed, result.error) == (score, None, None)


# --- text_similarity ---------------------------------------------------------------------------------

REFERENCE = "the quick brown fox jumps over the lazy dog near the river bank"
CLOSE = "the quick brown fox jumped over a lazy dog near the river"
FAR = "stock markets fell sharply on monday after the central bank decision"
METRICS = [
    "fuzzy_match",
    "bleu",
    "gleu",
    "meteor",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
]


@pytest.mark.parametrize("metric", METRICS)
def test_each_metric_ranks_identical_above_close_above_unrelated(metric: str) -> None:
    similarity = grader(
        type="text_similarity",
        input="{{sample.output_text}}",
        reference="{{item.ref}}",
        evaluation_metric=metric,
    )
    same, close, far = (
        r.score
        for r in similarity.grade(
            [sample_from_text(t) for t in (REFERENCE, CLOSE, FAR)], [{"ref": REFERENCE}] * 3
        )
    )
    assert same >= 0.99
    assert same > close > far
    assert 0.0 <= far < 0.5


def test_rouge_variants_count_different_units() -> None:
    shuffled = "mat the on sat cat the"  # every word of the reference, no bigram in order
    scores = {
        metric: grade_one(
            grader(
                type="text_similarity",
                input="{{sample.output_text}}",
                reference="the cat sat on the mat",
                evaluation_metric=metric,
            ),
            shuffled,
        ).score
        for metric in ("rouge_1", "rouge_2", "rouge_l")
    }
    assert scores["rouge_1"] == pytest.approx(1.0)
    assert scores["rouge_2"] < 0.3
    assert 0.0 < scores["rouge_l"] < scores["rouge_1"]


def test_rouge_counts_non_ascii_words() -> None:
    rouge = grader(
        type="text_similarity",
        input="{{sample.output_text}}",
        reference="καλημέρα κόσμε",
        evaluation_metric="rouge_1",
    )
    assert grade_one(rouge, "Καλημέρα κόσμε").score == pytest.approx(1.0)
    assert grade_one(rouge, "καληνύχτα φίλε").score == 0.0


def test_pass_threshold_sets_passed_and_an_error_never_passes() -> None:
    fuzzy = grader(
        type="text_similarity",
        input="{{sample.output_text}}",
        reference="{{item.ref}}",
        evaluation_metric="fuzzy_match",
        pass_threshold=0.8,
    )
    near, far, missing = fuzzy.grade(
        [sample_from_text("Paris, France"), sample_from_text("Berlin"), sample_from_text("Paris")],
        [{"ref": "Paris, France."}, {"ref": "Paris, France."}, {}],
    )
    assert near.score >= 0.8
    assert near.passed is True
    assert far.passed is False
    assert (missing.score, missing.passed) == (0.0, False)
    assert missing.error is not None
    assert "item has no field 'ref'" in missing.error


def test_cosine_uses_minilm_a_paraphrase_beats_an_unrelated_sentence() -> None:
    with grader(
        type="text_similarity",
        input="{{sample.output_text}}",
        reference="A man is playing a guitar.",
        evaluation_metric="cosine",
        pass_threshold=0.5,
    ) as cosine:
        same, paraphrase, unrelated = cosine.grade(
            [
                sample_from_text(t)
                for t in (
                    "A man is playing a guitar.",
                    "Someone plays an instrument.",
                    "The stock market fell sharply today.",
                )
            ],
            [{}] * 3,
        )
    assert same.score == pytest.approx(1.0, abs=1e-4)
    assert paraphrase.score > 0.5 > unrelated.score
    assert unrelated.score < 0.2
    assert (paraphrase.passed, unrelated.passed) == (True, False)


# --- score_model -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with a one-logit head: a reward model as transformers saves it."""
    directory = tmp_path_factory.mktemp("reward")
    tok = tinymodels.tokenizer(CORPUS)
    config = tinymodels.llama_config(tok, num_labels=1)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def reward_spec(model: Path, **extra: Any) -> dict[str, Any]:
    return {
        "type": "score_model",
        "model": str(model),
        "messages": [
            {"role": "user", "content": "{{item.question}}"},
            {"role": "assistant", "content": "{{sample.output_text}}"},
        ],
        "range": [-2.0, 3.0],
        **extra,
    }


def test_reward_model_scores_are_sigmoid_of_its_logit_mapped_into_range(reward_model: Path) -> None:
    answers = ["Four.", "The quick brown fox jumps over the lazy dog, twice over.", "7"]
    items = [{"question": "What is two plus two?"}] * 3
    with grader(**reward_spec(reward_model)) as judge:
        batch = judge.grade([sample_from_text(a) for a in answers], items)
        again = judge.grade([sample_from_text(a) for a in answers], items)
        alone = [judge.grade([sample_from_text(a)], items[:1])[0] for a in answers]
    tok = AutoTokenizer.from_pretrained(reward_model)
    model = LlamaForSequenceClassification.from_pretrained(reward_model).eval()
    for answer, result in zip(answers, batch, strict=True):
        text = tok.apply_chat_template(
            [{"role": "user", "content": items[0]["question"]}, {"role": "assistant", "content": answer}],
            tokenize=False,
        )
        with torch.no_grad():
            logit = model(**tok(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0]
        assert result.error is None
        assert result.score == pytest.approx(-2.0 + 5.0 * float(torch.sigmoid(logit)), abs=1e-5)
        assert -2.0 <= result.score <= 3.0
    assert [r.score for r in again] == [r.score for r in batch]
    assert [r.score for r in alone] == pytest.approx([r.score for r in batch], abs=1e-5)  # padding is masked
    assert len({round(r.score, 6) for r in batch}) == 3


def test_reward_model_template_errors_are_per_sample(reward_model: Path) -> None:
    with grader(**reward_spec(reward_model, pass_threshold=-5.0)) as judge:
        ok, missing = judge.grade([sample_from_text("Four.")] * 2, [{"question": "2+2?"}, {}])
    assert ok.error is None
    assert ok.passed is True
    assert missing.passed is False
    assert missing.error is not None
    assert "item has no field 'question'" in missing.error


@pytest.fixture(scope="module")
def judge_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A tiny causal LM whose reply is one token, over and over: every token embeds the same, the layers
    add nothing, and the head scores only `token`, so greedy decoding is fully determined."""
    made: dict[str, Path] = {}

    def make(token: str) -> Path:
        if token not in made:
            directory = tinymodels.causal_lm(tmp_path_factory.mktemp(f"judge-{ord(token)}"), CORPUS)
            model = LlamaForCausalLM.from_pretrained(directory)
            target = AutoTokenizer.from_pretrained(directory).convert_tokens_to_ids(token)
            with torch.no_grad():
                model.model.embed_tokens.weight.fill_(1.0)
                for layer in model.model.layers:
                    layer.self_attn.o_proj.weight.zero_()
                    layer.mlp.down_proj.weight.zero_()
                model.lm_head.weight.zero_()
                model.lm_head.weight[target] = 1.0
            model.save_pretrained(directory)
            made[token] = directory
        return made[token]

    return make


def judge_spec(model: Path, **extra: Any) -> dict[str, Any]:
    return {
        "type": "score_model",
        "model": str(model),
        "messages": [
            {"role": "developer", "content": "Grade the answer from 0 to 10."},
            {"role": "user", "content": "{{item.question}} {{sample.output_text}}"},
        ],
        "range": [0.0, 10.0],
        **extra,
    }


def test_causal_judge_reads_the_first_number_of_its_reply(judge_factory: Callable[[str], Path]) -> None:
    sevens = judge_factory("7")
    one_token = {"max_completion_tokens": 1}
    with grader(**judge_spec(sevens, sampling_params=one_token, pass_threshold=6.0)) as judge:
        results = judge.grade(
            [sample_from_text("Four."), sample_from_text("a much longer answer here")],
            [{"question": "2+2?"}] * 2,
        )
    assert [(r.score, r.passed, r.error) for r in results] == [(7.0, True, None), (7.0, True, None)]
    with grader(**judge_spec(sevens, sampling_params={"max_completion_tokens": 3})) as judge:
        assert grade_one(judge, "Four.", {"question": "2+2?"}).score == 10.0  # "777" is clamped into range


def test_causal_judge_reply_without_a_number_is_a_per_sample_error(
    judge_factory: Callable[[str], Path],
) -> None:
    with grader(**judge_spec(judge_factory("x"))) as judge:
        result = grade_one(judge, "Four.", {"question": "2+2?"})
    assert result.score == 0.0
    assert result.error is not None
    assert "no number" in result.error
    assert "xxxx" in result.error


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"model": "s3://models/judge/"}, "download it first"),
        ({"model": "/nonexistent/judge"}, "no config.json"),
        ({"model": "builtin://models/nope"}, "no such builtin model"),
        ({"range": [1.0, 0.0]}, "low < high"),
    ],
)
def test_score_model_configuration_errors_name_the_field(
    reward_model: Path, spec: dict, message: str
) -> None:
    with pytest.raises(GraderError, match=message) as err:
        grader(**(reward_spec(reward_model) | spec))
    assert f"grader 'g': {'range' if 'range' in spec else 'model'}" in str(err.value)


def test_a_classifier_with_several_labels_is_not_a_reward_model(tmp_path: Path) -> None:
    tok = tinymodels.tokenizer(CORPUS)
    config = tinymodels.llama_config(
        tok, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_labels=3
    )
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(GraderError, match="3 labels"):
        grader(**reward_spec(tmp_path))


# --- multi -----------------------------------------------------------------------------------------

EXACT = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}
MENTIONS = {
    "type": "string_check",
    "name": "mentions",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "ilike",
}


def test_multi_weights_average_the_named_scores_and_report_details() -> None:
    multi = grader(
        type="multi", graders={"exact": EXACT, "mentions": MENTIONS}, weights={"exact": 3, "mentions": 1}
    )
    exact, mentions, neither = multi.grade(
        [sample_from_text(t) for t in ("Paris", "It is PARIS.", "Lyon")], [{"answer": "Paris"}] * 3
    )
    assert (exact.score, exact.details) == (1.0, {"exact": 1.0, "mentions": 1.0})
    assert (mentions.score, mentions.details) == (0.25, {"exact": 0.0, "mentions": 1.0})
    assert neither.score == 0.0
    assert exact.passed is None


@pytest.mark.parametrize(
    ("formula", "expected"),
    [
        ("0.5 * exact + 0.5 * mentions", 0.5),
        ("max(exact, mentions) / 4 + min(mentions, 2)", 1.25),
        ("exact-match * 2 + 1", 3.0),  # a hyphenated grader name is one name
        ("exact - match + sqrt(abs(-4)) + log(exp(1)) + log(8, 2)", 6.0),
        ("-(exact) + (mentions + 1) / 2", 1.0),
    ],
)
def test_multi_calculate_output(formula: str, expected: float) -> None:
    graders = {"exact": EXACT, "mentions": MENTIONS, "exact-match": MENTIONS, "match": EXACT}
    multi = grader(type="multi", graders=graders, calculate_output=formula)
    result = grade_one(multi, "It is Paris.", {"answer": "Paris"})
    assert result.error is None
    assert result.score == pytest.approx(expected)
    assert result.details == {"exact": 0.0, "mentions": 1.0, "exact-match": 1.0, "match": 0.0}


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("exact + acc", "'acc' is not a grader name"),
        ("exact ** 2", "operator '**' is not allowed"),
        ("exact +", "cannot parse 'exact +'"),
        ("exact + )", "near ')'"),
        ("__import__('os')", "'__import__' is not a function"),
        ("__import__('os').system('true')", "is not allowed"),
        ("exact.real", "'exact.real' is not allowed"),
        ("exact if mentions else 1", "is not allowed"),
        ("log(exact, 2, 3)", "log() takes 1 to 2 arguments, got 3"),
        ("sqrt()", "sqrt() takes 1 arguments, got 0"),
        ("'1' + exact", "is not a number"),
        ("max(*exact)", "is not allowed"),
    ],
)
def test_a_bad_formula_is_refused_at_compile_time_naming_the_token(formula: str, message: str) -> None:
    with pytest.raises(GraderError) as err:
        grader(type="multi", graders={"exact": EXACT, "mentions": MENTIONS}, calculate_output=formula)
    assert "grader 'g': calculate_output" in str(err.value)
    assert message in str(err.value)


def test_a_formula_failing_on_one_sample_fails_that_sample_only() -> None:
    multi = grader(
        type="multi",
        graders={"exact": EXACT, "mentions": MENTIONS},
        calculate_output="mentions / exact + log(exact)",
    )
    good, zero = multi.grade(
        [sample_from_text("Paris"), sample_from_text("Paris!")], [{"answer": "Paris"}] * 2
    )
    assert (good.score, good.error) == (1.0, None)
    assert zero.score == 0.0
    assert zero.error is not None
    assert "division by zero" in zero.error
    assert zero.details == {"exact": 0.0, "mentions": 1.0}


def test_a_sub_grader_error_fails_the_sample_naming_the_sub_grader() -> None:
    needs_city = {**EXACT, "reference": "{{item.city}}"}
    multi = grader(
        type="multi", graders={"city": needs_city, "mentions": MENTIONS}, weights={"city": 1, "mentions": 1}
    )
    result = grade_one(multi, "Paris", {"answer": "Paris"})
    assert result.score == 0.0
    assert result.error is not None
    assert "grader 'city'" in result.error
    assert "item has no field 'city'" in result.error
    assert result.details == {"mentions": 1.0}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"weights": {"exact": 1}}, "must name exactly the graders"),
        ({"weights": {"exact": 0, "mentions": 0}}, "at least one weight"),
        ({"weights": {"exact": 1, "mentions": 1}, "calculate_output": "exact"}, "exactly one of"),
        ({}, "exactly one of"),
    ],
)
def test_multi_configuration_errors(spec: dict, message: str) -> None:
    with pytest.raises(GraderError, match=message):
        grader(type="multi", graders={"exact": EXACT, "mentions": MENTIONS}, **spec)


def test_a_sub_grader_configuration_error_names_its_path() -> None:
    with pytest.raises(GraderError, match=r"graders\.bad: grader 'exact': input: .*'nope'"):
        grader(type="multi", graders={"bad": {**EXACT, "input": "{{nope.x}}"}}, weights={"bad": 1})


def test_results_are_finite_numbers() -> None:
    multi = grader(type="multi", graders={"exact": EXACT}, calculate_output="exp(exact * 1000)")
    result = grade_one(multi, "Paris", {"answer": "Paris"})
    assert result.error is not None
    assert "math range error" in result.error
    assert math.isfinite(result.score)
