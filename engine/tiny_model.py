"""Build the embedded tiny Llama model that tests, benchmarks and `make report` use.

No hub, no network: the weights are seeded random numbers and the tokenizer is a
byte-level BPE trained on `engine/data/corpus.txt`. Two builds produce byte-identical
files, so a cached model is reproducible on any machine.

    python -m tripwire.engine.tiny_model [--size tiny|small] [--path DIR]   # prints the directory
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

SIZES: dict[str, dict] = {
    # ~0.18M parameters: fast enough for hundreds of test generations on a 2-core CPU.
    "tiny": dict(vocab_size=512, hidden_size=64, num_hidden_layers=4, intermediate_size=128,
                 num_attention_heads=4, num_key_value_heads=2),
    # ~1M parameters: for benchmarks, where per-token overhead must be measured against real work.
    "small": dict(vocab_size=1024, hidden_size=128, num_hidden_layers=5, intermediate_size=352,
                  num_attention_heads=4, num_key_value_heads=2),
}
BUILD_VERSION = 1  # bump when the recipe changes so stale cached models are rebuilt
SEED = 1234
CONTEXT_LENGTH = 2048
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def default_root() -> Path:
    """Where tiny models are built: `$TRIPWIRE_MODEL_DIR`, else `$XDG_CACHE_HOME/tripwire/models` (default
    `~/.cache/...`). Not created here."""
    env = os.environ.get("TRIPWIRE_MODEL_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "tripwire" / "models"


def ensure_tiny_model(path: str | os.PathLike | None = None, size: str = "tiny") -> Path:
    """Return a directory `mlx_lm.load()` can load offline, building it once if missing.

    Raises:
        ValueError: unknown `size`.
        OSError: the target directory cannot be written.
    """
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(SIZES)}")
    target = Path(path) if path is not None else default_root() / f"{size}-v{BUILD_VERSION}"
    if all((target / f).is_file() for f in _REQUIRED_FILES):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp dir and rename: a crash never leaves a half-written model behind.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build_model_files(tmp, size)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def model_config(size: str) -> dict:
    """The mlx-lm config.json contents for model `size` (one of SIZES).

    Raises:
        KeyError: unknown `size`.
    """
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        **SIZES[size],
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": CONTEXT_LENGTH,
        "tie_word_embeddings": True,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "float32",
    }


def build_model_files(out: Path, size: str) -> None:
    """Write tokenizer, weights and config.json of model `size` into `out` (created if needed).

    Quiet: draws nothing on a terminal (no tokenizer-training progress bar), so CI logs and `make report`
    output stay clean.

    Raises:
        OSError: `out` cannot be written.
    """
    out.mkdir(parents=True, exist_ok=True)
    config = model_config(size)
    _build_tokenizer(out, config["vocab_size"])
    _build_weights(out, config)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _build_tokenizer(out: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = (Path(__file__).parent / "data" / "corpus.txt").read_text(encoding="utf-8")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [BOS, EOS, PAD, *ROLE_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus.splitlines(), trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
        "add_bos_token": False, "model_max_length": CONTEXT_LENGTH,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n")


def _build_weights(out: Path, config: dict) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    args = llama.ModelArgs.from_dict(config)
    # Explicit per-tensor keys keep the global MLX seed untouched for the caller.
    model = llama.Model(args)
    params = dict(tree_flatten(model.parameters()))
    weights = {}
    for i, name in enumerate(sorted(params)):
        shape = params[name].shape
        if name.endswith("norm.weight"):
            weights[name] = mx.ones(shape, dtype=mx.float32)
        else:
            scale = 1.0 / max(1, shape[-1]) ** 0.5
            weights[name] = mx.random.normal(shape, key=mx.random.key(SEED * 1000 + i), dtype=mx.float32) * scale
    mx.eval(weights)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})


def param_count(path: Path) -> int:
    """Number of parameters in `path`/model.safetensors (loads it with MLX: call on the thread that owns MLX)."""
    import mlx.core as mx

    return sum(v.size for v in mx.load(str(path / "model.safetensors")).values())


def main(argv: list[str] | None = None) -> int:
    """CLI: build (or find) the tiny model and print its directory; returns 0."""
    p = argparse.ArgumentParser(prog="python -m tripwire.engine.tiny_model", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--path", help="build into this directory (default: the user cache, or $TRIPWIRE_MODEL_DIR)")
    a = p.parse_args(argv)
    print(ensure_tiny_model(a.path, a.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
