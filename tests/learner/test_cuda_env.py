"""The learner's CUDA environment fixes (pure functions: they run without a GPU)."""
from learner.rank import plain_cuda_arches


def test_cuda_arch_variants_are_dropped_for_deepspeeds_op_builder():
    """DeepSpeed 0.19 JIT-builds fused Adam only from a TORCH_CUDA_ARCH_LIST of plain numbers (its #7589)."""
    assert plain_cuda_arches("9.0a") == "9.0"
    assert plain_cuda_arches("8.0;9.0a;10.0a+PTX") == "8.0;9.0;10.0+PTX"
    assert plain_cuda_arches("7.5 8.6+PTX") == "7.5 8.6+PTX"
