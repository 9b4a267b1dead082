from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from mlm_lightning.__main__ import main

CANDIDATE = re.compile(r"^\s+(\d+)\. (\S+)\s+([0-9.]+)$")


def _blocks(output: str) -> dict[str, list[list[tuple[str, float]]]]:
    """Parses fill-mask output into sentence -> masks -> [(token, probability)]."""
    blocks: dict[str, list[list[tuple[str, float]]]] = {}
    current = None
    for line in output.splitlines():
        if not line.startswith(" "):
            current = blocks.setdefault(line, [[]])
        elif line.strip().startswith("mask "):
            if current[-1]:
                current.append([])
        else:
            match = CANDIDATE.match(line)
            assert match, line
            current[-1].append((match[2], float(match[3])))
    return blocks


def test_fill_mask_prints_top_k_per_mask(trained_run: Path, capsys) -> None:
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = str(trained_run / "export")
    sentences = ["the [MASK] of the king.", "thou art a [MASK] and a [MASK]."]
    assert main(["fill-mask", "--model", model, *sentences, "--top_k", "4"]) == 0
    blocks = _blocks(capsys.readouterr().out)
    assert list(blocks) == sentences
    assert [len(m) for m in blocks[sentences[0]]] == [4] and [len(m) for m in blocks[sentences[1]]] == [4, 4]
    for masks in blocks.values():
        for cands in masks:
            probs = [p for _, p in cands]
            assert probs == sorted(probs, reverse=True) and all(0 < p <= 1 for p in probs)
    # By hand, not through the pipeline the command uses: softmax of the model's logits at the mask, top 4.
    tok, mlm = AutoTokenizer.from_pretrained(model), AutoModelForMaskedLM.from_pretrained(model).eval()
    enc = tok(sentences[0], return_tensors="pt")
    with torch.no_grad():
        logits = mlm(**enc).logits[0, enc["input_ids"][0].tolist().index(tok.mask_token_id)]
    probs, ids = logits.softmax(-1).topk(4)
    printed = blocks[sentences[0]][0]
    assert [t for t, _ in printed] == [tok.decode([i]).strip() for i in ids.tolist()]
    assert [p for _, p in printed] == pytest.approx(probs.tolist(), abs=5e-5)  # printed with 4 decimals


def test_fill_mask_from_checkpoint_and_stdin(trained_run: Path, capsys, monkeypatch) -> None:
    (best,) = (trained_run / "checkpoints").glob("epoch*.ckpt")
    monkeypatch.setattr("sys.stdin", io.StringIO("the [MASK] of the king.\n\nthe sword is [MASK].\n"))
    assert main(["fill-mask", "--model", str(best)]) == 0
    from_ckpt = capsys.readouterr().out
    blocks = _blocks(from_ckpt)
    assert list(blocks) == ["the [MASK] of the king.", "the sword is [MASK]."]
    assert all(len(masks[0]) == 5 for masks in blocks.values())  # the default top_k
    # The export at the end of fit is the best checkpoint: same predictions from either.
    args = ["fill-mask", "--model", str(trained_run / "export"), "the [MASK] of the king.", "the sword is [MASK]."]
    assert main(args) == 0
    assert capsys.readouterr().out == from_ckpt


@pytest.mark.parametrize(
    "args, message",
    [
        (["the king of the night."], "no mask token ([MASK]) in: 'the king of the night.'"),
        (["the [MASK] king.", "--top_k", "0"], "top_k must be at least 1"),
        (["--model", "/no/such/model", "the [MASK] king."], "could not load model"),
    ],
    ids=["no-mask", "top-k", "missing-model"],
)
def test_fill_mask_errors_are_one_line(trained_run: Path, capsys, args: list[str], message: str) -> None:
    model = ["--model", str(trained_run / "export")] if "--model" not in args else []
    assert main(["fill-mask", *model, *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err and captured.out == ""


def test_control_tokens_are_escaped_in_the_table() -> None:
    from mlm_lightning.tools.fill_mask import format_predictions

    # RoBERTa's byte-level vocabulary has a newline token ("Ċ", shown as "\n"): printed raw, it broke the table.
    text = format_predictions(["a <mask> b"], [[[("\n", 0.5), ("the", 0.25), ("\t", 0.125), ("é", 0.1)]]])
    lines = text.splitlines()
    assert len(lines) == 5 and lines[1].split() == ["1.", "\\n", "0.5000"] and lines[3].split()[1] == "\\t"
    assert lines[4].split()[1] == "é"
