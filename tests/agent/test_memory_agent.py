"""The memory agent: query split, slot filling, untrusted memory parsing, config validation, and the
loop over a real tiny model (chunks, window, memory hand-over, shared first turn, seeding)."""

from __future__ import annotations

import math

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from longrl.agent import (
    FORMAT_INSTRUCTION,
    MemoryAgent,
    WindowError,
    fill_template,
    parse_memory_output,
    split_query,
)
from longrl.config import AgentConfig, ConfigError, load_config
from longrl.data.records import DocQASample
from longrl.rollout.hf import HFGenerator

DOC = " ".join(f"Person {i} lives in the city of Maple and works as a baker." for i in range(12)) + \
    " The river Lumen flows through Norwick."


def _sample(doc: str = DOC) -> DocQASample:
    return DocQASample(id="s1", source="toy", task="qa", document=doc,
                       question="Where does the river Lumen flow?\nAnswer with a single word.", answers=["Norwick"])


# ------------------------------------------------------------------------------ pure helpers
def test_split_query_moves_format_sentences_and_keeps_options():
    q = split_query("Where does the river flow? Answer with one word.\nPlease respond in English.")
    assert q.core == "Where does the river flow?"
    assert q.format.splitlines() == ["Answer with one word.", "Please respond in English.", FORMAT_INSTRUCTION]
    mcq = split_query("Where does Kalor live?\nA. Maple\nB. Cedar\nC. Dover\nD. Amber")
    assert mcq.core.splitlines() == ["Where does Kalor live?", "A. Maple", "B. Cedar", "C. Dover", "D. Amber"]
    assert mcq.format == FORMAT_INSTRUCTION
    only = split_query("Answer the question.")  # nothing but an instruction: kept whole as the question
    assert only.core == "Answer the question." and only.format == FORMAT_INSTRUCTION


def test_fill_template_substitutes_each_slot_once():
    out = fill_template("Q: $Q$ | M: $MEM$ | C: $CHUNK$", {"$Q$": "who?", "$MEM$": "see $CHUNK$", "$CHUNK$": "$Q$ text"})
    assert out == "Q: who? | M: see $CHUNK$ | C: $Q$ text"  # inserted text is never substituted again


@pytest.mark.parametrize("text, plan, expected", [
    ("Lumen -> Norwick.", False, ("Lumen -> Norwick.", "")),
    ("<think>look for rivers</think> Lumen -> Norwick.", False, ("Lumen -> Norwick.", "")),
    ("<think>never closed, cut by the budget", False, ("", "")),
    ("Lumen -> Norwick. <plan>find the city</plan> trailing", True, ("Lumen -> Norwick.", "find the city")),
    ("Lumen -> Norwick. <plan>find the city", True, ("Lumen -> Norwick.", "find the city")),
    ("no plan tag", True, ("no plan tag", "")),
    ("a <plan>x</plan>", False, ("a <plan>x</plan>", "")),  # plan off: the text is all memory
])
def test_parse_memory_output(text, plan, expected):
    assert parse_memory_output(text, plan) == expected


@pytest.mark.parametrize("override, key", [
    ("agent.chunk_tokens=0", "agent.chunk_tokens"),
    ("agent.memory_tokens=-1", "agent.memory_tokens"),
    ("agent.memory_template='no slots here'", "agent.memory_template"),
    ("agent.answer_template='$Q$ $MEM$ $FMT$ $FMT$'", "agent.answer_template"),
    ("agent.plan=maybe", "agent.plan"),
])
def test_bad_agent_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config(None, [override])


def test_a_default_agent_section_leaves_the_config_hash_unchanged():
    base = load_config(None, [])
    assert base.hash() == load_config(None, ["agent.chunk_tokens=4096"]).hash()
    assert base.hash() != load_config(None, ["agent.chunk_tokens=512"]).hash()


# ------------------------------------------------------------------------------ the loop on a real tiny model
class Recording(HFGenerator):
    """The real HF generator, recording each call's prompts and n (to check what the agent asked for)."""

    def __init__(self, model, tokenizer):
        super().__init__(model, tokenizer)
        self.calls: list[tuple[list[list[int]], int, int]] = []

    def generate(self, prompt_ids, n, max_new_tokens, temperature=1.0, top_p=1.0):
        self.calls.append(([list(p) for p in prompt_ids], n, max_new_tokens))
        return super().generate(prompt_ids, n, max_new_tokens, temperature, top_p)


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_reads_a_document_longer_than_the_window_in_chunks(policy):
    model, tok = policy
    cfg = AgentConfig(chunk_tokens=48, memory_tokens=12)
    doc_tokens = len(tok.encode(DOC.strip(), add_special_tokens=False))
    window = 400
    assert doc_tokens > window  # the whole document could never be one prompt
    agent = MemoryAgent(tok, cfg, max_new_tokens=6, temperature=1.0, window=window)
    gen = Recording(model, tok)
    trajs = agent.run(gen, _sample(), n=3, seed=7)
    n_chunks = math.ceil(doc_tokens / 48)
    assert len(trajs) == 3
    for traj in trajs:
        kinds = [t.kind for t in traj.turns]
        assert kinds == ["memory"] * n_chunks + ["answer"]
        assert all(len(t.prompt_ids) <= window for t in traj.turns)
        assert all(len(tok.encode(t.memory, add_special_tokens=False)) <= 12 for t in traj.turns[:-1])
        for prev, turn in zip(traj.turns, traj.turns[1:-1]):  # m_{t-1} is shown in turn t
            assert (prev.memory or cfg.empty_memory) in turn.prompt
        answer = traj.turns[-1]
        assert "Where does the river Lumen flow?" in answer.prompt and FORMAT_INSTRUCTION in answer.prompt
        assert "Answer with a single word." in answer.prompt  # format instructions reach the answer turn only
        assert "Answer with a single word." not in traj.turns[0].prompt
        assert (traj.turns[-2].memory or cfg.empty_memory) in answer.prompt
        assert traj.response == answer.output
        rec = traj.records()
        assert [r["kind"] for r in rec] == kinds and all(r["prompt"] and "output" in r for r in rec)
    # the chunks, in order, cover the document
    chunks = agent.chunks(DOC)
    assert len(chunks) == n_chunks and "".join(chunks).replace(" ", "") == DOC.strip().replace(" ", "")
    assert all(chunks[t] in trajs[0].turns[t].prompt for t in range(n_chunks))
    # the first turn's prompt is the same for all trajectories: one call with n=3 (prefilled once)
    first_prompts, first_n, first_budget = gen.calls[0]
    assert len(first_prompts) == 1 and first_n == 3 and first_budget == 12
    assert gen.calls[-1][2] == 6  # the answer turn's budget
    assert sum(n for _, n, _ in gen.calls) == 3 * (n_chunks + 1)


def test_same_seed_same_trajectories(policy):
    model, tok = policy
    agent = MemoryAgent(tok, AgentConfig(chunk_tokens=64, memory_tokens=8, plan=True, plan_tokens=4),
                        max_new_tokens=5, temperature=1.0)
    gen = HFGenerator(model, tok)
    a = agent.run(gen, _sample(), n=2, seed=3)
    b = agent.run(gen, _sample(), n=2, seed=3)
    assert [t.records() for t in a] == [t.records() for t in b]
    assert all("Plan (what to look for next)" in t.turns[0].prompt for t in a)
    assert a[0].turns[0].prompt.count("(empty)") == 2  # no memory and no plan yet


def test_a_window_too_small_for_the_budgets_is_refused_before_generating(policy):
    model, tok = policy
    agent = MemoryAgent(tok, AgentConfig(chunk_tokens=48, memory_tokens=64), max_new_tokens=4, window=150)
    gen = Recording(model, tok)
    with pytest.raises(WindowError, match="lower agent.chunk_tokens or agent.memory_tokens"):
        agent.run(gen, _sample(), n=1)
    assert gen.calls == []


def test_memory_over_budget_is_truncated(policy):
    _, tok = policy
    agent = MemoryAgent(tok, AgentConfig(memory_tokens=5), max_new_tokens=4)
    long = "The river Lumen flows through Norwick and the capital of Veridia is Port Amber."
    cut = agent._truncate(long, 5)
    assert len(tok.encode(cut, add_special_tokens=False)) <= 5 and long.startswith(cut)
    assert agent._truncate("Norwick.", 5) == "Norwick."
