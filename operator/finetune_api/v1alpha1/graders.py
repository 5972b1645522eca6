"""Graders in OpenAI's shape (string_check, text_similarity, score_model, python, multi).

Used as RFT rewards and as EvalGate judges; the trainer image implements them (`finetune_trainer.graders`).
Templates refer to the sample and the dataset row as `{{sample.output_text}}` and `{{item.<field>}}`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from finetune_api.base import ApiModel, Name, Rule, ShortText, Text, Uri, rules

Template = Annotated[str, Field(min_length=1, max_length=4096)]


class GraderBase(ApiModel):
    name: Name


class StringCheckGrader(GraderBase):
    """1.0 when `input` compares true with `reference`, else 0.0.

    like/ilike test for a substring (ilike ignores case)."""

    type: Literal["string_check"]
    input: Template
    reference: Template
    operation: Literal["eq", "ne", "like", "ilike"]


class TextSimilarityGrader(GraderBase):
    """Similarity of `input` to `reference`; cosine uses the sentence-embedding model in the image."""

    type: Literal["text_similarity"]
    input: Template
    reference: Template
    evaluation_metric: Literal[
        "fuzzy_match",
        "bleu",
        "gleu",
        "meteor",
        "cosine",
        "rouge_1",
        "rouge_2",
        "rouge_3",
        "rouge_4",
        "rouge_5",
        "rouge_l",
    ]
    pass_threshold: float | None = None


class ChatMessage(ApiModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: Text


class SamplingParams(ApiModel):
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=32768)] | None = None
    seed: int | None = None


class ScoreModelGrader(GraderBase):
    """A local judge or reward model scores the sample; the score is read from its reply within `range`.

    OpenAI calls the prompt `input`; here it is `messages`, because the other graders' `input` is a string
    template and a structural schema allows one type per field name."""

    type: Literal["score_model"]
    model: Uri
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=16)]
    range: Annotated[
        list[float],
        Field(min_length=2, max_length=2),
        rules(Rule("self[0] < self[1]", "range must be [low, high] with low < high")),
    ] = Field(default_factory=lambda: [0.0, 1.0])
    sampling_params: SamplingParams | None = None
    pass_threshold: float | None = None


class PythonGrader(GraderBase):
    """User code defining `grade(sample: dict, item: dict) -> float`, run in a sandboxed subprocess
    (no network, bounded CPU, memory and wall time). An exception fails the sample with its message."""

    type: Literal["python"]
    source: Annotated[str, Field(min_length=1, max_length=65536)]
    timeout_seconds: Annotated[int, Field(ge=1, le=600)] = 10
    memory_mib: Annotated[int, Field(ge=64, le=16384)] = 512
    pass_threshold: float | None = None


SimpleGrader = Annotated[
    StringCheckGrader | TextSimilarityGrader | ScoreModelGrader | PythonGrader,
    Field(discriminator="type"),
]


class MultiGrader(GraderBase):
    """Combines named graders, e.g. accuracy, safety and efficiency rewards.

    Either `weights` (a weighted mean over the named graders) or OpenAI's `calculateOutput` formula over
    their names (+ - * / parentheses, min, max, abs, sqrt, log, exp)."""

    type: Literal["multi"]
    graders: Annotated[dict[str, SimpleGrader], Field(min_length=1, max_length=16)]
    weights: Annotated[dict[str, Annotated[float, Field(ge=0.0)]], Field(max_length=16)] | None = None
    calculate_output: ShortText | None = None

    cel_rules = (
        Rule(
            "has(self.weights) != has(self.calculateOutput)",
            "set exactly one of weights or calculateOutput",
        ),
        Rule(
            "!has(self.weights) || (self.weights.all(k, k in self.graders) "
            "&& self.graders.all(k, k in self.weights))",
            "weights must name exactly the graders in graders",
            field_path=".weights",
        ),
    )


Grader = Annotated[
    StringCheckGrader | TextSimilarityGrader | ScoreModelGrader | PythonGrader | MultiGrader,
    Field(discriminator="type"),
]
