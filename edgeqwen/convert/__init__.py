"""Build a verified GGUF from a Hugging Face Qwen2-architecture checkpoint, without torch.

One job per module: fetch (huggingface_hub), hf_to_gguf (gguf-py writer), quantize (llama.cpp),
verify (llama.cpp via edgeqwen.engine), manifest (JSON beside the model), pipeline (the stages).
The names below are imported on first use, so reading a manifest (`edgeqwen info`) loads no llama.cpp.
"""

from __future__ import annotations

from ..lazy import lazy_names

# public name -> the submodule that defines it
_EXPORTS = {
    **dict.fromkeys(("DEFAULT_REPO", "Fetched", "fetch_checkpoint"), "fetch"),
    **dict.fromkeys(("ConvertResult", "convert_checkpoint"), "hf_to_gguf"),
    **dict.fromkeys(("manifest_path", "read_manifest", "summary_lines", "update_manifest"), "manifest"),
    **dict.fromkeys(("QuantizeOptions", "QuantizeResult", "default_output_name", "planned_output", "run_quantize"),
                    "pipeline"),
    **dict.fromkeys(("DEFAULT_QUANT", "QUANT_TYPES", "quantize_gguf"), "quantize"),
    **dict.fromkeys(("KL_LIMITS", "PROMPTS", "Verification", "verify_quantized"), "verify"),
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_names(__name__, _EXPORTS)
