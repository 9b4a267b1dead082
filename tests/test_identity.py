"""data_changes: the words for a resume on other data."""

from __future__ import annotations

from mlm_lightning.data.identity import data_changes


def test_a_record_without_a_tokenizer_is_a_change_not_a_crash() -> None:
    # The indexing of the missing record used to raise TypeError ('NoneType' object is not subscriptable).
    changes = data_changes({"data.tokenizer": ["bert-base-uncased", "abc"]}, {})
    assert changes == ["data.tokenizer: bert-base-uncased ->  (another vocabulary or other rules)"]


def test_the_same_tokenizer_is_no_change() -> None:
    record = {"data.tokenizer": ["bert-base-uncased", "abc"]}
    assert data_changes(record, dict(record)) == []
