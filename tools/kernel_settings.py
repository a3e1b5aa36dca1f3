"""Does `make test-kernels`' setting select other kernels than this machine's default?

`make test-kernels` runs the learning tests again under ``ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2``
(issue 19: a learned quality must hold on the vector width and BLAS path most CPUs use, not only on the machine's
own). Both variables only cap the instruction set: ATen's dispatch picks the widest kernels the CPU has, up to the
cap, and MKL uses the widest code path it has, up to the cap. On a CPU without AVX-512 whose default ATen capability
is AVX2, the setting therefore selects exactly the kernels the default run used, and a second run repeats the first
bit for bit (measured on CI's AMD EPYC: 40 colour-demo steps, every logged loss, gradient norm and reward equal).

`python tools/kernel_settings.py` exits 0 when the second run would repeat the first: the CPU has no AVX-512
(``avx512f`` absent from /proc/cpuinfo), the default ATen capability is AVX2, and a fingerprint of fp32 forward and
backward passes (matmuls, a convolution, attention, normalisation, softmax, GELU, reductions) is bitwise the same
under both settings. It exits 1 when the setting changes something or cannot be judged (no /proc/cpuinfo, another
capability, a probe that fails, either variable already set in the environment), so the Makefile then runs the
tests again: a doubt costs time, never coverage.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SETTING = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}

_PROBE = r"""
import hashlib, json, torch
torch.manual_seed(0)
torch.set_num_threads(1)
x = torch.randn(64, 384, requires_grad=True)
w1, w2 = torch.randn(384, 1536, requires_grad=True), torch.randn(1536, 384, requires_grad=True)
img = torch.randn(2, 3, 56, 56, requires_grad=True)
k = torch.randn(16, 3, 14, 14, requires_grad=True)
h = torch.nn.functional.gelu(torch.nn.functional.layer_norm(x, (384,)) @ w1) @ w2
q = h.view(4, 16, 6, 64).transpose(1, 2)
a = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
c = torch.nn.functional.conv2d(img, k, stride=14)
out = torch.log_softmax(a.flatten(1), -1).exp().sum() + c.square().mean()
out = out + torch.rsqrt(h.square().mean(-1) + 1e-6).sum()
out.backward()
digest = hashlib.sha256()
for t in (h, a, c, x.grad, w1.grad, w2.grad, img.grad, k.grad):
    digest.update(t.detach().contiguous().numpy().tobytes())
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "fingerprint": digest.hexdigest()}))
"""


@dataclass(frozen=True)
class Probe:
    """What one process saw: ATen's CPU capability ("DEFAULT", "AVX2", "AVX512", ...) and a sha256 of its numbers."""

    capability: str
    fingerprint: str


def probe(setting: dict[str, str]) -> Probe:
    """Run the fingerprint workload in a fresh interpreter with `setting` in its environment (and neither variable
    of `SETTING` when `setting` is empty: the machine's default). Raises CalledProcessError if the probe fails."""
    env = {k: v for k, v in os.environ.items() if k not in SETTING}
    env.update(setting)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True,
                         timeout=300)
    return Probe(**json.loads(out.stdout.strip().splitlines()[-1]))


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The first processor's feature flags from `cpuinfo`, or None where the file is missing (not Linux)."""
    if not cpuinfo.exists():
        return None
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def repeats_default(flags: set[str] | None, default: Probe, setting: Probe) -> tuple[bool, str]:
    """Whether a run under `SETTING` repeats the default run, and why (one line)."""
    if flags is None:
        return False, "no CPU flags to read (/proc/cpuinfo): cannot tell, so the tests run again"
    if "avx512f" in flags:
        return False, "this CPU has AVX-512: the AVX2 setting selects other kernels"
    if default.capability != "AVX2":
        return False, f"ATen's default capability here is {default.capability}, not AVX2"
    if default.fingerprint != setting.fingerprint:
        return False, "the fingerprint differs between the two settings"
    return True, ("this CPU has no AVX-512 and ATen's default is AVX2, so ATEN_CPU_CAPABILITY=avx2 "
                  "MKL_ENABLE_INSTRUCTIONS=AVX2 select the default kernels (fingerprint "
                  f"{default.fingerprint[:12]} under both): the learning tests' run in `make test` is this "
                  "setting's run, and a second would repeat it bit for bit")


def main() -> int:
    """Exit 0 (the second run would repeat the first) or 1 (run the tests again), with the reason printed."""
    preset = sorted(k for k in SETTING if k in os.environ)
    if preset:  # `make test` then ran under these, not under the machine's default
        print(f"make test-kernels: {', '.join(preset)} set in the environment: the tests run again", flush=True)
        return 1
    try:
        same, why = repeats_default(cpu_flags(), probe({}), probe(SETTING))
    except (subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
        same, why = False, f"the kernel probe failed ({exc!r})"
    print(f"make test-kernels: {why}", flush=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
