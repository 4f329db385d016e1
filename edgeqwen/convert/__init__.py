"""Build a verified GGUF from a Hugging Face Qwen2-architecture checkpoint, without torch.

One job per module: fetch (huggingface_hub), hf_to_gguf (gguf-py writer), quantize (llama.cpp),
verify (llama.cpp via edgeqwen.engine), manifest (JSON beside the model), pipeline (the stages).
"""

from .fetch import DEFAULT_REPO, Fetched, fetch_checkpoint
from .hf_to_gguf import ConvertResult, convert_checkpoint
from .manifest import manifest_path, read_manifest, summary_lines, update_manifest
from .pipeline import QuantizeOptions, QuantizeResult, default_output_name, planned_output, run_quantize
from .quantize import DEFAULT_QUANT, QUANT_TYPES, quantize_gguf
from .verify import KL_LIMITS, PROMPTS, Verification, verify_quantized

__all__ = [
    "DEFAULT_QUANT", "DEFAULT_REPO", "KL_LIMITS", "PROMPTS", "QUANT_TYPES", "ConvertResult", "Fetched",
    "QuantizeOptions", "QuantizeResult", "Verification", "convert_checkpoint", "default_output_name",
    "fetch_checkpoint", "manifest_path", "planned_output", "quantize_gguf", "read_manifest", "run_quantize", "summary_lines",
    "update_manifest", "verify_quantized",
]
