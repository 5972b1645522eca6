"""Reading fine-tuning JSONL and the data gates: every format, malformed rows named by file, line and
field, and planted duplicates, leakage, PII and preference problems caught at the rates planted."""

from __future__ import annotations

import base64
import io
import json
import random

import pytest
from PIL import Image

from finetune_api.v1alpha1.common import DatasetFormat
from finetune_api.v1alpha1.finetunejob import DataGates
from finetune_trainer.data import duplicates, gates, pii
from finetune_trainer.data.rows import MAX_PROBLEMS, read_jsonl
from helpers.datagen import chat_rows, jsonl, near_copy, preference_rows, sentence

PIXEL = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            "chat",
        ),
        ({"prompt": "2+2=", "completion": "4"}, "prompt_completion"),
        (preference_rows(1)[0], "preference"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "total?"},
                            {"type": "image_url", "image_url": {"url": PIXEL}},
                        ],
                    },
                    {"role": "assistant", "content": "12.50"},
                ]
            },
            "vision_chat",
        ),
        ({"messages": [{"role": "user", "content": "17*3?"}], "reference_answer": "51"}, "rft"),
        ({"image": "s3://bucket/cat.png", "label": "cat"}, "image_label"),
    ],
)
def test_every_openai_format_is_read_as_is(row: dict, expected: str) -> None:
    dataset = read_jsonl("train.jsonl", jsonl([row]))
    assert dataset.problems == []
    assert dataset.format == expected
    assert len(dataset.rows) == 1


def test_malformed_rows_are_named_by_file_line_and_field() -> None:
    good = chat_rows(1)[0]
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}),
        json.dumps({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]}),
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
        "[1, 2]",
    ]
    dataset = read_jsonl("s3://data/train.jsonl", "\n".join(lines).encode(), DatasetFormat.CHAT)
    assert [str(p) for p in dataset.problems] == [
        "s3://data/train.jsonl:2: invalid JSON: "
        "Expecting property name enclosed in double quotes at column 2",
        "s3://data/train.jsonl:3: messages[0].role: 'robot' is not one of "
        "['assistant', 'developer', 'system', 'tool', 'user']",
        "s3://data/train.jsonl:4: messages[0].content: expected a string or a list of content parts",
        "s3://data/train.jsonl:5: messages: no assistant message to learn from",
        "s3://data/train.jsonl:6: expected a JSON object, got list",
    ]
    assert len(dataset.rows) == 1
    report = gates.run({"training": dataset}, DataGates(min_rows=1)).report
    assert not report.passed
    assert report.failed_rules[0].startswith("5 malformed rows (first: s3://data/train.jsonl:2: invalid JSON")


def test_many_problems_are_counted_but_only_the_first_kept() -> None:
    dataset = read_jsonl("t.jsonl", b"{bad\n" * (MAX_PROBLEMS + 25))
    assert dataset.problem_count == MAX_PROBLEMS + 25
    assert len(dataset.problems) == MAX_PROBLEMS


def test_clean_data_passes() -> None:
    splits = {
        "training": read_jsonl("train.jsonl", jsonl(chat_rows(300, seed=1))),
        "validation": read_jsonl("val.jsonl", jsonl(chat_rows(50, seed=2))),
    }
    report = gates.run(splits, DataGates()).report
    assert report.passed, report.failed_rules
    assert (report.duplicate_rate, report.leakage_rate, report.pii_findings) == (0.0, 0.0, {})
    assert report.rows == {"training": 300, "validation": 50}


def test_planted_duplicates_and_leakage_are_caught_at_their_rates() -> None:
    clean = chat_rows(180, seed=3)
    training = clean + clean[:10] + [near_copy(r) for r in clean[10:20]]  # 10 exact + 10 near of 200
    validation = chat_rows(45, seed=4) + [near_copy(r) for r in clean[50:55]]  # 5 of 50 leak
    splits = {
        "training": read_jsonl("train.jsonl", jsonl(training)),
        "validation": read_jsonl("val.jsonl", jsonl(validation)),
    }
    report = gates.run(splits, DataGates()).report
    assert report.duplicate_rate == pytest.approx(20 / 200)
    assert report.leakage_rate == pytest.approx(5 / 50)
    assert report.failed_rules == [
        "duplicate rate 10.0% > 2.0% (20 of 200 rows)",
        "leakage rate 10.0% > 0.0% (5 of 50 evaluation rows repeat training rows)",
    ]
    assert report.examples["duplicate"][0] == "train.jsonl:181 exact duplicate of line 1"
    assert len(report.examples["duplicate"]) == 5  # examples, not the full list
    assert report.examples["leakage"][0] == "val.jsonl:46 near duplicate of training line 51"


def test_pii_is_found_blocked_and_redacted() -> None:
    rows = chat_rows(40, seed=5)
    planted = [
        "mail me at jane.doe@example.com",
        "card 4111 1111 1111 1111 on file",
        "ssn 123-45-6789",
        "call +1 415-555-0132 today",
    ]
    for row, text in zip(rows, planted, strict=False):
        row["messages"][1]["content"] += " " + text
    rows[10]["messages"][1]["content"] += " order 4111 1111 1111 1112 and version 1.2.3.4.5"  # fails Luhn
    splits = {"training": read_jsonl("train.jsonl", jsonl(rows))}
    report = gates.run(splits, DataGates()).report
    assert report.pii_findings == {"email": 1, "credit_card": 1, "national_id": 1, "phone": 1}
    assert report.failed_rules == [
        "PII found: 1 credit_card, 1 email, 1 national_id, 1 phone (dataGates.pii.action Block)"
    ]
    redacting = DataGates.model_validate({"pii": {"action": "Redact"}})
    outcome = gates.run(splits, redacting)
    assert outcome.report.passed
    first = outcome.rows["training"][0].data["messages"][1]["content"]
    assert first.endswith("mail me at [EMAIL]")
    assert "[CREDIT_CARD]" in outcome.rows["training"][1].data["messages"][1]["content"]


def test_pii_detectors_prefer_precision() -> None:
    assert pii.luhn("4111111111111111")
    assert not pii.luhn("4111111111111112")
    kinds = ["email", "phone", "credit_card", "national_id", "ip_address"]
    found = {f.kind: f.text for f in pii.find("host 10.0.0.1, NINO QQ123456C? no: AB 12 34 56 C", kinds)}
    assert found == {"ip_address": "10.0.0.1", "national_id": "AB 12 34 56 C"}
    assert pii.find("ssn 666-12-3456 and 000-12-3456 were never issued", kinds) == []
    assert pii.find("build 2024-11-23, 12 items at 3.50", kinds) == []


def test_preference_hygiene() -> None:
    rows = preference_rows(60, seed=6)
    rows[1]["non_preferred_output"] = rows[1]["preferred_output"]  # a tie
    rows.append(json.loads(json.dumps(rows[2])))  # a repeated pair
    for row in rows[:40]:
        row["metadata"] = {"synthetic": True}
    for row in rows[40:45]:
        row.setdefault("metadata", {})["adversarial"] = True
    gates_spec = DataGates.model_validate(
        {
            "maxDuplicateRate": 1.0,
            "preference": {"maxSyntheticShare": 0.5, "adversarialBalance": {"min": 0.1, "max": 0.5}},
        }
    )
    outcome = gates.run({"training": read_jsonl("prefs.jsonl", jsonl(rows))}, gates_spec)
    report = outcome.report
    assert report.dropped == {"tie": 1, "duplicate_pair": 1, "synthetic_over_cap": 19}
    kept = outcome.rows["training"]
    assert sum(r.synthetic for r in kept) == len(kept) - sum(r.synthetic for r in kept) == 20
    assert report.examples["tie"] == ["prefs.jsonl:2 preferred and non-preferred outputs are the same"]
    assert report.failed_rules == []
    gates_spec.preference.adversarial_balance.min = 0.2  # 5 of 40 = 12.5%
    report = gates.run({"training": read_jsonl("prefs.jsonl", jsonl(rows))}, gates_spec).report
    assert report.failed_rules == [
        "adversarial share 12.5% outside [20%, 50%] (rows with metadata.adversarial: true)"
    ]


def test_images_tell_rows_apart_and_their_bytes_are_not_scanned_as_text() -> None:
    def image(value: int) -> str:
        buffer = io.BytesIO()
        Image.new("RGB", (4, 4), (value, 0, 0)).save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    # one templated question over different images: no duplicates; the same image twice: a duplicate
    question = [{"type": "text", "text": "What colour is this?"}]
    rows = [
        {
            "messages": [
                {
                    "role": "user",
                    "content": [*question, {"type": "image_url", "image_url": {"url": image(v)}}],
                },
                {"role": "assistant", "content": "red" if v > 127 else "dark"},
            ]
        }
        for v in [*range(0, 250, 10), 0]
    ]
    training = read_jsonl("vision.jsonl", jsonl(rows))
    report = gates.run({"training": training}, DataGates()).report
    assert report.duplicate_rate == pytest.approx(1 / 26, abs=1e-4)

    labelled = [{"image": image(v), "label": "red"} for v in range(0, 250, 10)]
    report = gates.run({"training": read_jsonl("labels.jsonl", jsonl(labelled))}, DataGates()).report
    assert (report.duplicate_rate, report.pii_findings) == (0.0, {})


SUPPORT = [
    "my blender stopped working after two weeks and the warranty card is missing from the box",
    "can you tell me how to reset the router without losing the saved wifi passwords please",
    "the invoice for order four two seven shows a delivery fee that i never agreed to pay",
    "our team needs twelve extra seats on the annual plan before the quarter closes on friday",
    "which charger works with the older tablet model that has the round port on the side",
    "the delivery driver left the parcel at the wrong house and nobody answers the phone there",
    "i would like to move my appointment from tuesday morning to thursday afternoon if possible",
    "the kettle makes a clicking sound and switches itself off before the water boils at all",
]
ANSWERS = [
    "sorry to hear that, we will send a replacement as soon as the serial number is confirmed",
    "hold the small button at the back for ten seconds, your saved networks stay on the device",
    "thanks for spotting it, the fee has been removed and a corrected invoice is on its way now",
    "done, the seats are added and the new total appears on next month's statement for your team",
    "any charger sold for the second generation fits, the round port takes the thinner plug",
    "we have asked the courier to collect it today and will deliver it to you by tomorrow",
    "your appointment is now on thursday at two, a confirmation email will follow shortly",
    "please descale it with vinegar once, if it still clicks we will replace it for free",
]


def support_row(user: str, answer: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "You are the support assistant. Be brief."},
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ]
    }


def duplicate_matches(rows: list[dict]) -> dict[int, tuple[str, int]]:
    """{index of a flagged row: (kind, index of the row it repeats)} by the gates' duplicate index."""
    dataset = read_jsonl("train.jsonl", jsonl(rows))
    texts = [row.similarity_text for row in dataset.rows]
    index = duplicates.Index(duplicates.Sketches(texts, duplicates.Framing.estimate(texts)))
    return {i: m for i, m in enumerate(index.training_matches()) if m is not None}


def test_small_edits_of_short_chat_rows_are_near_duplicates() -> None:
    # about 35 words with role labels: one changed word had left a word 3-gram Jaccard under 0.8
    rows = [support_row(u, a) for u, a in zip(SUPPORT, ANSWERS, strict=True)]
    rows += [
        support_row(SUPPORT[0].replace("two weeks", "three weeks"), ANSWERS[0]),  # 8: a substituted word
        support_row(SUPPORT[1].replace("reset the", "reset the new"), ANSWERS[1]),  # 9: an inserted word
        support_row(SUPPORT[2].replace(" never", ""), ANSWERS[2]),  # 10: a deleted word
        support_row(  # 11: sentences reordered
            "please tell me, without losing the saved wifi passwords, how to reset the router", ANSWERS[1]
        ),
        support_row(SUPPORT[3], ANSWERS[3] + ". Is there anything else I can do?"),  # 12: appended
        support_row(SUPPORT[4].upper() + "!!", ANSWERS[4].replace(",", " ;")),  # 13: case, punctuation
        support_row(SUPPORT[5], ANSWERS[6]),  # 14: two rows' halves: not a near duplicate of either
    ]
    assert duplicate_matches(rows) == {
        8: ("near", 0),
        9: ("near", 1),
        10: ("near", 2),
        11: ("near", 1),
        12: ("near", 3),
        13: ("exact", 4),
    }


def test_rows_that_only_share_a_template_stay_distinct() -> None:
    countries = [
        ("france", "paris"), ("spain", "madrid"), ("italy", "rome"), ("peru", "lima"), ("japan", "tokyo"),
        ("kenya", "nairobi"), ("chile", "santiago"), ("egypt", "cairo"), ("norway", "oslo"),
        ("canada", "ottawa"), ("poland", "warsaw"), ("greece", "athens"), ("cuba", "havana"),
        ("ghana", "accra"), ("nepal", "kathmandu"), ("austria", "vienna"),
    ]  # fmt: skip
    rows = [
        support_row(
            f"Answer in one short sentence and name the source you used. What is the capital of {c}?",
            f"The capital of {c.title()} is {city.title()}, according to the atlas on the shelf.",
        )
        for c, city in countries
    ]
    rows.append(json.loads(json.dumps(rows[3])))
    rows[-1]["messages"][2]["content"] = (
        "The capital of Peru is Lima, according to the old atlas on the shelf."
    )
    assert duplicate_matches(rows) == {len(countries): ("near", 3)}


def test_duplicates_under_the_gate_are_dropped_keeping_the_first() -> None:
    clean = chat_rows(100, seed=8)
    training = clean + clean[:2] + [near_copy(r) for r in clean[10:13]]  # 2 exact + 3 near of 105
    splits = {"training": read_jsonl("train.jsonl", jsonl(training))}
    outcome = gates.run(splits, DataGates(max_duplicate_rate=0.05))
    assert outcome.report.passed, outcome.report.failed_rules
    assert outcome.report.dropped == {"exact_duplicate": 2, "near_duplicate": 3}
    assert outcome.report.rows == {"training": 100}
    assert [row.line for row in outcome.rows["training"]] == list(range(1, 101))  # the first of each kept
    over = gates.run(splits, DataGates(max_duplicate_rate=0.04))
    assert not over.report.passed
    assert (over.report.dropped, over.report.rows) == ({}, {"training": 105})


def test_a_near_copy_is_found_among_a_hundred_earlier_rows_sharing_its_template() -> None:
    # a long template too rare to be framing (4% of the rows) puts every earlier row that has it into the
    # copy's LSH buckets; the row it was copied from agrees on most bands and is checked first
    rng = random.Random(11)
    template = (
        "Read the customer's message below, answer it in one short and friendly sentence, name the policy "
        "you relied on, and never promise a refund or a date that the policy does not state. "
    )

    def row(prefix: str) -> dict:
        user, answer = prefix + sentence(rng, 12), sentence(rng, 6)
        return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}

    rows = [row(template if i % 25 == 0 else sentence(rng, 32) + ". ") for i in range(3000)]
    copied = 25 * 110  # after 110 rows with the template
    assert duplicate_matches([*rows, near_copy(rows[copied])]) == {3000: ("near", copied)}


def test_rows_in_other_scripts_are_compared_by_their_words() -> None:
    rows = [
        support_row(
            "Größe und Gewicht der Lieferung für Straße zwölf bitte prüfen", "Erledigt, alles passt."
        ),
        support_row(
            "Wie lange dauert die Rückerstattung für eine stornierte Bestellung?", "Drei bis fünf Tage."
        ),
        support_row(
            "GRÖSSE und Gewicht der Lieferung für Straße zwölf bitte prüfen!", "Erledigt, alles passt."
        ),
        support_row(
            "größe und gewicht der lieferung für straße zwölf bitte prüfen", "Erledigt; alles passt."
        ),
        support_row(
            "Wie lange dauert die Rückerstattung für eine stornierte Bestellung?", "Vier bis fünf Tage."
        ),
    ]
    # lower case of "GRÖSSE" is "grösse", not "größe": one word differs
    assert duplicate_matches(rows) == {2: ("near", 0), 3: ("exact", 0), 4: ("near", 1)}
