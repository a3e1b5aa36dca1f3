"""README.md is for a new user: at most 200 lines, and every command in its code blocks runs in CI on a clean clone
(verbatim in .ci/run or in a test) unless it says it needs a GPU."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def commands() -> list[str]:
    """The command lines of README's ```bash blocks, continuation lines joined, comments cut."""
    text = (REPO / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                out.append(line)
    return out


def test_the_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def test_every_readme_command_runs_in_ci_or_says_it_needs_a_gpu():
    ci = (REPO / ".ci" / "run").read_text()
    tests = "\n".join(p.read_text() for p in (REPO / "tests").rglob("*.py"))
    found = commands()
    assert any(c.startswith("make test ") or c == "make test" for c in found)
    for line in found:
        command, _, comment = line.partition("#")
        command = " ".join(command.split())
        if "GPU only" in comment or "GPU only" in line or command == "source .venv/bin/activate":
            continue  # needs a GPU, or sets up the shell (the tests run the venv's own executables)
        assert command in ci or command in tests or _run_as_argv(command, tests), (
            f"README command not run in CI: {command!r} (add it to .ci/run or a test, or mark it GPU only)")


def _run_as_argv(command: str, tests: str) -> bool:
    """A command a test runs as an argument list (subprocess), e.g. ["ray", "job", "submit", ...]."""
    words = [w for w in command.split() if "=" not in w or w.startswith("--")]
    head = ", ".join(f'"{w}"' for w in words[:3])
    return head in tests
