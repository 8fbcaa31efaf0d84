"""math-verify in a child process: one JSON request per stdin line, one JSON reply per line.

`{"gold": latex, "pred": latex}` -> `{"correct": bool}` (plus `"error"` when math-verify raised).
The parent (`lopd_jax.eval.grading.MathVerifier`) enforces the time limit by killing this
process, so math-verify's own signal-based timeouts are off. Run as a script, not through the
lopd_jax package, so it starts without importing JAX.
"""

import json
import sys


def main() -> None:
    out, sys.stdout = sys.stdout, sys.stderr  # Only replies go to the parent's pipe.

    def reply(message: dict) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    try:
        from math_verify import parse, verify
    except ImportError as e:
        reply({"error": f"cannot import math_verify: {e}"})
        return
    reply({"ready": True})
    for line in sys.stdin:  # Ends when the parent closes the pipe (or dies).
        request = json.loads(line)
        try:
            gold = parse(request["gold"], parsing_timeout=None)
            pred = parse(request["pred"], parsing_timeout=None)
            correct = bool(gold and pred) and verify(gold, pred, timeout_seconds=None)
            reply({"correct": bool(correct)})
        except Exception as e:  # A grading error is a wrong answer (reported).
            reply({"correct": False, "error": repr(e)})


if __name__ == "__main__":
    main()
