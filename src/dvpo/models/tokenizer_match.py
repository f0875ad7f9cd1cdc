"""Whether a scorer (GVM, reward model, PPO's critic) reads the policy's token ids as the same tokens.

The RL loop hands the policy's token ids to its scorers. A scorer trained with another tokenizer would
read them as other tokens, or index past its embedding (torch's bare `IndexError: index out of range in
self`). Sequence scores can be re-encoded from the decoded text with the scorer's own tokenizer and chat
template (TRL's `reward_processing_classes`); token-level values (a GVM, a critic) are tied to the
policy's tokens, so a mismatch there is refused before the run writes anything.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dvpo.errors import ConfigError

logger = logging.getLogger(__name__)


def same_vocabulary(a, b) -> bool:
    """Same token for every id (vocabulary and added tokens), and the same eos."""
    return a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id


def describe(tokenizer) -> str:
    return f"{getattr(tokenizer, 'name_or_path', '') or 'a tokenizer'} ({len(tokenizer)} tokens)"


def saved_tokenizer(folder: str):
    """The tokenizer saved inside a GVM or reward-model folder (`model/`), or None when it has none yet
    (its loader then reports what is missing)."""
    from transformers import AutoTokenizer

    model_dir = Path(folder) / "model"
    if not (model_dir / "tokenizer_config.json").is_file():
        return None
    return AutoTokenizer.from_pretrained(model_dir)


def check_scorer_tokenizers(cfg, policy_tokenizer) -> None:
    """Refuse a GVM or critic initialisation whose tokenizer differs from the policy's, naming both; a reward
    model's difference is allowed (its scores are re-encoded from text, see `SequenceScorer`)."""
    from dvpo.models.loading import load_tokenizer

    scorers = []
    if cfg.algo == "dvpo" and cfg.gvm:
        scorers.append(("--gvm", cfg.gvm, saved_tokenizer(cfg.gvm), "its token values are read at the policy's "
                        "tokens; train the GVM on the policy's base model (dvpo gvm --model POLICY)"))
    if cfg.algo == "ppo" and cfg.critic_init:
        scorers.append(("--critic-init", cfg.critic_init, load_tokenizer(cfg.critic_init),
                        "the critic values the policy's tokens; initialise it from a model of the policy's "
                        "tokenizer, or leave --critic-init unset"))
    for flag, folder, tokenizer, advice in scorers:
        if tokenizer is not None and not same_vocabulary(tokenizer, policy_tokenizer):
            raise ConfigError(f"{flag} {folder} has another tokenizer, {describe(tokenizer)}, than the policy "
                              f"{cfg.policy}, {describe(policy_tokenizer)}: {advice}")
