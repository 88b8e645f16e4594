"""A worker module whose import raises (the fault-injection suite's "import fails" case)."""

raise RuntimeError("chaos: this worker module fails at import (on purpose)")
