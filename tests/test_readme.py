"""The README's Python examples outside the oracle section run as written (the oracle section
has its own test in test_oracle_torch.py)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_using_it_python_blocks_run():
    text = README.read_text(encoding="utf-8")
    start = text.index("## Using it")
    section = text[start:text.index("\n## ", start + 1)]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "assert_gradients(loss_fn" not in b]
    assert blocks
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    result = namespace["result"]
    assert result.loss > 0 and set(result.grads) == set(namespace["params"])
