"""Memory agent vs middle truncation on synthetic DocQA several times longer than the window (docs/agent.md).

    python -m bench.agent_demo --out runs/agent_demo            # the measured run
    python -m bench.agent_demo --out runs/agent_demo_quick --quick   # toy sizes: checks every stage runs

One from-scratch tiny Qwen2 policy (tokenizer trained on the task's text, copy pretraining for an induction
circuit, recall pretraining for fact lookup) is fine-tuned twice on the same questions (the agent with twice the
steps: each question gives it ~7 turn examples):

* baseline: the single-turn QwenLong prompt, its document middle-truncated so the prompt fits ``--window``
  tokens, target ``<think>evidence</think> Therefore, the answer is X.``;
* memory agent: the agent's own turns at the same window: each memory turn's target is the evidence sentence
  once a chunk has shown it whole (else the previous memory), the answer turn's ``<think>memory</think>
  Therefore, the answer is X.``.

Then the agent is trained with RL (``longrl.train.agent_rl``: G trajectories per question, the hybrid rule
reward of the answer as trajectory reward, DAPO loss over every turn). Held-out accuracy (greedy, the rule
reward's ``acc``) is measured for the baseline, the agent after SFT and the agent after RL. The questions are
the ``lookup`` family of :mod:`longrl.data.synth` (city, job or manager of a person, with near-duplicate names
and ``used to live in`` distractors). Writes ``OUT/results.json`` and ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from longrl.agent import MemoryAgent, MemoryState, WindowError, split_query
from longrl.config import AgentConfig, CopyPretrainConfig, RecallPretrainConfig, load_config
from longrl.data.prompt import chat_prompt_ids, render_user_prompt
from longrl.data.records import DocQASample
from longrl.data.synth import generate
from longrl.rewards.rule import rule_score
from longrl.rollout.hf import HFGenerator

MEMORY_TEMPLATE = "Question: $Q$\nMemory: $MEM$\nText: $CHUNK$\nWrite the new memory."
ANSWER_TEMPLATE = "Memory: $MEM$\nQuestion: $Q$\n$FMT$"
ANSWER_NEW_TOKENS = 32


@dataclass
class Sizes:
    window: int = 192
    doc_factor: int = 4
    memory_tokens: int = 16
    vocab: int = 1200
    hidden: int = 128
    copy_steps: int = 800
    recall_steps: int = 400
    sft_steps: int = 800
    sft_batch: int = 16
    train_questions: int = 2000
    heldout: int = 128
    rl_steps: int = 40
    rl_prompts: int = 8
    group_size: int = 4
    evidence_repeat: int = 4
    """Agent SFT: the turn that writes the evidence into memory, and the answer turn, are seen this many times
    (most memory turns see no evidence; without it the policy learns to leave the memory empty)."""


QUICK = Sizes(window=160, doc_factor=3, memory_tokens=12, vocab=600, hidden=32, copy_steps=10, recall_steps=4,
              sft_steps=10, sft_batch=4, train_questions=24, heldout=6, rl_steps=2, rl_prompts=2, group_size=2)


def agent_config(z: Sizes, chunk_tokens: int) -> AgentConfig:
    return AgentConfig(chunk_tokens=chunk_tokens, memory_tokens=z.memory_tokens, memory_template=MEMORY_TEMPLATE,
                       answer_template=ANSWER_TEMPLATE, answer_new_tokens=ANSWER_NEW_TOKENS)


def largest_chunk(tok, z: Sizes, samples: list[DocQASample]) -> AgentConfig:
    """The agent config with the largest chunk for which every sample's turns fit the window."""
    chunk = z.window
    while chunk > 8:
        acfg = agent_config(z, chunk)
        agent = MemoryAgent(tok, acfg, max_new_tokens=ANSWER_NEW_TOKENS, window=z.window)
        try:
            for s in samples:
                agent.check_window(s)
            return acfg
        except WindowError:
            chunk -= 4
    raise WindowError(f"no chunk size fits a window of {z.window}")


# ---------------------------------------------------------------------------- data and policy
def questions(n: int, doc_tokens: int, split: str, count) -> list[DocQASample]:
    return generate(n, doc_tokens, seed=0, families=("lookup",), split=split, count_tokens=count)


def build_policy(z: Sizes, out: Path):
    """Tokenizer trained on the task's prompts and targets, random Qwen2, copy then recall pretraining (the
    ``longrl demo`` recipe's two tasks: an induction circuit, then fact lookup in short documents)."""
    from longrl.models import adapt_tiny_tokenizer, build_tiny_model, build_tiny_tokenizer
    from longrl.train.copy_pretrain import copy_pretrain
    from longrl.train.recall_pretrain import recall_pretrain

    corpus = generate(200, 256, seed=0, families=("lookup",), split="corpus")
    texts = [render_user_prompt(s.document, s.question) for s in corpus]
    texts += [MEMORY_TEMPLATE + ANSWER_TEMPLATE + "<think></think> Therefore, the answer is"] * 20
    tok = adapt_tiny_tokenizer(build_tiny_tokenizer(texts, vocab_size=z.vocab))
    model = build_tiny_model(tok, hidden_size=z.hidden, num_layers=2, num_heads=4, num_kv_heads=2, seed=0)
    metrics = copy_pretrain(model, tok, CopyPretrainConfig(steps=z.copy_steps, batch_size=16, lr=1e-3),
                            run_dir=out / "copy_pretrain", seed=0, progress=False)
    if z.recall_steps:
        metrics |= recall_pretrain(model, tok, RecallPretrainConfig(steps=z.recall_steps, batch_size=16, lr=1e-3,
                                                                    documents=100 if z.recall_steps < 50 else 4000),
                                   families=("lookup",), run_dir=out / "recall_pretrain", seed=0, progress=False)
    return model, tok, metrics


def answer_target(evidence: str, answer: str) -> str:
    return f"<think>{evidence}</think> Therefore, the answer is {answer}."


def agent_examples(agent: MemoryAgent, s: DocQASample, repeat: int = 1) -> list[tuple[list[int], list[int]]]:
    """The gold turns of one question: the evidence sentence is remembered from the chunk that shows it whole;
    the turn that writes it and the answer turn appear ``repeat`` times."""
    evidence, query, memory, out = s.metadata["evidence"][0], split_query(s.question), "", []
    for chunk in agent.chunks(s.document):
        prompt = agent._chat_ids(agent.memory_prompt(query, MemoryState(memory), chunk))
        found = evidence in chunk and not memory
        if found:
            memory = evidence
        out += [(prompt, agent._encode(memory) + [agent.tok.eos_token_id])] * (repeat if found else 1)
    if memory:
        prompt = agent._chat_ids(agent.answer_prompt(query, MemoryState(memory)))
        out += [(prompt, agent._encode(answer_target(memory, s.answers[0])) + [agent.tok.eos_token_id])] * repeat
    return out


def baseline_example(tok, s: DocQASample, window: int) -> tuple[list[int], list[int]]:
    target = answer_target(s.metadata["evidence"][0], s.answers[0])
    return chat_prompt_ids(tok, s, max_tokens=window), tok.encode(target, add_special_tokens=False) + [tok.eos_token_id]


def sft(model, examples: list[tuple[list[int], list[int]]], steps: int, batch: int, lr: float = 1e-3) -> float:
    """Next-token loss on the targets, AdamW with a linear warm-up; returns the last 20 steps' mean loss."""
    rng = random.Random(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 20)
        rows = [examples[rng.randrange(len(examples))] for _ in range(batch)]
        width = max(len(p) + len(c) for p, c in rows)
        ids_BT = torch.zeros(len(rows), width, dtype=torch.long)
        labels_BT = torch.full((len(rows), width), -100, dtype=torch.long)
        for b, (p, c) in enumerate(rows):
            ids_BT[b, :len(p) + len(c)] = torch.tensor(p + c)
            labels_BT[b, len(p):len(p) + len(c)] = torch.tensor(c)
        mask_BT = (labels_BT != -100) | (torch.arange(width)[None] < torch.tensor([len(p) for p, _ in rows])[:, None])
        loss = model(input_ids=ids_BT, attention_mask=mask_BT.long(), labels=labels_BT).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    return sum(losses[-20:]) / len(losses[-20:])


# ---------------------------------------------------------------------------- evaluation
def accuracy(samples: list[DocQASample], responses: list[str]) -> float:
    return sum(rule_score(s.task, r, s.answers, s.question, s.document).acc for s, r in zip(samples, responses)) / len(samples)


EVAL_TEMPERATURES = (0.0, 0.7)
"""Greedy, and the sampling temperature ``longrl demo`` and QwenLong-L1 evaluate at (seeded)."""


def eval_baseline(model, tok, samples, window: int) -> dict[str, float]:
    out = {}
    for temp in EVAL_TEMPERATURES:
        gen = HFGenerator(model, tok, seed=0)
        texts = [gen.generate([chat_prompt_ids(tok, s, max_tokens=window)], 1, ANSWER_NEW_TOKENS, temp)[0][0].text
                 for s in samples]
        out[f"acc@T{temp}"] = accuracy(samples, texts)
    return out


def eval_agent(model, tok, acfg: AgentConfig, samples, window: int) -> dict[str, float]:
    """Accuracy, and the fraction of questions whose final memory holds the evidence sentence, per temperature."""
    out = {}
    for temp in EVAL_TEMPERATURES:
        agent = MemoryAgent(tok, acfg, max_new_tokens=ANSWER_NEW_TOKENS, temperature=temp, window=window)
        gen = HFGenerator(model, tok, seed=0)
        trajs = [agent.run(gen, s, n=1)[0] for s in samples]
        out[f"acc@T{temp}"] = accuracy(samples, [t.response for t in trajs])
        out[f"remembered@T{temp}"] = sum(s.metadata["evidence"][0] in t.turns[-2].memory
                                         for s, t in zip(samples, trajs)) / len(samples)
    return out


# ---------------------------------------------------------------------------- the run
def agent_rl(model, tok, z: Sizes, a: AgentConfig, train: list[DocQASample], out: Path) -> dict:
    from longrl.curriculum.phases import PhaseSampler
    from longrl.train.agent_rl import train_agent_rl
    from longrl.train.rl import make_reward_fn

    cfg = load_config(None, [
        f"output_dir={out}", "seed=0", "save_every=10", "keep_checkpoints=1", f"rl.steps={z.rl_steps}",
        f"rl.prompts_per_step={z.rl_prompts}", f"rollout.group_size={z.group_size}", "rollout.temperature=1.0",
        "rollout.top_p=1.0", f"rollout.max_new_tokens={ANSWER_NEW_TOKENS}", "reward.overlong.buffer_tokens=4",
        "rl.optim.lr=1e-4", "rl.optim.weight_decay=0.0", "rl.dynamic_sampling.max_rounds=3",
        "algo.clip_high=0.28", "logging.tensorboard=false", "logging.progress=false", "logging.rollout_samples=2",
        "logging.rollout_samples_every=5", f"agent.chunk_tokens={a.chunk_tokens}",
        f"agent.memory_tokens={a.memory_tokens}", f"agent.answer_new_tokens={a.answer_new_tokens}",
        f"agent.memory_template={json.dumps(a.memory_template)}", f"agent.answer_template={json.dumps(a.answer_template)}"])
    sampler = PhaseSampler(train, batch_size=z.rl_prompts, seed=0)
    res = train_agent_rl(model, tok, sampler, make_reward_fn(cfg.reward), cfg, run_dir=out / "agent_rl")
    return res.last_metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/agent_demo")
    ap.add_argument("--quick", action="store_true", help="toy sizes: checks that every stage runs (not learning)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    z, out, t0 = (QUICK if args.quick else Sizes()), Path(args.out), time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    times = {}
    model, tok, pretrain = build_policy(z, out)
    times["pretrain_s"] = time.monotonic() - t0
    print(f"policy built, copy- and recall-pretrained ({times['pretrain_s']:.0f}s)", flush=True)
    count = lambda text: len(tok.encode(text, add_special_tokens=False))  # noqa: E731
    doc_tokens = z.window * z.doc_factor
    train, heldout = questions(z.train_questions, doc_tokens, "train", count), questions(z.heldout, doc_tokens, "heldout", count)
    acfg = largest_chunk(tok, z, train[:200] + heldout)
    agent = MemoryAgent(tok, acfg, max_new_tokens=ANSWER_NEW_TOKENS, window=z.window)
    base_model = type(model)(model.config)
    base_model.load_state_dict(model.state_dict())
    r: dict = {"sizes": vars(z), "pretrain": pretrain, "chunk_tokens": acfg.chunk_tokens, "doc_tokens_mean": sum(count(s.document) for s in heldout) / len(heldout),
               "heldout": len(heldout)}
    r["baseline_sft_loss"] = sft(base_model, [baseline_example(tok, s, z.window) for s in train], z.sft_steps, z.sft_batch)
    r["baseline"] = eval_baseline(base_model, tok, heldout, z.window)
    times["baseline_s"] = time.monotonic() - t0 - sum(times.values())
    print(f"baseline: SFT loss {r['baseline_sft_loss']:.3f}, {r['baseline']} ({times['baseline_s']:.0f}s; "
          f"chunk {acfg.chunk_tokens} tokens)", flush=True)
    ex = [e for s in train for e in agent_examples(agent, s, z.evidence_repeat)]
    r["agent_sft_loss"] = sft(model, ex, z.sft_steps * 2, z.sft_batch)  # ~7 turns per question: twice the steps
    r["agent_sft"] = eval_agent(model, tok, acfg, heldout, z.window)
    times["agent_sft_s"] = time.monotonic() - t0 - sum(times.values())
    print(f"agent after SFT: loss {r['agent_sft_loss']:.3f}, {r['agent_sft']} ({times['agent_sft_s']:.0f}s)", flush=True)
    r["rl_last_metrics"] = {k: v for k, v in agent_rl(model, tok, z, acfg, train, out).items() if isinstance(v, float)}
    r["agent_rl"] = eval_agent(model, tok, acfg, heldout, z.window)
    times["agent_rl_s"] = time.monotonic() - t0 - sum(times.values())
    r["times"] = times
    (out / "results.json").write_text(json.dumps(r, indent=1))
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    rows = [("middle truncation (single turn, SFT)", r["baseline"]), ("memory agent after SFT", r["agent_sft"]),
            (f"memory agent after SFT + {z.rl_steps} RL steps", r["agent_rl"])]
    table = (f"| {len(heldout)} held-out lookup questions, documents ~{r['doc_tokens_mean']:.0f} tokens, window "
             f"{z.window} | accuracy, greedy | accuracy, T=0.7 | evidence in final memory (greedy / T=0.7) |\n"
             "|---|---|---|---|\n" + "".join(
                 f"| {name} | {pct(m['acc@T0.0'])} | {pct(m['acc@T0.7'])} | "
                 + (f"{pct(m['remembered@T0.0'])} / {pct(m['remembered@T0.7'])}" if "remembered@T0.0" in m else "-")
                 + " |\n" for name, m in rows))
    (out / "results.md").write_text(table)
    print(table)
    print(f"total {time.monotonic() - t0:.0f}s; {json.dumps({k: round(v) for k, v in times.items()})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
