"""Train the tiny byte-level BPE tokenizer the benchmark clients count tokens with.

guidellm and inference-perf both want a Hugging Face tokenizer, and no hub is
reachable here. This script (run with a tool venv's Python, which has
``tokenizers`` and ``transformers``; ``.venv`` has neither) trains one on a
small generated text and saves it as a directory that
``AutoTokenizer.from_pretrained(DIR)`` loads with ``HF_HUB_OFFLINE=1``. The
counts it gives are not any real model's: the benchmarks use it to size
prompts and count output, the same way in every run. The words given after
``OUT_DIR`` (the simulated engine's vocabulary) each become one token, so that
over the simulated fleet a streamed chunk (one word) counts as one token, as
the engine counts it.

    python benchmarks/clients/tokenizer.py OUT_DIR [WORD ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

VOCAB_SIZE = 2000
TEXT = (
    "the router sends each request to an engine that serves the model and streams tokens back "
    "while the registry keeps the list of engines and the babysitter restarts them when they fail "
    "prompt output latency throughput concurrency benchmark client server stream chunk usage"
)
WORDS = TEXT.split()


def corpus(extra: list[str], lines: int = 4000) -> list[str]:
    """Deterministic text: the words in changing orders, with digits and punctuation."""
    vocabulary = [*WORDS, *extra]
    out = []
    for i in range(lines):
        words = [vocabulary[(i * 7 + j * 13) % len(vocabulary)] for j in range(12 + i % 9)]
        out.append(" ".join(words) + f", {i}. " + "!?;:-"[i % 5])
    return out


def train(out: Path, extra: list[str]) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus(extra), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.save_pretrained(str(out))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: python benchmarks/clients/tokenizer.py OUT_DIR [WORD ...]")
    train(Path(sys.argv[1]), sys.argv[2:])
