"""Config of `lopd import-sft`: an SFT JSONL generated elsewhere -> an SFT data directory."""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.input = ""  # JSONL of {"prompt", "response"} or {"messages": [..., assistant]} lines
    c.output = "runs/demo/sft_data"  # the SFT data directory to write
    # Who wrote the responses: the teacher's model directory (fingerprinted: verified), or its
    # name (e.g. Qwen/Qwen3-32B: recorded as name:<name>, unverified; later stages then need
    # allow_inconsistent_teacher=True).
    c.teacher = ""
    return c
