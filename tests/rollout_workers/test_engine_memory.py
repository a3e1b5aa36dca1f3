"""The transformers engine keeps only the sampled tokens' log-probs: at Qwen's 151,936-token vocabulary its peak
memory does not grow with G x T x V (keeping the logits, as `generate(output_logits=True)` does, would add
8 x 128 x 151,936 x 4 bytes = 622 MB for the longer run here)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

QWEN_VOCAB = 151_936
SCRIPT = r"""
import json, resource, sys
import torch
from PIL import Image
from transformers import AutoProcessor
from common.records import SamplingParams
from common.vision import encode_prompt
from rollout_workers.transformers_engine import TransformersEngine

path, T = sys.argv[1], int(sys.argv[2])
processor = AutoProcessor.from_pretrained(path)
prompt = encode_prompt(processor, "s", Image.new("RGB", (56, 56), (200, 10, 10)), "What colour is the shape?",
                       min_pixels=3136, max_pixels=3136, max_prompt_tokens=128)
engine = TransformersEngine(path)
engine.generate([prompt], SamplingParams(n=8, max_new_tokens=2, seed=0))  # warm: every lazy allocation made
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
[group] = engine.generate([prompt], SamplingParams(n=8, max_new_tokens=T, seed=0))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_mb": (peak - base) / 1024, "lengths": [len(r.response_token_ids) for r in group]}))
"""


@pytest.fixture(scope="module")
def qwen_vocab_model(tmp_path_factory):
    from orchestration.warmstart.tiny_model import write_tiny_qwen25vl

    path = write_tiny_qwen25vl(tmp_path_factory.mktemp("vocab"), vocab_size=QWEN_VOCAB, min_pixels=3136,
                               max_pixels=3136)
    # End of turn on a row past the tokenizer, which the policy suppresses: every answer runs to max_new_tokens.
    gen = json.loads((path / "generation_config.json").read_text())
    gen["eos_token_id"] = [QWEN_VOCAB - 1]
    (path / "generation_config.json").write_text(json.dumps(gen))
    return path


def _peak_growth(path: Path, new_tokens: int) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(new_tokens)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_answer_length_at_qwen_vocabulary(qwen_vocab_model):
    short, long = _peak_growth(qwen_vocab_model, 16), _peak_growth(qwen_vocab_model, 128)
    assert short["lengths"] == [16] * 8 and long["lengths"] == [128] * 8
    assert long["growth_mb"] - short["growth_mb"] < 100, (short, long)
