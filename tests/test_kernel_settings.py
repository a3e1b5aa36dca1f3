"""tools/kernel_settings.py: `make test-kernels` skips its second run only where the AVX2 setting provably selects
the default kernels; the fingerprint it compares does see a change of kernels."""
from tools.kernel_settings import SETTING, Probe, cpu_flags, main, probe, repeats_default

AVX2, OTHER = Probe("AVX2", "a" * 64), Probe("AVX2", "b" * 64)


def test_the_second_run_is_skipped_only_on_an_avx2_cpu_with_equal_fingerprints():
    flags = {"sse4_2", "avx", "avx2", "fma"}
    assert repeats_default(flags, AVX2, AVX2)[0]
    assert not repeats_default(flags | {"avx512f"}, Probe("AVX512", "a" * 64), AVX2)[0]
    assert not repeats_default(flags | {"avx512f"}, AVX2, AVX2)[0]  # ATen may cap itself; MKL would not
    assert not repeats_default(flags, AVX2, OTHER)[0]
    assert not repeats_default(flags, Probe("DEFAULT", "a" * 64), Probe("DEFAULT", "a" * 64))[0]
    assert not repeats_default(None, AVX2, AVX2)[0]  # no /proc/cpuinfo: run the tests again


def test_cpu_flags_reads_the_first_processor(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "sse", "avx2"}
    assert cpu_flags(tmp_path / "missing") is None


def test_the_fingerprint_repeats_and_sees_scalar_kernels():
    default = probe({})
    assert default == probe({}), "the probe must be deterministic, or no comparison means anything"
    assert len(default.fingerprint) == 64
    if default.capability != "DEFAULT":  # a vectorised default: ATen's scalar kernels must change the numbers
        assert probe({"ATEN_CPU_CAPABILITY": "default"}).fingerprint != default.fingerprint
    assert probe(SETTING).capability in {"AVX2", "DEFAULT"}  # the cap never raises the capability


def test_a_setting_already_in_the_environment_means_the_tests_run_again(monkeypatch, capsys):
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "SSE4_2")  # make test itself ran under it, not the default
    assert main() == 1
    assert "MKL_ENABLE_INSTRUCTIONS set in the environment" in capsys.readouterr().out
