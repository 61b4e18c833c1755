"""The pipeline's samples: synthetic sets or data files, token-counted with the policy tokenizer."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from longrl.config import Config, ConfigError
from longrl.data.readers import read_jsonl_samples, read_sources, write_jsonl
from longrl.data.records import DocQASample
from longrl.data.synth import generate
from longrl.data.tokens import count_prompt_tokens, token_counter
from longrl.pipeline.stages import phase_names, samples_hash

log = logging.getLogger(__name__)


@dataclass
class PipelineData:
    """What the stages train and evaluate on."""

    sft: list[DocQASample]
    rl: list[DocQASample]
    heldout: dict[str, list[DocQASample]] = field(default_factory=dict)
    """Held-out sets by label (e.g. ``"256"``: documents of 256 tokens)."""
    phases: dict[int, list[DocQASample]] = field(default_factory=dict)
    """RL samples of the curriculum phases that name their own ``sources``, by phase index."""
    phase_names: dict[int, str] = field(default_factory=dict)

    def hashes(self) -> dict[str, str]:
        out = {"sft": samples_hash(self.sft), "rl": samples_hash(self.rl)}
        out.update({f"heldout/{k}": samples_hash(v) for k, v in self.heldout.items()})
        out.update({f"phase/{self.phase_names.get(k, k)}": samples_hash(v) for k, v in self.phases.items()})
        return out


def synthetic_data(cfg: Config, tokenizer) -> PipelineData:
    """SFT / RL / held-out synthetic sets, documents measured with the policy tokenizer."""
    syn = cfg.pipeline.synthetic
    count = token_counter(tokenizer)

    def gen(st, split: str) -> list[DocQASample]:
        return generate(st.n, st.target_tokens, cfg.seed, syn.families, split, count, syn.haystack,
                        syn.distractor_people)

    def make(sets, split: str) -> list[DocQASample]:
        return [s for st in sets for s in gen(st, split)]

    heldout = {str(st.target_tokens): gen(st, "heldout") for st in syn.heldout}
    return PipelineData(sft=make(syn.sft, "sft"), rl=make(syn.train, "train"), heldout=heldout,
                        **phase_data(cfg))


def phase_data(cfg: Config) -> dict[str, dict]:
    """The samples of ``curriculum.phases[k].sources`` by phase index, and those phases' names."""
    phases = {k: read_sources(ph.sources, cfg.data.on_error) for k, ph in enumerate(cfg.curriculum.phases)
              if ph.sources}
    return {"phases": phases, "phase_names": {k: phase_names(cfg)[k] for k in phases}}


def file_data(cfg: Config) -> PipelineData:
    if not cfg.data.sources:
        raise ConfigError("data.sources", "no RL data: set data.sources or pipeline.synthetic.enabled")
    rl = read_sources(cfg.data.sources, cfg.data.on_error)
    sft = read_sources(cfg.sft.sources, cfg.data.on_error) if cfg.sft.sources else list(rl)
    return PipelineData(sft=sft, rl=rl, **phase_data(cfg))


def load_data(cfg: Config, tokenizer) -> PipelineData:
    """The pipeline's samples with prompt token counts (``n_tokens``) from the policy tokenizer."""
    data = synthetic_data(cfg, tokenizer) if cfg.pipeline.synthetic.enabled else file_data(cfg)
    for samples in (data.sft, data.rl, *data.heldout.values(), *data.phases.values()):
        if samples:
            count_prompt_tokens(samples, tokenizer, workers=1, cache_dir=cfg.data.cache_dir)
    if cfg.data.max_input_tokens:
        data.rl = _drop_long(data.rl, cfg.data.max_input_tokens, "RL samples")
        data.phases = {k: _drop_long(v, cfg.data.max_input_tokens, f"samples of phase {data.phase_names[k]}")
                       for k, v in data.phases.items()}
    return data


def _drop_long(samples: list[DocQASample], limit: int, what: str) -> list[DocQASample]:
    kept = [s for s in samples if s.n_tokens <= limit]
    if len(kept) < len(samples):
        log.info("dropped %d %s over data.max_input_tokens=%d", len(samples) - len(kept), what, limit)
    return kept


def read_heldout(data_dir: str | Path) -> dict[str, list[DocQASample]]:
    """The held-out sets :func:`write_data` wrote to ``data_dir`` (a run's ``<output_dir>/data``), by label."""
    paths = sorted(Path(data_dir).glob("heldout_*.jsonl"))
    return {path.stem.removeprefix("heldout_"): read_jsonl_samples(path) for path in paths}


def write_data(data: PipelineData, out: Path) -> None:
    """The sets as JSONL under ``out`` (for inspection; the pipeline regenerates them deterministically)."""
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(data.sft, out / "sft.jsonl")
    write_jsonl(data.rl, out / "rl.jsonl")
    for name, samples in data.heldout.items():
        write_jsonl(samples, out / f"heldout_{name}.jsonl")
