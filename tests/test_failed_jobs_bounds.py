"""The failed-jobs store and its views under hostile or unlucky input: an arg whose JSON would be
astronomically long, a Gearman retry whose job server hangs or whose process is killed, retry
notes of a reused job id."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from daemon_harness import ROOT


def test_a_value_whose_json_is_astronomically_long_is_shown_cut_without_encoding_it_whole():
    """10**9 copies of [1] through shared lists: json.dumps of it would need gigabytes; the view
    streams the encoding and stops at the limit. Run under a 1 GiB address-space limit, so that
    encoding it whole fails (MemoryError) rather than filling the machine."""
    program = textwrap.dedent("""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from workermanager.jobs.display import TEXT_LIMIT, json_head
        value = [1]
        for _ in range(9):
            value = [value] * 10
        text, truncated = json_head(value, TEXT_LIMIT)
        assert truncated and len(text) == TEXT_LIMIT and text.startswith("[\\n  [\\n    ["), text[:40]
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
                            cwd=str(ROOT), env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.stdout.strip() == "ok", result.stderr[-2000:]
