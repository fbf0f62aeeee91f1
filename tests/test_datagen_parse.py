"""The teacher's text -> conversations: accepted forms, rejections with reasons, prompt files, merge."""

import asyncio
import json

import pytest

from train.builtin.symbolic import KINDS, SymbolicContext, SymbolicObject
from train.datagen.merge import merge, training_sample
from train.datagen.parser import Rejected, parse_reply, render
from train.datagen.prompts import detail_instructions, load_prompts
from train.datagen.store import RecordLog, read_records
from train.datagen.teacher import TemplateTeacher
from train.datagen.world_source import world_contexts

GOOD_CONVERSATION = """Question:
What animal is on the sofa?
===
Answer:
A grey cat is curled up on the sofa.
It looks relaxed.
===
Question:
Is anyone else in the room?
===
Answer:
No, the cat is alone.
==="""


def test_conversation_blocks_become_turns():
    turns = parse_reply(GOOD_CONVERSATION, "conversation")
    assert [t["from"] for t in turns] == ["human", "gpt", "human", "gpt"]
    assert turns[1]["value"] == "A grey cat is curled up on the sofa.\nIt looks relaxed."
    assert turns[2]["value"] == "Is anyone else in the room?"


def test_lenient_labels_markdown_and_inline_text():
    text = "**Question:** What is red?\n**Answer:** The bus is red.\nQ: And the car?\nA: It is blue."
    turns = parse_reply(text, "conversation")
    assert [t["value"] for t in turns] == ["What is red?", "The bus is red.", "And the car?", "It is blue."]


def test_detail_bare_text_gets_a_stable_instruction():
    text = "A large white bus has stopped at the curb while three people wait on the sidewalk to board it."
    turns = parse_reply(text, "detail", image_id="42", instructions=detail_instructions())
    assert turns[0]["value"] in detail_instructions() and turns[1]["value"] == text
    assert parse_reply(text, "detail", image_id="42", instructions=detail_instructions()) == turns


@pytest.mark.parametrize("kind, text, reason", [
    ("conversation", "", "empty reply"),
    ("conversation", "Sure! Here it is.\nQuestion: What?\nAnswer: That.\nQuestion: Who?\nAnswer: Me.",
     "text before the first 'Question:'"),
    ("conversation", "Question: What is it?\n===\nAnswer: A cat.", "at least 2 exchanges, found 1"),
    ("conversation", "Question: What is it?\n===\nQuestion: Where?\n===\nAnswer: Here.",
     "question 1 is followed by another question"),
    ("conversation", "Question: What is it?\n===\nAnswer: A cat.\n===\nQuestion: Where?",
     "question 2 has no answer"),
    ("conversation", "Answer: A cat.\nQuestion: What?", "answer without a question"),
    ("conversation", "Question: What?\nAnswer:\nQuestion: Where?\nAnswer: Here.", "answer 1 is empty"),
    ("complex", "Question: Why?\nAnswer: Because.\nQuestion: How?\nAnswer: So.",
     "exactly one question, found 2"),
    ("detail", "A dog.", "fewer than 8"),
    ("detail", "According to the captions, a dog sits by a bike on a sunny street in town.",
     "mentions the captions"),
    ("detail", "A dog stands at [0.10, 0.10, 0.30, 0.30] next to a bicycle parked by the wall.",
     "quotes a box"),
    ("detail", "The dog's box starts at x = 0.125, to the left of a bicycle by the wall here.",
     "quotes a box coordinate"),
    ("detail", "Given the coordinates, the dog is on the left of the bicycle near the wall.",
     "mentions coordinates"),
    ("detail", "As an AI, I cannot see the image, but it seems to show a dog near a bicycle.", "refuses"),
    ("detail", "<image>\nA dog sits next to a bicycle on the street near a small shop.",
     "<image> placeholder"),
    ("conversation", "gibberish with no labels at all", "no 'Question:' / 'Answer:' blocks"),
])
def test_malformed_replies_are_rejected_with_a_reason(kind, text, reason):
    with pytest.raises(Rejected) as err:
        parse_reply(text, kind)
    assert reason in err.value.reason


def test_cut_off_reply_is_rejected_even_if_it_parses():
    with pytest.raises(Rejected, match="cut off at the token limit"):
        parse_reply(GOOD_CONVERSATION, "conversation", finish_reason="length")


@pytest.mark.parametrize("kind", KINDS)
def test_prompt_files_load_and_their_examples_pass_the_parser(kind):
    prompts = load_prompts(kind)
    assert len(prompts.examples) >= 2
    for example in prompts.examples:
        assert ": [" in example.context  # the symbolic form, as the query will be
        parse_reply(example.response, kind, instructions=detail_instructions())
    ctx = SymbolicContext("1", "a.jpg", ("A dog.",), (SymbolicObject("dog", (0.1, 0.2, 0.3, 0.4)),))
    messages = prompts.messages(ctx)
    assert messages[0]["role"] == "system" and messages[-1] == {"role": "user", "content": ctx.text()}
    assert [m["role"] for m in messages[1:-1]] == ["user", "assistant"] * len(prompts.examples)


@pytest.mark.parametrize("kind", KINDS)
def test_template_teacher_round_trips_through_the_parser(kind):
    teacher = TemplateTeacher()
    for ctx in world_contexts(30, first_seed=100):
        from train.builtin.template_teacher import template_conversation

        reply = asyncio.run(teacher.complete(ctx, kind))
        assert parse_reply(reply.text, kind) == template_conversation(ctx, kind)


def test_render_is_parse_inverse():
    turns = parse_reply(GOOD_CONVERSATION, "conversation")
    assert parse_reply(render(turns), "conversation") == turns


def test_record_log_repairs_a_partial_last_line(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text(json.dumps({"key": "a/detail", "status": "ok"}) + "\n" + '{"key": "b/deta')
    with RecordLog(path) as log:
        assert log.done == {"a/detail": "ok"} and log.repaired_bytes == len('{"key": "b/deta')
        log.append({"key": "b/detail", "status": "rejected", "reason": "x"})
    assert [r["key"] for r in read_records(path)] == ["a/detail", "b/detail"]


def _record(key, status="ok", image="img.jpg", kind="complex"):
    return {"key": key, "image_id": key.split("/")[0], "kind": kind, "image": image, "status": status,
            "conversations": [{"from": "human", "value": "Why?"}, {"from": "gpt", "value": "Because."}]}


def test_merge_counts_types_skips_rejected_and_duplicates(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps(r) + "\n" for r in [
        _record("1/complex"), _record("2/complex", status="rejected"), _record("3/detail", kind="detail")]))
    b.write_text("".join(json.dumps(r) + "\n" for r in [_record("1/complex"),
                                                       _record("4/complex", image=None)]))
    stats = merge([a, b], tmp_path / "train.json")
    samples = json.loads((tmp_path / "train.json").read_text())
    assert stats.as_dict()["by_kind"] == {"detail": 1, "complex": 2}
    assert (stats.records, stats.rejected, stats.duplicates, stats.samples) == (5, 1, 1, 3)
    assert samples[0] == {"id": "1-complex", "image": "img.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhy?"}, {"from": "gpt", "value": "Because."}]}
    assert samples[2] == {"id": "4-complex", "conversations": [
        {"from": "human", "value": "Why?"}, {"from": "gpt", "value": "Because."}]}  # no image, no token


def test_training_sample_refuses_broken_turns():
    bad = _record("1/complex")
    bad["conversations"] = [{"from": "gpt", "value": "x"}]
    with pytest.raises(ValueError, match="record 1/complex: conversations must alternate"):
        training_sample(bad)
