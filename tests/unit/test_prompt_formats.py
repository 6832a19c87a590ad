"""Prompt formats: raw and chat rendering, the same ids at the actor and the learner, a chat
model without a template, prompts over the length limit (error with file:line, or dropped)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.engines.hf import HFEngine
from learner.hub import _wire_prompt
from learner.local_models import build_model_folder
from learner.logprobs import build_batch, token_logprobs
from learner.prompts import format_record, load_prompts
from protocol import messages
from protocol.config import parse_config
from protocol.prompts import PromptFormatError, PromptRenderer, chat_text, encode_rows, max_prompt_tokens
from protocol.tokens import pad_id

torch.set_num_threads(1)

QUESTIONS = ["Tom has 3 apples. He buys 4 more apples and then gives 2 to Mia. How many apples does Tom have?",
             "Mia has 12 pens.", "Zoe has 7 cards and 5 shells."]


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return build_model_folder(tmp_path_factory.mktemp("qwen") / "m", "qwen2", tied=True, seed=3)


def _prompt_file(path, questions):
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": q, "meta": {"answer": "1"}}) + "\n"
                            for i, q in enumerate(questions)))
    return str(path)


def test_raw_and_chat_render_what_the_tokenizer_says(qwen):
    tok = AutoTokenizer.from_pretrained(qwen)
    raw = PromptRenderer(tok, "raw")
    assert raw.encode(QUESTIONS[0]) == tok(QUESTIONS[0])["input_ids"]
    chat = PromptRenderer(tok, "chat", "Answer with #### x.")
    text = chat_text(tok, QUESTIONS[0], "Answer with #### x.")
    assert text.startswith("<|im_start|>system\nAnswer with #### x.<|im_end|>") and text.endswith("<|im_start|>assistant\n")
    assert chat.encode(QUESTIONS[0]) == tok(text, add_special_tokens=False)["input_ids"]
    assert chat.encode_many(QUESTIONS) == [chat.encode(q) for q in QUESTIONS]
    with pytest.raises(PromptFormatError, match="system_prompt and chat_template_kwargs need prompt_format = 'chat'"):
        PromptRenderer(tok, "raw", "be brief")


# The tail of Qwen3's chat template: with enable_thinking false, an empty thinking block follows the generation prompt.
THINKING_TEMPLATE = (
    "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}")


def test_chat_template_variables_reach_the_template(qwen, tmp_path):
    """`[task] chat_template_kwargs` (Qwen3's enable_thinking) changes the rendered ids the run
    trains on, through the same for_task renderer the learner, preflight and doctor build."""
    tok = AutoTokenizer.from_pretrained(qwen)
    tok.chat_template = THINKING_TEMPLATE
    task = {"prompt_format": "chat", "system_prompt": "Be brief."}
    plain = PromptRenderer.for_task(tok, parse_config({"task": task}).task, qwen)
    off = PromptRenderer.for_task(tok, parse_config({"task": {**task, "chat_template_kwargs": {"enable_thinking": False}}}).task, qwen)
    assert tok.decode(plain.encode(QUESTIONS[1])).endswith("<|im_start|>assistant\n")
    assert tok.decode(off.encode(QUESTIONS[1])).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert off.encode_many(QUESTIONS) == [off.encode(q) for q in QUESTIONS]
    assert off.record(QUESTIONS[1])["chat_template_kwargs"] == {"enable_thinking": False}
    with pytest.raises(PromptFormatError, match=r"chat_template_kwargs: \['tokenize'\] are set by scca"):
        PromptRenderer(tok, "chat", template_kwargs=(("tokenize", True),))
    with pytest.raises(ValueError, match="chat_template_kwargs needs prompt_format = 'chat'"):
        parse_config({"task": {"chat_template_kwargs": {"enable_thinking": False}}})


def test_a_chat_model_without_template_is_an_error_naming_the_folder(qwen, tmp_path):
    tok = AutoTokenizer.from_pretrained(qwen)
    tok.chat_template = None
    tok.save_pretrained(tmp_path / "plain")
    (tmp_path / "plain" / "chat_template.jinja").unlink(missing_ok=True)
    plain = AutoTokenizer.from_pretrained(tmp_path / "plain")
    with pytest.raises(PromptFormatError, match=f"model folder {tmp_path / 'plain'} has no chat template"):
        PromptRenderer(plain, "chat", folder=str(tmp_path / "plain"))


def test_the_same_token_ids_reach_the_actor_and_the_learner(qwen, tmp_path):
    """learner renders -> work message on the wire -> the actor generates from those ids; the
    behaviour logprobs equal the learner's teacher-forced ones on its own prompt ids."""
    f = _prompt_file(tmp_path / "p.jsonl", QUESTIONS)
    cfg = parse_config({"task": {"name": "math", "train_file": f, "heldout_file": f, "prompt_format": "chat"}})
    tok = AutoTokenizer.from_pretrained(qwen)
    prompts = load_prompts(cfg, tok, qwen)
    wire = messages.decode(messages.encode(messages.make(
        "work", "learner", 0, work_id="w", policy_version=0, prompts=[_wire_prompt(r) for r in prompts.train],
        group_size=2, sampling={"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 6}, eval=False)))
    actor_ids = [p["token_ids"].tolist() for p in wire["prompts"]]
    learner_ids = [r["token_ids"].tolist() for r in prompts.train]
    assert actor_ids == learner_ids == [prompts.renderer.encode(q) for q in QUESTIONS]
    engine = HFEngine(qwen, seed=1)
    groups = engine.generate(actor_ids, 2, temperature=1.0, max_new_tokens=6)
    model = AutoModelForCausalLM.from_pretrained(qwen, dtype=torch.float32).eval()
    samples = [(ids, s) for ids, g in zip(learner_ids, groups) for s in g]
    batch = build_batch([p for p, _ in samples], [s.token_ids.tolist() for _, s in samples], pad_id(tok))
    with torch.no_grad():
        logp, mask, _ = token_logprobs(model, batch)
    behaviour = torch.zeros_like(logp)
    for i, (_, s) in enumerate(samples):
        behaviour[i, : len(s.logprobs)] = torch.from_numpy(s.logprobs)
    assert float((logp - behaviour).abs().max()) < 1e-4
    record = format_record(prompts, tok, qwen, "bfloat16")
    assert record["format"] == "chat" and record["example_token_ids"] == learner_ids[0]
    assert record["eos_ids"] == sorted(json.loads((qwen / "generation_config.json").read_text())["eos_token_id"])


def test_a_prompt_over_the_limit_is_an_error_with_its_line_or_dropped_and_counted(qwen, tmp_path):
    tok = AutoTokenizer.from_pretrained(qwen)
    f = tmp_path / "p.jsonl"
    _prompt_file(f, QUESTIONS)
    lengths = [len(PromptRenderer(tok, "chat").encode(q)) for q in QUESTIONS]
    limit = max(lengths[1:])  # only the prompt on line 1 is over it
    assert lengths[0] > limit
    task = {"name": "math", "train_file": str(f), "heldout_file": str(f), "prompt_format": "chat",
            "max_prompt_tokens": limit}
    with pytest.raises(PromptFormatError, match=rf"{f}:1: prompt is {lengths[0]} tokens in format 'chat', over the maximum {limit}"):
        load_prompts(parse_config({"task": task}), tok, qwen)
    prompts = load_prompts(parse_config({"task": {**task, "long_prompts": "drop"}}), tok, qwen)
    assert [r["id"] for r in prompts.train] == ["p1", "p2"] and prompts.dropped == {"train": 1, "heldout": 1}
    assert all(len(r["token_ids"]) <= limit for r in prompts.train)
    # the default limit: the model's context (512 in config.json) minus the completion budget
    assert max_prompt_tokens(0, qwen, 48) == 464 and max_prompt_tokens(100, qwen, 48) == 100
    with pytest.raises(PromptFormatError, match=r"row 1: prompt is \d+ tokens in format 'raw', over the maximum 464"):
        encode_rows([{"prompt": "x " * 600}], PromptRenderer(tok, "raw"), 464, "error", lambda i: f"row {i + 1}")


def test_the_teacher_pass_renders_in_the_runs_format(qwen):
    """teacher_scores' plain log-probs equal the trainer's on the chat-rendered prompt ids."""
    from learner.credit.teacher import teacher_scores

    tok = AutoTokenizer.from_pretrained(qwen)
    model = AutoModelForCausalLM.from_pretrained(qwen, dtype=torch.float32).eval()
    renderer = PromptRenderer(tok, "chat", folder=str(qwen))
    completions = [tok("Tom has 7 apples.", add_special_tokens=False)["input_ids"]] * 2
    out = teacher_scores(model, tok, QUESTIONS[:2], completions, ["#### 7", "#### 7"], encode=renderer.encode)
    batch = build_batch([renderer.encode(q) for q in QUESTIONS[:2]], completions, pad_id(tok))
    with torch.no_grad():
        logp, mask, _ = token_logprobs(model, batch)
    assert float(((out["logp_plain"] - logp).abs() * mask).max()) < 1e-5
    assert float(out["kl"].abs().sum()) > 0  # the reference in context changes the conditioned pass
