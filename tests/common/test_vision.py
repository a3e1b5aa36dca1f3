"""One source of truth for image geometry: the size the model's patch grid covers is the size the reward rescales
the truth to, and every way an image can fail to become a prompt is a `BadSample`, never a crash."""
import pytest
from PIL import Image
from transformers import AutoProcessor

from common.records import Sample
from common.vision import PATCH, encode_prompt
from orchestration.config import ConfigError, load_config
from orchestration.data.datasets import PromptSampler, SkippedSamples
from orchestration.data.encode import BadSample, draw_prompts, encode_sample
from orchestration.warmstart.tiny_model import write_tiny_qwen25vl


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    path = write_tiny_qwen25vl(tmp_path_factory.mktemp("tiny") / "m", min_pixels=3136, max_pixels=1_000_000)
    return AutoProcessor.from_pretrained(path)


@pytest.mark.parametrize("size, min_pixels, max_pixels, seen", [
    ((640, 480), 1_000_000, 200_000, (504, 364)),  # the processor's second resize made it 1204 x 868
    ((20, 2000), 3136, 15_680, (28, 1232)),        # ... and this one 28 x 812
    ((112, 112), 12_544, 12_544, (112, 112)),
])
def test_the_patch_grid_covers_exactly_the_resized_image(processor, size, min_pixels, max_pixels, seen):
    p = encode_prompt(processor, "s", Image.new("RGB", size), "q", min_pixels=min_pixels, max_pixels=max_pixels,
                      max_prompt_tokens=100_000)
    _, h, w = p.image_grid_thw[0]
    assert (w * PATCH, h * PATCH) == (p.image.shape[1], p.image.shape[0]) == seen
    assert p.pixel_values.shape[0] == h * w  # one patch row per grid cell


def test_the_reward_context_has_the_size_the_model_sees(processor, tmp_path):
    cfg = load_config(None, ["model.min_pixels=3136", "model.max_pixels=15680", "model.max_prompt_tokens=100000"])
    Image.new("RGB", (20, 2000)).save(tmp_path / "tall.png")
    prompt, ctx = encode_sample(processor, cfg, Sample("s", "grounding", str(tmp_path / "tall.png"), "q",
                                                       {"box": [0, 0, 10, 10]}))
    _, h, w = prompt.image_grid_thw[0]
    assert ctx.resized_size == (w * PATCH, h * PATCH) == (28, 1232) and ctx.orig_size == (20, 2000)
    assert ctx.scale == (28 / 20, 1232 / 2000)


def test_min_pixels_above_max_pixels_is_a_config_error_naming_both_keys():
    with pytest.raises(ConfigError, match=r"model.min_pixels=1000000 is above model.max_pixels=200000"):
        load_config(None, ["model.min_pixels=1000000", "model.max_pixels=200000"])


def test_an_image_the_resize_refuses_is_skipped_counted_and_replaced(processor, tmp_path, caplog):
    """A 3000 x 14 text line (aspect ratio over 200): Qwen's smart_resize raises ValueError; the sample is skipped
    with its origin, counted, left out of later epochs, and the next one takes its place."""
    cfg = load_config(None, ["model.max_prompt_tokens=100000"])
    Image.new("RGB", (3000, 14)).save(tmp_path / "line.png")
    Image.new("RGB", (200, 100)).save(tmp_path / "page.png")
    line = Sample("line", "ocr", str(tmp_path / "line.png"), "OCR this image.", {"text": "x"}, origin="pages.json:7")
    page = Sample("page", "ocr", str(tmp_path / "page.png"), "OCR this image.", {"text": "y"}, origin="pages.json:8")
    with pytest.raises(BadSample, match=r"line.png of 3000 x 14 refused by the resize or the processor: "
                                        r"ValueError: .*aspect ratio"):
        encode_sample(processor, cfg, line)
    sampler, skipped = PromptSampler([line, page], seed=0), SkippedSamples(limit=5)
    drawn = [s.id for _ in range(3) for s in draw_prompts(processor, cfg, sampler, 1, skipped)[0]]
    assert drawn == ["page", "page", "page"] and skipped.count == 1
    assert "skipping sample pages.json:7: image" in caplog.text
