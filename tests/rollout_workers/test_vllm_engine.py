"""The vLLM engine on a GPU: same interface as the transformers engine. Skipped (with the reason) without one."""
import importlib.util

import pytest
import torch

reason = None
if not torch.cuda.is_available():
    reason = "no CUDA GPU on this machine: the vLLM engine is only exercised on a GPU host"
elif importlib.util.find_spec("vllm") is None:
    reason = "vllm is not installed (make setup-gpu installs the gpu extra)"
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")


@pytest.mark.gpu
def test_vllm_engine_samples_groups_with_logprobs(tmp_path):
    from PIL import Image
    from transformers import AutoProcessor

    from common.records import SamplingParams
    from common.vision import encode_prompt
    from orchestration.tiny_model import write_tiny_qwen25vl
    from rollout_workers.vllm_engine import VLLMEngine

    path = write_tiny_qwen25vl(tmp_path / "m")
    processor = AutoProcessor.from_pretrained(path)
    prompt = encode_prompt(processor, "s", Image.new("RGB", (56, 56), (200, 10, 10)), "What colour is the shape?",
                           min_pixels=3136, max_pixels=3136, max_prompt_tokens=128)
    engine = VLLMEngine(str(path), dtype="float32", gpu_memory_utilization=0.2)
    [group] = engine.generate([prompt], SamplingParams(n=4, max_new_tokens=4, seed=0, top_k=0, top_p=1.0))
    assert len(group) == 4
    for r in group:
        assert len(r.logprobs) == len(r.response_token_ids) and all(lp <= 0 for lp in r.logprobs)
        assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") not in r.response_token_ids
